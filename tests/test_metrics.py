"""The paper's metrics (§4.2) against scikit-learn and hand-computed values, edge cases included."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)

from sassl_core.metrics import (
    aggregate_by_slide,
    classification_metrics,
    regression_metrics,
    segmentation_metrics,
)

labels = st.integers(2, 6).flatmap(
    lambda k: st.tuples(
        st.just(k),
        st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=2, max_size=60),
    )
)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@settings(max_examples=60, deadline=None)
@given(labels)
def test_classification_matches_sklearn(case):
    k, pairs = case
    y_true = np.array([t for t, _ in pairs])
    y_pred = np.array([p for _, p in pairs])
    m = classification_metrics(y_pred, y_true, num_classes=k)
    ref_kappa = cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=list(range(k)))
    if np.isfinite(ref_kappa):
        assert m["qwk"] == pytest.approx(ref_kappa, abs=1e-9)
    else:  # kappa's denominator is 0: our convention
        assert m["qwk"] == float(np.array_equal(y_true, y_pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    ref_f1 = f1_score(y_true, y_pred, labels=list(range(k)), average=None, zero_division=0)
    assert m["f1_per_class"] == pytest.approx(list(ref_f1))
    assert m["f1_micro"] == pytest.approx(f1_score(y_true, y_pred, average="micro"))


def test_probabilities_are_argmaxed_and_sources_split():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), size=200)
    y_true = rng.integers(0, 6, size=200)
    sources = np.where(np.arange(200) % 3 == 0, "karolinska", "radboud")
    m = classification_metrics(probs, y_true, sources=sources)
    y_pred = probs.argmax(1)
    assert m["qwk"] == pytest.approx(cohen_kappa_score(y_true, y_pred, weights="quadratic"))
    assert set(m["qwk_by_source"]) == {"karolinska", "radboud"}
    k = sources == "karolinska"
    assert m["qwk_by_source"]["karolinska"] == pytest.approx(
        cohen_kappa_score(y_true[k], y_pred[k], weights="quadratic", labels=list(range(6)))
    )
    assert len(m["f1_per_class"]) == 6
    assert all(type(v) is float for v in [m["qwk"], m["accuracy"], m["f1_micro"], *m["f1_per_class"]])


def test_class_never_predicted_has_f1_zero():
    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 2]), num_classes=4)
    assert m["f1_per_class"][2] == 0.0  # true twice, never predicted
    assert m["f1_per_class"][3] == 0.0  # never true, never predicted


def test_qwk_single_class_batch():
    assert classification_metrics(np.array([3, 3, 3]), np.array([3, 3, 3]), num_classes=6)["qwk"] == 1.0
    assert classification_metrics(np.array([2, 3, 3]), np.array([3, 3, 3]), num_classes=6)["qwk"] == 0.0


def test_qwk_perfect_and_worst():
    y = np.array([0, 1, 2, 3, 4, 5])
    assert classification_metrics(y, y, num_classes=6)["qwk"] == pytest.approx(1.0)
    assert classification_metrics(y[::-1].copy(), y, num_classes=6)["qwk"] == pytest.approx(-1.0)


def test_regression_matches_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(20):
        target, pred = rng.random(30), rng.random(30)
        m = regression_metrics(pred, target)
        assert m["mae"] == pytest.approx(mean_absolute_error(target, pred))
        assert m["mse"] == pytest.approx(mean_squared_error(target, pred))
        assert m["r2"] == pytest.approx(r2_score(target, pred))


def test_regression_constant_target():
    assert regression_metrics(np.full(4, 0.3), np.full(4, 0.3))["r2"] == 1.0
    assert regression_metrics(np.array([0.3, 0.3, 0.3, 0.4]), np.full(4, 0.3))["r2"] == 0.0
    assert regression_metrics(np.array([0.3, 0.4]), np.full(2, 0.3))["r2"] == r2_score(np.full(2, 0.3), [0.3, 0.4])


def test_segmentation_hand_computed():
    true = np.array([[[0, 1, 1], [0, 1, 0]]])
    pred = np.array([[[1, 1, 1], [0, 0, 0]]])
    m = segmentation_metrics(pred, true)
    # foreground: tp=2, fp=1, fn=1 -> dice 4/6, iou 2/4; background: tp=2, fp=1, fn=1 -> iou 2/4
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["dice"] == pytest.approx(4 / 6)
    assert m["miou"] == pytest.approx(0.5)


def test_segmentation_multiclass_dice_averages_foreground():
    true = np.array([[0, 1, 2, 2]])
    pred = np.array([[0, 1, 2, 1]])
    m = segmentation_metrics(pred, true, num_classes=3)
    assert m["dice"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert m["miou"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_segmentation_empty_masks():
    empty = np.zeros((2, 4, 4), np.int64)
    assert segmentation_metrics(empty, empty) == {"pixel_accuracy": 1.0, "dice": 1.0, "miou": 1.0}
    pred = empty.copy()
    pred[0, 0, 0] = 1
    m = segmentation_metrics(pred, empty)
    assert m["dice"] == 0.0 and m["miou"] == pytest.approx((31 / 32) / 2)


def test_aggregate_by_slide_mean_probability():
    ids, means = aggregate_by_slide(
        ["s2", "s1", "s2", "s2"], np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    )
    assert list(ids) == ["s1", "s2"]
    assert np.allclose(means, [[0.6, 0.4], [0.3, 0.7]])
