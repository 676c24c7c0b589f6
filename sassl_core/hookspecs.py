"""Extension points of sassl — how to write a plugin.

A plugin is a Python module with one or more functions marked ``@sassl_core.hookimpl``. Each
hook receives a :class:`Register` callable owned by the core::

    register(name, factory, options=None, *, target_kind=None)

The core validates the user's options for a component against ``options`` (a pydantic model;
use ``model_config = ConfigDict(extra="forbid")`` so typos are caught) and then calls
``factory(options=<validated model>, **core_kwargs)``. What ``core_kwargs`` are, and what the
factory returns, depends on the extension point: one factory Protocol per kind below
(:class:`SSLFactory`, :class:`BackboneFactory`, :class:`TaskFactory`, :class:`DatasetFactory`,
:class:`StainFactory`), all listed in :data:`EXTENSION_POINTS`. A task also declares the
:class:`~sassl_core.interfaces.TargetKind` it learns from (``target_kind=``, required for tasks
and refused for the other kinds).

A factory raises :class:`sassl_core.UserError` (or a pydantic ``ValidationError``) for bad
input; the user sees it as one line. Any other exception is a bug in the plugin: it propagates
with a note naming the component and the plugin, and the command line shows its traceback.

Publish a plugin by naming its module under the ``sassl`` entry-point group in your
``pyproject.toml``::

    [project.entry-points.sassl]
    my_plugin = "my_package.my_module"

The shipped plugins in ``plugins/`` are registered exactly the same way. Example::

    import sassl_core
    from pydantic import BaseModel, ConfigDict

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        temperature: float = 0.2

    @sassl_core.hookimpl
    def sassl_register_ssl_methods(register):
        register("my_method", build_my_method, Options)

Block a plugin with ``SASSL_DISABLE_PLUGINS=name1,name2``; ``SASSL_DISABLE_PLUGIN_AUTOLOAD=1``
loads no entry points at all (only plugins registered explicitly in code).

This module imports neither torch nor the interfaces at run time (``import sassl_core`` stays
light); the types in the Protocols' annotations are for type checkers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel
    from torch import nn

    from sassl_core.interfaces import (
        DatasetContext,
        PreparedData,
        SSLMethod,
        StainTransform,
        TargetKind,
        TaskHead,
    )

PROJECT = "sassl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Factory = TypeVar("Factory", contravariant=True)


class Register(Protocol[Factory]):
    """The ``register`` callable a hook receives; ``Register[TaskFactory]`` takes task factories."""

    def __call__(
        self,
        name: str,
        factory: Factory,
        options: type[BaseModel] | None = None,
        *,
        target_kind: TargetKind | None = None,
    ) -> None:
        """Add component ``name``: ``factory`` builds it from options validated against
        ``options`` (none: it takes no options); ``target_kind`` is required for tasks only."""


# ``options`` is typed Any: each factory takes its own options model, a subclass of BaseModel.


class SSLFactory(Protocol):
    def __call__(self, options: Any, encoder: nn.Module, feature_dim: int) -> SSLMethod: ...


class BackboneFactory(Protocol):
    def __call__(self, options: Any, image_size: int) -> nn.Module: ...


class TaskFactory(Protocol):
    def __call__(self, options: Any, feature_channels: Sequence[int], num_outputs: int | None) -> TaskHead: ...


class DatasetFactory(Protocol):
    def __call__(self, options: Any, context: DatasetContext) -> PreparedData: ...


class StainFactory(Protocol):
    def __call__(self, options: Any) -> StainTransform: ...


@hookspec
def sassl_register_ssl_methods(register: Register[SSLFactory]) -> None:
    """Register self-supervised methods.

    ``factory(options, encoder, feature_dim) -> sassl_core.interfaces.SSLMethod``. The method's
    ``forward(x1, x2)`` returns an :class:`sassl_core.interfaces.SSLOutput` with its loss and the
    per-view embeddings ``s1, s2`` that the stain discriminator reads (paper §3.1–3.2).

    :param register: adds one method: ``register(name, factory, options)``.
        The factory receives ``options`` (the validated options model), ``encoder`` (a module
        mapping a float batch ``(B, 3, H, W)`` to pooled features ``(B, feature_dim)``, to keep
        as ``self.encoder``) and ``feature_dim`` (the size of those features).
    """


@hookspec
def sassl_register_backbones(register: Register[BackboneFactory]) -> None:
    """Register encoders.

    ``factory(options, image_size) -> torch.nn.Module``: a timm-style model created with
    ``num_classes=0`` (so ``forward`` returns pooled features), with ``num_features`` and a timm
    ``feature_info`` naming the modules whose outputs are the feature levels that the
    residual-learning transfer uses.

    :param register: adds one backbone: ``register(name, factory, options)``.
        The factory receives ``options`` and ``image_size`` (the input side in pixels, for models
        whose patch grid is fixed at construction, such as ViT and Swin).
    """


@hookspec
def sassl_register_tasks(register: Register[TaskFactory]) -> None:
    """Register downstream tasks (heads).

    ``factory(options, feature_channels, num_outputs) -> sassl_core.interfaces.TaskHead``.

    :param register: adds one task: ``register(name, factory, options, target_kind=TargetKind.X)``,
        where ``target_kind`` (required) is the :class:`~sassl_core.interfaces.TargetKind` the
        head learns from: it picks ``num_outputs``, the datasets the task can train on, and the
        head's default targets, heatmap value and slide pooling. The factory receives
        ``options``, ``feature_channels`` (the channels of each fused feature level, shallow to
        deep) and ``num_outputs`` (the dataset's classes for ``LABEL``, its mask classes for
        ``MASK``, ``None`` for ``TARGET``).
    """


@hookspec
def sassl_register_datasets(register: Register[DatasetFactory]) -> None:
    """Register datasets.

    ``factory(options, context) -> sassl_core.interfaces.PreparedData``, whose ``target_kinds``
    say which kinds of target its patches carry (none for unlabelled data: it can then be
    pretrained on and probed, not fine-tuned). The dataset validates its folder and raises
    ``sassl_core.UserError`` naming the missing or wrong file or column. A dataset that makes its
    own data declares ``reads_root: ClassVar[bool] = False`` on its options model; the core then
    refuses a data root for it instead of ignoring one.

    :param register: adds one dataset: ``register(name, factory, options)``.
        The factory receives ``options`` and ``context``, a
        :class:`sassl_core.interfaces.DatasetContext` (data root, cache folder, tiling settings,
        seed).
    """


@hookspec
def sassl_register_stain_transforms(register: Register[StainFactory]) -> None:
    """Register stain normalisers / augmenters.

    ``factory(options) -> sassl_core.interfaces.StainTransform``: ``fit(targets)`` on uint8
    images ``(N, H, W, 3)``, then ``__call__(batch)`` on float ``(B, 3, H, W)`` tensors in
    ``[0, 1]`` on any device.

    :param register: adds one transform: ``register(name, factory, options)``.
        The factory receives ``options`` only.
    """


@dataclass(frozen=True)
class ExtensionPoint:
    """One kind of component: the hook that registers it and the contract of its factories."""

    kind: str  # the registry's key (``plugins["ssl"]``) and the word ``sassl plugins`` lists it under
    hook: str  # the hook specification plugins implement
    label: str  # how messages name one component: "ssl method 'simsiam'"
    factory: type  # the Protocol its factories satisfy
    returns: str  # what a factory returns
    declares_target_kind: bool = False  # registration takes (and requires) ``target_kind=``


EXTENSION_POINTS: Mapping[str, ExtensionPoint] = MappingProxyType(
    {
        point.kind: point
        for point in (
            ExtensionPoint("ssl", "sassl_register_ssl_methods", "ssl method", SSLFactory, "SSLMethod"),
            ExtensionPoint("backbone", "sassl_register_backbones", "backbone", BackboneFactory, "torch.nn.Module"),
            ExtensionPoint("task", "sassl_register_tasks", "task", TaskFactory, "TaskHead", declares_target_kind=True),
            ExtensionPoint("dataset", "sassl_register_datasets", "dataset", DatasetFactory, "PreparedData"),
            ExtensionPoint(
                "stain", "sassl_register_stain_transforms", "stain transform", StainFactory, "StainTransform"
            ),
        )
    }
)
"""Every extension point, by kind: the registries, the plugin loader, ``sassl plugins`` and the
tests all read this table."""
