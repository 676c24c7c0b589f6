"""Tiny slides for the whole-slide data layer tests, written with tifffile as pyramidal TIFFs
that OpenSlide opens as generic-tiff."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sassl_core.wsi.reader import write_pyramid_tiff
from tests.fixtures.he_images import shared_data_dir

SHARED = shared_data_dir()
SLIDE_MPP = 0.25  # level 0; level 1 is 0.5 µm/px, level 2 1.0 µm/px
WIDTH, HEIGHT = 1024, 768


def blob_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """White, slightly noisy glass with one H&E-coloured ellipse of textured tissue and a few
    specks of dust right of it; returns the RGB image and the hand-made tissue mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    blob = ((xx - 380) / 300.0) ** 2 + ((yy - 400) / 240.0) ** 2 <= 1.0
    image = np.clip(rng.normal(238, 3, (HEIGHT, WIDTH, 3)), 0, 255)
    tissue = np.array([205, 125, 185], np.float64) + rng.normal(0, 18, (HEIGHT, WIDTH, 1))
    tissue[..., 2] += 30 * np.sin(xx / 9.0) * (rng.random((HEIGHT, WIDTH)) > 0.5)
    image[blob] = tissue[blob]
    for x, y in rng.integers([720, 40], [1000, 740], (6, 2)):  # dust specks: not tissue
        image[y : y + 5, x : x + 5] = (120, 60, 140)
    return np.clip(image, 0, 255).astype(np.uint8), blob


@dataclass
class TestSlide:
    path: Path
    image: np.ndarray  # level-0 pixels as written (before JPEG compression)
    tissue: np.ndarray  # hand-made level-0 tissue mask
    mpp: float = SLIDE_MPP
    width: int = WIDTH
    height: int = HEIGHT


@pytest.fixture(scope="session")
def blob_slide(tmp_path_factory) -> TestSlide:
    """A 3-level JPEG pyramidal TIFF at 0.25 µm/px with one tissue blob."""
    image, blob = blob_image()
    path = tmp_path_factory.mktemp("slides") / "blob.tiff"
    write_pyramid_tiff(path, image, SLIDE_MPP, levels=3)
    return TestSlide(path, image, blob)


@pytest.fixture(scope="session")
def blob_mask_slide(tmp_path_factory, blob_slide) -> Path:
    """Label mask aligned with ``blob_slide``: 2 inside the blob, 0 outside (red channel)."""
    labels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    labels[blob_slide.tissue, 0] = 2
    path = tmp_path_factory.mktemp("masks") / "blob_mask.tiff"
    return write_pyramid_tiff(path, labels, None, levels=2, label_mask=True)


@pytest.fixture(scope="session")
def no_mpp_slide(tmp_path_factory) -> Path:
    image, _ = blob_image(1)
    return write_pyramid_tiff(tmp_path_factory.mktemp("nompp") / "nompp.tiff", image, None, levels=2)


@pytest.fixture
def cmu_slide() -> Path:
    path = SHARED / "cmu_small_region.svs"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path
