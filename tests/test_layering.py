"""The layers import downwards only, plugins use the public API alone, and ``import sassl_core``
stays light. Imports are read from the source with ``ast`` (every import, those inside
functions and ``if TYPE_CHECKING:`` included), so a lazy import cannot slip a layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sassl_core

ROOT = Path(__file__).parents[1]
#: top-level package name -> its folder
TREES = {
    "sassl_core": ROOT / "sassl_core",
    "sassl_plugins": ROOT / "plugins",
    "sassl_example_plugin": ROOT / "examples" / "sassl-barlow" / "sassl_example_plugin",
}
INTERNAL = ("sassl_core.method", "sassl_core.train", "sassl_core.app")
#: what every layer stands on: the public face, the top-level modules, slides and the SSL parts
FOUNDATION_NAMES = "wsi ssl color files interfaces hookspecs errors config metrics registry plugins"
FOUNDATION = ("sassl_core", *(f"sassl_core.{name}" for name in FOUNDATION_NAMES.split()))


def module_files(package: str) -> dict[str, Path]:
    """Module name -> source file of every module of ``package`` (``__init__`` as the package)."""
    folder = TREES[package]
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        modules[".".join((package, *parts)).removesuffix(".__init__")] = path
    return modules


MODULES = {name: path for package in TREES for name, path in module_files(package).items()}


def imports(module: str) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``module`` (see :func:`imports_in`)."""
    path = MODULES[module]
    return imports_in(module, path.read_text(), is_package=path.name == "__init__.py")


def imports_in(module: str, source: str, is_package: bool = False) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import in the ``source`` of ``module``, relative ones
    resolved; ``from a import b`` counts as ``a.b`` where that is a module of the project, else as ``a``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            origin = ".".join(part for part in (base, node.module) if part)
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                yield (submodule if submodule in MODULES else origin), node.lineno


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or under one (``sassl_core`` alone means itself)."""
    return any(module == p or (p != "sassl_core" and module.startswith(p + ".")) for p in prefixes)


def violations(importers: list[str], allowed: Callable[[str], bool]) -> list[str]:
    """``importer:line imports target`` for each import of ``sassl_core`` that ``allowed(target)`` refuses."""
    found = (
        f"{importer}:{line} imports {target}"
        for importer in importers
        for target, line in imports(importer)
        if target.partition(".")[0] == "sassl_core" and not allowed(target)
    )
    return list(dict.fromkeys(found))  # once per line


def test_every_tree_is_read():
    assert {"sassl_core.method.transfer", "sassl_core.app.cli", "sassl_plugins.ssl.simsiam"} <= set(MODULES)
    assert "sassl_example_plugin.barlow_twins" in MODULES
    assert "sassl_core.interfaces" in {target for target, _ in imports("sassl_core")}  # under TYPE_CHECKING


def test_relative_and_function_level_imports_are_resolved():
    source = "from .reader import open_slide\nfrom .. import errors\n\ndef f():\n    from sassl_core.app import cli\n"
    assert sorted(imports_in("sassl_core.wsi.tiling", source)) == [
        ("sassl_core.app.cli", 5),
        ("sassl_core.errors", 2),
        ("sassl_core.wsi.reader", 1),
    ]
    assert list(imports_in("sassl_core.wsi", "from . import cache", is_package=True)) == [("sassl_core.wsi.cache", 1)]


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        (("sassl_core.method",), ("sassl_core.train", "sassl_core.app")),
        (("sassl_core.train",), ("sassl_core.app",)),
        (FOUNDATION, INTERNAL),
    ],
    ids=["method", "train", "foundation"],
)
def test_layers_import_downwards_only(layer, forbidden):
    importers = [m for m in MODULES if within(m, layer)]
    assert importers, f"no modules under {layer}"
    found = violations(importers, lambda target: not within(target, forbidden))
    assert not found, f"{' / '.join(layer)} must not import {' / '.join(forbidden)}:\n" + "\n".join(found)


@pytest.mark.parametrize("package", ["sassl_plugins", "sassl_example_plugin"])
def test_plugins_use_the_public_api_only(package):
    found = violations([m for m in MODULES if within(m, (package,))], lambda t: within(t, sassl_core.PUBLIC_API))
    assert not found, f"{package} imports from outside sassl_core.PUBLIC_API:\n" + "\n".join(found)


def test_importing_the_core_loads_no_app_module_and_not_torch():
    code = "import sys, sassl_core; print(*sorted(m for m in sys.modules if m.startswith(('sassl_core.', 'torch'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    heavy = [m for m in loaded if within(m, ("sassl_core.app", "torch"))]
    assert not heavy, f"`import sassl_core` imports {heavy} (loaded: {loaded})"
