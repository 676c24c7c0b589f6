"""Plugin manager: loads the ``sassl`` entry points and fills the registries.

Every plugin, shipped or third-party, is a module named under the ``sassl`` entry-point group.
Discovery goes through the standard library's :mod:`importlib.metadata` (as pluggy's own
``load_setuptools_entrypoints`` does). A plugin that fails to import, or whose hook raises, is
recorded in :attr:`PluginSet.failures` by name and distribution and skipped; the rest keep
working.

Environment variables:

* ``SASSL_DISABLE_PLUGINS=a,b`` — do not load the plugins named ``a`` and ``b``;
* ``SASSL_DISABLE_PLUGIN_AUTOLOAD=1`` — load no entry points, only plugins passed in code.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel

from sassl_core import hookspecs
from sassl_core.errors import UserError
from sassl_core.hookspecs import EXTENSION_POINTS, ExtensionPoint, Register
from sassl_core.interfaces import TargetKind
from sassl_core.registry import Component, EmptyOptions, Registry

ENTRY_POINT_GROUP = "sassl"
SHIPPED_DISTRIBUTION = "sassl"  # the distribution whose plugins win a clash of entry-point names


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    components: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PluginFailure:
    name: str
    distribution: str
    error: str

    def message(self) -> str:
        return f"plugin '{self.name}' (distribution {self.distribution}) failed: {self.error}"


@dataclass
class PluginSet:
    """The loaded plugins and the registries they filled."""

    registries: dict[str, Registry]
    plugins: list[PluginInfo]
    failures: list[PluginFailure]

    def __getitem__(self, kind: str) -> Registry:
        return self.registries[kind]

    def summary(self) -> dict[str, Any]:
        """The object ``sassl plugins --json`` prints: the names of each kind, the extension
        points (with each task's target kind), the plugins and the failures."""
        out: dict[str, Any] = {kind: reg.names() for kind, reg in self.registries.items()}
        out["extension_points"] = {kind: self._describe_point(point) for kind, point in EXTENSION_POINTS.items()}
        out["plugins"] = [
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "components": p.components,
            }
            for p in self.plugins
        ]
        out["failed"] = [{"name": f.name, "distribution": f.distribution, "error": f.error} for f in self.failures]
        return out

    def _describe_point(self, point: ExtensionPoint) -> dict[str, Any]:
        described: dict[str, Any] = {
            "hook": point.hook,
            "label": point.label,
            "factory": point.factory.__name__,
            "returns": point.returns,
        }
        if point.declares_target_kind:
            registry = self.registries[point.kind]
            described["target_kinds"] = {name: str(registry.get(name).target_kind) for name in registry.names()}
        return described


def _disabled() -> set[str]:
    raw = os.environ.get("SASSL_DISABLE_PLUGINS", "")
    return {n.strip() for n in raw.split(",") if n.strip()}


@dataclass(frozen=True)
class _Unreadable:
    """Stands for the entry points of a distribution whose ``entry_points.txt`` does not parse:
    loading it fails, so the distribution is reported like any broken plugin."""

    dist: importlib.metadata.Distribution
    problem: str
    name: str = "entry_points.txt"
    value: str = ""

    def load(self) -> object:
        raise UserError(f"entry_points.txt: expected 'name = module' lines, found {self.problem}")


def _entry_points() -> Iterable[importlib.metadata.EntryPoint | _Unreadable]:
    """The ``sassl`` entry points of every distribution on the path (the first of each name)."""
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        dist_name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if dist_name in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(dist_name)
        try:
            yield from dist.entry_points.select(group=ENTRY_POINT_GROUP)
        except Exception as err:  # the standard library's parser raises whatever a bad line provokes
            if f"[{ENTRY_POINT_GROUP}]" in (dist.read_text("entry_points.txt") or ""):
                yield _Unreadable(dist, _describe(err))


def _is_shipped(dist: str) -> bool:
    return dist == SHIPPED_DISTRIBUTION


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def _problem(error: BaseException) -> str:
    """A plugin's failure for its report: a :class:`UserError`'s message, else the exception."""
    return str(error) if isinstance(error, UserError) else _describe(error)


def _returning(obj: object) -> Callable[[], object]:
    """A loader of ``obj`` (what ``EntryPoint.load`` is for an installed plugin)."""
    return lambda: obj


def load_plugins(extra: Iterable[tuple[str, ModuleType | object]] = ()) -> PluginSet:
    """Load plugins and return the filled registries.

    ``extra`` holds ``(name, module_or_object)`` pairs registered explicitly (tests, lab code);
    they are loaded even when autoload is disabled.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    plugins: list[PluginInfo] = []
    failures: list[PluginFailure] = []
    candidates: list[tuple[str, str, str, Callable[[], object]]] = []

    if os.environ.get("SASSL_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0"):
        entry_points: Iterable[importlib.metadata.EntryPoint | _Unreadable] = ()
    else:
        entry_points = _entry_points()
    by_name: dict[str, tuple[str, str]] = {}  # entry-point name → (distribution, module) that got it
    for ep in sorted(entry_points, key=lambda ep: not _is_shipped(ep.dist.name if ep.dist else "")):
        dist = ep.dist.name if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else "unknown"
        module = getattr(ep, "value", "")
        if isinstance(ep, _Unreadable):  # no name of its own to clash with
            candidates.append((ep.name, dist, version, ep.load))
            continue
        if ep.name in by_name:
            owner, owner_module = by_name[ep.name]
            failures.append(
                PluginFailure(
                    ep.name,
                    dist,
                    f"entry point '{ep.name}' (module {module}) clashes with plugin '{ep.name}' of distribution "
                    f"{owner} (module {owner_module}); not loaded",
                )
            )
            continue
        by_name[ep.name] = (dist, module)
        candidates.append((ep.name, dist, version, ep.load))
    for name, obj in extra:
        candidates.append((name, "(registered in code)", "", _returning(obj)))

    registries = {kind: Registry(kind) for kind in EXTENSION_POINTS}
    for name, dist, version, load in candidates:
        if name in disabled:
            continue
        try:
            module = load()
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # a broken plugin, even one calling sys.exit, must not take the others down
            failures.append(PluginFailure(name, dist, f"import failed: {_problem(err)}"))
            continue
        info = PluginInfo(name, dist, version)
        staged: list[Component] = []
        try:
            pm.register(module, name=name)
            for point in EXTENSION_POINTS.values():
                impls = [i for i in getattr(pm.hook, point.hook).get_hookimpls() if i.plugin_name == name]
                for impl in impls:
                    impl.function(register=_collector(point, name, staged))
        except KeyboardInterrupt:
            raise
        except BaseException as err:
            pm.unregister(name=name)
            failures.append(PluginFailure(name, dist, _problem(err)))
            continue
        try:
            for component in staged:
                registries[component.kind].check_free(component)
        except UserError as err:
            pm.unregister(name=name)
            failures.append(PluginFailure(name, dist, str(err)))
            continue
        for component in staged:
            registries[component.kind].add(component)
            info.components.setdefault(component.kind, []).append(component.name)
        plugins.append(info)
    return PluginSet(registries, plugins, failures)


def _collector(point: ExtensionPoint, plugin: str, staged: list[Component]) -> Register[Any]:
    """The ``register`` callable handed to ``plugin``'s hook of ``point``."""

    def register(
        name: str,
        factory: Callable[..., Any],
        options: type[BaseModel] | None = None,
        *,
        target_kind: TargetKind | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise UserError(f"plugin '{plugin}' registered a {point.label} with an invalid name {name!r}")
        what = f"plugin '{plugin}' registered {point.label} '{name}'"
        if not callable(factory):
            raise UserError(f"{what} with a factory that is not callable")
        if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise UserError(f"{what} with options that are not a pydantic model")
        declared = _target_kind(point, what, target_kind)
        staged.append(Component(point.kind, name, factory, options or EmptyOptions, plugin, declared))

    return register


def _target_kind(point: ExtensionPoint, what: str, value: object) -> TargetKind | None:
    """The declared ``target_kind``: required where ``point`` declares one, refused elsewhere."""
    kinds = ", ".join(f"TargetKind.{k.name}" for k in TargetKind)
    if not point.declares_target_kind:
        if value is not None:
            raise UserError(f"{what} with a target_kind; only tasks declare one")
        return None
    if value is None:
        raise UserError(f"{what} without a target_kind: expected target_kind= one of {kinds}")
    try:
        return TargetKind(value)
    except ValueError:
        raise UserError(f"{what} with target_kind {value!r}: expected one of {kinds}") from None


_DEFAULT: PluginSet | None = None


def default_plugins() -> PluginSet:
    """The process-wide plugin set (loaded once, on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_plugins()
    return _DEFAULT
