"""`sassl run` end to end: every task on the synthetic default, each real-layout miniature."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.fixtures.layouts import make_breastpathq, make_camelyon16, make_panda, make_tcga
from tests.pipeline.tiny import TINY, TINY_ANY_DATASET, sassl

METRIC_KEYS = {
    "cls": {"balanced_accuracy", "accuracy", "f1_per_class", "f1_micro"},
    "reg": {"mae", "mse", "r2"},
    "seg": {"pixel_accuracy", "dice", "miou"},
}
TASK_PLOT = {"cls": "confusion_matrix.png", "reg": "scatter.png", "seg": "overlays.png"}
STEPS = ["--steps", "3", "--finetune-steps", "3"]


def _check_run(out, task):
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task
    assert METRIC_KEYS[task] <= set(metrics["metrics"])
    for key, value in metrics["metrics"].items():
        if isinstance(value, float):
            assert np.isfinite(value), key
    for name in (
        "config.yaml",
        "report.md",
        "encoder.safetensors",
        TASK_PLOT[task],
        "finetune_curves.png",
        "history_finetune.csv",
        "checkpoints/finetune_last.pt",
    ):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "| metric | value |" in report and TASK_PLOT[task] in report
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("task", ["cls", "reg", "seg"])
def test_run_every_task_on_synthetic(tmp_path, task):
    out = tmp_path / "run"
    sassl("run", "--ssl", "simsiam", "--task", task, *STEPS, "--out", out, *TINY)
    _check_run(out, task)
    assert (out / "pretrain_curves.png").exists()
    if task == "cls":  # patch labels vary within a synthetic slide: no slide-level table
        assert "slide_metrics" not in json.loads((out / "metrics.json").read_text())
        slide = sorted(Path(os.environ["SASSL_CACHE"]).glob("synthetic/*/centre0_slide0.tif"))[0]
        printed = sassl("heatmap", "--checkpoint", out, "--slide", slide, "--cam-patches", 2).out.split()
        assert [Path(p).name for p in printed] == [
            "centre0_slide0_heatmap.png",
            "centre0_slide0_heatmap.npy",
            "centre0_slide0_tiles.geojson",
            "centre0_slide0_cam0.png",
            "centre0_slide0_cam1.png",
        ]
        heat = np.asarray(Image.open(printed[0]))
        assert heat.ndim == 3 and heat.shape[0] > 32


@pytest.mark.slow
def test_run_without_residual_learning_and_repeat_from_config(tmp_path):
    out = tmp_path / "norl"
    sassl("run", "--ssl", "byol", "--task", "cls", "--no-rl", *STEPS, "--out", out, *TINY)
    first = _check_run(out, "cls")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["task"]["residual"] is False and saved["ssl"]["method"] == "byol"
    again = tmp_path / "again"
    sassl("run", "--config", out / "config.yaml", "--out", again)
    assert json.loads((again / "metrics.json").read_text())["metrics"] == first["metrics"]  # same seed, same run


@pytest.mark.slow
def test_pretrain_once_finetune_twice(tmp_path):
    pre = tmp_path / "pre"
    sassl("pretrain", "--ssl", "simclr", "--steps", 3, "--out", pre, *TINY)
    for task in ("reg", "seg"):
        out = tmp_path / task
        sassl("finetune", "--task", task, "--finetune-steps", 3, "--pretrained", pre, "--out", out, *TINY)
        _check_run_without_pretrain_outputs(out, task)
    sassl("evaluate", "--task", "seg", "--out", tmp_path / "seg", *TINY)


def _check_run_without_pretrain_outputs(out, task):
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS[task] <= set(metrics["metrics"])
    assert (out / TASK_PLOT[task]).exists() and (out / "report.md").exists()


LAYOUTS = {
    "panda": (make_panda, "cls", ["--set", "task.options.ordinal=true"]),  # ISUP grades
    "breastpathq": (make_breastpathq, "reg", ["--batch-size", "4"]),  # few patches per slide
    "camelyon16": (make_camelyon16, "seg", []),
    "tcga": (make_tcga, "cls", []),
}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_run_on_each_real_layout_miniature(tmp_path, dataset):
    make, task, extra = LAYOUTS[dataset]
    root = make(tmp_path / dataset)
    out = tmp_path / "run"
    sassl(
        "run",
        "--dataset",
        dataset,
        "--data-root",
        root,
        "--task",
        task,
        *STEPS,
        "--out",
        out,
        *TINY_ANY_DATASET,
        "--set",
        "pretrain.sources_per_batch=2",
        *extra,
    )
    metrics = _check_run(out, task)
    if dataset == "panda":
        assert set(metrics["metrics"]["qwk_by_source"]) <= {"karolinska", "radboud"}
        assert "slide_metrics" in metrics  # one ISUP grade per slide: slide-level metrics too


@pytest.mark.slow
def test_bad_slide_in_a_training_run_is_skipped_and_listed(tmp_path):
    root = make_camelyon16(tmp_path / "camelyon16")
    (root / "training" / "normal" / "broken.tif").write_bytes(b"II*\x00not a tiff at all")
    out = tmp_path / "run"
    result = sassl(
        "run",
        "--dataset",
        "camelyon16",
        "--data-root",
        root,
        "--task",
        "seg",
        *STEPS,
        "--out",
        out,
        *TINY_ANY_DATASET,
        "--set",
        "pretrain.sources_per_batch=2",
        "--set",
        "data.options={tumour_slides_only: false}",
    )
    assert "warning: skipped slide" in result.err and "broken.tif" in result.err
    skipped = json.loads((out / "skipped_slides.json").read_text())
    assert len(skipped) == 1 and "broken.tif" in skipped[0]
    assert (out / "metrics.json").exists()  # the rest of the run went on
