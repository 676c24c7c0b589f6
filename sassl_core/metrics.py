"""The paper's evaluation metrics (§4.2), computed with scikit-learn: numpy in, plain Python floats out.

Classification (PANDA ISUP grade, TCGA tumour type): accuracy, balanced accuracy, per-class,
macro and micro F1, AUROC (one-vs-rest macro; binary: the positive class), and for ordinal
classes quadratic weighted kappa overall and per data provider (QWK_k, QWK_r). Regression
(BreastPathQ cellularity): MAE, MSE, R². Segmentation (CAMELYON16): pixel accuracy, Dice, mean
IoU (definitions in :data:`SEGMENTATION_DEFINITIONS`). :func:`bootstrap_interval` gives the 95 %
interval of a headline metric.

Edge-case conventions (all deterministic, none returns nan):

* QWK with a zero chance-disagreement term (e.g. a single class in the batch): 1.0 when the
  predictions equal the labels exactly, else 0.0.
* F1 of a class never true and never predicted: 0.0 (scikit-learn's ``zero_division=0``).
* AUROC: the mean over the classes that are both present and absent among the true labels;
  ``None`` when there is no such class (a single true class).
* R² with a constant target: 1.0 when the predictions equal it exactly, else 0.0 (scikit-learn's
  ``r2_score`` with ``force_finite=True``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn import metrics as skm  # type: ignore[import-untyped]

#: What ``dice`` and ``miou`` mean, as the report states it.
SEGMENTATION_DEFINITIONS = (
    "Dice: per patch, the mean over foreground classes (1..K-1) of 2|P∩T|/(|P|+|T|), then averaged over patches; "
    "mIoU: per patch, the mean over all classes, background included, of |P∩T|/|P∪T|, then averaged over patches. "
    "A class absent from both prediction and truth of a patch scores 1 (monai's DiceMetric/MeanIoU with "
    "ignore_empty=False); pixels equal to the task's ignore value count nowhere."
)


def _labels(pred: np.ndarray) -> np.ndarray:
    """Class labels from labels ``(N,)`` or probabilities/logits ``(N, K)`` (argmax)."""
    pred = np.asarray(pred)
    return pred.argmax(axis=1) if pred.ndim == 2 else pred.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts, rows = truth, columns = prediction."""
    labels = list(range(num_classes))
    return skm.confusion_matrix(np.asarray(y_true).ravel(), np.asarray(y_pred).ravel(), labels=labels)


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights ``w_ij = (i-j)² / (K-1)²`` (paper §4.2).

    Zero chance disagreement: 1.0 on perfect agreement, else 0.0.

    >>> quadratic_weighted_kappa(np.array([0, 1, 2]), np.array([0, 1, 2]), 3)
    1.0
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # undefined kappa: the convention below
        kappa = float(skm.cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=list(range(num_classes))))
    if not np.isfinite(kappa):
        return 1.0 if np.array_equal(y_true, y_pred) else 0.0
    return kappa


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present among the true labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a predicted class absent from the truth
        return float(skm.balanced_accuracy_score(y_true, y_pred))


def auroc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """One-vs-rest macro AUROC of ``(N, K)`` probabilities; binary: the AUROC of class 1.

    Classes that are never true (or always true) have no AUROC and are left out of the mean;
    ``None`` when no class has one.
    """
    y_true, probs = np.asarray(y_true), np.asarray(probs, np.float64)
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    scores = [skm.roc_auc_score(y_true == c, probs[:, c]) for c in classes if 0 < (y_true == c).sum() < len(y_true)]
    return float(np.mean(scores)) if scores else None


def classification_metrics(
    probs_or_labels_pred: np.ndarray,
    y_true: np.ndarray,
    sources: Sequence | np.ndarray | None = None,
    num_classes: int | None = None,
    ordinal: bool = True,
) -> dict:
    """Accuracy, balanced accuracy, per-class / macro / micro F1, AUROC (from probabilities), and
    with ``ordinal`` QWK overall and per source (first, the headline of graded labels).

    ``probs_or_labels_pred``: labels ``(N,)`` or probabilities ``(N, K)`` (``auroc`` needs
    probabilities); ``sources`` (e.g. PANDA's data_provider) gives ``qwk_by_source`` keyed by
    ``str(source)``. ``num_classes`` defaults to ``K`` of the probabilities or to the largest
    label + 1.

    >>> m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 2]), num_classes=3)
    >>> round(m["accuracy"], 3), m["f1_per_class"]
    (0.667, [1.0, 0.6666666666666666, 0.0])
    """
    pred_in = np.asarray(probs_or_labels_pred)
    y_pred, y_true = _labels(pred_in), np.asarray(y_true, np.int64)
    if num_classes is None:
        largest = max(y_pred.max(initial=0), y_true.max(initial=0))
        num_classes = pred_in.shape[1] if pred_in.ndim == 2 else int(largest) + 1
    labels = list(range(num_classes))
    out: dict = {}
    if ordinal:
        out["qwk"] = quadratic_weighted_kappa(y_true, y_pred, num_classes)
        by_source: dict[str, float] = {}
        if sources is not None:
            sources = np.asarray(sources)
            for source in np.unique(sources):
                mask = sources == source
                by_source[str(source)] = quadratic_weighted_kappa(y_true[mask], y_pred[mask], num_classes)
        out["qwk_by_source"] = by_source
    f1 = skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out |= {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "f1_per_class": [float(v) for v in f1],
        "f1_macro": float(f1.mean()),
        "f1_micro": float(skm.f1_score(y_true, y_pred, labels=labels, average="micro", zero_division=0)),
    }
    if pred_in.ndim == 2:
        out["auroc"] = auroc(y_true, pred_in)
    return out


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """MAE, MSE and R² (paper §4.2); constant target: R² = 1.0 if exact, else 0.0.

    >>> regression_metrics(np.array([0.5, 0.5]), np.array([0.0, 1.0]))
    {'mae': 0.5, 'mse': 0.25, 'r2': 0.0}
    """
    pred = np.asarray(pred, np.float64).ravel()
    target = np.asarray(target, np.float64).ravel()
    return {
        "mae": float(skm.mean_absolute_error(target, pred)),
        "mse": float(skm.mean_squared_error(target, pred)),
        "r2": float(skm.r2_score(target, pred, force_finite=True)) if len(target) > 1 else float(target[0] == pred[0]),
    }


def segmentation_scores(
    pred_masks: np.ndarray, true_masks: np.ndarray, num_classes: int = 2, ignore_index: int | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-patch Dice ``(N,)``, per-patch IoU ``(N,)`` and the pooled pixel accuracy, as
    defined in :data:`SEGMENTATION_DEFINITIONS`."""
    pred = np.asarray(pred_masks, np.int64).reshape(len(pred_masks), -1)
    true = np.asarray(true_masks, np.int64).reshape(len(true_masks), -1)
    keep = true != ignore_index if ignore_index is not None else np.ones_like(true, bool)
    image = np.broadcast_to(np.arange(len(true))[:, None], true.shape)
    k = num_classes
    idx = (image[keep] * k + true[keep]) * k + pred[keep]
    cm = np.bincount(idx, minlength=len(true) * k * k).reshape(len(true), k, k)  # per patch
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    pred_plus_true = cm.sum(1) + cm.sum(2)
    dice = np.divide(2 * tp, pred_plus_true, out=np.ones_like(tp), where=pred_plus_true > 0)
    union = pred_plus_true - tp
    iou = np.divide(tp, union, out=np.ones_like(tp), where=union > 0)
    accuracy = float(tp.sum() / max(keep.sum(), 1))
    return (dice[:, 1:] if k > 1 else dice).mean(1), iou.mean(1), accuracy


def segmentation_metrics(
    pred_masks: np.ndarray, true_masks: np.ndarray, num_classes: int = 2, ignore_index: int | None = None
) -> dict:
    """Pixel accuracy, foreground Dice and mean IoU (:data:`SEGMENTATION_DEFINITIONS`).

    >>> segmentation_metrics(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]]))
    {'dice': 0.6666666666666666, 'miou': 0.5833333333333333, 'pixel_accuracy': 0.75}
    """
    dice, iou, accuracy = segmentation_scores(pred_masks, true_masks, num_classes, ignore_index)
    return {"dice": float(dice.mean()), "miou": float(iou.mean()), "pixel_accuracy": accuracy}


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float | None],
    n: int,
    groups: np.ndarray | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """The 95 % percentile interval of ``statistic(rows)`` over ``resamples`` seeded bootstrap
    resamples of ``n`` rows, drawn by group (e.g. slide: whole slides with replacement) when
    ``groups`` is given; ``None`` when no resample has a value.

    >>> values = np.arange(10.0)
    >>> low, high = bootstrap_interval(lambda rows: values[rows].mean(), 10)
    >>> low < 4.5 < high
    True
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    values = []
    for _ in range(resamples):
        picked = rng.integers(0, len(members), len(members))
        value = statistic(np.concatenate([members[g] for g in picked]))
        if value is not None:
            values.append(value)
    if not values:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def aggregate_by_slide(slide_ids: Sequence | np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slide-level predictions: the mean patch probability per slide (PANDA/TCGA slide metrics).

    Returns the sorted unique ``slide_ids`` and their mean ``probs`` (``(S, K)`` or ``(S,)``).

    >>> aggregate_by_slide(["b", "a", "b"], np.array([0.2, 0.5, 0.4]))
    (array(['a', 'b'], dtype='<U1'), array([0.5, 0.3]))
    """
    ids, inverse = np.unique(np.asarray(slide_ids), return_inverse=True)
    probs = np.asarray(probs, np.float64)
    flat = probs.reshape(len(probs), -1)
    sums = np.zeros((len(ids), flat.shape[1]))
    np.add.at(sums, inverse.ravel(), flat)
    means = sums / np.bincount(inverse.ravel(), minlength=len(ids))[:, None]
    return ids, means.reshape((len(ids),) + probs.shape[1:])
