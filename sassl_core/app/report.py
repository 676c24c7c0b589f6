"""Run outputs for people: loss-curve, confusion-matrix, scatter and overlay PNGs and ``report.md``."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from sassl_core.config import RunConfig
from sassl_core.files import atomic_write, atomic_write_text
from sassl_core.interfaces import TargetKind
from sassl_core.metrics import SEGMENTATION_DEFINITIONS, confusion_matrix
from sassl_core.train.evaluate import Predictions

CURVE_KEYS = ("L_ssl", "L_D", "a_same", "a_diff", "loss")


def read_history(run_dir: Path, stage: str) -> list[dict]:
    path = Path(run_dir) / f"history_{stage}.csv"
    if not path.exists():
        return []
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def _save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG (atomically: a link at ``path`` is replaced, not followed)."""
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def save_png(image_uint8: np.ndarray, path: Path) -> None:
    """Write an ``(H, W, 3)`` uint8 image as a PNG, atomically like every figure."""
    atomic_write(path, lambda tmp: Image.fromarray(image_uint8).save(tmp, format="PNG"))


def plot_curves(rows: list[dict] | dict[str, list[dict]], title: str, path: Path) -> bool:
    """One panel per logged quantity of a training history; several labelled histories (e.g.
    one per benchmark arm) are overlaid, each smoothed over a window of 1/20 of its steps."""
    histories = rows if isinstance(rows, dict) else {"": rows}
    keys = [k for k in CURVE_KEYS if any(k in r for h in histories.values() for r in h)]
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for colour, (label, history) in enumerate(histories.items()):
            pts = [(r["step"], r[key]) for r in history if key in r]
            if pts:
                steps, values = np.array(pts, dtype=float).T
                window = max(1, len(values) // 20) if len(histories) > 1 else 1
                smooth = np.convolve(values, np.ones(window) / window, mode="valid")
                ax.plot(steps[window - 1 :], smooth, lw=1, color=f"C{colour % 10}", label=label or None)
        ax.set_title(key)
        ax.set_xlabel("step")
    if len(histories) > 1:  # one colour per history in every panel; the legend where all of them are
        max(axes[0], key=lambda ax: len(ax.lines)).legend(fontsize=6)
    fig.suptitle(title)
    _save(fig, path)
    return True


def plot_confusion(pred: Predictions, class_names: list[str], path: Path) -> None:
    k = len(class_names)
    matrix = confusion_matrix(pred.targets, pred.predictions.argmax(1), k)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 1 + 0.6 * k))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    _save(fig, path)


def plot_scatter(pred: Predictions, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(3.5, 3.5))
    ax.scatter(pred.targets, pred.predictions, s=6, alpha=0.6)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    _save(fig, path)


def plot_overlays(pred: Predictions, path: Path) -> None:
    n = len(pred.images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        for row, (mask, colour) in enumerate(((pred.targets[i], "lime"), (pred.predictions[i], "red"))):
            ax = axes[row][i]
            ax.imshow(pred.images[i])
            ax.contour(mask > 0, levels=[0.5], colors=colour, linewidths=0.8)
            ax.axis("off")
    axes[0][0].set_title("truth", fontsize=8, loc="left")
    axes[1][0].set_title("prediction", fontsize=8, loc="left")
    _save(fig, path)


#: The picture of each kind of target: its file name and how it is drawn.
TASK_PLOTS = {
    TargetKind.LABEL: ("confusion_matrix.png", plot_confusion),
    TargetKind.TARGET: ("scatter.png", lambda pred, class_names, path: plot_scatter(pred, path)),
    TargetKind.MASK: ("overlays.png", lambda pred, class_names, path: plot_overlays(pred, path)),
}


def task_plot(pred: Predictions, target_kind: TargetKind, class_names: list[str], run_dir: Path) -> str:
    """The picture for the head's kind of target; returns its file name."""
    name, plot = TASK_PLOTS[target_kind]
    plot(pred, class_names, run_dir / name)
    return name


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _headline_lines(metrics: dict) -> list[str]:
    """The headline metric with its bootstrap 95 % interval."""
    head = metrics.get("headline")
    if not head:
        return []
    ci = head.get("ci95")
    interval = f"95 % CI {_fmt(ci[0])}–{_fmt(ci[1])}" if ci else "no interval (a single class or slide)"
    return [
        "",
        f"Headline: **{head['metric']} {_fmt(head['value'])}** ({interval}; {head['resamples']} bootstrap "
        f"resamples by {head['resampled_by']}, seeded).",
    ]


def _selection_line(metrics: dict) -> str:
    """Which fine-tuned weights were evaluated."""
    val = {k: v for k, v in metrics.items() if k.startswith("val_")}
    if "best_step" not in metrics:
        return "Weights evaluated: the last fine-tuning step's (no validation patches)."
    return f"Weights evaluated: step {metrics['best_step']}, the best on validation ({_fmt(val)})."


def write_report(cfg: RunConfig, metrics: dict, run_dir: Path, images: list[str]) -> Path:
    lines = [
        f"# sassl run: {cfg.ssl.method}{' (SASSL)' if cfg.sassl.enabled else ''} → {cfg.task.name}",
        "",
        f"Dataset `{cfg.data.dataset}`, backbone `{cfg.backbone.name}`, image size {cfg.data.image_size} px, "
        f"residual learning {'on' if cfg.task.residual else 'off (w/o RL)'}, "
        f"{cfg.pretrain.steps} pretraining + {cfg.finetune.steps} fine-tuning steps, seed {cfg.trainer.seed}.",
        "",
        f"## Metrics ({metrics.get('split')} split, {metrics.get('n_patches')} patches)",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in metrics["metrics"].items()],
    ]
    lines += _headline_lines(metrics)
    if cfg.finetune.val_fraction > 0 or "best_step" in metrics:
        lines += ["", _selection_line(metrics)]
    if "dice" in metrics["metrics"]:
        lines += ["", SEGMENTATION_DEFINITIONS]
    if "slide_metrics" in metrics:
        lines += [
            "",
            f"Slide level ({metrics['n_slides']} slides, mean patch probability):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics["slide_metrics"].items()]
    lines += ["", "Per-patch and per-slide predictions: `predictions.csv`, `predictions_slides.csv`."]
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in images]
    lines += ["", "## Configuration", "", "The full resolved configuration is in `config.yaml`.", ""]
    path = Path(run_dir) / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
