"""Visual checks of a downstream model: patch class-activation maps and slide heatmaps (§4).

* :func:`grad_cam` — Grad-CAM (Selvaraju et al. 2017) of one patch for a classification head,
  on the deepest fused level ``f_e^L`` (paper Eq. 9): channel weights are the spatial mean of
  the class score's gradient, the map is ``relu(Σ_c w_c A_c)`` upsampled and scaled to [0, 1].
* :func:`save_cam_overlay` — the map blended over the patch as a PNG.
* :func:`slide_heatmap` — per-patch predicted probability painted over a slide thumbnail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from torch import nn

from sassl_core.app.report import save_png
from sassl_core.interfaces import TaskHead
from sassl_core.wsi.cache import read_patch
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import tile_slide

FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]


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


def save_cam_overlay(image_uint8: np.ndarray, cam: np.ndarray, path: str | Path, alpha: float = 0.45) -> Path:
    """Write the Grad-CAM ``cam`` blended over the patch ``image_uint8`` ``(H, W, 3)`` as a PNG."""
    h, w = image_uint8.shape[:2]
    if cam.shape != (h, w):
        cam = np.asarray(Image.fromarray(cam.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    path = Path(path)
    save_png(overlay(image_uint8, np.clip(cam, 0, 1), alpha), path)
    return path


def slide_heatmap(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    slide_path: str | Path,
    patch_size: int,
    target_mpp: float,
    out_png: str | Path,
    fallback_mpp: float | None = None,
    tissue_threshold: float = 0.5,
    batch_size: int = 32,
    max_side: int = 1024,
    alpha: float = 0.5,
) -> np.ndarray:
    """Paint ``predict_fn``'s per-patch probability over the slide's thumbnail.

    The slide is tiled into tissue patches (:func:`sassl_core.wsi.tiling.tile_slide`);
    ``predict_fn`` maps uint8 patches ``(B, P, P, 3)`` to probabilities ``(B,)`` in ``[0, 1]``.
    Writes ``out_png`` and returns the heat grid at thumbnail size (NaN where no patch was
    predicted).
    """
    reader = open_slide(slide_path, fallback_mpp)
    try:
        rows = tile_slide(reader, patch_size, target_mpp, tissue_threshold)
        thumb = reader.thumbnail(max_side)
        scale = thumb.shape[1] / reader.dimensions[0]
        downsamples = reader.level_downsamples
    finally:
        reader.close()
    heat = np.full(thumb.shape[:2], np.nan)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        probs = np.asarray(predict_fn(np.stack([read_patch(row, patch_size) for row in batch])), np.float64)
        for row, prob in zip(batch, probs.reshape(-1)):
            size0 = row["read_size"] * downsamples[row["level"]]
            x0, y0 = int(row["x"] * scale), int(row["y"] * scale)
            x1, y1 = max(int((row["x"] + size0) * scale), x0 + 1), max(int((row["y"] + size0) * scale), y0 + 1)
            heat[y0:y1, x0:x1] = np.clip(prob, 0.0, 1.0)
    save_png(overlay(thumb, heat, alpha), Path(out_png))
    return heat
