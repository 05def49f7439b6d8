"""The package's structure: no import cycle, data flowing one way, modules of one job.

Read from the source with ``ast`` (nothing is imported): every ``import`` of a
``normviz`` module, at module level or inside a function, except under
``if TYPE_CHECKING:``. What importing a module loads at run time is checked in
tests/test_imports.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "normviz"

#: Modules allowed over 400 lines, and why (named in the change that let them grow).
LONG_MODULES: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The normviz modules ``path`` imports at run time."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        # "from normviz.plot import common": normviz.plot.common if it is a module, else normviz.plot
        while name and name not in modules:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("normviz"):
                    target = resolve(alias.name)
                    if target:
                        found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            if base.startswith("normviz"):
                for alias in node.names:
                    target = resolve(f"{base}.{alias.name}") or resolve(base)
                    if target:
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(me)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            # A package's __init__ re-exporting its modules is not a loop of jobs.
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _without_package_faces(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without the edges from a package's ``__init__`` to its own modules (a
    package face re-exports them: importing it imports them, which is no cycle of jobs)."""
    return {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}


def test_no_import_cycle():
    cycles = _cycles(_without_package_faces(_graph()))
    assert not cycles, f"import cycles: {cycles}"


def test_store_imports_nothing_from_record():
    graph = _graph()
    bad = {m: sorted(t for t in targets if t.startswith("normviz.record"))
           for m, targets in graph.items() if m.startswith("normviz.store")}
    assert not {m: t for m, t in bad.items() if t}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph.get(m, ()))
    return seen


@pytest.mark.parametrize("layer, forbidden", [
    ("normviz.analysis", ("normviz.record", "normviz.store", "normviz.plot", "normviz.experiments")),
    ("normviz.store", ("normviz.record", "normviz.plot", "normviz.experiments", "normviz.analysis")),
    ("normviz.merge", ("normviz.record", "normviz.plot", "normviz.experiments", "normviz.store.reader",
                       "normviz.store.writer")),
])
def test_data_flows_one_way(layer, forbidden):
    """hooks → statistics → writer → schema → reader → analysis → renderers: nothing reaches back."""
    graph = _graph()
    for module in [m for m in graph if m == layer or m.startswith(layer + ".")]:
        reached = _closure(graph, module)
        back = sorted(m for m in reached for f in forbidden if m == f or m.startswith(f + "."))
        assert not back, f"{module} reaches {back}"


def test_modules_of_one_job_stay_short():
    long = {}
    for path in PACKAGE.rglob("*.py"):
        n = len(path.read_text().splitlines())
        name = _module_name(path)
        if n > 400 and name not in LONG_MODULES:
            long[name] = n
    assert not long, f"modules over 400 lines (split them, or name the reason in LONG_MODULES): {long}"


def test_the_walker_sees_function_level_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "normviz"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from normviz.a import y\n"
        "def f():\n    from . import z\n"
    )
    (pkg / "a" / "y.py").write_text("")
    (pkg / "a" / "z.py").write_text("import normviz.a.y\n")
    modules = {"normviz", "normviz.a", "normviz.a.x", "normviz.a.y", "normviz.a.z"}
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        assert _imports(pkg / "a" / "x.py", modules) == {"normviz.a.z"}
        assert _imports(pkg / "a" / "z.py", modules) == {"normviz.a.y"}
    finally:
        PACKAGE = saved
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_every_declared_dependency_is_imported():
    """A dependency nothing imports is not a dependency (seaborn once was one)."""
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    declared = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["dependencies"]}
    imported: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0].lower() for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0].lower())
    assert declared - imported == set(), f"declared but never imported: {sorted(declared - imported)}"
