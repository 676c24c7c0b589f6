"""Macenko stain normalisation (Macenko et al. 2009, "A method for normalizing histology
slides for quantitative analysis", ISBI).

Per image, batched: optical densities of the tissue pixels (OD >= ``beta`` in every channel);
the plane of their two principal axes (eigenvectors of the OD covariance); the angle of every
pixel's projection in that plane; the robust extreme angles (``alpha`` and ``100 - alpha``
percentiles) give the H and E vectors. Concentrations by least squares, each stain scaled to the
target's 99th-percentile concentration, re-stained with the target's vectors
(:class:`sassl_core.color.StainMatrixNormaliser`).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

import sassl_core
from sassl_core.color import (
    haematoxylin_first,
    least_squares_concentrations,
    masked_quantile,
    od_tissue_mask,
    unit_rows,
)
from sassl_plugins.stain.stain_matrix import StainMatrixNormaliser


class MacenkoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.15, ge=0.0, description="OD threshold of tissue pixels (every channel)")
    alpha: float = Field(1.0, gt=0.0, lt=50.0, description="percentile of the robust extreme angles")
    min_tissue_fraction: float = Field(0.01, ge=0.0, le=1.0, description="images with less tissue pass unchanged")
    max_estimation_pixels: int = Field(65536, ge=16, description="pixels per image that estimate the stains")


class Macenko(StainMatrixNormaliser):
    def __init__(self, options: MacenkoOptions) -> None:
        super().__init__(options.min_tissue_fraction, options.max_estimation_pixels)
        self.options = options

    def tissue_mask(self, rgb: torch.Tensor, od: torch.Tensor) -> torch.Tensor:
        return od_tissue_mask(od, self.options.beta)

    def estimate_stains(self, od: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weight = mask.to(od.dtype)[:, None, :]
        count = weight.sum(-1, keepdim=True).clamp(min=2.0)
        centred = (od - (od * weight).sum(-1, keepdim=True) / count) * weight
        covariance = centred @ centred.transpose(1, 2) / (count - 1)
        _, axes = torch.linalg.eigh(covariance)  # ascending eigenvalues
        plane = axes[:, :, 1:]  # (B, 3, 2): second, then first principal axis
        # Orient the first axis along positive OD so that tissue projects to angles in (0, pi).
        sign = torch.where(plane[:, :, 1].sum(1) < 0, -1.0, 1.0).to(od.dtype)
        plane = torch.stack((plane[:, :, 0], plane[:, :, 1] * sign[:, None]), dim=2)
        projected = plane.transpose(1, 2) @ od  # (B, 2, N)
        angle = torch.atan2(projected[:, 1], projected[:, 0])
        q = self.options.alpha / 100.0
        extremes = torch.stack((masked_quantile(angle, q, mask), masked_quantile(angle, 1 - q, mask)), dim=1)
        directions = torch.stack((extremes.cos(), extremes.sin()), dim=1)  # (B, 2, 2), columns
        return haematoxylin_first(unit_rows((plane @ directions).transpose(1, 2)))

    def concentrations(self, od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
        return least_squares_concentrations(od, stains)


def build(options: MacenkoOptions) -> Macenko:
    return Macenko(options)


@sassl_core.hookimpl
def sassl_register_stain_transforms(register):
    register("macenko", build, MacenkoOptions)
