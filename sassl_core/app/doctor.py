"""``sassl doctor``: what this installation can do, in one screen."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "monai",
    "albumentations",
    "pydantic",
    "pluggy",
    "openslide-python",
    "openslide-bin",
    "tifffile",
)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def report(roots: list[Path]) -> tuple[list[str], bool]:
    """Lines to print and whether everything asked about is usable."""
    import torch

    from sassl_core.plugins import default_plugins

    ok = True
    lines = [f"python {platform.python_version()} ({platform.platform()})"]
    lines += [f"{name} {_version(name)}" for name in PACKAGES]
    try:
        import openslide

        lines.append(f"OpenSlide library {openslide.__library_version__}")
    except Exception as err:  # the library itself may be missing or broken
        ok = False
        lines.append(f"OpenSlide library: unavailable ({type(err).__name__}: {err})")
    if torch.cuda.is_available():
        lines.append(
            f"CUDA {torch.version.cuda}: "
            + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        )
    else:
        lines.append(f"CUDA: no device (torch built for CUDA {torch.version.cuda or 'none'}); training runs on the CPU")
    plugins = default_plugins()
    for p in plugins.plugins:
        lines.append(
            f"plugin {p.name} ({p.distribution} {p.version}): "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in p.components.items())
        )
    for f in plugins.failures:
        ok = False
        lines.append(f"FAILED {f.message()}")
    for root in roots:
        readable = root.is_dir() and os.access(root, os.R_OK | os.X_OK)
        ok &= readable
        lines.append(f"data root {root}: {'readable' if readable else 'NOT readable or not a folder'}")
    return lines, ok
