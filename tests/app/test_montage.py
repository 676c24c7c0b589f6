"""Montage of a patch table: one labelled row per source, patches read by the data layer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sassl_core.app.montage import GAP, LABEL_WIDTH, write_montage
from sassl_core.errors import UserError
from sassl_core.wsi.patches import PatchTable

COLOURS = {"centre_a": (200, 40, 40), "centre_b": (40, 200, 40), "centre_c": (40, 40, 200)}


def table_of(tmp_path, counts: dict[str, int]) -> PatchTable:
    """``counts[source]`` patches of a plain image filled with the source's colour."""
    rows = []
    for source, n in counts.items():
        path = tmp_path / f"{source}.png"
        Image.fromarray(np.full((64, 64, 3), COLOURS[source], np.uint8)).save(path)
        rows += [{"slide": str(path), "x": 0, "y": 0, "level": 0, "read_size": 64, "source": source}] * n
    return PatchTable.from_rows(rows, 32)


def test_one_labelled_row_per_source(tmp_path):
    table = table_of(tmp_path, {"centre_c": 1, "centre_a": 5, "centre_b": 3})
    out = write_montage(table, tmp_path / "out" / "montage.png", per_source=2)
    assert sorted(p.name for p in out.parent.iterdir()) == ["montage.png"]  # no temporary left
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    step = 32 + GAP
    assert image.shape == (3 * step + GAP, LABEL_WIDTH + 2 * step, 3)
    for r, source in enumerate(sorted(COLOURS)):  # rows in source order, each its own colour
        top = GAP + r * step
        first = image[top + 4 : top + 28, LABEL_WIDTH + 4 : LABEL_WIDTH + 28]
        assert np.abs(first - COLOURS[source]).max() <= 2, source
        assert image[top : top + 32, GAP:LABEL_WIDTH].min() < 128  # the row's name is written
    last = image[GAP + 2 * step :, LABEL_WIDTH + step :]
    assert last.min() == 255  # centre_c has one patch: its second cell stays blank


def test_patch_size_and_errors(tmp_path):
    table = table_of(tmp_path, {"centre_a": 2})
    out = write_montage(table, tmp_path / "big.png", per_source=1, patch_px=48)
    assert Image.open(out).size == (LABEL_WIDTH + 48 + GAP, 48 + 2 * GAP)
    with pytest.raises(UserError, match="per_source"):
        write_montage(table, tmp_path / "x.png", per_source=0)
    with pytest.raises(UserError, match="no patches"):
        write_montage(table.select(np.zeros(len(table), bool)), tmp_path / "x.png")
