"""Name -> component registries, owned by the core and filled by plugin hooks.

A component is a factory plus an optional pydantic options model. The core validates the
user's options against that model (``extra="forbid"`` is recommended) before calling the
factory, so every plugin gets typed, checked options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from sassl_core.errors import UserError

KINDS = {
    "ssl": "ssl method",
    "backbone": "backbone",
    "task": "task",
    "dataset": "dataset",
    "stain": "stain transform",
}


class EmptyOptions(BaseModel, extra="forbid"):
    """Options model of a component that takes no options."""


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel]
    plugin: str

    def parse_options(self, raw: dict | BaseModel | None) -> BaseModel:
        """Validate ``raw`` against this component's options model (one readable error)."""
        if isinstance(raw, self.options):
            return raw
        try:
            return self.options.model_validate(raw or {})
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors())
            raise UserError(f"options of {KINDS[self.kind]} '{self.name}': {problems}") from None


@dataclass
class Registry:
    """All components of one kind, by name."""

    kind: str
    components: dict[str, Component] = field(default_factory=dict)

    def check_free(self, component: Component) -> None:
        """Raise when another plugin already registered ``component``'s name."""
        existing = self.components.get(component.name)
        if existing is not None:
            raise UserError(
                f"{KINDS[self.kind]} '{component.name}' is registered twice: by plugin "
                f"'{existing.plugin}' and by plugin '{component.plugin}'"
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
            raise UserError(f"unknown {KINDS[self.kind]} '{name}'; available: {available}") from None

    def create(self, name: str, options: dict | BaseModel | None = None, /, **kwargs: Any) -> Any:
        """Build component ``name`` with validated ``options`` and the core's ``kwargs``."""
        component = self.get(name)
        parsed = component.parse_options(options)
        try:
            return component.factory(options=parsed, **kwargs)
        except UserError:
            raise
        except Exception as err:  # a plugin's own bug: name it instead of a bare traceback
            first = (str(err).splitlines() or [""])[0][:200]
            raise UserError(
                f"{KINDS[self.kind]} '{name}' (plugin '{component.plugin}') failed to build: {type(err).__name__}: {first}"
            ) from err
