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

from sassl_core.app.heatmap import grad_cam, save_cam_overlay, slide_heatmap
from sassl_core.app.probe import centre_probe
from sassl_core.app.report import plot_curves, read_history, task_plot, write_report
from sassl_core.config import RunConfig, load_config
from sassl_core.errors import UserError
from sassl_core.files import atomic_write_text
from sassl_core.interfaces import PreparedData
from sassl_core.plugins import PluginSet, default_plugins
from sassl_core.train.backbone import TIMM_PREFIX
from sassl_core.train.checkpoint import load_checkpoint
from sassl_core.train.data import prepare_dataset
from sassl_core.train.evaluate import compute_metrics, predict, write_metrics
from sassl_core.train.finetune import build_downstream, resolve_pretrained
from sassl_core.train.finetune import finetune as finetune_stage
from sassl_core.train.pretrain import pretrain as pretrain_stage
from sassl_core.train.rundir import CHECKPOINTS, ENCODER_FILE, HEATMAPS, MARKER, RunDir, config_name
from sassl_core.train.runtime import Runtime, init_runtime, seed_everything
from sassl_core.wsi.cache import read_patch
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import tile_slide

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
    if not (cfg.output.resume and config.exists()):  # a resumed run keeps the settings it started with
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


@contextmanager
def _stage(
    cfg: RunConfig, plugins: PluginSet | None, stage: str
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
    check_run_dir(cfg, stage)  # ... or not this stage's to write
    _check_names(cfg, plugins, stage)
    prepared = prepare_dataset(cfg, plugins)
    for item in prepared.skipped:
        print(f"warning: skipped slide {item}", file=sys.stderr)
    created = not run.path.exists()
    fresh = False
    try:
        with run.locked() if rt.is_main else contextlib.nullcontext():
            fresh = rt.is_main and _open_run_dir(cfg, run, stage, prepared)
            yield plugins, rt, run.path, prepared
    except UserError:
        if fresh and run.produced_nothing(stage):
            run.discard(created)
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
    metrics = _evaluate_model(cfg, result.model, prepared, rt, run_dir) if rt.is_main else None
    return RunResult(run_dir, metrics, pretrained)


def _evaluate_model(cfg, model, prepared, rt, run_dir) -> dict:
    predictions = predict(cfg, model, prepared, rt)
    metrics = compute_metrics(cfg, model, predictions)
    write_metrics(metrics, run_dir / "metrics.json")
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
    path = run_dir / CHECKPOINTS / "finetune_last.pt"
    state = load_checkpoint(path)
    model = build_downstream(cfg, plugins, prepared, None).to(rt.device)
    try:
        model.load_state_dict(state["modules"]["model"])
    except (KeyError, RuntimeError) as err:
        raise UserError(
            f"{path}: does not fit backbone '{cfg.backbone.name}' / task '{cfg.task.name}' ({str(err).splitlines()[0][:160]})"
        ) from None
    return model.eval()


def evaluate(cfg: RunConfig, plugins: PluginSet | None = None) -> RunResult:
    """Re-evaluate the fine-tuned model saved in ``output.dir``."""
    with _stage(cfg, plugins, "evaluate") as (plugins, rt, run_dir, prepared):
        model = _load_finetuned(cfg, plugins, prepared, rt, run_dir)
        return RunResult(run_dir, _evaluate_model(cfg, model, prepared, rt, run_dir))


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
    target_class: int | None = None,
    plugins: PluginSet | None = None,
) -> list[Path]:
    """Whole-slide prediction heatmap and Grad-CAM overlays of a few patches (paper Fig. 5-8).

    The model is the fine-tuned one in ``run_dir``, rebuilt from the run's own config.
    """
    run_dir = Path(run_dir)
    config = run_dir / "config_finetune.yaml"
    cfg = load_config([config if config.exists() else run_dir / "config.yaml"], {"output": {"quiet": True}})
    plugins = plugins or default_plugins()
    rt = init_runtime(cfg.trainer.device)
    prepared = prepare_dataset(cfg, plugins)
    model = _load_finetuned(cfg, plugins, prepared, rt, run_dir)
    out_dir = Path(out_dir or RunDir(run_dir).subfolder(HEATMAPS))
    k = prepared.num_classes - 1 if target_class is None else target_class

    @torch.no_grad()
    def predict_fn(patches: np.ndarray) -> np.ndarray:
        out = model.head.predict(model(torch.from_numpy(patches).to(rt.device)).float())
        return model.head.heatmap_value(out, k).cpu().numpy()

    written = [out_dir / f"{slide.stem}_heatmap.png"]
    slide_heatmap(
        predict_fn,
        slide,
        cfg.data.image_size,
        cfg.data.target_mpp,
        written[0],
        fallback_mpp=cfg.data.mpp,
        tissue_threshold=cfg.data.tissue_threshold,
    )
    if model.head.class_scores and cam_patches:
        reader = open_slide(slide, cfg.data.mpp)
        rows = tile_slide(
            reader,
            cfg.data.image_size,
            cfg.data.target_mpp,
            cfg.data.tissue_threshold,
            max_patches=cam_patches,
            seed=cfg.trainer.seed,
        )
        for i, row in enumerate(rows):
            patch = read_patch(row, cfg.data.image_size)
            image = model.inputs(torch.tensor(patch[None], device=rt.device))
            cam = grad_cam(model.encoder, model.head, image, target_class=k)
            written.append(save_cam_overlay(patch, cam, out_dir / f"{slide.stem}_cam{i}.png"))
    return written


def run(cfg: RunConfig, plugins: PluginSet | None = None) -> RunResult:
    """The whole job: pretrain → fine-tune → evaluate → report."""
    with _stage(cfg, plugins, "run") as (plugins, rt, run_dir, prepared):
        pretrained = None
        if cfg.pretrain.steps > 0:
            pretrained = pretrain_stage(cfg, plugins, prepared, run_dir, rt).encoder_path
        return _finetune_and_evaluate(cfg, plugins, rt, run_dir, prepared, pretrained)
