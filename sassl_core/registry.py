"""Name -> component registries, owned by the core and filled by plugin hooks.

A component is a factory plus an optional pydantic options model. The core validates the
user's options against that model (``extra="forbid"`` is recommended) before calling the
factory, so every plugin gets typed, checked options.

What a factory raises follows CONTRIBUTING §3: a :class:`UserError`, or a pydantic
``ValidationError``, is about the user's input and reaches the user as one line naming the
component; any other exception is a bug in the plugin and propagates unchanged, with a note
naming the component and its plugin (the command line then shows its traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from sassl_core.errors import UserError
from sassl_core.hookspecs import EXTENSION_POINTS
from sassl_core.interfaces import TargetKind, TaskHead


class EmptyOptions(BaseModel, extra="forbid"):
    """Options model of a component that takes no options."""


def describe_problems(err: ValidationError) -> str:
    """A pydantic error on one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors())


def add_note(err: BaseException, note: str) -> None:
    """Attach ``note`` to ``err`` (printed under its traceback from Python 3.11 on)."""
    if sys.version_info >= (3, 11):
        err.add_note(note)
    else:
        err.__notes__ = [*getattr(err, "__notes__", ()), note]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel]
    plugin: str
    target_kind: TargetKind | None = None  # what a task's heads learn from (tasks only)

    @property
    def label(self) -> str:
        """How messages name the component: ``ssl method 'simsiam'``."""
        return f"{EXTENSION_POINTS[self.kind].label} '{self.name}'"

    def parse_options(self, raw: dict | BaseModel | None) -> BaseModel:
        """Validate ``raw`` against this component's options model (one readable error)."""
        if isinstance(raw, self.options):
            return raw
        try:
            return self.options.model_validate(raw or {})
        except ValidationError as err:
            raise UserError(f"options of {self.label}: {describe_problems(err)}") from None

    def build(self, options: dict | BaseModel | None, /, **kwargs: Any) -> Any:
        """The factory's product for validated ``options`` and the core's ``kwargs``; a task's
        head gets the component's ``target_kind``."""
        parsed = self.parse_options(options)
        try:
            built = self.factory(options=parsed, **kwargs)
        except UserError:
            raise
        except ValidationError as err:
            raise UserError(f"{self.label}: {describe_problems(err)}") from None
        except Exception as err:  # a bug in the plugin: keep its traceback, say whose it is
            add_note(err, f"raised by {self.label} of plugin '{self.plugin}'")
            raise
        if self.target_kind is not None:
            if not isinstance(built, TaskHead):
                raise TypeError(
                    f"{self.label} of plugin '{self.plugin}' returned {type(built).__name__}, "
                    "expected a sassl_core.interfaces.TaskHead"
                )
            built.target_kind = self.target_kind
        return built


@dataclass
class Registry:
    """All components of one kind, by name."""

    kind: str
    components: dict[str, Component] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return EXTENSION_POINTS[self.kind].label

    def check_free(self, component: Component) -> None:
        """Raise when another plugin already registered ``component``'s name."""
        existing = self.components.get(component.name)
        if existing is not None:
            raise UserError(
                f"{component.label} is registered twice: by plugin '{existing.plugin}' and by plugin '{component.plugin}'"
            )

    def add(self, component: Component) -> None:
        self.check_free(component)
        self.components[component.name] = component

    def names(self) -> list[str]:
        return sorted(self.components)

    def get(self, name: str) -> Component:
        try:
            return self.components[name]
        except KeyError:
            available = ", ".join(self.names()) or "(none)"
            raise UserError(f"unknown {self.label} '{name}'; available: {available}") from None

    def create(self, name: str, options: dict | BaseModel | None = None, /, **kwargs: Any) -> Any:
        """Build component ``name`` with validated ``options`` and the core's ``kwargs``."""
        return self.get(name).build(options, **kwargs)
