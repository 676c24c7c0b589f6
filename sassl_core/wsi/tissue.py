"""Tissue detection on a low-resolution view of a slide (the paper's Otsu background removal, §4.1).

Why HSV saturation: the glass background of a bright-field slide is white or light grey, so
its saturation is near zero whatever the scanner's white balance, while H&E-stained tissue is
pink to purple and clearly saturated. Otsu's threshold on saturation therefore separates the
two modes more reliably than on grey levels, where pale tissue (fat, mucus, faint eosin)
overlaps with the background. Near-black pixels (pen marks, out-of-scan borders) are dropped
because their saturation is numerically unstable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage import filters

from sassl_core.files import atomic_write
from sassl_core.wsi.reader import SlideReader

# Otsu's threshold is clipped into a band. Below it: on a slide with almost no tissue Otsu
# splits the glass's noise. Above it: on an image that is all tissue (a BreastPathQ patch, a
# tile) Otsu splits pale from dark stain and would drop pale tissue. Glass has a saturation
# under ~0.05, pale eosin ~0.15 and more; for 'luminance' the band is in 1 - grey level.
SATURATION_BAND = (0.07, 0.15)
LUMINANCE_BAND = (0.08, 0.2)
DARK_VALUE = 0.12  # HSV value below which a pixel is ink or border, not tissue


@dataclass
class TissueMask:
    """A boolean tissue mask at thumbnail scale; ``downsample`` level-0 pixels per mask pixel;
    ``thumbnail`` the RGB view it was computed from, when known (for overlays)."""

    mask: np.ndarray
    downsample: float
    thumbnail: np.ndarray | None = None

    def __post_init__(self) -> None:
        # summed-area table with a zero first row/column: S[j, i] = tissue pixels above-left of (i, j)
        self._sat = np.pad(self.mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def fraction(self, x, y, size0):
        """Tissue fraction of the level-0 square(s) ``[x, x + size0) × [y, y + size0)``.

        Area-weighted (partial mask pixels count by their overlap); ``x`` and ``y`` may be
        arrays. Area outside the slide counts as background.
        """
        x0, y0 = np.asarray(x, np.float64) / self.downsample, np.asarray(y, np.float64) / self.downsample
        side = float(size0) / self.downsample
        x1, y1 = x0 + side, y0 + side
        area = self._integral(x1, y1) - self._integral(x0, y1) - self._integral(x1, y0) + self._integral(x0, y0)
        result = area / (side * side)
        return float(result) if result.ndim == 0 else result

    def _integral(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tissue area in ``[0, u) × [0, v)`` mask pixels: bilinear interpolation of the summed-area
        table, which is exact for a piecewise-constant mask."""
        h, w = self.mask.shape
        u, v = np.clip(u, 0, w), np.clip(v, 0, h)
        i, j = np.minimum(np.floor(u).astype(np.int64), w - 1), np.minimum(np.floor(v).astype(np.int64), h - 1)
        a, b = u - i, v - j
        s = self._sat
        return (
            s[j, i] * (1 - a) * (1 - b)
            + s[j, i + 1] * a * (1 - b)
            + s[j + 1, i] * (1 - a) * b
            + s[j + 1, i + 1] * a * b
        )


def tissue_from_thumbnail(
    thumbnail: np.ndarray, method: str = "saturation", min_object_px: int = 64, max_hole_px: int = 256
) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 thumbnail (Otsu clipped into a band, then clean-up).

    ``min_object_px``: connected tissue smaller than this (mask pixels) is dropped (dust,
    debris); ``max_hole_px``: background holes up to this size inside tissue are filled, larger
    ones (lumens, fat) stay background.
    """
    r, g, b = (thumbnail[..., c] for c in range(3))  # per-channel planes: fast elementwise reductions
    value = np.maximum(np.maximum(r, g), b).astype(np.float32) / 255.0
    if method == "saturation":
        low = np.minimum(np.minimum(r, g), b).astype(np.float32) / 255.0
        score = ndimage.gaussian_filter((value - low) / np.maximum(value, 1e-6), 1.0)
        band = SATURATION_BAND
    elif method == "luminance":
        grey = (r.astype(np.float32) + g + b) / (3 * 255.0)
        score = 1.0 - ndimage.gaussian_filter(grey, 1.0)
        band = LUMINANCE_BAND
    else:
        raise ValueError(f"tissue method: expected 'saturation' or 'luminance', found {method!r}")
    valid = value > DARK_VALUE
    threshold = filters.threshold_otsu(score[valid]) if valid.sum() > 1 and np.ptp(score[valid]) > 0 else 1.0
    mask = valid & (score > np.clip(threshold, *band))
    mask = mask & ~_small_components(mask, min_object_px, include_border=True)
    return mask | _small_components(~mask, max_hole_px + 1, include_border=False)


def _small_components(mask: np.ndarray, min_px: int, include_border: bool) -> np.ndarray:
    """Pixels of the 8-connected components of ``mask`` smaller than ``min_px`` (optionally
    leaving out components touching the border: background there is not a hole)."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    small = np.bincount(labels.ravel()) < min_px
    small[0] = False
    if not include_border:
        small[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = False
    return small[labels]


def detect_tissue(
    reader: SlideReader,
    max_side: int = 1024,
    min_object_px: int = 64,
    method: str = "saturation",
    max_hole_px: int = 256,
) -> TissueMask:
    """Tissue mask of a slide from its overview image (longest side ``max_side / 2`` to
    ``max_side``, :meth:`SlideReader.overview`); see the module doc."""
    thumb = reader.overview(max_side)
    mask = tissue_from_thumbnail(thumb, method, min_object_px, max_hole_px)
    return TissueMask(mask, reader.dimensions[0] / mask.shape[1], thumb)


def save_mask(mask: np.ndarray, path: str | Path) -> Path:
    """Write a boolean mask as a greyscale PNG, 255 for tissue and 0 for background."""
    path = Path(path)
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=1))
    return path


def save_overlay(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    path: str | Path,
    color=(0, 200, 0),
    alpha: float = 0.4,
    boxes: np.ndarray | None = None,
    box_color=(0, 0, 255),
) -> Path:
    """Write a PNG of the thumbnail with tissue tinted ``color`` and, when given, the outlines of
    ``boxes`` (rows ``x0, y0, x1, y1`` in thumbnail pixels) drawn in ``box_color``."""
    path = Path(path)
    if mask.shape != thumbnail.shape[:2]:
        mask = (
            np.asarray(
                Image.fromarray(mask.astype(np.uint8) * 255).resize(thumbnail.shape[1::-1], Image.Resampling.NEAREST)
            )
            > 0
        )
    base = Image.fromarray(np.ascontiguousarray(thumbnail))
    tinted = Image.blend(base, Image.new("RGB", base.size, tuple(color)), alpha)
    image = Image.composite(tinted, base, Image.fromarray(mask.astype(np.uint8) * 255))
    if boxes is not None:
        draw = ImageDraw.Draw(image)
        for x0, y0, x1, y1 in np.asarray(boxes, np.float64).round().astype(np.int64):
            draw.rectangle((int(x0), int(y0), int(x1) - 1, int(y1) - 1), outline=tuple(box_color))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=1))  # 5x faster than the default
    return path
