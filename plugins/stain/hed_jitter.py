"""Random HED stain augmentation (Tellez et al. 2018) as a stain transform.

The same jitter as the SSL views' (:func:`sassl_core.color.apply_hed_jitter`), with the same
default ranges; useful as a stain-augmentation baseline outside the SSL views.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

import sassl_core
from sassl_core.color import HED_SCALE, HED_SHIFT, apply_hed_jitter
from sassl_core.config import Factors, Probability, Range
from sassl_core.interfaces import StainTransform


class HEDJitterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p: Probability = 1.0
    scale: Factors = HED_SCALE
    shift: Range = HED_SHIFT
    seed: int | None = None


class HEDJitter(StainTransform):
    """Per image, with probability ``p``: ``hed' = hed * U(scale) + U(shift)`` on H, E and DAB."""

    def __init__(self, options: HEDJitterOptions) -> None:
        self.options = options
        self.generator = None if options.seed is None else torch.Generator().manual_seed(options.seed)

    def fit(self, targets) -> HEDJitter:
        """Nothing to fit: the jitter is random, not target-driven."""
        return self

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        opt = self.options
        if self.generator is None:
            u = torch.rand(batch.shape[0], 7, device=batch.device)
        else:
            u = torch.rand(batch.shape[0], 7, generator=self.generator).to(batch.device)
        return apply_hed_jitter(batch, u, opt.p, opt.scale, opt.shift)


def build(options: HEDJitterOptions) -> HEDJitter:
    return HEDJitter(options)


@sassl_core.hookimpl
def sassl_register_stain_transforms(register):
    register("hed_jitter", build, HEDJitterOptions)
