"""Evaluation: predictions on held-out patches, the paper's metrics (§4.2) with a bootstrap 95 %
interval on the headline metric in ``metrics.json``, and ``predictions.csv`` /
``predictions_slides.csv`` (one row per patch / per slide)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.files import atomic_write_text
from sassl_core.interfaces import PreparedData, TargetKind, TaskHead
from sassl_core.metrics import aggregate_by_slide, bootstrap_interval, segmentation_scores
from sassl_core.train.batchnorm import adapted_copy
from sassl_core.train.data import inference_batches, patch_dataset, sequential_batches
from sassl_core.train.runtime import Runtime, autocast
from sassl_core.wsi.patches import PatchTable

if TYPE_CHECKING:  # fine-tuning validates with this module's predictions
    from sassl_core.train.finetune import DownstreamModel


@dataclass
class Predictions:
    split: str
    table: PatchTable
    predictions: np.ndarray  # probabilities (cls), values (reg) or class maps (seg)
    targets: np.ndarray
    images: np.ndarray  # a few input patches, for overlays


def evaluation_split(cfg: RunConfig, table: PatchTable) -> str:
    for split in ("test", "val"):
        if (table["split"] == split).any():
            return split
    raise UserError(
        f"data.dataset: expected 'test' or 'val' patches to evaluate on, found none in '{cfg.data.dataset}'"
    )


def predict(
    cfg: RunConfig, model: DownstreamModel, prepared: PreparedData, rt: Runtime, keep_images: int = 8
) -> Predictions:
    """Predictions on the dataset's test split (its validation split when it has no test split)."""
    split = evaluation_split(cfg, prepared.patches)
    table = model.head.target_kind.labelled(prepared.patches.split(split))
    if len(table) == 0:
        raise UserError(
            f"data.dataset: expected labelled '{split}' patches for task '{cfg.task.name}', found none in '{cfg.data.dataset}'"
        )
    return predict_table(cfg, model, table, split, rt, keep_images)


@torch.no_grad()
def predict_table(
    cfg: RunConfig, model: DownstreamModel, table: PatchTable, split: str, rt: Runtime, keep_images: int = 8
) -> Predictions:
    """Predictions on the patches of ``table`` (labelled ones), called ``split``."""
    kind = model.head.target_kind
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
    kept = np.concatenate(images)[:keep_images] if images else np.zeros((0,), np.uint8)
    return Predictions(split, table, np.concatenate(preds), np.concatenate(targets), kept)


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


#: Bootstrap resamples of the headline metric's 95 % interval.
RESAMPLES = 1000


def headline(
    head: TaskHead, predictions: np.ndarray, targets: np.ndarray
) -> tuple[str, Callable[[np.ndarray, np.ndarray], float | None]]:
    """The head's headline metric: its name and ``score(predictions, targets)``. A head declares
    them as ``headline`` and ``headline_score``; otherwise its first float in :meth:`~TaskHead.metrics`."""
    name, score = getattr(head, "headline", None), getattr(head, "headline_score", None)
    if name is not None and score is not None:
        return name, score
    everywhere = lambda t: np.full(len(t), "all", dtype=object)  # every patch of one source
    if name is None:
        name = next(
            k for k, v in head.metrics(predictions, targets, everywhere(targets)).items() if isinstance(v, float)
        )
    return name, lambda p, t: head.metrics(p, t, everywhere(t))[name]


def resampling_groups(table: PatchTable) -> tuple[np.ndarray | None, str]:
    """Resample whole slides when the patches come from several slides (fewer than patches),
    else single patches."""
    slides = table["slide_id"].astype(str)
    if 1 < len(set(slides)) < len(slides):
        return slides, "slide"
    return None, "patch"


def compute_metrics(cfg: RunConfig, model: DownstreamModel, result: Predictions) -> dict:
    """``{"task", "split", "metrics", "headline", ["slide_metrics"]}`` as written to ``metrics.json``;
    ``headline`` names the head's headline metric, its value and a seeded bootstrap 95 % interval
    (:data:`RESAMPLES` resamples, by slide where there are slides)."""
    sources = result.table["source"].astype(str)
    out = {
        "task": cfg.task.name,
        "split": result.split,
        "n_patches": int(len(result.table)),
        "metrics": model.head.metrics(result.predictions, result.targets, sources),
    }
    name, score = headline(model.head, result.predictions, result.targets)
    groups, unit = resampling_groups(result.table)
    interval = bootstrap_interval(
        lambda rows: score(result.predictions[rows], result.targets[rows]),
        len(result.table),
        groups,
        RESAMPLES,
        cfg.trainer.seed,
    )
    out["headline"] = {
        "metric": name,
        "value": score(result.predictions, result.targets),
        "ci95": list(interval) if interval is not None else None,
        "resampled_by": unit,
        "resamples": RESAMPLES,
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


def _csv_text(columns: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(zip(*(np.asarray(v).tolist() for v in columns.values())))
    return buffer.getvalue()


def _per_patch_values(head: TaskHead, result: Predictions, class_names: list[str]) -> dict[str, np.ndarray]:
    """What each patch's row says beyond where it is: truth, prediction and class probabilities
    (labels), truth and prediction (values), Dice and IoU (masks)."""
    kind = head.target_kind
    if kind is TargetKind.LABEL:
        k = result.predictions.shape[1]
        names = np.array(class_names if len(class_names) == k else [str(c) for c in range(k)], dtype=object)
        probs = {f"prob_{name}": result.predictions[:, c] for c, name in enumerate(names)}
        return {"truth": names[result.targets], "prediction": names[result.predictions.argmax(1)], **probs}
    if kind is TargetKind.TARGET:
        return {"truth": result.targets, "prediction": result.predictions}
    scores = getattr(head, "patch_scores", None)
    if scores is not None:
        dice, iou = scores(result.predictions, result.targets)
    else:
        dice, iou, _ = segmentation_scores(result.predictions, result.targets, getattr(head, "num_classes", 2))
    return {"dice": dice, "iou": iou}


def _per_slide_values(values: dict[str, np.ndarray], slides: np.ndarray, ids: np.ndarray) -> dict[str, list]:
    """Per slide: the mean of every number; a text column's value where the slide's patches
    agree on one, else empty."""
    out: dict[str, list] = {}
    for key, column in values.items():
        if column.dtype == object:
            out[key] = [next(iter(seen)) if len(seen := set(column[slides == s])) == 1 else "" for s in ids]
        else:
            out[key] = aggregate_by_slide(slides, column.astype(np.float64))[1].tolist()
    return out


def write_predictions(head: TaskHead, result: Predictions, class_names: list[str], run_dir: Path) -> list[str]:
    """``predictions.csv`` (one row per evaluated patch: index, slide_id, x, y, source and its
    values) and ``predictions_slides.csv`` (one row per slide: the mean of each patch value, the
    predicted class the argmax of the mean probabilities); returns the file names."""
    table = result.table
    slides = table["slide_id"].astype(str)
    values = _per_patch_values(head, result, class_names)
    where = {"index": np.arange(len(table)), "slide_id": slides, "x": table["x"], "y": table["y"]}
    atomic_write_text(run_dir / "predictions.csv", _csv_text(where | {"source": table["source"]} | values))
    ids = np.unique(slides)
    per_slide = _per_slide_values(values, slides, ids)
    if head.target_kind is TargetKind.LABEL:
        probs = np.array([per_slide[k] for k in values if k.startswith("prob_")]).T
        names = [k.removeprefix("prob_") for k in values if k.startswith("prob_")]
        per_slide["prediction"] = [names[c] for c in probs.argmax(1)]
    first = [np.flatnonzero(slides == s)[0] for s in ids]
    counts = [int((slides == s).sum()) for s in ids]
    atomic_write_text(
        run_dir / "predictions_slides.csv",
        _csv_text({"slide_id": ids, "source": table["source"][first], "n_patches": counts} | per_slide),
    )
    return ["predictions.csv", "predictions_slides.csv"]
