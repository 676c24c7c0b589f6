"""A montage of a dataset's patches, one row per stain source: a look at what the centres'
stains do to the tissue, for any dataset plugin.

Each row is labelled with its ``source`` and shows up to ``per_source`` of its patches, taken
evenly through the source's rows (so several slides show), read by the data layer
(:func:`sassl_core.wsi.cache.read_patch`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sassl_core.errors import UserError
from sassl_core.files import atomic_write
from sassl_core.wsi.cache import read_patch, table_row
from sassl_core.wsi.patches import PatchTable

GAP = 4  # pixels between patches and between rows
LABEL_WIDTH = 96  # the left margin holding the source names
BACKGROUND = (255, 255, 255)


def montage_rows(table: PatchTable, per_source: int) -> dict[str, list[int]]:
    """Source name -> up to ``per_source`` row indices, evenly spread through its rows."""
    sources = table["source"].astype(str)
    picks = {}
    for source in sorted(set(sources)):
        rows = np.flatnonzero(sources == source)
        take = np.unique(np.linspace(0, len(rows) - 1, min(per_source, len(rows))).round().astype(int))
        picks[source] = rows[take].tolist()
    return picks


def write_montage(table: PatchTable, path: str | Path, per_source: int = 6, patch_px: int | None = None) -> Path:
    """Write a PNG grid of ``table``'s patches to ``path``: one row per source, labelled with its
    name, ``per_source`` patches of ``patch_px`` pixels (default: the table's patch size) each.

    Written atomically (temporary file, then rename).
    """
    if len(table) == 0:
        raise UserError(f"{path}: no patches to show in a montage")
    if per_source < 1:
        raise UserError(f"per_source: expected at least 1 patch per source, found {per_source}")
    size = patch_px or table.patch_size
    picks = montage_rows(table, per_source)
    step = size + GAP
    canvas = Image.new("RGB", (LABEL_WIDTH + per_source * step, len(picks) * step + GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for r, (source, rows) in enumerate(picks.items()):
        top = GAP + r * step
        name = source[:14]
        _, y0, _, y1 = draw.textbbox((0, 0), name)
        draw.text((GAP, top + (size - (y1 - y0)) // 2 - y0), name, fill=(0, 0, 0))
        for c, i in enumerate(rows):
            canvas.paste(Image.fromarray(read_patch(table_row(table, i), size)), (LABEL_WIDTH + c * step, top))
    path = Path(path)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path
