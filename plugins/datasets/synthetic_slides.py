"""Synthetic H&E whole slides whose morphology carries the labels and whose stain varies by centre.

A slide is drawn in three steps, all vectorised numpy:

1. **Layout** — a tissue blob on white glass, cut into irregular regions (a noise-warped Voronoi
   partition); each region gets one of three grade-like patterns (:data:`GRADES`).
2. **Morphology** — per pattern, glands (lumen + epithelial ring) and nuclei (discs around
   random seeds, found with one Euclidean distance transform): ``low`` has few large regular
   glands and small sparse nuclei, ``intermediate`` many small crowded glands and medium nuclei,
   ``high`` solid epithelial sheets of large crowded nuclei. Epithelium of the ``intermediate``
   and ``high`` regions is tumour (pixel mask = 1).
3. **Stain** — stain concentrations (haematoxylin in nuclei, eosin in stroma and cytoplasm) go
   through Beer–Lambert, ``I = I0 · exp(-(c_H·v_H + c_E·v_E))``, with stain vectors ``v``,
   stain strengths and the illuminant ``I0`` drawn per centre (:func:`centre_stains`), so the
   same morphology looks different in every centre — the stain shift SASSL targets (paper §1,
   §3.2). The reference vectors are Ruifrok & Johnston's H&E optical densities.

Everything is a pure function of ``(seed, centre, slide)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

GRADES = ("low", "intermediate", "high")
TUMOUR_GRADES = (1, 2)  # epithelium of these patterns is tumour

# Ruifrok & Johnston (2001) optical densities of haematoxylin and eosin (R, G, B).
H_REFERENCE = np.array([0.650, 0.704, 0.286])
E_REFERENCE = np.array([0.072, 0.990, 0.105])


@dataclass(frozen=True)
class Pattern:
    """Morphology of one grade: gland and nucleus sizes (pixels at 0.5 µm/px) and densities."""

    gland_density: float  # gland centres per pixel
    lumen_radius: float
    ring_width: float
    sheet_cover: float  # fraction of the region that is solid epithelium (no glands)
    nucleus_radius: float
    epithelial_nuclei: float  # nucleus seeds per epithelium pixel
    haematoxylin: float  # nuclear stain concentration


PATTERNS = (
    Pattern(
        gland_density=1 / 9000,
        lumen_radius=20,
        ring_width=10,
        sheet_cover=0.0,
        nucleus_radius=3.0,
        epithelial_nuclei=1 / 80,
        haematoxylin=0.9,
    ),
    Pattern(
        gland_density=1 / 1600,
        lumen_radius=7,
        ring_width=9,
        sheet_cover=0.0,
        nucleus_radius=4.2,
        epithelial_nuclei=1 / 120,
        haematoxylin=1.1,
    ),
    Pattern(
        gland_density=0.0,
        lumen_radius=0,
        ring_width=0,
        sheet_cover=0.65,
        nucleus_radius=5.8,
        epithelial_nuclei=1 / 190,
        haematoxylin=1.3,
    ),
)
STROMA_NUCLEI = 1 / 900  # nucleus seeds per stroma pixel
STROMA_NUCLEUS_RADIUS = 2.5


@dataclass(frozen=True)
class Stain:
    """One centre's stain: unit optical-density vectors, strengths and illuminant (Beer–Lambert)."""

    h_vector: np.ndarray
    e_vector: np.ndarray
    h_strength: float
    e_strength: float
    illuminant: np.ndarray  # I0 per RGB channel

    def render(self, c_h: np.ndarray, c_e: np.ndarray) -> np.ndarray:
        """RGB uint8 of stain concentration maps: ``I = I0 · exp(-(c_H·v_H + c_E·v_E))``."""
        rgb = np.empty((*c_h.shape, 3), np.uint8)
        h, e = self.h_strength * self.h_vector, self.e_strength * self.e_vector
        for ch in range(3):
            od = c_h * np.float32(h[ch]) + c_e * np.float32(e[ch])
            rgb[..., ch] = np.minimum(np.float32(self.illuminant[ch]) * np.exp(-od) + np.float32(0.5), 255)
        return rgb

    def mean_od(self) -> np.ndarray:
        """Optical density of a pixel with unit concentration of both stains (a centre's signature)."""
        return self.h_strength * self.h_vector + self.e_strength * self.e_vector


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _tilt(vector: np.ndarray, angle: float, amount: float) -> np.ndarray:
    """``vector`` tilted by ``amount`` towards the direction ``angle`` in its orthogonal plane."""
    u = _unit(np.cross(vector, [0.0, 0.0, 1.0]))
    w = _unit(np.cross(vector, u))
    return np.abs(_unit(vector + amount * (np.cos(angle) * u + np.sin(angle) * w)))


def centre_stains(centres: int, seed: int, strength: float = 1.0) -> list[Stain]:
    """One :class:`Stain` per centre, spread evenly around the reference H&E.

    ``strength`` scales how far centres are from the reference and from each other (0 gives
    identical centres).
    """
    rng = np.random.default_rng([seed, 7919])
    stains = []
    for c in range(centres):
        phase = 2 * np.pi * c / max(centres, 1) + rng.uniform(-0.3, 0.3)
        spread = np.cos(phase + np.array([0.0, 2.1]))  # two decorrelated offsets in [-1, 1]
        stains.append(
            Stain(
                h_vector=_tilt(_unit(H_REFERENCE), phase, 0.35 * strength),
                e_vector=_tilt(_unit(E_REFERENCE), phase + np.pi / 2, 0.30 * strength),
                h_strength=float(np.exp(0.35 * strength * spread[0])),
                e_strength=float(np.exp(0.40 * strength * spread[1])),
                illuminant=np.clip(245 + 8 * strength * rng.uniform(-1, 1, 3), 200, 255),
            )
        )
    return stains


@dataclass
class SyntheticSlide:
    """One drawn slide: RGB pixels and its label maps at full resolution."""

    rgb: np.ndarray  # (S, S, 3) uint8
    grade: np.ndarray  # (S, S) uint8: 0 = glass, 1 + index into GRADES inside tissue
    tumour: np.ndarray  # (S, S) uint8: 1 = tumour epithelium


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Zero-mean, unit-ish noise varying over ``cell`` pixels, as float32 ``(size, size)``."""
    n = size // cell + 2
    coarse = Image.fromarray(rng.standard_normal((n, n), dtype=np.float32), mode="F")
    return np.asarray(coarse.resize((n * cell, n * cell), Image.Resampling.BILINEAR))[:size, :size]


def _layout(rng: np.random.Generator, size: int, regions: int) -> tuple[np.ndarray, np.ndarray]:
    """Tissue mask and region grade map (0 = glass, 1..3 = pattern + 1)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    radius = np.hypot(xx / 0.45, yy / 0.42) + 0.18 * _smooth_noise(rng, size, max(size // 6, 1))
    tissue = radius < 0.95
    coarse = max(size // 64, 1)
    cy, cx = np.mgrid[0:size:coarse, 0:size:coarse].astype(np.float32) / size - 0.5
    seeds = rng.uniform(-0.38, 0.38, (regions, 2)).astype(np.float32)
    warp = 0.06 * _smooth_noise(rng, cx.shape[0], max(cx.shape[0] // 4, 1))
    distance = np.hypot(cx[None] - seeds[:, 0, None, None], cy[None] - seeds[:, 1, None, None])
    nearest = np.argmin(distance + warp[None], axis=0)
    region_grade = rng.permutation(np.arange(regions) % len(GRADES)).astype(np.uint8) + 1
    grade = np.repeat(np.repeat(region_grade[nearest], coarse, 0), coarse, 1)[:size, :size]
    return tissue, np.where(tissue, grade, 0).astype(np.uint8)


def _per_grade(grade: np.ndarray, field: str) -> np.ndarray:
    """Map a grade map (0 = glass) to a float32 map of ``Pattern.field`` (0 on glass)."""
    table = np.array([0.0] + [getattr(p, field) for p in PATTERNS], np.float32)
    return table[grade]


def _glands(rng: np.random.Generator, grade: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lumen and epithelial-ring masks of the gland-forming patterns."""
    size = grade.shape[0]
    centres = rng.random(grade.shape, dtype=np.float32) < _per_grade(grade, "gland_density")
    if not centres.any():
        empty = np.zeros(grade.shape, bool)
        return empty, empty
    distance, (iy, ix) = ndimage.distance_transform_edt(~centres, return_indices=True)
    own = grade[iy, ix]  # the pattern of the nearest gland centre
    jitter = 1.0 + 0.25 * rng.standard_normal(grade.shape, dtype=np.float32)[iy, ix]
    distance = distance + 2.0 * _smooth_noise(rng, size, 6)
    lumen_r = _per_grade(own, "lumen_radius") * jitter
    outer_r = lumen_r + _per_grade(own, "ring_width")
    same = own == grade
    return same & (distance < lumen_r), same & (distance >= lumen_r) & (distance < outer_r)


def _nuclei(rng: np.random.Generator, grade: np.ndarray, epithelium: np.ndarray, stroma: np.ndarray) -> np.ndarray:
    """Boolean nucleus mask: discs of pattern-dependent radius around random seeds."""
    density = np.where(epithelium, _per_grade(grade, "epithelial_nuclei"), 0.0) + stroma * STROMA_NUCLEI
    seeds = rng.random(grade.shape, dtype=np.float32) < density
    distance, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    radius = np.where(epithelium[iy, ix], _per_grade(grade[iy, ix], "nucleus_radius"), STROMA_NUCLEUS_RADIUS)
    radius = radius * (1.0 + 0.2 * rng.standard_normal(grade.shape, dtype=np.float32)[iy, ix])
    return (distance < radius) & (grade > 0)


def draw_slide(size: int, stain: Stain, seed: int, centre: int, index: int, regions: int = 6) -> SyntheticSlide:
    """Draw slide ``index`` of ``centre``: a ``size`` x ``size`` RGB image and its label maps."""
    rng = np.random.default_rng([seed, centre, index])
    tissue, grade = _layout(rng, size, regions)
    lumen, ring = _glands(rng, grade)
    sheets = (_smooth_noise(rng, size, 24) > np.float32(-0.4)) & (grade == 1 + GRADES.index("high"))
    epithelium = (ring | sheets) & tissue
    stroma = tissue & ~epithelium & ~lumen
    nuclei = _nuclei(rng, grade, epithelium, stroma)

    f32 = np.float32
    fibres = _smooth_noise(rng, size, 5)
    grain = rng.standard_normal(grade.shape, dtype=np.float32)
    c_h = nuclei * (_per_grade(grade, "haematoxylin") + f32(0.12) * grain) + f32(0.12) * epithelium
    c_h += tissue * (f32(0.04) + f32(0.02) * grain)
    c_e = stroma * (f32(0.75) + f32(0.2) * fibres) + f32(0.45) * epithelium + f32(0.05) * lumen + f32(0.2) * nuclei
    c_e += f32(0.02) * grain
    rgb = stain.render(np.maximum(c_h, 0), np.maximum(c_e, 0))
    tumour = epithelium & np.isin(grade, [g + 1 for g in TUMOUR_GRADES])
    return SyntheticSlide(rgb=rgb, grade=grade, tumour=tumour.astype(np.uint8))
