"""zmdist's modules import each other without cycles (what the README's package table promises).

The graph is read from the source with ``ast``, without importing anything: an edge ``a -> b`` for each
``import`` / ``from ... import`` that runs when ``a`` is imported and names a module of the package.
Imports inside functions run later, when the function is called, and ``if TYPE_CHECKING:`` blocks never
run, so neither can take part in an import-time cycle and both are left out; imports in class bodies and
in module-level ``if`` / ``try`` / ``with`` blocks run at import time and count.

An edge goes to the most specific module named: ``from a.b import c`` points at module ``a.b.c`` when
there is one, and at ``a.b`` (its ``__init__``) when ``c`` is a name defined there. An edge from a module
to a package that contains it is not counted: Python runs that package's ``__init__`` before the module in
any case, an implicit edge every submodule has, so a package whose ``__init__`` imports its children (to
re-export or register them) and children that take names from that ``__init__`` are the normal layout, not
a cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import zmdist

Graph = dict[str, set[str]]


def _module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir`` (a package: ``__init__.py`` = the package)."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (also behind any module alias)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements among ``body`` that run when the module is imported (see module docstring)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue  # runs when called, not when imported
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            found += _import_time_imports(node.orelse)  # the body never runs; an else branch does
        else:  # class bodies, if / for / while / with / try / match blocks: run at import time
            for block in _blocks(node):
                found += _import_time_imports(block)
    return found


def _blocks(node: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists nested directly in ``node``: its body and else / finally branches, the bodies
    of its ``except`` clauses and of its ``match`` cases."""
    blocks = [getattr(node, field) for field in ("body", "orelse", "finalbody") if hasattr(node, field)]
    blocks += [handler.body for handler in getattr(node, "handlers", [])]
    blocks += [case.body for case in getattr(node, "cases", [])]
    return blocks


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``node`` (in ``module``) imports, each the most specific one named."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's own package, one level up per extra dot
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = set()
    for name in names:
        while name and name not in known:  # `import a.b.X`-style names: the module that holds them
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph(package_dir: Path) -> Graph:
    """Module -> the package's modules it imports at import time (itself and its own packages left out)."""
    files = _module_files(package_dir)
    known = set(files)
    graph: Graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps: set[str] = set()
        for node in _import_time_imports(tree.body):
            deps |= _targets(node, module, path.name == "__init__.py", known)
        graph[module] = {d for d in deps if d != module and not module.startswith(d + ".")}
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per back edge met in a depth-first search, visiting modules in sorted
    order (deterministic); empty when the graph has no cycle."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_zmdist_has_no_import_cycle():
    package_dir = Path(zmdist.__file__).parent
    graph = import_graph(package_dir)
    assert "zmdist.cli" in graph and "zmdist.methods.ssl" in graph["zmdist.algorithms.zeromatch"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among zmdist's modules (break each by moving the shared code down a layer):\n" + \
        "\n".join("  " + " -> ".join(cycle) for cycle in cycles)


def test_cycle_found_through_relative_and_class_level_imports(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "VERSION = 1\nfrom pkg import a\n",
        "pkg/a.py": "from pkg import VERSION\nfrom .sub import b\n",  # a name of its own package: no edge
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "import pkg.c\n",
        "pkg/c.py": "class K:\n    from pkg import a\n",
    })
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.c"},
                     "pkg.c": {"pkg.a"}}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_function_and_type_checking_imports_are_not_import_time(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nimport pkg.b\n",
        "pkg/b.py": ("import typing\nif typing.TYPE_CHECKING:\n    from pkg import a\nelse:\n    import pkg.c\n"
                     "def late():\n    from pkg import a\n    return a\n"),
        "pkg/c.py": "try:\n    from pkg.b import late\nexcept ImportError:\n    late = None\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.c"}  # the TYPE_CHECKING body and the function body are left out
    assert graph["pkg.c"] == {"pkg.b"}  # a try block runs at import time
    assert find_cycles(graph) == [["pkg.b", "pkg.c", "pkg.b"]]
