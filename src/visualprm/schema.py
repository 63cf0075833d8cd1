"""The project's records (problems, solutions, annotated solutions, candidates), JSONL reading and writing.

Records stay plain dicts: readers validate a record, fill in the canonical field names of DESIGN.md §2 (the
official VisualPRM / VisualProcessBench names are accepted too) and keep every other field untouched, so a
command can write each input record back with its own fields plus what it added.

Every problem a user can cause raises `InputError`, whose one-line message names the file, the line and the
field; the CLI turns it into exit status 2. Writers never leave a half-written file: `write_jsonl` writes to a
temporary file and renames it; `append_jsonl` writes whole lines with one `write` and `read_jsonl` can drop a
torn last line left by a killed process (resume).

This module does not load models or images' pixels beyond checking that an image opens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .steps import split_regex, split_step_markers, split_steps


class InputError(Exception):
    """A failure caused by the user's input: reported as one line, exit status 2."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None, field=None):
        self.message, self.path, self.line, self.field = message, path, line, field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        if self.field is not None:
            where += f"field '{self.field}': "
        return " ".join((where + str(self.message)).split())  # always one line


class Loc:
    """Where a record came from (file and 1-based line), to name it in errors."""

    __slots__ = ("path", "line")

    def __init__(self, path: str | os.PathLike | None = None, line: int | None = None):
        self.path, self.line = path, line

    def error(self, message: str, field: str | None = None) -> InputError:
        return InputError(message, self.path, self.line, field)


# ---------------------------------------------------------------------------------------------------------------
# JSONL I/O


def read_jsonl(path: str | os.PathLike, allow_torn_tail: bool = False) -> Iterator[tuple[Loc, dict]]:
    """Yield `(loc, record)` for each non-blank line. Bad JSON or a non-object line raises `InputError`.

    `allow_torn_tail`: a last line without its newline (a write cut by a kill) is skipped instead of raising.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("file not found", path)
    with open(p, encoding="utf-8") as f:
        lines = f.readlines()
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            if allow_torn_tail and i == len(lines) and not raw.endswith("\n"):
                return
            raise InputError(f"not valid JSON ({e.msg} at column {e.colno})", path, i) from None
        if not isinstance(rec, dict):
            raise InputError(f"expected a JSON object, got {type(rec).__name__}", path, i)
        yield Loc(path, i), rec


def read_json_or_jsonl(path: str | os.PathLike) -> Iterator[tuple[Loc, dict]]:
    """Read a JSON array of objects (as ProcessBench publishes) or JSONL, detected from the first character."""
    p = Path(path)
    if not p.is_file():
        raise InputError("file not found", path)
    with open(p, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e.msg} at line {e.lineno})", path, e.lineno) from None
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise InputError(f"array item {i} is not a JSON object", path)
            yield Loc(path, i + 1), rec
    else:
        yield from read_jsonl(path)


def dumps(rec: Any) -> str:
    return json.dumps(rec, ensure_ascii=False)


def new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file under the current umask (0o644 under umask 022)."""
    mask = None
    try:  # Linux: read the umask without changing it (os.umask would, for a moment, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                mask = int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def share_modes(folder: str | os.PathLike) -> None:
    """Give every file under `folder` the mode a plain `open` would (safetensors writes its files 0600)."""
    mode = new_file_mode()
    for root, _, files in os.walk(folder):
        for name in files:
            q = os.path.join(root, name)
            if not os.path.islink(q) and os.path.isfile(q):
                os.chmod(q, mode)


def check_output(path: str | os.PathLike, kind: str = "file", what: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot be written: raises `InputError` naming it.

    `kind` "file": an existing directory, or anything that is not a regular file (a device such as /dev/full,
    a fifo, a socket), is refused; "dir": an existing non-directory is refused. Missing parent folders are
    created later by the writer; refused here are a parent that is a file and one that cannot be written.
    """
    p = Path(path)
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    if p.exists() or p.is_symlink():
        if kind == "dir" and not p.is_dir():
            raise InputError(f"{what}: not a directory", p)
        if kind == "file":
            if p.is_dir():
                raise InputError(f"{what}: is a directory, expected a file", p)
            if not p.is_file():
                raise InputError(f"{what}: not a regular file (a device, fifo or socket); refusing to replace it", p)
            if not os.access(p, os.W_OK):
                raise InputError(f"{what}: permission denied", p)
    folder = p if (kind == "dir" and p.is_dir()) else p.parent
    ancestor = folder.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{what}: parent {ancestor} is not a directory", p)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{what}: cannot write in {ancestor} (permission denied)", p)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside `path` for writing; on success it replaces `path` (one rename).

    The file gets the mode a plain `open(path, "w")` would give it (an existing file's own mode, else the umask's),
    not mkstemp's 0600. A `path` that exists and is not a regular file is never replaced (`InputError`); a
    symbolic link is followed, as `open` would. On any failure the temporary file is removed, `path` untouched.
    """
    p = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if p.exists() and not p.is_file():
        raise InputError("not a regular file; refusing to replace it", path)
    p.parent.mkdir(parents=True, exist_ok=True)
    file_mode = stat.S_IMODE(p.stat().st_mode) if p.exists() else new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, file_mode)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically (temporary file in the same folder, then rename). Returns the count."""
    n = 0
    with atomic_open(path) as f:
        for rec in records:
            f.write(dumps(rec) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON document atomically, indented for people."""
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file (a report) atomically."""
    with atomic_open(path) as f:
        f.write(text)


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append whole lines with a single write and fsync, so a kill leaves at most one torn last line."""
    data = "".join(dumps(r) + "\n" for r in records)
    if not data:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a last line that has no newline (left by a killed writer). Returns the number of bytes removed."""
    p = Path(path)
    if not p.exists():
        return 0
    data = p.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(p, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


# ---------------------------------------------------------------------------------------------------------------
# Field helpers


def require(rec: dict, loc: Loc, *names: str) -> Any:
    """The value of the first present field among `names` (aliases), or an error naming the first."""
    for name in names:
        if name in rec and rec[name] is not None:
            return rec[name]
    raise loc.error("missing", names[0])


def as_str(value: Any, loc: Loc, field: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise loc.error(f"expected a string, got {type(value).__name__}", field)
    if not allow_empty and not value.strip():
        raise loc.error("empty", field)
    return value


def image_list(rec: dict, loc: Loc, required: bool = False) -> list[str]:
    """`images` (list) or the official `image` (a path or a list of paths); [] for a text-only record."""
    value = rec.get("images", rec.get("image"))
    field = "images" if "images" in rec else "image"
    if value is None or value == "" or value == []:
        if required:
            raise loc.error("missing", "images")
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise loc.error("expected a path or a list of paths", field)


def resolve_images(
    paths: list[str], loc: Loc, base_dir: str | os.PathLike | None, image_root: str | os.PathLike | None = None
) -> list[str]:
    """Absolute image paths: relative ones under `image_root` if given, else under the JSONL file's folder.

    Checks only that each file exists; `load_image` checks that it opens.
    """
    out = []
    root = Path(image_root) if image_root else (Path(base_dir) if base_dir else Path("."))
    for p in paths:
        q = Path(p)
        if not q.is_absolute():
            q = root / q
        if not q.is_file():
            raise loc.error(f"image file not found: {q}", "images")
        out.append(str(q))
    return out


def load_image(path: str, loc: Loc):
    """Open an image as RGB with Pillow; a corrupt or unreadable file raises `InputError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise loc.error(f"cannot read image {path}: {e.__class__.__name__}: {e}", "images") from None


def load_callable(spec: str, what: str):
    """The function named by `module:function` or `path/to/file.py:function` (users' own splitters, checkers,
    policies). Anything that cannot be resolved raises `InputError` naming `what` (the option)."""
    import importlib
    import importlib.util

    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(f"{spec!r}: expected module:function or path.py:function", field=what)
    mod_name, fn_name = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise InputError(f"{spec!r}: file not found: {path}", field=what)
            sp = importlib.util.spec_from_file_location(f"visualprm_user_{what}_{path.stem}", path)
            module = importlib.util.module_from_spec(sp)
            sp.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{spec!r}: cannot import {mod_name}: {type(e).__name__}: {e}", field=what) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise InputError(f"{spec!r}: {mod_name} has no function {fn_name!r}", field=what)
    return fn


def load_splitter(spec: str):
    """A step splitter `(response, max_steps) -> [steps]` from a spec: `blank` (default rule), `markers`
    (`Step k:` lines), `re:PATTERN` (boundaries), or `module:function` / `file.py:function` (your own;
    called as f(text, max_steps))."""
    if spec in (None, "", "blank"):
        return split_steps
    if spec == "markers":
        return split_step_markers
    if spec.startswith("re:"):
        pattern = spec[3:]
        try:
            re.compile(pattern)
        except re.error as e:
            raise InputError(f"bad regular expression {pattern!r}: {e}", field="splitter") from None
        return lambda text, max_steps=12: split_regex(text, pattern, max_steps)
    if ":" in spec:
        return load_callable(spec, "splitter")
    raise InputError(
        f"unknown splitter {spec!r} (expected blank, markers, re:PATTERN or module:function)", field="splitter"
    )


def check_image(path: str, loc: Loc) -> None:
    """Check that an image file opens and decodes (cheap enough to run on every record before any work)."""
    load_image(path, loc)


def step_list(value: Any, loc: Loc, field: str = "steps") -> list[str]:
    """A non-empty list of step texts. Steps may be strings or `{"text": ..}` / `{"step": ..}` objects."""
    if not isinstance(value, list):
        raise loc.error(f"expected a list of steps, got {type(value).__name__}", field)
    if not value:
        raise loc.error("empty step list", field)
    out = []
    for i, s in enumerate(value):
        if isinstance(s, dict):
            s = s.get("text", s.get("step"))
        if not isinstance(s, str):
            raise loc.error(f"step {i} is not a string", field)
        out.append(s)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Records


def problem(rec: dict, loc: Loc, need_answer: bool = True) -> dict:
    """A problem: `{id, images, question, answer, options?, source?}`; `image` accepted for `images`."""
    out = dict(rec)
    out["id"] = str(require(rec, loc, "id"))
    out["question"] = as_str(require(rec, loc, "question"), loc, "question")
    out["images"] = image_list(rec, loc)
    out.pop("image", None)
    if need_answer:
        ans = require(rec, loc, "answer")
        if isinstance(ans, (int, float)) and not isinstance(ans, bool):
            ans = str(ans)
        out["answer"] = as_str(ans, loc, "answer")
    options = rec.get("options")
    if options is not None and not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
        raise loc.error("expected a list of strings", "options")
    return out


def solution(rec: dict, loc: Loc, max_steps: int = 12, splitter=None) -> dict:
    """A solution to score: `{id, images, question, steps}` or `response` (split on the fly).

    Also accepts the VisualProcessBench layout (`response: {steps: [..]}`). Adds `steps` when split.
    """
    out = dict(rec)
    out["question"] = as_str(require(rec, loc, "question", "problem"), loc, "question")
    out["images"] = image_list(rec, loc)
    out.pop("image", None)
    if "steps" in rec and rec["steps"] is not None:
        out["steps"] = step_list(rec["steps"], loc, "steps")
    elif isinstance(rec.get("response"), dict):
        out["steps"] = step_list(rec["response"].get("steps"), loc, "response.steps")
    elif "response" in rec:
        text = as_str(rec["response"], loc, "response")
        steps = (splitter or split_steps)(text, max_steps)
        if not steps:
            raise loc.error("empty solution", "response")
        out["steps"] = steps
    elif "steps_with_score" in rec:
        out["steps"] = step_list(rec["steps_with_score"], loc, "steps_with_score")
    else:
        raise loc.error("missing (need 'steps' or 'response')", "steps")
    if any(not s.strip() for s in out["steps"]):
        i = next(i for i, s in enumerate(out["steps"]) if not s.strip())
        raise loc.error(f"step {i} is empty", "steps")
    return out


def annotated(rec: dict, loc: Loc) -> dict:
    """An annotated solution (output of `annotate`): steps with `mc`; the official raw layout is accepted.

    Official VisualPRM400K-Raw: `steps_with_score: [{step, score, num_mc_correct, num_mc_total}]`.
    """
    out = dict(rec)
    out["question"] = as_str(require(rec, loc, "question"), loc, "question")
    out["images"] = image_list(rec, loc)
    out.pop("image", None)
    raw = rec.get("steps", rec.get("steps_with_score"))
    field = "steps" if "steps" in rec else "steps_with_score"
    if raw is None:
        raise loc.error("missing", "steps")
    if not isinstance(raw, list) or not raw:
        raise loc.error("expected a non-empty list of steps", field)
    steps = []
    for i, s in enumerate(raw):
        if not isinstance(s, dict):
            raise loc.error(f"step {i} is not an object with text and mc", field)
        text = s.get("text", s.get("step"))
        mc = s.get("mc", s.get("score"))
        if not isinstance(text, str) or not text.strip():
            raise loc.error(f"step {i}: missing or empty text", field)
        if isinstance(mc, bool) or not isinstance(mc, (int, float)):
            raise loc.error(f"step {i}: missing or non-numeric mc", field)
        if not 0.0 <= float(mc) <= 1.0:
            raise loc.error(f"step {i}: mc {mc} outside [0, 1]", field)
        steps.append(
            {
                "text": text,
                "mc": float(mc),
                "n_correct": s.get("n_correct", s.get("num_mc_correct")),
                "n_total": s.get("n_total", s.get("num_mc_total")),
            }
        )
    out["steps"] = steps
    out.pop("steps_with_score", None)
    out.setdefault("id", rec.get("id", f"line{loc.line}"))
    return out


def candidates(rec: dict, loc: Loc) -> dict:
    """Best-of-N candidates: `{id, images, question, answer?, responses: [..]}`.

    Each response is a string (split into steps) or a list of steps.
    """
    out = dict(rec)
    out["id"] = str(rec.get("id", f"line{loc.line}"))
    out["question"] = as_str(require(rec, loc, "question"), loc, "question")
    out["images"] = image_list(rec, loc)
    out.pop("image", None)
    responses = require(rec, loc, "responses")
    if not isinstance(responses, list) or not responses:
        raise loc.error("expected a non-empty list", "responses")
    for i, r in enumerate(responses):
        if isinstance(r, str):
            if not r.strip():
                raise loc.error(f"response {i} is empty", "responses")
        elif isinstance(r, list):
            step_list(r, loc, f"responses[{i}]")
        else:
            raise loc.error(f"response {i} must be a string or a list of steps", "responses")
    return out
