"""Every type a plugin implements or receives, in one place.

* :class:`SSLMethod` / :class:`SSLOutput` — a self-supervised method (paper §3.1);
* :class:`TaskHead` — a downstream head over the fused features (paper §3.3, Fig. 4);
* :class:`StainTransform` — a stain normaliser or augmenter (the paper's Table 1 baselines);
* :class:`DatasetContext` / :class:`PreparedData` — what a dataset plugin receives and returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sassl_core.wsi.patches import PatchTable


@dataclass
class SSLOutput:
    """A method's loss and the per-view embeddings the stain discriminator reads: S1, S2 (the
    paper's), or the encoder's pooled features H1, H2 with ``sassl.embedding = 'encoder'``."""

    loss: torch.Tensor
    s1: torch.Tensor  # (B, d) online projector output of view 1
    s2: torch.Tensor  # (B, d) online projector output of view 2
    h1: torch.Tensor | None = None  # (B, feature_dim) online encoder output of view 1, if the method gives it
    h2: torch.Tensor | None = None


class SSLMethod(nn.Module):
    """Base class: wraps ``encoder`` (pooled features) with the method's heads and loss.

    Subclasses implement :meth:`forward`. Methods with a momentum/target network override
    :meth:`after_step`, which the trainer calls after every optimiser step with the training
    progress in ``[0, 1]``.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> SSLOutput:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Hook for momentum updates; nothing by default."""


class TaskHead(nn.Module):
    """A head over the fused multi-level features ``f_e`` of the dual encoder.

    ``target_kind`` says which patch-table column supervises it: ``'label'`` (cls),
    ``'target'`` (reg) or ``'mask'`` (seg).
    """

    target_kind: str = "label"

    def forward(self, levels: Sequence[torch.Tensor], image_size: int) -> torch.Tensor:  # pragma: no cover
        """``levels``: fused features, shallow to deep, each ``(B, C_l, H_l, W_l)``."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def predict(self, output: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Probabilities ``(B, K)`` (cls), values ``(B,)`` (reg) or class maps ``(B, H, W)`` (seg)."""
        raise NotImplementedError

    def metrics(self, predictions: np.ndarray, targets: np.ndarray, sources: np.ndarray) -> dict:  # pragma: no cover
        """The paper's metrics for this task (keys fixed by the task; see sassl_core.metrics)."""
        raise NotImplementedError


class StainTransform:
    """Fit on target images, then transform batches on any device.

    ``fit`` takes uint8 images ``(N, H, W, 3)`` (a numpy array or tensor); ``__call__`` takes a
    float batch ``(B, 3, H, W)`` in ``[0, 1]`` and returns one of the same shape and device.
    """

    def fit(self, targets) -> StainTransform:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass
class DatasetContext:
    """What the core hands a dataset plugin."""

    root: Path | None  # the user's data root (None: the dataset's default, if it has one)
    cache_dir: Path  # where the dataset may write derived files (synthetic slides, masks)
    patch_size: int  # model input side in pixels
    target_mpp: float = 0.5  # µm per pixel of the patches (20x)
    fallback_mpp: float | None = None  # used only for slides that carry no resolution
    max_per_slide: int = 100  # paper: 100 tissue patches per slide
    tissue_threshold: float = 0.5  # minimum tissue fraction of a kept patch
    seed: int = 0
    strict: bool = False  # a bad slide is fatal instead of skipped


@dataclass
class PreparedData:
    """A dataset ready for training: the patch index and what its labels mean."""

    patches: PatchTable
    tasks: tuple[str, ...]  # which of 'cls', 'reg', 'seg' the labels support
    class_names: list[str] = field(default_factory=list)  # for 'cls'
    seg_classes: int = 2  # number of mask classes for 'seg' (0 = background)
    skipped: list[str] = field(default_factory=list)  # 'file: reason' of slides left out

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
