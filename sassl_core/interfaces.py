"""Every type a plugin implements or receives, in one place.

* :class:`SSLMethod` / :class:`SSLOutput` — a self-supervised method (paper §3.1);
* :class:`TaskHead` — a downstream head over the fused features (paper §3.3, Fig. 4), learning
  from the :class:`TargetKind` its task was registered with;
* :class:`StainTransform` — a stain normaliser or augmenter (the paper's Table 1 baselines);
* :class:`DatasetContext` / :class:`PreparedData` — what a dataset plugin receives and returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sassl_core.errors import UserError
from sassl_core.metrics import aggregate_by_slide
from sassl_core.wsi.patches import PatchTable


class TargetKind(str, Enum):
    """What a task head learns from, declared when the task is registered
    (``register("cls", build, Options, target_kind=TargetKind.LABEL)``).

    The value names the patch-table column (and batch key) that holds the targets:

    * ``LABEL`` — a class index per patch (``-1``: unknown); predictions are class probabilities ``(B, K)``;
    * ``TARGET`` — a value per patch (``NaN``: unknown); predictions are values ``(B,)``;
    * ``MASK`` — a class map per patch, cut from the slide's label raster; predictions are class
      maps ``(B, H, W)``.
    """

    LABEL = "label"
    TARGET = "target"
    MASK = "mask"

    def __str__(self) -> str:
        return self.value

    @property
    def column(self) -> str:
        """The patch-table column, and batch key, holding these targets."""
        return self.value

    @property
    def reads_masks(self) -> bool:
        """Whether the patch dataset must cut each patch's mask from its slide's label raster."""
        return self is TargetKind.MASK

    def labelled(self, table: PatchTable) -> PatchTable:
        """The rows that carry this kind of target (every row for masks)."""
        if self is TargetKind.LABEL:
            return table.select(table["label"] >= 0)
        if self is TargetKind.TARGET:
            return table.select(~np.isnan(table["target"].astype(float)))
        return table

    def num_outputs(self, prepared: PreparedData, task: str) -> int | None:
        """``num_outputs`` of a head of this kind on ``prepared``: the dataset's classes (at least
        2), its mask classes, or ``None`` for values."""
        if self is TargetKind.TARGET:
            return None
        if self is TargetKind.MASK:
            return prepared.seg_classes
        if prepared.num_classes < 2:
            raise UserError(f"dataset has {prepared.num_classes} classes; the '{task}' task needs at least 2")
        return prepared.num_classes


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

    ``target_kind`` is the :class:`TargetKind` its task was registered with; the core sets it on
    every head it builds. Subclasses implement :meth:`forward`, :meth:`loss`, :meth:`predict`
    and :meth:`metrics`; :meth:`targets`, :meth:`heatmap_value`, :meth:`slide_predictions` and
    :attr:`class_scores` have defaults for the head's kind, to override only when its
    predictions take another form.
    """

    target_kind: TargetKind

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

    def targets(self, batch: dict) -> torch.Tensor:
        """What :meth:`loss` compares the output with: the batch's ``target_kind`` column, as
        class indices (``long``) for labels and masks, as ``float`` values for targets."""
        value = batch[self.target_kind.column]
        return value.float() if self.target_kind is TargetKind.TARGET else value.long()

    def heatmap_value(self, predictions: torch.Tensor, target_class: int) -> torch.Tensor:
        """One value in ``[0, 1]`` per patch ``(B,)`` for a slide heatmap, from :meth:`predict`'s
        output: the probability of ``target_class`` (labels), the value itself (targets, such as a
        cellularity; override for values on another scale), or the share of non-background
        pixels (masks)."""
        if self.target_kind is TargetKind.LABEL:
            return predictions[:, target_class]
        if self.target_kind is TargetKind.MASK:
            return (predictions > 0).float().mean(dim=(1, 2))
        return predictions

    def slide_predictions(self, slide_ids: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Patch predictions pooled per slide — the mean class probability per slide for labels
        (PANDA, TCGA slide metrics) — as ``(sorted slide ids, pooled predictions)``; ``None``
        when the kind has no slide-level reading (targets, masks)."""
        if self.target_kind is TargetKind.LABEL:
            return aggregate_by_slide(slide_ids, predictions)
        return None

    @property
    def class_scores(self) -> bool:
        """Whether :meth:`forward` returns one score per class ``(B, K)``, which Grad-CAM explains
        (paper §4 visual checks); by default a label head's does."""
        return self.target_kind is TargetKind.LABEL


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
    target_kinds: tuple[TargetKind, ...]  # the kinds of target its patches carry (which heads it can train)
    class_names: list[str] = field(default_factory=list)  # for TargetKind.LABEL
    seg_classes: int = 2  # number of mask classes for TargetKind.MASK (0 = background)
    skipped: list[str] = field(default_factory=list)  # 'file: reason' of slides left out

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
