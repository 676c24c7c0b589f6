import numpy as np
import pytest
from PIL import Image

from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tissue import TissueMask, detect_tissue, save_overlay, tissue_from_thumbnail
from tests.fixtures.he_images import shared_data_dir


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_blob_is_tissue_and_glass_and_dust_are_not(blob_slide):
    with open_slide(blob_slide.path) as reader:
        tissue = detect_tissue(reader, max_side=256)
    assert tissue.mask.shape == (192, 256)
    assert tissue.downsample == pytest.approx(4.0)
    expected = np.asarray(Image.fromarray(blob_slide.tissue).resize((256, 192), Image.Resampling.NEAREST))
    assert _iou(tissue.mask, expected) > 0.9
    assert not tissue.mask[:, 180:].any()  # right of the blob: glass and dust specks only


def test_luminance_method_finds_the_blob_too(blob_slide):
    with open_slide(blob_slide.path) as reader:
        tissue = detect_tissue(reader, max_side=256, method="luminance")
    expected = np.asarray(Image.fromarray(blob_slide.tissue).resize((256, 192), Image.Resampling.NEAREST))
    assert _iou(tissue.mask, expected) > 0.9
    with pytest.raises(ValueError, match="tissue method"):
        tissue_from_thumbnail(np.zeros((8, 8, 3), np.uint8), method="otsu")


def test_image_all_tissue_keeps_pale_stain():
    """Otsu alone would split pale eosin from dark haematoxylin when there is no glass."""
    thumb = np.empty((64, 64, 3), np.uint8)
    thumb[:, :32] = (235, 190, 215)  # pale pink, saturation ~0.19
    thumb[:, 32:] = (120, 60, 150)  # dark purple, saturation 0.6
    assert tissue_from_thumbnail(thumb).all()


def test_real_tile_is_mostly_tissue():
    path = shared_data_dir() / "histo.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with open_slide(path, fallback_mpp=0.5) as reader:
        assert detect_tissue(reader).mask.mean() > 0.95


def test_blank_glass_has_no_tissue():
    glass = np.clip(np.random.default_rng(0).normal(236, 4, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert not tissue_from_thumbnail(glass).any()


def test_small_holes_filled_large_holes_kept():
    thumb = np.full((100, 100, 3), 240, np.uint8)
    thumb[10:90, 10:90] = (200, 110, 180)
    thumb[20:24, 20:24] = 240  # 16 px hole: filled
    thumb[40:80, 40:80] = 240  # 1600 px lumen: kept as background
    mask = tissue_from_thumbnail(thumb, max_hole_px=256)
    assert mask[21, 21] and not mask[60, 60] and mask[15, 15]


def test_fraction_is_area_weighted():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half of the slide
    tissue = TissueMask(mask, downsample=10.0)  # a 100 x 100 level-0 slide
    assert tissue.fraction(0, 0, 50) == pytest.approx(1.0)
    assert tissue.fraction(50, 0, 50) == pytest.approx(0.0)
    assert tissue.fraction(25, 25, 50) == pytest.approx(0.5)
    assert tissue.fraction(45, 0, 10) == pytest.approx(0.5)  # straddles the edge inside a mask pixel
    assert tissue.fraction(-50, -50, 100) == pytest.approx(0.25)  # area outside the slide is background
    np.testing.assert_allclose(tissue.fraction(np.array([0, 50]), np.array([0, 0]), 50), [1.0, 0.0])


def test_overlay_is_written(tmp_path, blob_slide):
    with open_slide(blob_slide.path) as reader:
        tissue = detect_tissue(reader, max_side=128)
    out = save_overlay(tissue.thumbnail, tissue.mask, tmp_path / "o.png")
    overlay = np.asarray(Image.open(out))
    assert overlay.shape == tissue.thumbnail.shape
    tinted = overlay[tissue.mask].astype(int) - tissue.thumbnail[tissue.mask]
    assert (tinted[:, 1] > 0).mean() > 0.9 and np.array_equal(overlay[~tissue.mask], tissue.thumbnail[~tissue.mask])
