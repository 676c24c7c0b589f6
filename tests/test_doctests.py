"""Every docstring example runs and shows what it says: the core, the shipped plugins, the
example plugin and the plugin samples of CONTRIBUTING.md."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import types

import pytest

import sassl_core
import sassl_example_plugin
import sassl_plugins
from tests.test_contributing import guide_samples

PACKAGES = (sassl_core, sassl_plugins, sassl_example_plugin)


def _reraise(name: str) -> None:
    """``walk_packages`` calls this inside its ``except``: a package that fails to import fails here."""
    raise


def module_names() -> list[str]:
    """Every module of :data:`PACKAGES`, packages included (the packages are imported to walk them)."""
    names = []
    for package in PACKAGES:
        names.append(package.__name__)
        walk = pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=_reraise)
        names += sorted(info.name for info in walk)
    return names


MODULES = module_names()
SAMPLES = {module.__name__: module for module in guide_samples()}


def examples(module: types.ModuleType) -> list[doctest.DocTest]:
    """The docstrings of ``module`` with examples (those defined in it, not the ones it imports)."""
    tests = doctest.DocTestFinder().find(module, module.__name__, globs=vars(module).copy())
    return [test for test in tests if test.examples]


@pytest.mark.parametrize("name", [*MODULES, *SAMPLES])
def test_docstring_examples_pass(name):
    module = SAMPLES[name] if name in SAMPLES else importlib.import_module(name)
    report: list[str] = []
    runner = doctest.DocTestRunner()
    for test in examples(module):
        runner.run(test, out=report.append)
    assert runner.failures == 0, f"{name}: {runner.failures} failed example(s)\n" + "".join(report)


def test_examples_are_found():
    with_examples = [name for name in MODULES if examples(importlib.import_module(name))]
    assert len(with_examples) > 4, f"only {with_examples} have docstring examples: is the walk finding modules?"
    assert {"sassl_core.wsi.reader", "sassl_plugins.ssl.simsiam", "sassl_example_plugin.ordinal"} <= set(MODULES)
