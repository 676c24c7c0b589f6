"""Streamed pyramidal TIFF writing, for label masks as large as a real whole slide.

:func:`sassl_core.wsi.reader.write_pyramid_tiff` writes an image held in memory; this module
writes levels tile by tile from a ``render(downsample, y, x, h, w)`` callable, so a mask of a
100k x 200k pixel slide (CAMELYON16) never exists in memory at once. The layout is the same:
one tiled page per level (OpenSlide's ``generic-tiff``), resolution tags in pixels per
centimetre so OpenSlide reports ``openslide.mpp-x/y`` = ``mpp`` at level 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

Render = Callable[[float, int, int, int, int], np.ndarray]  # (downsample, y, x, h, w) -> (h, w, 3)


def level_shapes(height: int, width: int, levels: int, tile: int) -> list[tuple[int, int, float]]:
    """``(height, width, downsample)`` of up to ``levels`` levels halving each time.

    Stops early once a level would be smaller than one tile.
    """
    shapes = [(height, width, 1.0)]
    while len(shapes) < levels:
        h, w, d = shapes[-1]
        if min(h, w) // 2 < tile:
            break
        shapes.append(((h + 1) // 2, (w + 1) // 2, d * 2))
    return shapes


def _tiles(render: Render, height: int, width: int, downsample: float, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            h, w = min(tile, height - y), min(tile, width - x)
            block = render(downsample, y, x, h, w)
            if (h, w) != (tile, tile):
                padded = np.zeros((tile, tile, 3), np.uint8)
                padded[:h, :w] = block
                block = padded
            yield np.ascontiguousarray(block, dtype=np.uint8)


def write_pyramid(
    path: Path,
    shapes: list[tuple[int, int, float]],
    render: Render,
    *,
    mpp: float | None,
    tile: int = 256,
    compression: str = "jpeg",
) -> Path:
    """Write one tiled page per ``(height, width, downsample)`` level, rendered tile by tile
    (``mpp=None``: no resolution tags)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = {"compressionargs": {"level": 90}} if compression == "jpeg" else {}
    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=shapes[0][0] * shapes[0][1] * 3 > 2**31) as writer:
        for i, (h, w, d) in enumerate(shapes):
            resolution = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * d)
                resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            writer.write(
                _tiles(render, h, w, d, tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=0 if i == 0 else 1,
                **resolution,
                **args,
            )
    tmp.replace(path)
    return path
