"""Visual checks of a downstream model: patch class-activation maps and slide heatmaps (§4).

* :func:`grad_cam` — Grad-CAM (Selvaraju et al. 2017) of one patch for a classification head,
  on the deepest fused level ``f_e^L`` (paper Eq. 9): channel weights are the spatial mean of
  the class score's gradient, the map is ``relu(Σ_c w_c A_c)`` upsampled and scaled to [0, 1].
* :func:`save_cam_panel` — a patch at a readable size beside its map blended over it, as a PNG.
* :func:`score_slide` / :func:`write_slide_heatmap` — per-patch predictions over a slide's tissue:
  the figure (thumbnail, heat, tissue outline, colorbar), the raw patch grid (``.npy``) and a
  GeoJSON FeatureCollection that QuPath imports (level-0 pixel coordinates): the tissue outline
  as a "Tissue" annotation, then the patches as tiles.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.path import Path as RingPath
from PIL import Image
from skimage import measure
from torch import nn

from sassl_core.app.report import save_png
from sassl_core.errors import UserError
from sassl_core.files import atomic_write, atomic_write_text
from sassl_core.interfaces import TaskHead
from sassl_core.wsi.cache import read_patch
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import tile_slide
from sassl_core.wsi.tissue import detect_tissue

FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]
CAM_SIDE = 256  # least side of a patch shown beside its Grad-CAM


@contextmanager
def _eval_mode(*modules: object):
    """Put the given ``nn.Module`` objects in eval mode; restore their modes afterwards."""
    saved = [(m, [s.training for s in m.modules()]) for m in modules if isinstance(m, nn.Module)]
    for module, _ in saved:
        module.eval()
    try:
        yield
    finally:
        for module, flags in saved:
            for sub, flag in zip(module.modules(), flags):
                sub.training = flag


def grad_cam(features: FeatureFn, head: TaskHead, image: torch.Tensor, target_class: int | None = None) -> np.ndarray:
    """Grad-CAM of ``image`` (``(3, H, W)`` or ``(1, 3, H, W)``, normalised as in training).

    ``features`` maps a batch to its fused levels (e.g. a :class:`sassl_core.method.transfer.DualEncoder`);
    ``head`` is a classification head returning logits. ``target_class=None`` explains the
    predicted class. Returns ``(H, W)`` float32 in ``[0, 1]`` (all zeros when no location
    supports the class).
    """
    x = image.unsqueeze(0) if image.ndim == 3 else image
    size = x.shape[-2:]
    with _eval_mode(features, head):
        with torch.no_grad():
            levels = list(features(x))
        activations = levels[-1].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = head([*levels[:-1], activations], int(size[0]))
            cls = int(logits[0].argmax()) if target_class is None else int(target_class)
            (grads,) = torch.autograd.grad(logits[0, cls], activations)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = cam.max()
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return cam.cpu().numpy().astype(np.float32)


def overlay(image_uint8: np.ndarray, values: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """``image_uint8`` ``(H, W, 3)`` with ``values`` in ``[0, 1]`` (NaN = leave the pixel) colour-blended."""
    colours = colormaps[cmap](np.nan_to_num(values, nan=0.0))[..., :3] * 255.0
    painted = ~np.isnan(values)[..., None]
    blend = (1 - alpha) * image_uint8.astype(np.float64) + alpha * colours
    return np.where(painted, blend, image_uint8).round().clip(0, 255).astype(np.uint8)


def _resize(array: np.ndarray, side: int) -> np.ndarray:
    """A square image or map resized to ``side`` (bicubic for images, bilinear for float maps)."""
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((side, side), Image.Resampling.BICUBIC))
    return np.asarray(Image.fromarray(array.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR))


def save_cam_panel(
    image_uint8: np.ndarray, cam: np.ndarray, path: str | Path, alpha: float = 0.45, min_side: int = CAM_SIDE
) -> Path:
    """Write the patch ``image_uint8`` ``(P, P, 3)`` beside its Grad-CAM ``cam`` blended over it,
    both enlarged to at least ``min_side`` px, as one PNG."""
    side = max(min_side, image_uint8.shape[0])
    patch = _resize(image_uint8, side)
    cam = np.clip(_resize(cam, side), 0, 1)
    gap = np.full((side, max(4, side // 32), 3), 255, np.uint8)
    path = Path(path)
    save_png(np.concatenate([patch, gap, overlay(patch, cam, alpha)], axis=1), path)
    return path


@dataclass
class PatchScores:
    """What a model says of a batch of patches: ``value`` ``(B,)`` in ``[0, 1]`` (painted),
    ``measurements`` (name → ``(B,)``, e.g. every class probability) and, for a classifier, the
    predicted class name of every patch."""

    value: np.ndarray
    measurements: dict[str, np.ndarray] = field(default_factory=dict)
    classes: list[str] | None = None


@dataclass
class SlideScores:
    """:class:`PatchScores` of every tissue patch of a slide, with the slide's geometry.

    ``rows``: the tiles (:func:`sassl_core.wsi.tiling.tile_slide`); ``size0``: a tile's side in
    level-0 pixels (also the grid step); ``thumbnail`` / ``tissue``: the RGB view and tissue mask
    at ``scale`` thumbnail pixels per level-0 pixel.
    """

    rows: list[dict]
    scores: PatchScores
    size0: float
    dimensions: tuple[int, ...]  # (width, height) at level 0
    thumbnail: np.ndarray
    tissue: np.ndarray
    scale: float

    def grid(self) -> np.ndarray:
        """The painted values on the slide's patch grid ``(rows, columns)``; NaN off tissue."""
        width, height = self.dimensions
        shape = (int((height - self.size0) // self.size0) + 1, int((width - self.size0) // self.size0) + 1)
        grid = np.full(shape, np.nan, np.float32)
        for row, value in zip(self.rows, self.scores.value):
            grid[round(row["y"] / self.size0), round(row["x"] / self.size0)] = value
        return grid


def score_slide(
    predict_fn: Callable[[np.ndarray], PatchScores],
    slide_path: str | Path,
    patch_size: int,
    target_mpp: float,
    fallback_mpp: float | None = None,
    tissue_threshold: float = 0.5,
    batch_size: int = 32,
) -> SlideScores:
    """Tile the slide's tissue into patches (no overlap) and score them with ``predict_fn``
    (uint8 ``(B, P, P, 3)`` → :class:`PatchScores`)."""
    with open_slide(slide_path, fallback_mpp) as reader:
        tissue = detect_tissue(reader)
        rows = tile_slide(reader, patch_size, target_mpp, tissue_threshold, tissue=tissue)
        size0 = rows[0]["read_size"] * reader.level_downsamples[rows[0]["level"]]
        dimensions = reader.dimensions
    assert tissue.thumbnail is not None  # detect_tissue keeps the view it looked at
    parts = [
        predict_fn(np.stack([read_patch(r, patch_size) for r in rows[i : i + batch_size]]))
        for i in range(0, len(rows), batch_size)
    ]
    names = parts[0].measurements.keys()
    scores = PatchScores(
        np.clip(np.concatenate([np.asarray(p.value, np.float64).reshape(-1) for p in parts]), 0.0, 1.0),
        {name: np.concatenate([np.asarray(p.measurements[name]).reshape(-1) for p in parts]) for name in names},
        None if parts[0].classes is None else [c for p in parts for c in p.classes or []],
    )
    return SlideScores(rows, scores, size0, dimensions, tissue.thumbnail, tissue.mask, 1.0 / tissue.downsample)


def save_heatmap_figure(slide: SlideScores, path: Path, title: str, label: str, alpha: float = 0.5) -> Path:
    """The thumbnail with the patch grid's values over it, the tissue outline and a colorbar."""
    thumb = slide.thumbnail
    h, w = thumb.shape[:2]
    grid = slide.grid()
    fig = Figure(figsize=(8.0 * min(1.6, max(0.6, w / h)) + 1.5, 8.0), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(thumb)
    right, bottom = grid.shape[1] * slide.size0 * slide.scale, grid.shape[0] * slide.size0 * slide.scale
    heat = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap="jet",
        vmin=0.0,
        vmax=1.0,
        alpha=alpha,
        interpolation="nearest",
        extent=(0, right, bottom, 0),
    )
    if slide.tissue.any() and not slide.tissue.all():
        ax.contour(slide.tissue.astype(np.float32), levels=[0.5], colors="black", linewidths=0.8)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    ax.set_title(title)
    bar = fig.colorbar(heat, ax=ax, fraction=0.04, pad=0.02, label=label)
    if bar.solids is not None:
        bar.solids.set_alpha(1.0)  # the scale in full colour, not faded like the overlay
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ``(N, 2)`` ring; positive around tissue in image coordinates."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def tissue_polygons(slide: SlideScores, tolerance: float = 1.0) -> list[list[np.ndarray]]:
    """The tissue mask's outline as polygons (an outer ring, then its holes) in level-0 pixels,
    within the slide: marching-squares contours of the mask, each simplified (Douglas–Peucker,
    ``tolerance`` mask pixels)."""
    bounds = np.asarray(slide.dimensions[:2], np.float64)
    outers: list[list[np.ndarray]] = []
    holes = []
    for contour in measure.find_contours(np.pad(slide.tissue.astype(np.float32), 1), 0.5):
        simplified = measure.approximate_polygon(contour, tolerance)
        if len(simplified) < 4:  # fewer than 3 distinct vertices
            continue
        # padded (row, col) index -> mask pixel edges (index - 1 + 0.5) -> level-0 (x, y)
        ring = np.clip((simplified[:, ::-1] - 0.5) / slide.scale, 0, bounds)
        area = _signed_area(ring)
        if area > 0:
            outers.append([ring])
        elif area < 0:
            holes.append(ring)
    for hole in holes:  # into the smallest outer ring around it
        around = [p for p in outers if RingPath(p[0]).contains_point(hole.mean(axis=0))]
        if around:
            min(around, key=lambda p: _signed_area(p[0])).append(hole)
    return outers


def tissue_annotation(slide: SlideScores) -> dict | None:
    """The tissue outline as a QuPath annotation classified "Tissue" (None without tissue)."""
    polygons = tissue_polygons(slide)
    if not polygons:
        return None
    coordinates = [[ring.round(2).tolist() for ring in polygon] for polygon in polygons]
    return {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": coordinates},
        "properties": {"objectType": "annotation", "name": "Tissue", "classification": {"name": "Tissue"}},
    }


def tiles_geojson(slide: SlideScores) -> dict:
    """A GeoJSON FeatureCollection for QuPath: the tissue outline (:func:`tissue_annotation`),
    then the scored patches as tiles: level-0 square polygons with the scores as
    ``measurements`` and, for a classifier, the predicted class."""
    scores, side = slide.scores, slide.size0
    outline = tissue_annotation(slide)
    features = [outline] if outline is not None else []
    for i, row in enumerate(slide.rows):
        x0, y0 = float(row["x"]), float(row["y"])
        ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
        properties: dict = {
            "objectType": "tile",
            "measurements": {"score": _finite(scores.value[i])}
            | {name: _finite(values[i]) for name, values in scores.measurements.items()},
        }
        if scores.classes is not None:
            properties["classification"] = {"name": scores.classes[i]}
        features.append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}
        )
    return {"type": "FeatureCollection", "features": features}


def write_slide_heatmap(slide: SlideScores, out_dir: Path, stem: str, title: str, label: str) -> list[Path]:
    """``<stem>_heatmap.png`` (:func:`save_heatmap_figure`), ``<stem>_heatmap.npy`` (the patch
    grid, NaN off tissue) and ``<stem>_tiles.geojson`` (:func:`tiles_geojson`) in ``out_dir``."""
    png, npy, geojson = (
        out_dir / f"{stem}_heatmap.png",
        out_dir / f"{stem}_heatmap.npy",
        out_dir / f"{stem}_tiles.geojson",
    )
    save_heatmap_figure(slide, png, title, label)
    grid = io.BytesIO()
    np.lib.format.write_array(grid, slide.grid())  # the .npy format, as np.save writes it
    atomic_write(npy, lambda tmp: Path(tmp).write_bytes(grid.getvalue()))
    atomic_write_text(geojson, json.dumps(tiles_geojson(slide), allow_nan=False))
    return [png, npy, geojson]


def resolve_class(value: str | int | None, class_names: Sequence[str]) -> int:
    """``--class`` as a class index: an index or a class name (default: the last class)."""
    names = list(class_names)
    if value is None:
        return len(names) - 1
    text = str(value).strip()
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return int(text)
    listed = ", ".join(f"{i} {name}" for i, name in enumerate(names))
    raise UserError(f"--class: expected a class index or name of the run ({listed}), found {text!r}")
