"""Restained dataset: real tissue dealt to centres, re-stained per centre, labels from the tissue alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, TargetKind
from sassl_core.wsi.cache import read_mask, read_patch, table_row
from sassl_core.wsi.reader import open_slide
from sassl_plugins.datasets.restained import RestainedOptions, ensure_slides, estimate_stain, separate
from sassl_plugins.datasets.restained_stains import CentreStain, centre_draws, render, slide_stain
from tests.fixtures.he_images import shared_data_dir, synthetic_he

SMALL = {"centres": 4, "block": 128, "seed": 0}


def write_source(folder: Path) -> Path:
    """A 384 x 512 H&E image in ``folder``: a crop of the real ``target_image.png`` when present,
    else a synthetic H&E-like image (12 blocks of 128 px either way)."""
    folder.mkdir(parents=True, exist_ok=True)
    real = shared_data_dir() / "target_image.png"
    if real.is_file():
        pixels = np.asarray(Image.open(real).convert("RGB"))[:384, :512]
    else:
        pixels = np.concatenate([synthetic_he(256, seed=1, background=0.0)] * 2, axis=1)[:, :512]
        pixels = np.concatenate([pixels, pixels[:128]], axis=0)
    Image.fromarray(pixels).save(folder / "he.png")
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("restained") / "source")


@pytest.fixture(scope="module")
def built(datasets, source, tmp_path_factory):
    """The dataset built with the default stain shift and with none (same tissue, same seed)."""
    ctx = DatasetContext(root=source, cache_dir=tmp_path_factory.mktemp("cache"), patch_size=64, max_per_slide=30)
    shifted = datasets.create("restained", SMALL, context=ctx)
    plain = datasets.create("restained", {**SMALL, "stain_shift": 0.0}, context=ctx)
    return ctx, shifted, plain


def test_centres_hold_different_tissue_and_splits_by_slide(built):
    ctx, data, _ = built
    table = data.patches
    assert set(data.target_kinds) == set(TargetKind) and data.class_names == ["sparse", "medium", "dense"]
    assert data.seg_classes == 2
    centres = {f"centre{k}" for k in range(4)}
    assert set(table["source"]) == centres
    for centre in centres:
        assert len(set(table["slide_id"][table["source"] == centre])) >= 2
    for slide in set(table["slide_id"]):
        assert len(set(table["split"][table["slide_id"] == slide])) == 1
        assert len(set(table["source"][table["slide_id"] == slide])) == 1
    _, manifest = ensure_slides(RestainedOptions(**SMALL), ctx)
    origins = [(s["slide"], s["x"], s["y"]) for s in manifest["slides"]]
    assert len(set(origins)) == len(origins) == 12  # every block dealt once: no tissue shared by centres


def test_labels_balanced_and_agree_with_the_mask(built):
    _, data, _ = built
    table = data.patches
    counts = np.bincount(table["label"], minlength=3)
    assert counts.min() >= len(table) // 5, counts  # tertiles: three classes of similar size
    assert np.all((table["target"] >= 0) & (table["target"] <= 1)) and table["target"].std() > 0
    for i in range(0, len(table), 5):
        row = table_row(table, i)
        mask = read_mask(row, 64)
        assert set(np.unique(mask)) <= {0, 1}
        assert mask.mean() == pytest.approx(row["target"], abs=0.02)


def test_same_tissue_same_labels_other_colours(built):
    """Labels, targets and masks do not change with the stain; the colours of centres do, and
    differently per centre (each patch compared with itself under the source's own stain)."""
    _, shifted, plain = built
    a, b = shifted.patches, plain.patches
    for column in ("slide_id", "x", "y", "label", "target", "split"):
        assert np.array_equal(a[column], b[column]), column
    shift = {}
    for i in range(len(a)):
        ra, rb = table_row(a, i), table_row(b, i)
        assert np.array_equal(read_mask(ra, 64), read_mask(rb, 64))
        delta = read_patch(ra, 64).astype(float).mean((0, 1)) - read_patch(rb, 64).astype(float).mean((0, 1))
        shift.setdefault(ra["source"], []).append(delta)
    means = {c: np.mean(d, axis=0) for c, d in sorted(shift.items())}
    assert np.abs(means["centre0"]).max() < 3  # centre 0 keeps the source's stain (jitter only)
    others = [means[c] for c in ("centre1", "centre2", "centre3")]
    assert min(np.abs(m).max() for m in others) > 4, means
    gaps = [np.abs(others[i] - others[j]).max() for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 3, means


def test_one_block_under_two_centres(source):
    """Recomposition with the source's own stain gives the block back; two centres' stains give
    two different colourings of the same concentrations (from which the labels come)."""
    block = np.asarray(Image.open(source / "he.png").convert("RGB"))[:128, :128]
    own = estimate_stain([block])
    conc, residual = separate(block, own)
    same = render(conc, own.vectors, CentreStain(), residual)
    assert np.abs(same.astype(int) - block).max() <= 1
    draws = centre_draws(4, seed=0)
    rng = np.random.default_rng(0)
    colours = [render(conc, own.vectors, slide_stain(d, rng, 0.0, 1.0), residual).mean((0, 1)) for d in draws]
    gaps = [np.abs(colours[i] - colours[j]).max() for i in range(4) for j in range(i + 1, 4)]
    assert min(gaps) > 2, colours
    assert np.array_equal(centre_draws(4, seed=0, shift=0.0), np.zeros_like(draws))


def test_cache_reused_and_remade_when_a_source_changes(built, source):
    ctx, data, _ = built
    folder, _ = ensure_slides(RestainedOptions(**SMALL), ctx)
    stamp = (folder / "centre0_slide0.tif").stat().st_mtime_ns
    again, _ = ensure_slides(RestainedOptions(**SMALL), ctx)
    assert again == folder and (folder / "centre0_slide0.tif").stat().st_mtime_ns == stamp
    assert json.loads((folder / "done.json").read_text())["block"] == 128
    image = source / "he.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    remade, _ = ensure_slides(RestainedOptions(**SMALL), ctx)
    assert remade != folder and (remade / "done.json").is_file()


def test_errors_name_the_root_and_the_option(datasets, context, source, tmp_path):
    with pytest.raises(UserError) as err:
        datasets.create("restained", {}, context=context(None))
    assert str(err.value) == "data.root: dataset 'restained' needs --data-root: a folder of H&E slides or images"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no slides or images"):
        datasets.create("restained", {}, context=context(tmp_path / "empty"))
    with pytest.raises(UserError, match="options.block"):  # 1 block of 384 px, 8 needed
        datasets.create("restained", {**SMALL, "block": 384}, context=context(source))
    with pytest.raises(Exception, match="centres"):
        datasets.create("restained", {"centres": 3}, context=context(source))


def test_real_slide_builds_with_tiny_settings(datasets, context):
    slide = shared_data_dir() / "cmu_small_region.svs"
    if not slide.is_file():
        pytest.skip("shared slide cmu_small_region.svs not present")
    options = {"centres": 4, "block": 128, "max_blocks_per_file": 12, "seed": 1}
    data = datasets.create("restained", options, context=context(slide, max_per_slide=2))
    table = data.patches
    assert set(table["source"]) == {f"centre{k}" for k in range(4)} and len(set(table["slide_id"])) == 12
    with open_slide(table["slide"][0]) as pseudo:
        assert pseudo.mpp == pytest.approx(0.5, rel=0.01) and pseudo.dimensions == (128, 128)
    assert set(table["label"]) == {0, 1, 2}
