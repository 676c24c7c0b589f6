"""What the contract tests share: the installed plugin set they run over, and the options rule.

Every contract test is parametrised over every name of its kind in
:func:`sassl_core.plugins.default_plugins` — the shipped plugins and any installed third-party
one — as timm's tests loop over ``timm.list_models()``.
"""

from __future__ import annotations

import pytest

from sassl_core.errors import UserError
from sassl_core.plugins import default_plugins

PLUGINS = default_plugins()


def names(kind: str) -> list[str]:
    """Every registered component of ``kind``."""
    return PLUGINS[kind].names()


def every_component() -> list[tuple[str, str]]:
    """``(kind, name)`` of every registered component of every kind."""
    return [(kind, name) for kind in PLUGINS.registries for name in names(kind)]


def assert_options_forbid_unknown_fields(kind: str, name: str) -> None:
    """A misspelt option is a one-line error naming the component and the field (CONTRIBUTING §3)."""
    component = PLUGINS[kind].get(name)
    with pytest.raises(UserError) as err:
        component.parse_options({"no_such_option": 1})
    assert str(err.value).startswith(f"options of {component.label}: no_such_option: ")
