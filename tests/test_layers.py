"""Layer rules of the package, as tests: the sans-I/O core stays free of I/O, and no
module imports another that imports it back.

``resilient_ws._core`` is fed bytes, events and ``now``; it never opens a socket, sleeps
or reads a clock (STYLE.md 1 and 15). These tests read the package's source and import the
core in a fresh interpreter; they touch no network.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import resilient_ws

PACKAGE = Path(resilient_ws.__file__).parent
CORE = PACKAGE / "_core"

# What no core module may import, directly or through another module of the package.
IO_MODULES = ("anyio", "asyncio", "selectors", "socket", "ssl", "sniffio", "trio", "websockets")
# The clock, on top: the core is handed ``now``.
CLOCKS = ("time", "datetime")
# The package's own modules that do I/O.
IO_PACKAGE = (
    "resilient_ws._io",
    "resilient_ws._logging",
    "resilient_ws.client",
    "resilient_ws.server",
    "resilient_ws.testing",
    "resilient_ws.tools",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[str]:
    """Every module ``path`` imports at run time, absolute; the imports under
    ``if TYPE_CHECKING:`` are left out (they never run). ``from x import y`` yields
    ``x.y`` when that is a module of the package, else ``x``."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def target(node: ast.ImportFrom, name: str) -> str:
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        candidate = f"{base}.{name}"
        return candidate if _is_module(candidate) else base

    def walk(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from walk(node.orelse)
                continue
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                yield from (target(node, alias.name) for alias in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from walk([child])

    yield from walk(ast.parse(path.read_text()).body)


def _is_module(name: str) -> bool:
    """Whether ``name`` is a module of the package (found on disk, not imported)."""
    if not name.startswith("resilient_ws."):
        return False
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


def package_graph() -> dict[str, set[str]]:
    """Each module of the package, and the modules of the package it imports."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        graph[name] = {m for m in imports_of(path) if _is_module(m) and m != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:  # bounded: each module is visited once
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def core_modules() -> list[Path]:
    return sorted(CORE.glob("*.py"))


def test_the_graph_sees_the_core_and_its_imports() -> None:
    """The tests below would pass vacuously on an empty graph."""
    graph = package_graph()
    assert "resilient_ws._core.replay" in graph
    assert "resilient_ws._core.outbox" in graph["resilient_ws._core.replay"]
    assert "resilient_ws._io.backend" in graph["resilient_ws.client"]
    assert len(core_modules()) >= 10


def test_the_core_imports_nothing_that_does_io_or_reads_a_clock() -> None:
    """Read from the source, function-level imports included, through every module of
    the package the core imports."""
    graph = package_graph()
    offences = []
    for path in core_modules():
        name = module_name(path)
        for module in sorted(reachable(graph, name)):
            if under(module, IO_PACKAGE):
                offences.append(f"{name} reaches {module}")
            source = PACKAGE.parent / Path(*module.split("."))
            source = source / "__init__.py" if source.is_dir() else source.with_suffix(".py")
            for imported in imports_of(source):
                if under(imported, IO_MODULES + CLOCKS):
                    offences.append(f"{name} reaches {module}, which imports {imported}")
    assert not offences


def test_the_core_runs_in_an_interpreter_without_io() -> None:
    """Import every core module in a fresh interpreter where importing anyio,
    websockets, trio, asyncio or socket fails, without running the package's
    ``__init__`` (which imports the client)."""
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys, types
        FORBIDDEN = {IO_MODULES + IO_PACKAGE!r}
        class Forbid(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    raise ImportError(f"the core imported {{name}}")
                return None
        for name in list(sys.modules):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                del sys.modules[name]
        sys.meta_path.insert(0, Forbid())
        package = types.ModuleType("resilient_ws")
        package.__path__ = [{str(PACKAGE)!r}]
        sys.modules["resilient_ws"] = package
        core = importlib.import_module("resilient_ws._core")
        names = [m.name for m in pkgutil.iter_modules(core.__path__, "resilient_ws._core.")]
        for name in names:
            importlib.import_module(name)
        print(len(names))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len([p for p in core_modules() if p.name != "__init__.py"])


def test_no_module_imports_one_that_imports_it_back() -> None:
    """No import cycle anywhere in the package (``TYPE_CHECKING`` imports aside). The
    package's ``__init__`` only re-exports, so it is left out: every module that imports
    a sibling runs it first."""
    graph = {m: deps - {"resilient_ws"} for m, deps in package_graph().items()}
    cycles = []
    for module in graph:
        for dep in graph[module]:
            if module in reachable(graph, dep):
                cycles.append(f"{module} -> {dep} -> ... -> {module}")
    assert not cycles
