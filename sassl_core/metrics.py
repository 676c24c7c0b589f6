"""The paper's evaluation metrics (§4.2): numpy in, plain Python floats out.

Classification (PANDA ISUP grade, TCGA tumour type): quadratic weighted kappa overall and per
data provider (QWK_k, QWK_r), accuracy, per-class F1, micro F1. Regression (BreastPathQ
cellularity): MAE, MSE, R². Segmentation (CAMELYON16): pixel accuracy, Dice, mean IoU.

Edge-case conventions (all deterministic, none returns nan):

* QWK with a zero chance-disagreement term (e.g. a single class in the batch): 1.0 when the
  predictions equal the labels exactly, else 0.0.
* F1 of a class with ``2·TP + FP + FN = 0`` (never true, never predicted): 0.0; a class that is
  true but never predicted gets 0.0 by the formula (as scikit-learn with ``zero_division=0``).
* R² with a constant target: 1.0 when the predictions equal it exactly, else 0.0 (as
  scikit-learn's ``r2_score`` with ``force_finite=True``).
* Dice and IoU pool every pixel of every image per class (dataset-level, not a mean of per-image
  scores); a class absent from both prediction and truth scores 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _labels(pred: np.ndarray) -> np.ndarray:
    """Class labels from labels ``(N,)`` or probabilities/logits ``(N, K)`` (argmax)."""
    pred = np.asarray(pred)
    return pred.argmax(axis=1) if pred.ndim == 2 else pred.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts, rows = truth, columns = prediction."""
    idx = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx.ravel(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights ``w_ij = (i-j)² / (K-1)²`` (paper §4.2).

    ``kappa = 1 - Σ w·O / Σ w·E`` with ``E`` the outer product of the marginals scaled to ``N``.
    Zero chance disagreement: 1.0 on perfect agreement, else 0.0.

    >>> quadratic_weighted_kappa(np.array([0, 1, 2]), np.array([0, 1, 2]), 3)
    1.0
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    observed = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(observed.sum(), 1.0)
    i, j = np.indices((num_classes, num_classes))
    weights = (i - j) ** 2 / max(num_classes - 1, 1) ** 2
    chance = float((weights * expected).sum())
    if chance == 0.0:
        return 1.0 if np.array_equal(y_true, y_pred) else 0.0
    return float(1.0 - (weights * observed).sum() / chance)


def classification_metrics(
    probs_or_labels_pred: np.ndarray,
    y_true: np.ndarray,
    sources: Sequence | np.ndarray | None = None,
    num_classes: int | None = None,
) -> dict:
    """QWK (overall and per source), accuracy, per-class F1 and micro F1.

    ``probs_or_labels_pred``: labels ``(N,)`` or probabilities ``(N, K)``; ``sources`` (e.g.
    PANDA's data_provider) gives ``qwk_by_source`` keyed by ``str(source)``. ``num_classes``
    defaults to ``K`` of the probabilities or to the largest label + 1.

    >>> m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 2]), num_classes=3)
    >>> round(m["accuracy"], 3), m["f1_per_class"]
    (0.667, [1.0, 0.6666666666666666, 0.0])
    """
    pred_in = np.asarray(probs_or_labels_pred)
    y_pred, y_true = _labels(pred_in), np.asarray(y_true, np.int64)
    if num_classes is None:
        largest = max(y_pred.max(initial=0), y_true.max(initial=0))
        num_classes = pred_in.shape[1] if pred_in.ndim == 2 else int(largest) + 1
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)  # 2·TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(num_classes), where=denom > 0)
    accuracy = float(tp.sum() / max(cm.sum(), 1))
    by_source: dict[str, float] = {}
    if sources is not None:
        sources = np.asarray(sources)
        for source in np.unique(sources):
            mask = sources == source
            by_source[str(source)] = quadratic_weighted_kappa(y_true[mask], y_pred[mask], num_classes)
    return {
        "qwk": quadratic_weighted_kappa(y_true, y_pred, num_classes),
        "qwk_by_source": by_source,
        "accuracy": accuracy,
        "f1_per_class": [float(v) for v in f1],
        "f1_micro": accuracy,  # single-label: micro precision = micro recall = accuracy
    }


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """MAE, MSE and R² (paper §4.2); constant target: R² = 1.0 if exact, else 0.0.

    >>> regression_metrics(np.array([0.5, 0.5]), np.array([0.0, 1.0]))
    {'mae': 0.5, 'mse': 0.25, 'r2': 0.0}
    """
    pred = np.asarray(pred, np.float64).ravel()
    target = np.asarray(target, np.float64).ravel()
    err = pred - target
    ss_res = float((err**2).sum())
    ss_tot = float(((target - target.mean()) ** 2).sum())
    if ss_tot == 0.0:
        r2 = 1.0 if ss_res == 0.0 else 0.0
    else:
        r2 = 1.0 - ss_res / ss_tot
    return {"mae": float(np.abs(err).mean()), "mse": float((err**2).mean()), "r2": r2}


def segmentation_metrics(pred_masks: np.ndarray, true_masks: np.ndarray, num_classes: int = 2) -> dict:
    """Pixel accuracy, Dice of the foreground class(es), mean IoU over all classes.

    Pixels of all images are pooled per class. ``dice`` averages classes ``1..K-1`` (the
    foreground; for binary masks it is the tumour Dice); ``miou`` averages all ``K`` classes,
    background included. A class absent from both prediction and truth scores 1.0.

    >>> segmentation_metrics(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]]))
    {'pixel_accuracy': 0.75, 'dice': 0.6666666666666666, 'miou': 0.5833333333333333}
    """
    cm = confusion_matrix(np.asarray(true_masks).ravel(), np.asarray(pred_masks).ravel(), num_classes)
    tp = np.diag(cm).astype(np.float64)
    pred_plus_true = cm.sum(0) + cm.sum(1)
    dice = np.divide(2 * tp, pred_plus_true, out=np.ones(num_classes), where=pred_plus_true > 0)
    union = pred_plus_true - tp
    iou = np.divide(tp, union, out=np.ones(num_classes), where=union > 0)
    return {
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "dice": float(dice[1:].mean() if num_classes > 1 else dice.mean()),
        "miou": float(iou.mean()),
    }


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
