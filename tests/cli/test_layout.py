"""The package's layout holds its promises: no import cycles (function-level imports included), production code
never imports the test helpers, and light entry points stay free of frameworks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mobilenet_zoo"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every package module `path` imports at run time, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(modules)
            found.update(submodules if len(submodules) == len(node.names) else submodules | {base})
    return {module for module in found if module in modules and module != name}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:` (imports for type checkers only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking(child))


def _type_checking_imports(path: Path) -> dict[str, str]:
    """name -> module of the `from M import name` lines under `if TYPE_CHECKING:` in `path`."""
    found = {}
    for block in filter(_is_type_checking, ast.walk(ast.parse(path.read_text(), str(path)))):
        for node in ast.walk(block):
            if isinstance(node, ast.ImportFrom):
                found.update({alias.asname or alias.name: node.module for alias in node.names})
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_function_level_imports_are_edges(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from mobilenet_zoo.model.arch import Backbone\n    import mobilenet_zoo.model.canonical\n"
    )
    modules = _modules()
    assert _imports(module, "mobilenet_zoo.m", modules) == {"mobilenet_zoo.model.arch", "mobilenet_zoo.model.canonical"}


def test_the_lazy_root_has_static_imports_for_type_checkers():
    """The `if TYPE_CHECKING:` block of the package root names exactly the lazy names, from the same modules."""
    import mobilenet_zoo

    assert _type_checking_imports(PACKAGE / "__init__.py") == mobilenet_zoo._LAZY
    assert (PACKAGE / "py.typed").exists()


def test_nothing_outside_a_format_package_imports_its_private_modules():
    """A format's private modules (`formats/onnx/_float.py`...) are imported only by its own package: the rest of the
    tool asks the registry (issue 20)."""
    offenders = {
        name: sorted(
            imported
            for imported in imports
            if imported.startswith("mobilenet_zoo.formats.")
            and imported.rpartition(".")[2].startswith("_")
            and not name.startswith(imported.rpartition(".")[0])
        )
        for name, imports in import_graph().items()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


COMMANDS_MAY_IMPORT = ("mobilenet_zoo.api", "mobilenet_zoo.output", "mobilenet_zoo.errors", "mobilenet_zoo.constants")


def _beyond_the_api(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """What each module of `commands/` (and `cli`) imports besides the public API, output, errors, constants and
    `commands/` itself."""

    def allowed(module: str) -> bool:
        return module == "mobilenet_zoo" or any(
            module == name or module.startswith(f"{name}.") for name in (*COMMANDS_MAY_IMPORT, "mobilenet_zoo.commands")
        )

    return {
        name: sorted(module for module in imports if not allowed(module))
        for name, imports in graph.items()
        if name.startswith("mobilenet_zoo.commands") or name == "mobilenet_zoo.cli"
    }


def test_the_commands_are_a_layer_over_the_api():
    """`commands/` (and `cli`) import only the public API, output, errors and constants, function-level imports
    included (issue 20): everything a command does, the API can do."""
    offenders = {name: found for name, found in _beyond_the_api(import_graph()).items() if found}
    assert offenders == {}


def test_the_api_layer_check_sees_a_function_level_import():
    graph = {
        "mobilenet_zoo.commands.x": {"mobilenet_zoo.api", "mobilenet_zoo.tasks.parity", "mobilenet_zoo.commands.y"}
    }
    assert _beyond_the_api(graph) == {"mobilenet_zoo.commands.x": ["mobilenet_zoo.tasks.parity"]}


def test_the_readme_design_map_names_every_module():
    """The README's "Design" block names every module of the package (a new module is placed in the map)."""
    import re

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    design = readme.split("## Design\n", 1)[1].split("```")[1]
    names = {path.parent.name + "/" if path.stem == "__init__" else path.stem for path in PACKAGE.rglob("*.py")}
    missing = [name for name in names if not re.search(rf"(?<![\w/]){re.escape(name)}(?!\w)", design)]
    assert sorted(missing) == []


def test_production_code_never_imports_the_test_helpers():
    graph = import_graph()
    offenders = {
        name: sorted(m for m in imported if m.startswith("mobilenet_zoo.testing"))
        for name, imported in graph.items()
        if not name.startswith("mobilenet_zoo.testing")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_import_and_light_commands_load_no_framework():
    # pydantic: typer 0.29 builds its adapters on every run (+0.1 s per command), hence typer<0.29 in pyproject.
    heavy = ("tensorflow", "torch", "onnxruntime", "onnx", "keras", "pydantic")
    code = (
        "import sys, mobilenet_zoo as mz; from mobilenet_zoo.cli import main\n"
        "for argv in (['list'], ['info', '0.5_160'], ['--help'], ['convert', '--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "mz.Backbone, mz.ZooError\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_every_module_imports_first_in_a_fresh_process():
    """No module depends on another having been imported before it (a cycle through a package `__getattr__`
    escapes the static graph above)."""
    from concurrent.futures import ThreadPoolExecutor

    def first_import(module: str) -> tuple[str, str]:
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        return module, (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[
            -1
        ] if result.returncode else ""

    modules = sorted(name for name in _modules() if not name.endswith("__main__"))  # __main__ runs the CLI
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = {module: error for module, error in pool.map(first_import, modules) if error}
    assert failures == {}
