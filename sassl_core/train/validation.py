"""Validation during fine-tuning: the split it reads and the best checkpoint it keeps.

The validation patches are the dataset's own ``val`` split when it also has a ``test`` split (which
evaluation then reads), else ``finetune.val_fraction`` of the training patches (whole slides where
there are several, so no slide is on both sides): the patches that choose the weights are never
the ones that score them. Every
``finetune.val_every`` steps and after the last, the model's headline metric on them decides
whether its weights become ``checkpoints/finetune_best.pt``, the model evaluation then uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sassl_core.config import RunConfig
from sassl_core.train.checkpoint import load_checkpoint, previous_path, save_checkpoint
from sassl_core.train.evaluate import headline, predict_table
from sassl_core.train.rundir import CHECKPOINTS
from sassl_core.train.runtime import Runtime
from sassl_core.wsi.patches import PatchTable

BEST_FILE = "finetune_best.pt"


def validation_split(
    labelled: PatchTable, fraction: float, seed: int, min_train: int = 1
) -> tuple[PatchTable, PatchTable]:
    """``(train, val)`` from the labelled patches: the ``val`` split when there is a ``test``
    split too, else a seeded ``fraction`` of the training slides (of the training patches when there is one
    slide), at least one and never all; ``val`` is empty with ``fraction`` 0 (validation off, even
    beside a dataset's own ``val`` split) or when fewer than ``min_train`` training patches (a
    batch) would be left.

    >>> from sassl_core.wsi.patches import PatchTable
    >>> t = PatchTable.from_rows([{"slide": "s", "slide_id": f"s{i % 5}", "x": i, "y": 0, "level": 0,
    ...     "read_size": 8, "source": "c", "label": 0} for i in range(20)], 8)
    >>> train, val = validation_split(t, 0.2, 0)
    >>> len(train), len(val), len(set(train["slide_id"]) & set(val["slide_id"]))
    (16, 4, 0)
    """
    split = labelled["split"].astype(str)
    train = labelled.select(split == "train")
    if fraction <= 0:  # validation off: the last step's weights are evaluated
        return train, train.select(np.zeros(len(train), dtype=bool))
    if (split == "val").any() and (split == "test").any():
        return train, labelled.select(split == "val")
    groups = train["slide_id"].astype(str)
    if len(set(groups)) < 2:  # one slide: hold out patches
        groups = np.arange(len(train)).astype(str)
    units = np.unique(groups)
    count = min(max(int(round(fraction * len(units))), 1), len(units) - 1) if fraction > 0 else 0
    held = np.random.default_rng(seed).permutation(units)[:count]
    in_val = np.isin(groups, held)
    if (~in_val).sum() < min_train:
        in_val[:] = False
    return train.select(~in_val), train.select(in_val)


class BestModel:
    """Validates ``model`` on ``table`` and keeps the weights of its best headline score."""

    def __init__(self, cfg: RunConfig, model, table: PatchTable, run_dir: Path, rt: Runtime) -> None:
        self.cfg, self.model, self.table, self.rt = cfg, model, table, rt
        self.path = Path(run_dir) / CHECKPOINTS / BEST_FILE
        self.record: dict | None = None  # {"best_step", "val_<metric>"} of the weights kept

    def start(self) -> None:
        """A new fine-tuning: no best yet (nor one left by an earlier fine-tuning here)."""
        self.record = None
        for path in (self.path, previous_path(self.path)):
            path.unlink(missing_ok=True)

    def validate(self, step: int) -> None:
        """Score the model at ``step``; keep it when it beats the best so far (ties: the later)."""
        result = predict_table(self.cfg, self.model, self.table, "val", self.rt, keep_images=0)
        name, score = headline(self.model.head, result.predictions, result.targets)
        value = score(result.predictions, result.targets)
        if value is None:
            return
        if self.record is None or value >= self.record[f"val_{name}"]:
            self.record = {"best_step": step, f"val_{name}": float(value)}
            state = {"stage": "finetune_best", "step": step, "modules": {"model": self.model.state_dict()}}
            save_checkpoint({**state, "validation": self.record}, self.path)

    def restore(self) -> None:
        """Put the kept weights back into the model (after training)."""
        if self.record is not None:
            self.model.load_state_dict(load_checkpoint(self.path)["modules"]["model"])


def best_record(run_dir: Path) -> dict:
    """``{"best_step", "val_<metric>"}`` of the run's kept fine-tuned weights, ``{}`` if none."""
    path = Path(run_dir) / CHECKPOINTS / BEST_FILE
    return dict(load_checkpoint(path).get("validation", {})) if path.is_file() else {}
