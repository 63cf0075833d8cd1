"""Every command block of the README runs as written, as it would in a fresh clone after `make demo`.

The README is cut into sections at its `## ` headings. A section's ```bash and ```python blocks run in order, the
bash ones in one `bash -euo pipefail` (so an `export` holds for the rest of the section), each python one as a
script. They run in one working folder for the whole session that looks like a fresh clone after `make demo`:

- the repository's files (`configs/`, `examples/`, `benchmarks/`, `src/`, ...) linked in;
- `demo-out/`: a copy of the output of `visualprm demo --quick` (made once per session and shared with
  tests/test_demo.py; the default `make demo` writes the same files, only from more problems), made only for the
  sections that name `demo-out/`;
- `.venv/bin/` with `activate`, `visualprm` and `python` for the interpreter running the tests, on PATH as after
  `source .venv/bin/activate` (which the README's first block runs).

Offline: `HF_HUB_OFFLINE=1`, and HTTP(S) proxies point at a closed port, so a command that reaches for the network
fails instead of downloading (localhost excepted). A section may read `demo-out/` and the repository's files and
write under `runs/` or `results/`; it must not need another section's outputs (so `-k SECTION` runs alone).

Blocks that need what a fresh clone cannot have (a GPU, a remote server, a download, an hour) are fenced ```text,
with a line above saying what they need, and are not run. Any other fence language fails the test below, so a
new section's commands are picked up (run, or declared not runnable) without touching this file.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = ("bash", "python")
LANGUAGES = RUNNABLE + ("text",)


def readme_sections(text: str | None = None) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(heading, [(language, code), ...])] in README order; the part above the first `## ` is "top"."""
    text = (ROOT / "README.md").read_text() if text is None else text
    sections: list[tuple[str, list[tuple[str, str]]]] = [("top", [])]
    fence = None
    for line in text.splitlines(keepends=True):
        if fence is None:
            if line.startswith("## "):
                sections.append((line[3:].strip(), []))
            elif line.startswith("```"):
                fence = [line[3:].strip(), ""]
        elif line.startswith("```"):
            sections[-1][1].append((fence[0], fence[1]))
            fence = None
        else:
            fence[1] += line
    assert fence is None, "README ends inside a code block"
    return sections


def section_id(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")[:40]


RUN_SECTIONS = [(h, blocks) for h, blocks in readme_sections() if any(lang in RUNNABLE for lang, _ in blocks)]


def shell_commands(code: str) -> list[str]:
    """The block's command lines, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def test_readme_blocks_are_declared():
    """Every fence says bash, python or text; the set-up comes first, then how to run `visualprm`."""
    sections = readme_sections()
    langs = {lang for _, blocks in sections for lang, _ in blocks}
    assert langs <= set(LANGUAGES), f"fence languages {sorted(langs - set(LANGUAGES))}: use bash, python or text"
    top = sections[0][1]
    assert "make demo" in top[0][1] and "make test" in top[0][1]
    assert top[1][0] == "bash" and top[1][1].startswith("source .venv/bin/activate")
    assert [h for h, _ in sections][1].startswith("Quick start")
    text = (ROOT / "README.md").read_text()
    assert "REFERENCE.md" not in text and "the issue" not in text.lower()  # the README stands alone


def test_readme_commands_name_real_options_and_files():
    """Without running anything: every `visualprm` line parses (its options exist) and every repository path
    that a runnable block names exists."""
    from visualprm.cli import build_parser

    parser = build_parser()
    n = 0
    for heading, blocks in RUN_SECTIONS:
        for lang, code in blocks:
            if lang != "bash":
                continue
            for cmd in shell_commands(code):
                argv = shlex.split(cmd)
                if argv[0] == "visualprm" and not set(argv) & {"&", "|", ">", "&&"}:
                    n += 1
                    try:
                        parser.parse_args(argv[1:])
                    except SystemExit as e:  # argparse exits 2 on an unknown option; --version exits 0
                        assert e.code == 0, f"{heading}: {cmd}"
            for path in re.findall(r"(?<![\w/.-])((?:examples|configs|benchmarks|src)/[\w./-]*\w)", code):
                assert (ROOT / path).exists(), f"{heading}: {path} is not in the repository"
    assert n >= 20


@pytest.fixture(scope="session")
def readme_dir(tmp_path_factory):
    """A folder that looks like a fresh clone after `make demo` (see the module docstring), less `demo-out/`."""
    d = tmp_path_factory.mktemp("clone")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for top in sorted({p.split("/")[0] for p in tracked} or {"configs", "examples", "benchmarks", "src"}):
        if (ROOT / top).exists():
            (d / top).symlink_to(ROOT / top)
    venv = d / ".venv" / "bin"
    venv.mkdir(parents=True)
    # as if visualprm were installed in the environment: importable whatever a block sets PYTHONPATH to
    path = f'export PYTHONPATH="{ROOT / "src"}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
    (venv / "visualprm").write_text(f'#!/bin/sh\n{path}exec "{sys.executable}" -m visualprm "$@"\n')
    (venv / "python").write_text(f'#!/bin/sh\n{path}exec "{sys.executable}" "$@"\n')
    (venv / "activate").write_text(f'export VIRTUAL_ENV="{venv.parent}"\nexport PATH="{venv}:$PATH"\n')
    for f in ("visualprm", "python"):
        (venv / f).chmod(0o755)
    return d


def _env(d: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{d / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[k] = "http://127.0.0.1:9"  # nothing listens there: a download fails at once
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("heading,blocks", RUN_SECTIONS, ids=[section_id(h) for h, _ in RUN_SECTIONS])
def test_readme_section_runs(heading, blocks, readme_dir, request):
    pytest.importorskip("torch")
    if any("demo-out/" in code for _, code in blocks) and not (readme_dir / "demo-out").exists():
        shutil.copytree(request.getfixturevalue("quick_demo_dir"), readme_dir / "demo-out")
    env = _env(readme_dir)
    cpu0 = _children_cpu()
    for i, (lang, code) in enumerate(blocks):
        if lang == "bash":
            argv = ["bash", "-euo", "pipefail", "-c", code]
        elif lang == "python":
            script = readme_dir / f".readme-{section_id(heading)}-{i}.py"
            script.write_text(code)
            argv = [sys.executable, str(script)]
        else:
            continue
        proc = subprocess.run(argv, cwd=readme_dir, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{heading}, block {i}:\n{code}\n--- stderr:\n{proc.stderr[-3000:]}"
    print(f"README section {heading!r}: {_children_cpu() - cpu0:.1f} CPU seconds")  # wall time on an idle CPU


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def test_quickstart_outputs(readme_dir):
    """What the Quick start wrote (it runs before this test): every solution scored, a search result."""
    scored = readme_dir / "runs/qs/scored.jsonl"
    if not scored.exists():
        pytest.skip("the Quick start section did not run in this session")
    assert len(scored.read_text().splitlines()) == 80  # 20 problems x 4 solutions
    assert (readme_dir / "runs/qs/search/results.json").is_file()


def test_version(capsys):
    import visualprm
    from visualprm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"visualprm {visualprm.package_version()}\n"
    assert visualprm.package_version() == visualprm.__version__  # the installed metadata and the source agree


def test_license_matches_pyproject():
    assert re.search(r'^license = "Apache-2.0"$', (ROOT / "pyproject.toml").read_text(), re.M)
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"] and "END OF TERMS" in text


def test_example_data_is_what_its_script_writes(tmp_path):
    """examples/data/ (the README's inputs) is exactly what examples/data/make_examples.py writes: real formats,
    made by the library's own functions, reproducible."""
    sys.path.insert(0, str(ROOT / "examples" / "data"))
    try:
        import make_examples
    finally:
        sys.path.pop(0)
    make_examples.main(tmp_path)
    shipped = ROOT / "examples" / "data"
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made == sorted(
        p.relative_to(shipped)
        for p in shipped.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc", ".md") and "__pycache__" not in p.parts
    )
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (shipped / rel).read_bytes(), rel
