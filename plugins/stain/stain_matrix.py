"""Stain-matrix normalisation, the shared machinery of the Macenko and Vahadane plugins."""

from __future__ import annotations

import math

import torch

from sassl_core.color import as_float_images, masked_quantile, od_to_rgb, pool_pixels, rgb_to_od
from sassl_core.interfaces import StainTransform


class StainMatrixNormaliser(StainTransform):
    """Stain normalisation by stain-matrix estimation, shared by Macenko and Vahadane.

    Per image: estimate the stain matrix ``S`` (``(2, 3)``, rows H and E) from the tissue
    pixels, get the concentrations ``C`` of every pixel, scale each stain's concentrations so
    their 99th percentile matches the target's, and re-stain with the target's matrix:
    ``I = exp(-S_target^T C')`` (Macenko et al. 2009, §2; Vahadane et al. 2016, §II-C).
    Images with less than ``min_tissue_fraction`` tissue are returned unchanged. The stain
    matrix is estimated from at most ``max_estimation_pixels`` pixels per image (an even
    stride over the image; fitting pools all target pixels the same way).

    Subclasses implement :meth:`tissue_mask`, :meth:`estimate_stains` and
    :meth:`concentrations` on batches.
    """

    max_percentile = 0.99

    def __init__(self, min_tissue_fraction: float = 0.01, max_estimation_pixels: int = 65536) -> None:
        self.min_tissue_fraction = min_tissue_fraction
        self.max_estimation_pixels = max_estimation_pixels
        self.target_stains: torch.Tensor | None = None  # (2, 3)
        self.target_max: torch.Tensor | None = None  # (2,)

    def tissue_mask(self, rgb: torch.Tensor, od: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Boolean ``(B, H, W)`` of the pixels that estimate the stain matrix."""
        raise NotImplementedError

    def estimate_stains(self, od: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Stain matrices ``(B, 2, 3)``, rows unit H then E, from ``od`` ``(B, 3, N)``, ``mask`` ``(B, N)``."""
        raise NotImplementedError

    def concentrations(self, od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Concentrations ``(B, 2, N)`` of every pixel of ``od`` ``(B, 3, N)``."""
        raise NotImplementedError

    def analyse(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stain matrices, concentrations, max concentrations and tissue fraction of ``rgb``."""
        od = rgb_to_od(rgb)
        mask = self.tissue_mask(rgb, od).flatten(1)
        od = od.flatten(2).contiguous()
        step = self.estimation_stride(od.shape[-1])
        stains = self.estimate_stains(od[..., ::step].contiguous(), mask[..., ::step].contiguous())
        conc = self.concentrations(od, stains)
        batch, n_stains, n_pixels = conc.shape
        max_conc = masked_quantile(conc.reshape(batch * n_stains, n_pixels), self.max_percentile)
        return stains, conc, max_conc.reshape(batch, n_stains), mask.float().mean(-1)

    def estimation_stride(self, n_pixels: int) -> int:
        return max(1, math.ceil(n_pixels / self.max_estimation_pixels))

    def fit(self, targets) -> StainMatrixNormaliser:
        """Estimate the target stain matrix and max concentrations from the pooled target pixels."""
        pixels = pool_pixels(as_float_images(targets))
        stains, _, max_conc, tissue = self.analyse(
            pixels[..., :: self.estimation_stride(pixels.shape[-1])].contiguous()
        )
        if float(tissue[0]) <= 0.0:
            raise ValueError("stain normaliser fit: the target images contain no tissue pixels")
        self.target_stains, self.target_max = stains[0], max_conc[0]
        return self

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.target_stains is None or self.target_max is None:
            raise RuntimeError(f"{type(self).__name__}: call fit(targets) before transforming")
        stains, conc, max_conc, tissue = self.analyse(batch)
        scale = self.target_max.to(batch) / max_conc.clamp(min=1e-6)
        od = self.target_stains.to(batch).T @ (conc * scale[..., None])
        out = od_to_rgb(od).reshape(batch.shape)
        keep = (tissue < self.min_tissue_fraction)[:, None, None, None]
        return torch.where(keep, batch, out)
