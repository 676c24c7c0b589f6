"""Vahadane stain normalisation (Vahadane et al. 2016, "Structure-preserving color
normalization and sparse stain separation for histological images", IEEE TMI).

What is implemented (batched torch, any device, no SPAMS): the paper's sparse non-negative
matrix factorisation ``OD ≈ C S`` of the tissue pixels (CIELAB lightness below
``luminosity_threshold``), ``min ½||OD - C S||² + λ Σ C`` with ``C >= 0``, ``S >= 0`` and unit
stain rows, solved by multiplicative updates (Lee & Seung 2001 with the L1 term of Hoyer 2002)
from the Ruifrok & Johnston H and E vectors, rows renormalised after every step. Concentrations
of all pixels are the non-negative lasso codes for the fitted ``S`` (same update, ``S`` fixed,
``code_lambda``). Then, as in the paper, each stain is scaled to the target's 99th-percentile
concentration and the image re-stained with the target's ``S``
(:class:`sassl_core.color.StainMatrixNormaliser`).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

import sassl_core
from sassl_core.color import (
    RGB_FROM_HED,
    haematoxylin_first,
    least_squares_concentrations,
    luminosity_tissue_mask,
    unit_rows,
)
from sassl_plugins.stain.stain_matrix import StainMatrixNormaliser

_EPS = 1e-8


class VahadaneOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dictionary_lambda: float = Field(0.1, ge=0.0, description="L1 weight while learning the stain matrix")
    code_lambda: float = Field(0.01, ge=0.0, description="L1 weight of the concentrations of all pixels")
    iterations: int = Field(100, ge=1, description="factorisation updates")
    code_iterations: int = Field(50, ge=1, description="updates of the concentrations with the stains fixed")
    luminosity_threshold: float = Field(0.8, gt=0.0, le=1.0, description="tissue: CIELAB L/100 below this")
    min_tissue_fraction: float = Field(0.01, ge=0.0, le=1.0, description="images with less tissue pass unchanged")
    max_estimation_pixels: int = Field(65536, ge=16, description="pixels per image that estimate the stains")


def update_codes(od: torch.Tensor, stains: torch.Tensor, codes: torch.Tensor, lam: float) -> torch.Tensor:
    """One multiplicative step on ``C`` ``(B, 2, N)`` of ``½||OD - S^T C||² + lam Σ C``.

    ``od`` is ``(B, 3, N)``, ``stains`` ``(B, 2, 3)``; the step never increases the objective and
    keeps ``C >= 0`` (Lee & Seung 2001; Hoyer 2002 for the L1 term).
    """
    return codes * (stains @ od) / ((stains @ stains.transpose(1, 2)) @ codes + lam + _EPS)


def initial_codes(od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
    """Least-squares codes, floored slightly above 0 (multiplicative updates cannot leave 0)."""
    return least_squares_concentrations(od, stains).clamp(min=1e-4)


class Vahadane(StainMatrixNormaliser):
    def __init__(self, options: VahadaneOptions) -> None:
        super().__init__(options.min_tissue_fraction, options.max_estimation_pixels)
        self.options = options

    def tissue_mask(self, rgb: torch.Tensor, od: torch.Tensor) -> torch.Tensor:
        return luminosity_tissue_mask(rgb, self.options.luminosity_threshold)

    def estimate_stains(self, od: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pixels = od * mask[:, None, :].to(od.dtype)  # (B, 3, N), non-tissue zeroed
        stains = unit_rows(RGB_FROM_HED[:2].to(od)).expand(od.shape[0], 2, 3).contiguous()
        codes = initial_codes(pixels, stains)
        for _ in range(self.options.iterations):
            codes = update_codes(pixels, stains, codes, self.options.dictionary_lambda)
            gram = codes @ codes.transpose(1, 2)
            stains = stains * (codes @ pixels.transpose(1, 2)) / (gram @ stains + _EPS)
            norms = stains.norm(dim=-1, keepdim=True).clamp(min=_EPS)
            stains, codes = stains / norms, codes * norms
        return haematoxylin_first(stains)

    def concentrations(self, od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
        codes = initial_codes(od, stains)
        for _ in range(self.options.code_iterations):
            codes = update_codes(od, stains, codes, self.options.code_lambda)
        return codes


def build(options: VahadaneOptions) -> Vahadane:
    return Vahadane(options)


@sassl_core.hookimpl
def sassl_register_stain_transforms(register):
    register("vahadane", build, VahadaneOptions)
