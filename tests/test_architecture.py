"""The package's layering, checked from the source (pure: no database, no server).

Each module may import only from its own layer or lower ones, and package modules never
import each other in a cycle. ``docs/ARCHITECTURE.md`` explains the layers; this file is
what keeps them true. A new module must be placed in ``LAYERS`` (the test says so).

Imports are read with ``ast`` from every module, at module level and inside functions (the
OpenAI SDK and ``psycopg.conninfo`` are imported lazily on purpose) and under
``TYPE_CHECKING``. Only imports of this package are restricted; third-party and standard
library imports are not.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "artist_bio_gen"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE
ARCHITECTURE_MD = PACKAGE_DIR.parent / "docs" / "ARCHITECTURE.md"

#: The layers, lowest first. Patterns are module paths relative to the package, without
#: ``.py`` (``utils/*`` matches ``utils/__init__`` and every module in ``utils/``).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # 0: plain building blocks: records, errors, codes, text/id/file helpers.
    ("foundation", ("utils/*", "models", "errors", "exit_codes", "failure_codes")),
    # 1: the two outside systems: the OpenAI API and PostgreSQL.
    ("services", ("api/*", "database/*")),
    # 2: what a job is: its side files and manifest, and the frozen run configuration.
    ("job", ("jobfiles", "config")),
    # 3: the pipeline; core/output.py and core/parser.py are legacy import paths that
    # re-export from core/legacy.py, ordinary members of this layer.
    ("core", ("core/*",)),
    # 4: the command line: argparse, exit codes, progress, signals.
    ("cli", ("cli/*",)),
    # 5: the facade on top: the package root re-exports the legacy public API; the
    # command's entry point.
    ("facade", ("__init__", "__main__", "entry")),
)


def _module_name(path: Path) -> str:
    """``artist_bio_gen.core.runner`` for ``core/runner.py``; packages by their name."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _relative_path(path: Path) -> str:
    """``core/runner`` for ``core/runner.py`` (the form ``LAYERS`` uses)."""
    return path.relative_to(PACKAGE_DIR).with_suffix("").as_posix()


MODULE_FILES: dict[str, Path] = {
    _module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))
}


def layer_of(path: Path) -> int | None:
    """The index of the layer ``path`` belongs to (None: not placed)."""
    relative = _relative_path(path)
    matches = [
        index
        for index, (_, patterns) in enumerate(LAYERS)
        for pattern in patterns
        if fnmatch.fnmatchcase(relative, pattern)
    ]
    return matches[0] if len(matches) == 1 else None


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name ``from <node.module>`` refers to."""
    if node.level == 0:
        return node.module or ""
    # A module's package is itself for __init__.py, else its parent.
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _package_targets(name: str, imported: list[str]) -> Iterator[str]:
    """The package modules an import statement names.

    ``from .. import exit_codes`` names the submodule ``artist_bio_gen.exit_codes``, not the
    package root; ``from ..core.jsonl import X`` names ``artist_bio_gen.core.jsonl``.
    Importing a submodule also runs its parents' ``__init__``; that is Python's doing, not
    a dependency the code chose, so it is not an edge here.
    """
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return
    for alias in imported:
        submodule = f"{name}.{alias}"
        if submodule in MODULE_FILES:
            yield submodule
        elif name in MODULE_FILES:
            yield name


def imports_in(module: str, source: str, is_package: bool = False) -> set[str]:
    """Package modules that ``source`` (the text of ``module``) imports anywhere."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):  # module level, functions, TYPE_CHECKING
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULE_FILES)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(module, is_package, node)
            found.update(_package_targets(target, [alias.name for alias in node.names]))
    found.discard(module)
    return found


def imports_of(module: str) -> set[str]:
    """Package modules that ``module`` imports anywhere in its source."""
    path = MODULE_FILES[module]
    return imports_in(module, path.read_text(encoding="utf-8"), path.name == "__init__.py")


IMPORTS: dict[str, set[str]] = {module: imports_of(module) for module in MODULE_FILES}


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; every component with more than one module is a cycle."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_import_reader_sees_every_kind_of_import() -> None:
    """The reader itself: relative, absolute, function-level and TYPE_CHECKING imports."""
    # errors.py: "from . import exit_codes" (a submodule, not the package root).
    assert IMPORTS[f"{PACKAGE}.errors"] == {f"{PACKAGE}.exit_codes"}
    # cli/main.py: "from ..core.runner import ...", "from .verify import ...".
    assert {f"{PACKAGE}.core.runner", f"{PACKAGE}.cli.verify"} <= IMPORTS[f"{PACKAGE}.cli.main"]
    # core/output.py re-exports from core/legacy.py.
    assert IMPORTS[f"{PACKAGE}.core.output"] == {f"{PACKAGE}.core.legacy"}
    # Function-level, absolute and TYPE_CHECKING imports are found too.
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..models import Outcome\n"
        "def f():\n    from artist_bio_gen.cli import create_argument_parser\n"
        "    import artist_bio_gen.config\n"
        "    import openai\n"
    )
    assert imports_in(f"{PACKAGE}.core.runner", source) == {
        f"{PACKAGE}.models",
        f"{PACKAGE}.cli",
        f"{PACKAGE}.config",
    }
    # In a package's __init__.py, "." is the package itself.
    assert imports_in(f"{PACKAGE}.core", "from .legacy import x\n", is_package=True) == {
        f"{PACKAGE}.core.legacy"
    }


def test_every_module_is_placed_in_exactly_one_layer() -> None:
    unplaced = [_relative_path(path) for path in MODULE_FILES.values() if layer_of(path) is None]
    assert not unplaced, (
        f"modules in no layer (or in two): {unplaced}; add each to exactly one layer of "
        "LAYERS in tests/test_architecture.py and to docs/ARCHITECTURE.md"
    )


def test_no_module_imports_from_a_higher_layer() -> None:
    violations = []
    for module, targets in sorted(IMPORTS.items()):
        own = layer_of(MODULE_FILES[module])
        for target in sorted(targets):
            theirs = layer_of(MODULE_FILES[target])
            if own is not None and theirs is not None and theirs > own:
                violations.append(
                    f"{_relative_path(MODULE_FILES[module])} ({LAYERS[own][0]}) imports "
                    f"{_relative_path(MODULE_FILES[target])} ({LAYERS[theirs][0]})"
                )
    assert not violations, "imports from a higher layer:\n  " + "\n  ".join(violations)


def test_package_modules_import_each_other_in_no_cycle() -> None:
    cycles = [c for c in strongly_connected_components(IMPORTS) if len(c) > 1]
    assert not cycles, "import cycles among package modules: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


@pytest.mark.parametrize(
    ("graph", "cycles"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cycles: list) -> None:
    found = [c for c in strongly_connected_components(graph) if len(c) > 1]
    assert found == cycles


# --- docs/ARCHITECTURE.md describes the same layers and modules -----------------------------


def _doc_pattern(pattern: str) -> str:
    """``utils/*`` stays as it is; ``models`` is written ``models.py`` in the document."""
    return pattern if pattern.endswith("/*") else pattern + ".py"


def test_the_architecture_doc_shows_the_same_layers() -> None:
    text = ARCHITECTURE_MD.read_text(encoding="utf-8")
    problems = []
    for index, (name, patterns) in enumerate(LAYERS):
        row = re.search(rf"^\| {index} {name} \|([^|]*)\|", text, re.MULTILINE)
        if row is None:
            problems.append(f"no row '| {index} {name} |' in the layer table")
            continue
        listed = set(re.findall(r"`([^`]+)`", row[1]))
        expected = {_doc_pattern(pattern) for pattern in patterns}
        if listed != expected:
            problems.append(
                f"layer {index} {name}: the document lists {sorted(listed)}, "
                f"LAYERS {sorted(expected)}"
            )
    assert not problems, "docs/ARCHITECTURE.md disagrees with LAYERS:\n  " + "\n  ".join(problems)


def test_every_module_has_one_row_in_the_architecture_doc() -> None:
    text = ARCHITECTURE_MD.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([\w/]+\.py)` \|", text, re.MULTILINE)
    files = {path.relative_to(PACKAGE_DIR).as_posix() for path in MODULE_FILES.values()}
    assert sorted(files - set(rows)) == [], "modules without a row in the module table"
    assert sorted(set(rows) - files) == [], "rows for modules that do not exist"
    assert len(rows) == len(set(rows)), "a module has two rows"
