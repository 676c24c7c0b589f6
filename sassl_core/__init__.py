"""sassl: Stain-Adaptive Self-Supervised Learning for histopathology.

The public face of the core, what a plugin author or a lab pipeline imports:

* :data:`hookimpl` and the hook specifications (:mod:`sassl_core.hookspecs`);
* :class:`UserError` for bad input (one line, exit status 2);
* the interfaces a plugin implements or receives (:mod:`sassl_core.interfaces`).

The layers below are imported on demand: ``method/`` (the paper's maths, pure torch),
``train/`` (the trainer and its stages), ``wsi/`` (slides) and ``app/`` (the command line, API,
reports and benchmarks); importing ``sassl_core`` loads nothing from ``app/`` and, until an
interface is first used, not torch either (so ``sassl --help`` and plugin discovery stay quick).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sassl_core.errors import SasslError, UserError
from sassl_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from sassl_core.interfaces import (
        DatasetContext,
        PreparedData,
        SSLMethod,
        SSLOutput,
        StainTransform,
        TargetKind,
        TaskHead,
    )

_INTERFACES = ("DatasetContext", "PreparedData", "SSLMethod", "SSLOutput", "StainTransform", "TargetKind", "TaskHead")

__all__ = [
    "DatasetContext",
    "PreparedData",
    "SSLMethod",
    "SSLOutput",
    "SasslError",
    "StainTransform",
    "TargetKind",
    "TaskHead",
    "UserError",
    "PUBLIC_API",
    "__version__",
    "hookimpl",
]
__version__ = "0.1.0"

#: The modules a plugin may import (with their submodules); ``method``, ``train`` and ``app`` are internal.
PUBLIC_API = (
    "sassl_core",
    "sassl_core.color",
    "sassl_core.config",
    "sassl_core.errors",
    "sassl_core.hookspecs",
    "sassl_core.interfaces",
    "sassl_core.metrics",
    "sassl_core.ssl",
    "sassl_core.wsi",
)


def __getattr__(name: str) -> Any:
    """The interfaces, imported on first use (they need torch)."""
    if name in _INTERFACES:
        return getattr(importlib.import_module("sassl_core.interfaces"), name)
    raise AttributeError(f"module 'sassl_core' has no attribute {name!r}")
