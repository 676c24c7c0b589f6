"""Python API: the CLI's stages as functions taking a :class:`RunConfig` (no globals, no CLI).

>>> from sassl_core.app.api import RunConfig, run
>>> cfg = RunConfig.model_validate({"pretrain": {"steps": 5}, "finetune": {"steps": 5}})  # doctest: +SKIP
>>> result = run(cfg)  # doctest: +SKIP
>>> result.metrics["metrics"]["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sassl_core.app.heatmap import (
    PatchScores,
    grad_cam,
    resolve_class,
    save_cam_panel,
    score_slide,
    write_slide_heatmap,
)
from sassl_core.app.inference import load_inference_model, load_model_state
from sassl_core.app.probe import centre_probe
from sassl_core.app.report import plot_curves, read_history, task_plot, write_report
from sassl_core.app.runlog import RunLog, console_log
from sassl_core.config import RunConfig, deep_merge, load_config, read_yaml, validate
from sassl_core.errors import UserError
from sassl_core.files import atomic_write_text
from sassl_core.interfaces import PreparedData, TargetKind
from sassl_core.plugins import PluginSet, default_plugins
from sassl_core.train.backbone import TIMM_PREFIX
from sassl_core.train.data import prepare_dataset
from sassl_core.train.evaluate import compute_metrics, predict, write_metrics, write_predictions
from sassl_core.train.finetune import build_downstream, resolve_pretrained, task_target_kind
from sassl_core.train.finetune import finetune as finetune_stage
from sassl_core.train.hparams import log_hparams
from sassl_core.train.inference_meta import finetuned_checkpoint
from sassl_core.train.inputs import fit_stain_transform
from sassl_core.train.pretrain import pretrain as pretrain_stage
from sassl_core.train.rundir import ENCODER_FILE, HEATMAPS, MARKER, RunDir, changed_settings, config_name
from sassl_core.train.rundir import flatten as flatten_settings
from sassl_core.train.runtime import Runtime, init_runtime, pick_device, seed_everything
from sassl_core.train.validation import best_record
from sassl_core.wsi.cache import read_patch

__all__ = ["RunConfig", "RunResult", "load_config", "pretrain", "finetune", "evaluate", "probe", "run", "heatmap"]


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict | None = None
    encoder_path: Path | None = None


def check_run_dir(cfg: RunConfig, stage: str) -> bool:
    """Refuse an ``output.dir`` that is not this stage's to write (:mod:`sassl_core.train.rundir`);
    True if the stage starts a new run there, False if it continues the run there."""
    run = RunDir(cfg.output.dir)
    run.check_location()
    if not run.path.exists():
        return True
    if not run.path.is_dir():
        raise UserError(f"output.dir: {run.path} is a file; expected a folder")
    if not run.is_run():
        if run.is_empty():
            return True
        raise UserError(
            f"output.dir: {run.path} is not empty and holds no sassl run (no {MARKER}); expected a new or empty folder"
        )
    if not run.has_results():  # an earlier start finished nothing (a crash): start again
        return True
    if cfg.output.resume or _continues(run.path, stage):
        return False
    if cfg.output.overwrite:
        return stage in ("run", "pretrain")
    raise UserError(
        f"output.dir: {run.path} already holds a run; pass --resume to continue it or --overwrite to replace it"
    )


def _continues(run_dir: Path, stage: str) -> bool:
    """Evaluating or probing a run, or fine-tuning inside a pretraining run's folder, is the intended workflow."""
    return stage in ("evaluate", "probe") or (stage == "finetune" and (run_dir / ENCODER_FILE).exists())


def _check_names(cfg: RunConfig, plugins: PluginSet, stage: str) -> None:
    """Unknown component names fail before anything is written."""
    if stage in ("run", "pretrain"):
        plugins["ssl"].get(cfg.ssl.method)
    if stage not in ("pretrain", "probe"):
        plugins["task"].get(cfg.task.name)
    if not cfg.backbone.name.startswith(TIMM_PREFIX):
        plugins["backbone"].get(cfg.backbone.name)


def _write_run_dir(cfg: RunConfig, run_dir: Path, stage: str, prepared: PreparedData) -> None:
    config = run_dir / config_name(stage)
    # a resumed run keeps the settings it started with, unless resumed with (checked) changes
    if not (cfg.output.resume and config.exists()) or cfg.output.resume_with_changes:
        atomic_write_text(config, cfg.to_yaml())
    if prepared.skipped:
        atomic_write_text(run_dir / "skipped_slides.json", json.dumps(prepared.skipped, indent=2))


def _open_run_dir(cfg: RunConfig, run: RunDir, stage: str, prepared: PreparedData) -> bool:
    """Under the run folder's lock: check it again, start a new run there or continue the one
    there, record the settings; True if a new run was started."""
    fresh = check_run_dir(cfg, stage)
    if fresh:
        left = run.start(stage)
        if left:
            print(
                f"warning: output.dir: {run.path}: left in place what sassl did not write: {', '.join(left)}",
                file=sys.stderr,
            )
    run.check_subfolders()
    run.remove_temporaries()
    _write_run_dir(cfg, run.path, stage, prepared)
    return fresh


def _check_resume_settings(cfg: RunConfig, run: RunDir, stage: str) -> str | None:
    """``--resume`` continues the run with the settings it recorded: other settings (but step
    counts and output options) are refused, or, with ``--resume-with-changes``, applied and
    logged; returns the recorded settings' text when they are to be replaced."""
    config = run.path / config_name(stage)
    changes = changed_settings(config, cfg) if config.is_file() else []
    if changes and not cfg.output.resume_with_changes:
        raise UserError(
            f"{config}: --resume with settings other than the run's: {', '.join(changes)}; "
            "expected the same settings (or pass --resume-with-changes to apply them)"
        )
    if not changes:
        return None
    print(f"warning: resuming {run.path} with changed settings: {', '.join(changes)}", file=sys.stderr)
    return config.read_text()


@contextmanager
def _stage(
    cfg: RunConfig, plugins: PluginSet | None, stage: str
) -> Iterator[tuple[PluginSet, Runtime, Path, PreparedData]]:
    """:func:`_take_stage`, with what the stage prints also kept in the run's ``run.log``."""
    with console_log() as log, _take_stage(cfg, plugins, stage, log) as taken:
        yield taken


@contextmanager
def _take_stage(
    cfg: RunConfig, plugins: PluginSet | None, stage: str, log: RunLog
) -> Iterator[tuple[PluginSet, Runtime, Path, PreparedData]]:
    """Check everything that can be checked, then take the run folder (lock, marker, config) for
    the stage; a stage refused with a :class:`UserError` before it produced anything leaves no
    folder (and none of its files) behind."""
    plugins = plugins or default_plugins()
    rt = init_runtime(cfg.trainer.device)
    seed_everything(cfg.trainer.seed)  # every rank builds identical initial weights
    run = RunDir(cfg.output.dir)
    if rt.is_main:  # quick answers first: in use (the other ranks would see rank 0's lock), ...
        run.check_free()
    recorded, checkpoints = None, None
    if not check_run_dir(cfg, stage) and cfg.output.resume:  # ... or not this stage's to write
        recorded = _check_resume_settings(cfg, run, stage)
        checkpoints = run.checkpoint_stamps()
    _check_names(cfg, plugins, stage)
    prepared = prepare_dataset(cfg, plugins)
    for item in prepared.skipped:
        print(f"warning: skipped slide {item}", file=sys.stderr)
    created = not run.path.exists()
    fresh = False
    try:
        with run.locked() if rt.is_main else contextlib.nullcontext():
            fresh = rt.is_main and _open_run_dir(cfg, run, stage, prepared)
            if rt.is_main:
                log.attach(run.path, str(rt.device))
            yield plugins, rt, run.path, prepared
    except UserError:
        if fresh and run.produced_nothing(stage):
            run.discard(created)
        if recorded is not None and rt.is_main and run.checkpoint_stamps() == checkpoints:
            atomic_write_text(run.path / config_name(stage), recorded)  # nothing trained with the changes
        raise


def pretrain(cfg: RunConfig, plugins: PluginSet | None = None) -> RunResult:
    """Stage 1 alone: writes ``encoder.safetensors`` and the pretraining checkpoint."""
    with _stage(cfg, plugins, "pretrain") as (plugins, rt, run_dir, prepared):
        result = pretrain_stage(cfg, plugins, prepared, run_dir, rt)
        if rt.is_main:
            plot_curves(result.history, "pretraining", run_dir / "pretrain_curves.png")
        return RunResult(run_dir, encoder_path=result.encoder_path)


def _finetune_and_evaluate(cfg, plugins, rt, run_dir, prepared, pretrained) -> RunResult:
    result = finetune_stage(cfg, plugins, prepared, run_dir, rt, pretrained)
    metrics = _evaluate_model(cfg, result.model, prepared, rt, run_dir, result.best) if rt.is_main else None
    if metrics is not None and cfg.output.tensorboard:
        log_hparams(run_dir, cfg, metrics)
    return RunResult(run_dir, metrics, pretrained)


def _evaluate_model(cfg, model, prepared, rt, run_dir, best: dict) -> dict:
    """Metrics (with ``best``: the step and validation score of the weights evaluated),
    predictions, figures and the report."""
    predictions = predict(cfg, model, prepared, rt)
    metrics = compute_metrics(cfg, model, predictions) | best
    write_metrics(metrics, run_dir / "metrics.json")
    write_predictions(model.head, predictions, prepared.class_names, run_dir)
    images = [task_plot(predictions, model.head.target_kind, prepared.class_names, run_dir)]
    for stage in ("pretrain", "finetune"):
        if plot_curves(read_history(run_dir, stage), f"{stage} curves", run_dir / f"{stage}_curves.png"):
            images.append(f"{stage}_curves.png")
    write_report(cfg, metrics, run_dir, images)
    return metrics


def _pretrained_encoder(cfg: RunConfig, run_dir: Path) -> Path | None:
    """``finetune.pretrained``, else the encoder already in the run folder, else None."""
    return resolve_pretrained(cfg.finetune.pretrained or (run_dir if (run_dir / ENCODER_FILE).exists() else None))


def finetune(cfg: RunConfig, plugins: PluginSet | None = None) -> RunResult:
    """Stage 2 from ``finetune.pretrained`` (or this run folder's encoder), then evaluation."""
    with _stage(cfg, plugins, "finetune") as (plugins, rt, run_dir, prepared):
        return _finetune_and_evaluate(cfg, plugins, rt, run_dir, prepared, _pretrained_encoder(cfg, run_dir))


def _load_finetuned(cfg: RunConfig, plugins: PluginSet, prepared: PreparedData, rt: Runtime, run_dir: Path):
    """The fine-tuned weights kept: the best by validation (:mod:`sassl_core.train.validation`),
    else the last step's."""
    model = build_downstream(cfg, plugins, prepared, None).to(rt.device)
    load_model_state(model, finetuned_checkpoint(run_dir), f"backbone '{cfg.backbone.name}' / task '{cfg.task.name}'")
    return model.eval()


def run_settings(cfg: RunConfig) -> RunConfig:
    """The settings the run in ``output.dir`` was fine-tuned with (``config_finetune.yaml``, else
    ``config.yaml``), with the fields ``cfg`` sets explicitly on top, each that differs noted on
    stderr; ``output`` is ``cfg``'s. Without a recorded config, ``cfg`` itself."""
    run_dir = Path(cfg.output.dir)
    recorded_file = next(
        (run_dir / n for n in ("config_finetune.yaml", "config.yaml") if (run_dir / n).is_file()), None
    )
    if recorded_file is None:
        return cfg
    recorded = read_yaml(recorded_file)
    given = cfg.model_dump(mode="json", exclude_unset=True)
    given_output = given.pop("output", {})
    was = flatten_settings(validate(recorded).model_dump(mode="json"))
    for key, value in flatten_settings(given).items():
        if key in was and was[key] != value:
            print(f"note: {key}={value!r} from the command line, the run used {was[key]!r}", file=sys.stderr)
    merged = deep_merge(recorded, given)
    merged["output"] = given_output
    return validate(merged)


def evaluate(cfg: RunConfig, plugins: PluginSet | None = None) -> RunResult:
    """Re-evaluate the fine-tuned model saved in ``output.dir`` with the settings the run
    recorded (:func:`run_settings`): it reproduces the run's ``metrics.json``."""
    cfg = run_settings(cfg)
    with _stage(cfg, plugins, "evaluate") as (plugins, rt, run_dir, prepared):
        model = _load_finetuned(cfg, plugins, prepared, rt, run_dir)
        return RunResult(run_dir, _evaluate_model(cfg, model, prepared, rt, run_dir, best_record(run_dir)))


def probe(cfg: RunConfig, plugins: PluginSet | None = None) -> RunResult:
    """How well a linear probe tells the data's centres apart from the features of the encoder in
    ``finetune.pretrained`` (or in ``output.dir``): writes ``centre_probe.json``
    (:mod:`sassl_core.app.probe`)."""
    with _stage(cfg, plugins, "probe") as (plugins, rt, run_dir, prepared):
        encoder = _pretrained_encoder(cfg, run_dir)
        if encoder is None:
            raise UserError(
                f"finetune.pretrained: expected the encoder to probe (--pretrained RUN), or an --out folder holding {ENCODER_FILE}"
            )
        result = centre_probe(cfg, plugins, prepared.patches, encoder, rt)
        if result is None:
            slides = {str(s) for s in prepared.patches["slide_id"]}
            centres = {str(c) for c in prepared.patches["source"]}
            raise UserError(
                f"data.dataset: the centre probe needs at least 2 centres with 2 slides each; "
                f"'{cfg.data.dataset}' has {len(centres)} centre(s) and {len(slides)} slide(s)"
            )
        result["encoder"] = str(encoder)
        if rt.is_main:
            atomic_write_text(run_dir / "centre_probe.json", json.dumps(result, indent=2) + "\n")
        return RunResult(run_dir, {"task": "centre_probe", "metrics": result}, encoder)


def heatmap(
    run_dir: Path,
    slide: Path,
    out_dir: Path | None = None,
    cam_patches: int = 4,
    target_class: int | str | None = None,
    plugins: PluginSet | None = None,
    target_mpp: float | None = None,
    fallback_mpp: float | None = None,
    device: str = "auto",
) -> list[Path]:
    """Whole-slide prediction heatmap (PNG, patch grid ``.npy``, QuPath GeoJSON tiles) and
    Grad-CAM panels of the patches scoring highest (paper Fig. 5-8).

    The model is the fine-tuned one in ``run_dir``, rebuilt from its ``inference.json`` and
    checkpoint alone (:mod:`sassl_core.app.inference`): no training data, from any folder.
    ``target_mpp`` and ``fallback_mpp`` (for slides without a resolution) default to the run's;
    ``target_class`` is a class index or name (default: the last class).
    """
    run_dir, slide = Path(run_dir), Path(slide)
    model, record = load_inference_model(run_dir, plugins or default_plugins())
    assert record.task is not None  # load_inference_model refuses a run without a fine-tuned model
    head, names = model.head, record.task.class_names
    labels = head.target_kind is TargetKind.LABEL
    if target_class is not None and not labels:
        raise UserError(
            f"--class: task '{record.task.name}' predicts {head.target_kind}s, not classes; expected no --class"
        )
    k = resolve_class(target_class, names) if labels else 0
    dev = pick_device(device)
    model.to(dev)
    if labels:
        title, label = f"{slide.name}: probability of '{names[k]}'", f"P({names[k]})"
    elif head.target_kind is TargetKind.MASK:
        title, label = f"{slide.name}: predicted {record.task.name} mask", "share of non-background pixels"
    else:
        title, label = f"{slide.name}: predicted {record.task.name} value", "predicted value"

    @torch.no_grad()
    def predict_fn(patches: np.ndarray) -> PatchScores:
        out = head.predict(model(torch.from_numpy(patches).to(dev)).float())
        value = head.heatmap_value(out, k).cpu().numpy()
        if not labels:
            return PatchScores(value, {label: value})
        probs = out.cpu().numpy()
        return PatchScores(
            value, {f"P({n})": probs[:, i] for i, n in enumerate(names)}, [names[j] for j in probs.argmax(1)]
        )

    patches = record.patches
    scores = score_slide(
        predict_fn,
        slide,
        patches.size,
        target_mpp or patches.target_mpp,
        fallback_mpp if fallback_mpp is not None else patches.fallback_mpp,
        patches.tissue_threshold,
    )
    out_dir = Path(out_dir or RunDir(run_dir).subfolder(HEATMAPS))
    written = write_slide_heatmap(scores, out_dir, slide.stem, title, label)
    if head.class_scores and cam_patches > 0:
        for i, index in enumerate(np.argsort(-scores.scores.value, kind="stable")[:cam_patches]):
            patch = read_patch(scores.rows[index], patches.size)
            cam = grad_cam(model.encoder, head, model.inputs(torch.tensor(patch[None], device=dev)), target_class=k)
            written.append(save_cam_panel(patch, cam, out_dir / f"{slide.stem}_cam{i}.png"))
    return written


def _check_before_pretraining(cfg: RunConfig, plugins: PluginSet, prepared: PreparedData) -> None:
    """What fine-tuning would refuse, refused before ``sassl run`` spends its pretraining: the
    task's options, a dataset without the targets the task learns from, the stain target."""
    plugins["task"].get(cfg.task.name).parse_options(cfg.task.options)
    task_target_kind(cfg, plugins, prepared)
    fit_stain_transform(cfg, plugins)


def run(cfg: RunConfig, plugins: PluginSet | None = None) -> RunResult:
    """The whole job: pretrain → fine-tune → evaluate → report."""
    with _stage(cfg, plugins, "run") as (plugins, rt, run_dir, prepared):
        _check_before_pretraining(cfg, plugins, prepared)
        pretrained = None
        if cfg.pretrain.steps > 0:
            pretrained = pretrain_stage(cfg, plugins, prepared, run_dir, rt).encoder_path
        return _finetune_and_evaluate(cfg, plugins, rt, run_dir, prepared, pretrained)
