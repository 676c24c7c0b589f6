import json

import numpy as np
import pytest

from sassl_core.errors import UserError
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import TileOptions, choose_level, mask_side, tile_slide, tile_to_folder
from sassl_core.wsi.tissue import detect_tissue


def test_choose_level_prefers_least_resampling(blob_slide):
    with open_slide(blob_slide.path) as reader:  # levels at 0.25, 0.5, 1.0 µm/px
        assert choose_level(reader, 0.5, 32) == (1, 32)
        assert choose_level(reader, 1.0, 32) == (2, 32)
        assert choose_level(reader, 0.75, 32) == (1, 48)  # downsample 48 -> 32, never upsample
        assert choose_level(reader, 4.0, 32) == (2, 128)
        assert choose_level(reader, 0.125, 32) == (0, 16)  # finer than the scan: level 0, upsampled
        assert choose_level(reader, 0.505, 32) == (1, 32)  # scanner rounding tolerated


def test_tiles_keep_tissue_only(blob_slide):
    with open_slide(blob_slide.path) as reader:
        rows = tile_slide(reader, 32, target_mpp=0.5, tissue_threshold=0.5)
    assert rows and {r["level"] for r in rows} == {1} and {r["read_size"] for r in rows} == {32}
    fractions = np.array([blob_slide.tissue[r["y"] : r["y"] + 64, r["x"] : r["x"] + 64].mean() for r in rows])
    assert fractions.min() > 0.3 and fractions.mean() > 0.9
    # every 64 px grid cell fully inside the blob is kept
    inside = sum(
        blob_slide.tissue[y : y + 64, x : x + 64].all()
        for y in range(0, blob_slide.height - 63, 64)
        for x in range(0, blob_slide.width - 63, 64)
    )
    assert len(rows) >= inside
    assert len({(r["x"], r["y"]) for r in rows}) == len(rows)


def test_overlap_and_max_patches(blob_slide):
    with open_slide(blob_slide.path) as reader:
        full = tile_slide(reader, 32, overlap=16)
        plain = tile_slide(reader, 32)
        sample = tile_slide(reader, 32, overlap=16, max_patches=20, seed=3)
        again = tile_slide(reader, 32, overlap=16, max_patches=20, seed=3)
        other = tile_slide(reader, 32, overlap=16, max_patches=20, seed=4)
    assert len(full) > 3 * len(plain)
    assert len(sample) == 20 and sample == again and sample != other
    keys = {(r["x"], r["y"]) for r in full}
    assert all((r["x"], r["y"]) in keys for r in sample) and len({(r["x"], r["y"]) for r in sample}) == 20
    # spatially balanced: the sample spans most of the tissue's extent
    ys = [r["y"] for r in sample]
    assert max(ys) - min(ys) > 0.6 * (max(r["y"] for r in full) - min(r["y"] for r in full))


def test_image_smaller_than_patch_and_no_tissue(tmp_path, blob_slide):
    with open_slide(blob_slide.path) as reader:
        with pytest.raises(
            UserError, match=r"blob.tiff: image \(1024x768\) is smaller than the patch \(512 px at 1 µm/px"
        ):
            tile_slide(reader, 512, target_mpp=1.0)
        with pytest.raises(UserError, match="blob.tiff: no tissue found"):
            tile_slide(reader, 32, tissue_threshold=1.01)


def test_tile_to_folder_writes_index_masks_summary(tmp_path, blob_slide, no_mpp_slide):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "blob.tiff").symlink_to(blob_slide.path)
    (tmp_path / "in" / "bad.svs").write_bytes(b"not a slide")
    calls = []
    out = tmp_path / "out"
    options = TileOptions(patch_size=32, max_per_slide=10)
    summary = tile_to_folder([tmp_path / "in", no_mpp_slide], out, options, progress=lambda *a: calls.append(a))
    assert summary["slides"] == 1 and summary["patches_per_slide"] == {"blob": 10} and summary["patches"] == 10
    assert summary["parameters"]["patch_size"] == 32 and summary["parameters"]["max_per_slide"] == 10
    reasons = {s["file"].split("/")[-1]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"bad.svs", "nompp.tiff"} and "pass --fallback-mpp" in reasons["nompp.tiff"]
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)]
    table = PatchTable.load(out / "patches.csv")
    assert len(table) == 10 and table.patch_size == 32
    assert set(table["slide"]) == {str(tmp_path / "in" / "blob.tiff")}  # absolute, as given
    assert set(table["source"]) == {"blob"} and set(table["split"]) == {"train"}
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["blob_mask.png", "blob_tiles.png"]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temporaries, no staging
    with pytest.raises(UserError, match="out: already holds a tiling"):
        tile_to_folder([blob_slide.path], out, options)
    again = tile_to_folder(
        [blob_slide.path, no_mpp_slide], out, TileOptions(patch_size=32, fallback_mpp=0.25), overwrite=True
    )
    assert again["slides"] == 2 and not again["skipped"]
    assert {p.name for p in (out / "masks").iterdir()} >= {"blob_mask.png", "nompp_tiles.png"}
    with pytest.raises(UserError, match="bad.svs"):
        tile_to_folder([tmp_path / "in"], tmp_path / "strict", options, strict=True)


def test_real_svs_keeps_tissue_drops_background(cmu_slide):
    with open_slide(cmu_slide) as reader:
        rows = tile_slide(reader, 224, target_mpp=0.5)
        assert 20 <= len(rows) < 80  # ~1/3 of the 117 grid cells is tissue
        kept = {(r["x"], r["y"]) for r in rows}
        saturation = {}
        for x in range(0, reader.dimensions[0] - 223, 224):
            for y in range(0, reader.dimensions[1] - 223, 224):
                rgb = reader.read(x, y, 0, 224).astype(float) / 255
                saturation[x, y] = ((rgb.max(2) - rgb.min(2)) / np.maximum(rgb.max(2), 1e-6)).mean()
    kept_s = [s for k, s in saturation.items() if k in kept]
    dropped_s = [s for k, s in saturation.items() if k not in kept]
    assert min(kept_s) > 0.1 and np.median(dropped_s) < 0.06
    assert saturation[0, 0] < 0.06 and (0, 0) not in kept  # top-left corner is glass


@pytest.mark.parametrize("slide, patch_size, agreement", [("blob", 32, 1.0), ("cmu", 224, 0.95)])
def test_mask_tied_to_the_patch_grid_keeps_the_same_patches(request, slide, patch_size, agreement):
    """A mask of 8 pixels per patch side (within 256-1024) instead of the finest 1024-px one."""
    path = request.getfixturevalue("blob_slide").path if slide == "blob" else request.getfixturevalue("cmu_slide")
    with open_slide(path) as reader:
        side = mask_side(reader, 0.5, patch_size)
        coarse = {(r["x"], r["y"]) for r in tile_slide(reader, patch_size, 0.5, max_patches=0)}
        fine = {(r["x"], r["y"]) for r in tile_slide(reader, patch_size, 0.5, 0.5, 0, tissue=detect_tissue(reader))}
    assert side == 256 and len(coarse & fine) / len(coarse | fine) >= agreement


def test_mask_side_follows_the_patch_size_within_bounds(blob_slide):
    with open_slide(blob_slide.path) as reader:  # 1024 px at 0.25 µm/px
        assert mask_side(reader, 0.25, 16) == 512  # 8 mask px per 16-px patch side
        assert mask_side(reader, 0.25, 4) == 1024 and mask_side(reader, 0.5, 32) == 256
