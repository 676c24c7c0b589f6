"""The paper's metrics (§4.2) against scikit-learn and hand-computed values, edge cases included."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from sassl_core.metrics import (
    aggregate_by_slide,
    bootstrap_interval,
    classification_metrics,
    regression_metrics,
    segmentation_metrics,
    segmentation_scores,
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


def test_segmentation_is_per_patch_then_averaged():
    empty = np.zeros((2, 4, 4), np.int64)
    assert segmentation_metrics(empty, empty) == {"dice": 1.0, "miou": 1.0, "pixel_accuracy": 1.0}
    pred = empty.copy()
    pred[0, 0, 0] = 1  # patch 0: one false-positive pixel; patch 1: empty in both (scores 1)
    m = segmentation_metrics(pred, empty)
    assert m["dice"] == pytest.approx((0.0 + 1.0) / 2)
    assert m["miou"] == pytest.approx(((15 / 16 + 0.0) / 2 + 1.0) / 2)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_segmentation_matches_monai_dice_and_mean_iou():
    from monai.metrics import DiceMetric, MeanIoU
    from monai.networks.utils import one_hot

    rng = np.random.default_rng(3)
    true = rng.integers(0, 3, (6, 8, 8))
    pred = np.where(rng.random((6, 8, 8)) < 0.7, true, rng.integers(0, 3, (6, 8, 8)))
    true[0] = 0  # a patch without foreground in truth
    pred[1] = true[1] = 0  # a patch without foreground anywhere
    hot = lambda x: one_hot(torch.as_tensor(x)[:, None], num_classes=3)
    dice = DiceMetric(include_background=False, ignore_empty=False)(hot(pred), hot(true)).mean(1)
    iou = MeanIoU(include_background=True, ignore_empty=False)(hot(pred), hot(true)).mean(1)
    m = segmentation_metrics(pred, true, num_classes=3)
    assert m["dice"] == pytest.approx(float(dice.mean()))
    assert m["miou"] == pytest.approx(float(iou.mean()))


def test_segmentation_ignore_value_counts_nowhere():
    true = np.array([[[1, 1, 255, 255]]])
    pred = np.array([[[1, 1, 0, 1]]])
    m = segmentation_metrics(pred, true, num_classes=2, ignore_index=255)
    assert m == {"dice": 1.0, "miou": 1.0, "pixel_accuracy": 1.0}
    dice, iou, _ = segmentation_scores(pred, true, 2, 255)
    assert dice.tolist() == [1.0] and iou.tolist() == [1.0]


def test_balanced_accuracy_macro_f1_and_auroc_match_sklearn():
    rng = np.random.default_rng(2)
    for k in (2, 4):
        probs = rng.dirichlet(np.ones(k), size=120)
        y_true = np.where(rng.random(120) < 0.5, probs.argmax(1), rng.integers(0, k, 120))
        m = classification_metrics(probs, y_true, num_classes=k)
        y_pred = probs.argmax(1)
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro", labels=list(range(k))))
        ref = roc_auc_score(y_true, probs[:, 1]) if k == 2 else roc_auc_score(y_true, probs, multi_class="ovr")
        assert m["auroc"] == pytest.approx(ref)


def test_auroc_leaves_out_absent_classes_and_is_none_for_one_class():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    y_true = np.array([0, 1, 0, 1])  # class 2 never true
    m = classification_metrics(probs, y_true)
    assert m["auroc"] == pytest.approx(np.mean([roc_auc_score(y_true == c, probs[:, c]) for c in (0, 1)]))
    assert classification_metrics(probs, np.zeros(4, int))["auroc"] is None


def test_qwk_only_for_ordinal_classes():
    y = np.array([0, 1, 2, 2])
    assert "qwk" in classification_metrics(y, y, sources=["a"] * 4, num_classes=3)
    nominal = classification_metrics(y, y, sources=["a"] * 4, num_classes=3, ordinal=False)
    assert "qwk" not in nominal and "qwk_by_source" not in nominal and nominal["balanced_accuracy"] == 1.0


def test_bootstrap_interval_is_seeded_and_resamples_groups():
    values = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    groups = np.array(["a", "a", "b", "b", "b", "b"])
    mean = lambda rows: float(values[rows].mean())
    first = bootstrap_interval(mean, 6, groups, resamples=200, seed=1)
    assert first == bootstrap_interval(mean, 6, groups, resamples=200, seed=1)
    # whole slides: a resample is all-a (0), all-b (1) or one of each (2/3 of the patches from b)
    drawn = []
    bootstrap_interval(lambda rows: drawn.append(mean(rows)) or 0.0, 6, groups, resamples=200, seed=1)
    assert set(np.round(drawn, 6)) <= {0.0, 1.0, round(4 / 6, 6)}
    low, high = bootstrap_interval(mean, 6, None, resamples=200, seed=1)
    assert 0.0 <= low < 4 / 6 < high <= 1.0
    assert bootstrap_interval(lambda rows: None, 6) is None


def test_aggregate_by_slide_mean_probability():
    ids, means = aggregate_by_slide(
        ["s2", "s1", "s2", "s2"], np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    )
    assert list(ids) == ["s1", "s2"]
    assert np.allclose(means, [[0.6, 0.4], [0.3, 0.7]])
