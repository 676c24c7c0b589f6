"""Evaluation: predictions on held-out patches and the paper's metrics (§4.2) in ``metrics.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.files import atomic_write_text
from sassl_core.interfaces import PreparedData
from sassl_core.train.batchnorm import adapted_copy
from sassl_core.train.data import inference_batches, patch_dataset, sequential_batches
from sassl_core.train.finetune import DownstreamModel
from sassl_core.train.runtime import Runtime, autocast
from sassl_core.wsi.patches import PatchTable


@dataclass
class Predictions:
    split: str
    table: PatchTable
    predictions: np.ndarray  # probabilities (cls), values (reg) or class maps (seg)
    targets: np.ndarray
    images: np.ndarray  # a few input patches, for overlays


def evaluation_split(table: PatchTable) -> str:
    for split in ("test", "val"):
        if (table["split"] == split).any():
            return split
    raise UserError("the dataset has no 'test' or 'val' patches to evaluate on")


@torch.no_grad()
def predict(
    cfg: RunConfig, model: DownstreamModel, prepared: PreparedData, rt: Runtime, keep_images: int = 8
) -> Predictions:
    split = evaluation_split(prepared.patches)
    kind = model.head.target_kind
    table = kind.labelled(prepared.patches.split(split))
    if len(table) == 0:
        raise UserError(f"no labelled '{split}' patches for task '{cfg.task.name}'")
    if cfg.task.adapt_bn:  # rows of one source together, each source with its own statistics
        table = table.select(np.argsort(table["source"].astype(str), kind="stable"))
    dataset = patch_dataset(cfg, table, with_masks=kind.reads_masks, quiet=True)
    model.eval()
    preds: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    images: list[np.ndarray] = []
    for source_model, order in _source_models(cfg, model, table, dataset, rt):
        for batch in inference_batches(cfg, dataset, order, rt.device):
            with autocast(rt.device, cfg.trainer.amp):
                output = source_model(batch["image"])
            preds.append(model.head.predict(output.float()).cpu().numpy())
            targets.append(batch[kind.column].cpu().numpy())
            if sum(len(i) for i in images) < keep_images:
                images.append(batch["image"].cpu().numpy())
    return Predictions(
        split, table, np.concatenate(preds), np.concatenate(targets), np.concatenate(images)[:keep_images]
    )


def _source_models(cfg: RunConfig, model: DownstreamModel, table: PatchTable, dataset, rt: Runtime):
    """``(model, index batches)`` to predict with: ``model`` over every row, or with
    ``task.adapt_bn`` one AdaBN copy per source (:func:`adapted_copy`) over that source's rows
    (contiguous: ``table`` is sorted by source)."""
    batch_size = cfg.finetune.batch_size
    if not cfg.task.adapt_bn:
        yield model, sequential_batches(len(table), batch_size)
        return
    sources = table["source"].astype(str)
    for source in dict.fromkeys(sources):
        rows = np.flatnonzero(sources == source)
        order = [rows[i : i + batch_size].tolist() for i in range(0, len(rows), batch_size)]
        images = (batch["image"] for batch in inference_batches(cfg, dataset, order, rt.device))
        yield adapted_copy(model, images), order


def compute_metrics(cfg: RunConfig, model: DownstreamModel, result: Predictions) -> dict:
    """``{"task", "split", "metrics", ["slide_metrics"]}`` as written to ``metrics.json``."""
    sources = result.table["source"].astype(str)
    out = {
        "task": cfg.task.name,
        "split": result.split,
        "n_patches": int(len(result.table)),
        "metrics": model.head.metrics(result.predictions, result.targets, sources),
    }
    slides = result.table["slide_id"].astype(str)
    pooled = model.head.slide_predictions(slides, result.predictions) if cfg.task.slide_aggregation == "mean" else None
    if pooled is not None:
        names, probs = pooled
        first = np.array([np.flatnonzero(slides == s)[0] for s in names])
        slide_labels = all(len(np.unique(result.targets[slides == s])) == 1 for s in names)
        if len(names) < len(slides) and slide_labels:  # slide-level labels (PANDA, TCGA)
            out["slide_metrics"] = model.head.metrics(probs, result.targets[first], sources[first])
            out["n_slides"] = int(len(names))
    return out


def write_metrics(metrics: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
