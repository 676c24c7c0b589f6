"""Synthetic dataset: determinism, cache reuse, labels carried by morphology, stain per centre."""

from __future__ import annotations

import numpy as np
import pytest

from sassl_core.interfaces import TargetKind
from sassl_core.wsi.cache import read_mask, read_patch, table_row
from sassl_plugins.datasets.synthetic import SyntheticOptions, ensure_slides
from sassl_plugins.datasets.synthetic_slides import centre_stains, draw_slide

SMALL = {"centres": 3, "slides_per_centre": 3, "slide_size": 384, "regions": 4}


def test_drawing_is_deterministic_under_a_seed():
    stain = centre_stains(2, seed=3)[1]
    a, b = draw_slide(256, stain, 3, 1, 0), draw_slide(256, stain, 3, 1, 0)
    c = draw_slide(256, stain, 4, 1, 0)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.tumour, b.tumour)
    assert not np.array_equal(a.rgb, c.rgb)


def _mean_tissue_od(rgb: np.ndarray, grade: np.ndarray) -> np.ndarray:
    od = -np.log((rgb.astype(np.float64) + 1) / 256)
    return od[grade > 0].mean(axis=0)


def test_centres_differ_in_stain_not_morphology():
    stains = centre_stains(3, seed=0)
    slides = [draw_slide(256, s, 0, 0, 0) for s in stains]  # same morphology (centre 0 seed)
    assert all(np.array_equal(slides[0].grade, s.grade) for s in slides)
    ods = np.array([_mean_tissue_od(s.rgb, s.grade) for s in slides])
    gaps = [np.abs(ods[i] - ods[j]).max() for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 0.05, ods
    same = centre_stains(3, seed=0, strength=0.0)
    assert np.allclose(same[0].mean_od(), same[2].mean_od())


def test_dataset_labels_splits_and_cache(datasets, context, tmp_path):
    ctx = context(None, patch_size=64, max_per_slide=12)
    data = datasets.create("synthetic", SMALL, context=ctx)
    table = data.patches
    assert data.target_kinds == (TargetKind.LABEL, TargetKind.TARGET, TargetKind.MASK)
    assert data.class_names == ["low", "intermediate", "high"]
    assert set(table["split"]) == {"train", "val", "test"}
    for slide in set(table["slide_id"]):
        assert len(set(table["split"][table["slide_id"] == slide])) == 1
    assert set(table["label"]) == {0, 1, 2}
    means = [table["target"][table["label"] == k].mean() for k in range(3)]
    assert means[0] < means[1] < means[2]  # tumour fraction grows with grade
    for i in range(0, len(table), 7):  # mask read by the data layer agrees with the target
        row = table_row(table, i)
        assert read_mask(row, 64).mean() == pytest.approx(row["target"], abs=0.1)
        assert read_patch(row, 64).shape == (64, 64, 3)
    folder = ensure_slides(SyntheticOptions(**SMALL), ctx.cache_dir, ctx.seed)
    stamp = (folder / "centre0_slide0.tif").stat().st_mtime_ns
    again = datasets.create("synthetic", SMALL, context=ctx).patches
    assert (folder / "centre0_slide0.tif").stat().st_mtime_ns == stamp  # reused, not redrawn
    assert np.array_equal(again["x"], table["x"]) and np.array_equal(again["label"], table["label"])


def test_held_out_centre_and_provider_source(datasets, context):
    table = datasets.create("synthetic", SMALL, context=context(None, max_per_slide=5)).patches
    assert set(table["source"]) == {"centre0", "centre1", "centre2"}
    held = table.hold_out("centre2")
    assert set(held["split"][held["source"] == "centre2"]) == {"test"}
    assert "test" not in set(held["split"][held["source"] != "centre2"])
    assert set(held["split"]) == {"train", "val", "test"}
