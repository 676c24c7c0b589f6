"""The fine-tuned model of a run, rebuilt from its ``inference.json`` and checkpoint alone
(:mod:`sassl_core.train.inference_meta`): no training data, stain target or config needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.interfaces import PreparedData
from sassl_core.plugins import PluginSet
from sassl_core.train.checkpoint import load_checkpoint
from sassl_core.train.finetune import DownstreamModel, build_downstream
from sassl_core.train.inference_meta import (
    InferenceRecord,
    finetuned_checkpoint,
    read_inference_record,
    restore_stain,
)
from sassl_core.train.inputs import ModelInput, stain_function
from sassl_core.wsi.patches import PatchTable

#: Backbone options that only choose initial weights: a rebuilt model takes the checkpoint's.
INITIAL_WEIGHTS = ("pretrained", "weights")


def inference_config(record: InferenceRecord) -> RunConfig:
    """The settings that rebuild the run's model, from its record alone."""
    task = record.task
    options = {k: v for k, v in record.backbone.options.items() if k not in INITIAL_WEIGHTS}
    settings: dict[str, Any] = {
        "data": {"image_size": record.inputs.size},
        "inputs": {"mean": record.inputs.mean, "std": record.inputs.std},
        "backbone": {"name": record.backbone.name, "options": options},
    }
    if task is not None:
        settings["task"] = {
            "name": task.name,
            "options": task.options,
            "residual": task.residual,
            "special_init": task.special_init,
            "freeze_special_stages": task.freeze_special_stages,
        }
    return RunConfig.model_validate(settings)


def load_model_state(model: nn.Module, path: Path, what: str) -> None:
    """Load the fine-tuned weights of checkpoint ``path`` into ``model`` (``what`` names the model)."""
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["modules"]["model"])
    except (KeyError, RuntimeError) as err:
        raise UserError(f"{path}: does not fit {what} ({str(err).splitlines()[0][:160]})") from None


def load_inference_model(run_dir: Path, plugins: PluginSet) -> tuple[DownstreamModel, InferenceRecord]:
    """The fine-tuned model of ``run_dir`` (on the CPU, in eval mode) and its record, built from
    ``inference.json`` and the checkpoint alone (the best on validation, else the last)."""
    run_dir = Path(run_dir)
    record = read_inference_record(run_dir)
    task = record.task
    if task is None:
        raise UserError(
            f"{run_dir}: holds a pretrained encoder, no fine-tuned model; fine-tune it first "
            f"(sassl finetune --pretrained {run_dir} ...)"
        )
    cfg = inference_config(record)
    table = PatchTable.from_rows([], record.patches.size)
    prepared = PreparedData(table, (task.target_kind,), task.class_names, task.seg_classes)
    model = build_downstream(cfg, plugins, prepared, None)
    stain = record.inputs.stain_norm
    model.inputs = ModelInput(cfg.inputs, stain_function(restore_stain(stain, plugins)) if stain else None)
    load_model_state(model, finetuned_checkpoint(run_dir), f"backbone '{cfg.backbone.name}' / task '{task.name}'")
    return model.eval(), record
