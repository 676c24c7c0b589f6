"""Evaluation outputs: predictions per patch and per slide, the headline metric with its bootstrap
interval, the weights kept by validation, and ``sassl evaluate`` reproducing the run's numbers."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from sassl_core.app.report import write_report
from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.interfaces import PreparedData, TargetKind
from sassl_core.train.evaluate import predict
from sassl_core.train.finetune import check_labels
from sassl_core.wsi.patches import PatchTable
from tests.pipeline.tiny import TINY, sassl


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_run_writes_predictions_and_headline_and_evaluate_reproduces_it(tmp_path):
    out = tmp_path / "run"
    sassl("run", "--steps", 0, "--finetune-steps", 3, "--set", "finetune.val_every=2", "--out", out, *TINY)
    metrics = json.loads((out / "metrics.json").read_text())
    head = metrics["headline"]
    assert head["metric"] == "balanced_accuracy" and head["value"] == metrics["metrics"]["balanced_accuracy"]
    assert head["resamples"] == 1000 and head["resampled_by"] == "slide"
    assert head["ci95"][0] <= head["value"] <= head["ci95"][1]
    assert metrics["best_step"] in (2, 3) and "val_balanced_accuracy" in metrics
    assert (out / "checkpoints" / "finetune_best.pt").is_file()

    patches = _rows(out / "predictions.csv")
    assert len(patches) == metrics["n_patches"]
    assert list(patches[0])[:8] == ["index", "slide_id", "x", "y", "source", "truth", "prediction", "prob_low"]
    probs = np.array([[float(r[k]) for k in r if k.startswith("prob_")] for r in patches])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    names = [k.removeprefix("prob_") for k in patches[0] if k.startswith("prob_")]
    assert [r["prediction"] for r in patches] == [names[i] for i in probs.argmax(1)]
    accuracy = np.mean([r["truth"] == r["prediction"] for r in patches])
    assert accuracy == pytest.approx(metrics["metrics"]["accuracy"])
    slides = _rows(out / "predictions_slides.csv")
    assert sorted(r["slide_id"] for r in slides) == sorted({r["slide_id"] for r in patches})
    assert sum(int(r["n_patches"]) for r in slides) == len(patches)
    report = (out / "report.md").read_text()
    assert f"Headline: **balanced_accuracy {head['value']:.4f}** (95 % CI" in report and "predictions.csv" in report
    assert f"step {metrics['best_step']}, the best on validation" in report

    written = (out / "metrics.json").read_text()
    again = sassl("evaluate", "--out", out, "--quiet")  # no flags: the run's own settings
    assert (out / "metrics.json").read_text() == written and "note:" not in again.err
    override = sassl("evaluate", "--out", out, "--quiet", "--batch-size", 5)
    assert "note: finetune.batch_size=5 from the command line, the run used 8" in override.err
    assert (out / "metrics.json").read_text() == written  # batching changes no prediction


def _prepared(labels, splits=None) -> PreparedData:
    rows = [
        {
            "slide": "s.tif",
            "slide_id": f"s{i}",
            "x": 0,
            "y": 0,
            "level": 0,
            "read_size": 8,
            "source": "c",
            "label": int(v),
            "split": (splits or {}).get(i, "train"),
        }
        for i, v in enumerate(labels)
    ]
    return PreparedData(PatchTable.from_rows(rows, 8), (TargetKind.LABEL,), class_names=["a", "b", "c"])


@pytest.mark.parametrize("bad", [3, 7, -2])
def test_out_of_range_label_is_one_line_naming_dataset_and_value(bad):
    cfg = RunConfig.model_validate({"data": {"dataset": "mylab"}})
    check_labels(cfg, _prepared([0, 1, 2, -1]))  # -1: unknown, allowed
    with pytest.raises(UserError) as err:
        check_labels(cfg, _prepared([0, bad, 1]))
    assert str(err.value) == f"data.dataset: 'mylab' expected labels 0..2 (or -1: unknown), found {bad}"


def test_empty_evaluation_split_is_an_error_not_a_score():
    cfg = RunConfig.model_validate({"data": {"dataset": "mylab"}})
    model = SimpleNamespace(head=SimpleNamespace(target_kind=TargetKind.LABEL))
    unlabelled_test = _prepared([0, 1, -1], splits={2: "test"})
    with pytest.raises(UserError, match="expected labelled 'test' patches for task 'cls', found none in 'mylab'"):
        predict(cfg, model, unlabelled_test, rt=None)
    with pytest.raises(UserError, match="expected 'test' or 'val' patches to evaluate on, found none in 'mylab'"):
        predict(cfg, model, _prepared([0, 1]), rt=None)


def test_report_states_the_dice_and_iou_definitions(tmp_path):
    cfg = RunConfig.model_validate({"task": {"name": "seg"}})
    metrics = {"split": "test", "n_patches": 2, "metrics": {"dice": 0.5, "miou": 0.6, "pixel_accuracy": 0.9}}
    text = write_report(cfg, metrics, tmp_path, []).read_text()
    assert (
        "Dice: per patch, the mean over foreground classes" in text
        and "mIoU: per patch, the mean over all classes" in text
    )
