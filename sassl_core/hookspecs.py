"""Extension points of sassl — how to write a plugin.

A plugin is a Python module with one or more functions marked ``@sassl_core.hookimpl``. Each
hook receives a ``register`` callable owned by the core::

    register(name: str, factory: Callable, options: type[pydantic.BaseModel] | None = None)

The core validates the user's options for a component against ``options`` (use
``model_config = ConfigDict(extra="forbid")`` so typos are caught) and then calls
``factory(options=<validated model>, **core_kwargs)``. What ``core_kwargs`` are depends on the
extension point and is documented on each hook below.

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
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "sassl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def sassl_register_ssl_methods(register: Register) -> None:
    """Register self-supervised methods.

    ``factory(options, encoder, feature_dim) -> sassl_core.ssl.SSLMethod`` where ``encoder``
    maps a float batch ``(B, 3, H, W)`` to pooled features ``(B, feature_dim)``. The method's
    ``forward(x1, x2)`` returns an :class:`sassl_core.ssl.SSLOutput` with its loss and the
    per-view embeddings ``s1, s2`` that the stain discriminator reads (paper §3.1–3.2).
    """


@hookspec
def sassl_register_backbones(register: Register) -> None:
    """Register encoders.

    ``factory(options, image_size) -> torch.nn.Module``: a timm-style model created with ``num_classes=0``
    (so ``forward`` returns pooled features), with ``num_features`` and a timm
    ``feature_info`` naming the modules whose outputs are the feature levels that the
    residual-learning transfer uses.
    """


@hookspec
def sassl_register_tasks(register: Register) -> None:
    """Register downstream tasks (heads).

    ``factory(options, feature_channels, num_outputs) -> sassl_core.interfaces.TaskHead`` where
    ``feature_channels`` lists the channels of each feature level (shallow to deep) and
    ``num_outputs`` is the number of classes (``None`` for regression). The core learns which
    labels the head needs (its ``target_kind``: ``'label'``, ``'target'`` or ``'mask'``) from a
    ``target_kind`` attribute of the factory, else from the head class named by the factory's
    return annotation.
    """


@hookspec
def sassl_register_datasets(register: Register) -> None:
    """Register datasets.

    ``factory(options, context) -> sassl_core.wsi.patches.PreparedData`` where ``context`` is a
    :class:`sassl_core.wsi.patches.DatasetContext` (data root, cache folder, tiling settings,
    seed). The dataset validates its folder and raises ``sassl_core.UserError`` naming the
    missing or wrong file or column.
    """


@hookspec
def sassl_register_stain_transforms(register: Register) -> None:
    """Register stain normalisers / augmenters.

    ``factory(options) -> sassl_core.interfaces.StainTransform``: ``fit(targets)`` on
    uint8 images ``(N, H, W, 3)``, then ``__call__(batch)`` on float ``(B, 3, H, W)`` tensors in
    ``[0, 1]`` on any device.
    """


HOOKS: dict[str, str] = {
    "ssl": "sassl_register_ssl_methods",
    "backbone": "sassl_register_backbones",
    "task": "sassl_register_tasks",
    "dataset": "sassl_register_datasets",
    "stain": "sassl_register_stain_transforms",
}
