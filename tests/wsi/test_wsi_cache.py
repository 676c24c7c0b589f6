import pickle

import numpy as np
import pytest

from sassl_core.errors import UserError
from sassl_core.wsi.cache import PatchCache, read_mask, read_patch, table_row
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import tile_slide


@pytest.fixture(scope="module")
def table(blob_slide, blob_mask_slide) -> PatchTable:
    with open_slide(blob_slide.path) as reader:
        rows = tile_slide(reader, 32, target_mpp=0.75, tissue_threshold=0.0, max_patches=24)  # read 48 -> 32
    rows += [{"slide": str(blob_slide.path), "x": -40, "y": 700, "level": 0, "read_size": 64}]  # off the edge
    for r in rows:
        r.update(source="blob", mask=str(blob_mask_slide))
    return PatchTable.from_rows(rows, 32)


def test_read_patch_resizes_by_area(blob_slide):
    row = {"slide": str(blob_slide.path), "x": 256, "y": 256, "level": 0, "read_size": 64}
    patch = read_patch(row, 32)
    assert patch.shape == (32, 32, 3) and patch.dtype == np.uint8
    expected = blob_slide.image[256:320, 256:320].reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(patch - expected).mean() < 10


def test_read_mask_matches_hand_made_labels(blob_slide, blob_mask_slide):
    for level, read_size in ((0, 128), (1, 64), (2, 32)):  # mask pyramid has levels 0 and 1 only
        row = {
            "slide": str(blob_slide.path),
            "mask": str(blob_mask_slide),
            "x": 600,
            "y": 300,
            "level": level,
            "read_size": read_size,
        }
        labels = read_mask(row, 32)
        expected = np.where(blob_slide.tissue[300:428:4, 600:728:4], 2, 0)
        assert labels.shape == (32, 32) and set(np.unique(labels)) <= {0, 2}
        assert (labels == expected).mean() > 0.97
    outside = read_mask({**row, "x": -64, "level": 0, "read_size": 32}, 32)
    assert (outside == 0).all()
    with pytest.raises(UserError, match="no label mask"):
        read_mask({**row, "mask": ""}, 32)


def test_cache_round_trip_equals_direct_reads(tmp_path, table):
    seen = []
    cache = PatchCache.build(
        table, tmp_path / "c", with_masks=True, workers=2, progress=lambda d, n: seen.append((d, n))
    )
    assert (
        len(cache) == len(table)
        and cache.images.shape == (len(table), 32, 32, 3)
        and cache.masks.shape == (len(table), 32, 32)
    )
    assert seen[-1] == (len(table), len(table))
    for i in range(len(table)):
        row = table_row(table, i)
        np.testing.assert_array_equal(cache.images[i], read_patch(row, 32))
        np.testing.assert_array_equal(cache.masks[i], read_mask(row, 32))
    assert (cache.images[-1][:, :10] == 255).all()  # the off-edge row is padded white
    reopened = PatchCache.open(tmp_path / "c", table)
    np.testing.assert_array_equal(reopened.images[3], cache.images[3])
    clone = pickle.loads(pickle.dumps(cache))
    assert isinstance(clone.images, np.memmap) and np.array_equal(clone.images[5], cache.images[5])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary folder left


def test_open_validates(tmp_path, table):
    with pytest.raises(UserError, match="no patch cache here"):
        PatchCache.open(tmp_path / "none")
    PatchCache.build(table, tmp_path / "c")
    with pytest.raises(UserError, match="different patch table"):
        PatchCache.open(tmp_path / "c", table.select(np.arange(len(table))[::-1]))
    with pytest.raises(UserError, match=r"cache holds 25 patches of 32 px, the patch table 3"):
        PatchCache.open(tmp_path / "c", table.select(np.arange(3)))
    with open(tmp_path / "c" / "images.u8", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(UserError, match=r"images.u8: expected 76800 bytes for 25 patches of 32 px, found 100"):
        PatchCache.open(tmp_path / "c")
    rebuilt = PatchCache.open_or_build(table, tmp_path / "c", with_masks=True)
    assert rebuilt.with_masks and PatchCache.open(tmp_path / "c", table).with_masks


def test_failed_build_leaves_nothing(tmp_path, table):
    broken = PatchTable.from_rows([{**table_row(table, 0), "slide": str(tmp_path / "gone.tiff")}], 32)
    with pytest.raises(UserError, match="gone.tiff: file not found"):
        PatchCache.build(broken, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []
