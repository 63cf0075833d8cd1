"""No import cycles among the package's modules (static: read with ast, nothing imported).

Every import of a visualprm module counts, wherever it is: at module level, inside a function, or under
`if TYPE_CHECKING:`, because each of them makes the two modules depend on each other for a reader."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "visualprm"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules that the file imports, at any depth of its code."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.level == 0 and (node.module or "").split(".")[0] == "visualprm":
                parts = node.module.split(".")
                names = parts[1:2] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("visualprm.")]
        out |= {n for n in names if n in modules and n != path.stem}
    return out


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    files = {p.stem: p for p in pkg.glob("*.py")}
    return {name: imports_of(p, set(files)) for name, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> b -> ... -> a) per strongly connected group of modules."""
    out, done = [], set()
    for start in sorted(graph):
        if start in done:
            continue
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    out.append(path + [start])
                    done |= set(path)
                    stack = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return out


def test_no_import_cycles():
    graph = import_graph()
    assert {"cli", "cli_data", "schema", "steps", "server", "serve_inputs"} <= set(graph)
    assert "schema" in graph["scoring"] and "steps" in graph["schema"]  # the walk sees real imports
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_check_finds_every_kind_of_import(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import c\n")
    (tmp_path / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from visualprm.a import y\n"
    )
    (tmp_path / "d.py").write_text("import visualprm.a\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
