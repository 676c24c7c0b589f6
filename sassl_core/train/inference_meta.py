"""What inference needs, recorded in the run folder as ``inference.json``.

Fine-tuning writes it (and pretraining, for its encoder) so that a heatmap, or a colleague loading
the exported encoder, needs the run folder alone: no training data, no stain target image, no
config paths relative to the folder training ran from.

* ``task``: task name, target kind, class names (labels) or mask classes, head settings;
* ``inputs``: input size, mean/std, and the stain normaliser with its *fitted* statistics: every
  tensor attribute of the fitted :class:`~sassl_core.interfaces.StainTransform` (Reinhard's
  target Lab mean/std, Macenko's target stain matrix and maximal concentrations, ...);
* ``patches``: patch size, target µm/px, fallback µm/px, tissue threshold;
* ``backbone``: the sassl name, the timm model name and the pooled feature size;
* ``paths``: absolute paths of the run folder, model checkpoint, encoder and pretrained encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from sassl_core import __version__
from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.files import atomic_write_text
from sassl_core.interfaces import PreparedData, StainTransform, TargetKind
from sassl_core.plugins import PluginSet
from sassl_core.train.backbone import pooled_dim
from sassl_core.train.inputs import fit_stain_transform
from sassl_core.train.rundir import CHECKPOINTS, ENCODER_FILE, INFERENCE_FILE
from sassl_core.train.validation import BEST_FILE

FINETUNED = f"{CHECKPOINTS}/finetune_last.pt"  # the last fine-tuning step's weights (and state)


def finetuned_checkpoint(run_dir: Path) -> Path:
    """The fine-tuned weights that describe the run: the best on validation
    (:mod:`sassl_core.train.validation`) if kept, else the last step's."""
    best = Path(run_dir) / CHECKPOINTS / BEST_FILE
    return best if best.is_file() else Path(run_dir) / FINETUNED


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FittedTensor(Record):
    dtype: Literal["float16", "bfloat16", "float32", "float64", "int32", "int64", "uint8", "bool"]
    values: Any  # nested lists of numbers


class StainRecord(Record):
    name: str
    options: dict[str, Any]
    fitted: dict[str, FittedTensor]


class TaskRecord(Record):
    name: str
    target_kind: TargetKind
    options: dict[str, Any]
    residual: bool
    special_init: str
    freeze_special_stages: int
    class_names: list[str]
    seg_classes: int


class InputsRecord(Record):
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stain_norm: StainRecord | None


class PatchesRecord(Record):
    size: int
    target_mpp: float
    fallback_mpp: float | None
    tissue_threshold: float


class BackboneRecord(Record):
    name: str
    timm_model: str | None
    options: dict[str, Any]
    num_features: int


class PathsRecord(Record):
    run_dir: str
    checkpoint: str | None
    encoder: str | None
    pretrained: str | None


class InferenceRecord(Record):
    format: Literal[1] = 1
    sassl_version: str
    stage: Literal["pretrain", "finetune"]
    task: TaskRecord | None
    inputs: InputsRecord
    patches: PatchesRecord
    backbone: BackboneRecord
    paths: PathsRecord
    seed: int


def stain_record(cfg: RunConfig, transform: StainTransform | None) -> StainRecord | None:
    """The run's stain normaliser with the tensors its ``fit`` set."""
    if transform is None or cfg.data.stain_norm is None:
        return None
    fitted = {
        key: FittedTensor(dtype=str(value.dtype).removeprefix("torch."), values=value.detach().cpu().tolist())
        for key, value in vars(transform).items()
        if isinstance(value, torch.Tensor)
    }
    return StainRecord(name=cfg.data.stain_norm, options=cfg.data.stain_norm_options, fitted=fitted)


def restore_stain(record: StainRecord, plugins: PluginSet) -> StainTransform:
    """The stain normaliser of ``record``, fitted without its target image."""
    transform = plugins["stain"].create(record.name, record.options)
    for key, tensor in record.fitted.items():
        setattr(transform, key, torch.tensor(tensor.values, dtype=getattr(torch, tensor.dtype)))
    return transform


def timm_model_name(backbone: nn.Module) -> str | None:
    """The timm architecture ``backbone`` was built as (``None`` for a model timm did not build)."""
    cfg = getattr(backbone, "pretrained_cfg", None)
    return cfg.get("architecture") if isinstance(cfg, dict) else None


def describe_run(
    cfg: RunConfig,
    plugins: PluginSet,
    run_dir: Path,
    backbone: nn.Module,
    prepared: PreparedData | None = None,
    kind: TargetKind | None = None,
    pretrained: Path | None = None,
) -> InferenceRecord:
    """The record of a pretraining run (``prepared=None``) or of a fine-tuning run on ``prepared``
    with a head learning from ``kind``."""
    run_dir = Path(run_dir).resolve()
    task = None
    if prepared is not None and kind is not None:
        task = TaskRecord(
            name=cfg.task.name,
            target_kind=kind,
            options=cfg.task.options,
            residual=cfg.task.residual,
            special_init=cfg.task.special_init,
            freeze_special_stages=cfg.task.freeze_special_stages,
            class_names=[str(c) for c in prepared.class_names],
            seg_classes=prepared.seg_classes,
        )
    encoder = run_dir / ENCODER_FILE
    return InferenceRecord(
        sassl_version=__version__,
        stage="pretrain" if task is None else "finetune",
        task=task,
        inputs=InputsRecord(
            size=cfg.data.image_size,
            mean=cfg.inputs.mean,
            std=cfg.inputs.std,
            stain_norm=stain_record(cfg, fit_stain_transform(cfg, plugins)),
        ),
        patches=PatchesRecord(
            size=cfg.data.image_size,
            target_mpp=cfg.data.target_mpp,
            fallback_mpp=cfg.data.mpp,
            tissue_threshold=cfg.data.tissue_threshold,
        ),
        backbone=BackboneRecord(
            name=cfg.backbone.name,
            timm_model=timm_model_name(backbone),
            options=json.loads(json.dumps(cfg.backbone.options, default=str)),
            num_features=pooled_dim(backbone),
        ),
        paths=PathsRecord(
            run_dir=str(run_dir),
            checkpoint=str(finetuned_checkpoint(run_dir)) if task is not None else None,
            encoder=str(encoder) if task is None or encoder.is_file() else None,
            pretrained=str(Path(pretrained).resolve()) if pretrained is not None else None,
        ),
        seed=cfg.trainer.seed,
    )


def write_inference_record(run_dir: Path, record: InferenceRecord) -> Path:
    path = Path(run_dir) / INFERENCE_FILE
    atomic_write_text(path, record.model_dump_json(indent=2) + "\n")
    return path


def read_inference_record(run_dir: Path) -> InferenceRecord:
    """The run's ``inference.json``; a run without one (written before sassl recorded it) is a
    :class:`UserError` saying how to get it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: expected a run folder, found none")
    path = run_dir / INFERENCE_FILE
    if not path.is_file():
        raise UserError(
            f"{path}: not found (a run made before sassl recorded what inference needs); re-run fine-tuning "
            f"into the run folder to write it: sassl finetune --config {run_dir / 'config_finetune.yaml'} --resume --out {run_dir}"
        )
    try:
        return InferenceRecord.model_validate_json(path.read_bytes())
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise UserError(f"{path}: {where}: {first['msg']}") from None


def encoder_metadata(record: InferenceRecord) -> dict[str, str]:
    """String metadata of ``encoder.safetensors``: how to build and feed the encoder."""
    stain = record.inputs.stain_norm
    return {
        "backbone": record.backbone.name,
        "timm_model": record.backbone.timm_model or "",
        "num_features": str(record.backbone.num_features),
        "input_size": json.dumps([3, record.inputs.size, record.inputs.size]),
        "mean": json.dumps(list(record.inputs.mean)),
        "std": json.dumps(list(record.inputs.std)),
        "target_mpp": str(record.patches.target_mpp),
        "stain_norm": stain.model_dump_json() if stain is not None else "",
    }
