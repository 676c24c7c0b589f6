"""Regression head (paper §3.3): values in [0, 1], MSE learning, metrics."""

import numpy as np
import torch
from head_helpers import CHANNELS, fit, make_levels

from sassl_core.interfaces import TargetKind
from sassl_core.plugins import default_plugins
from sassl_plugins.tasks import reg


def test_values_in_unit_interval_and_learning():
    levels = make_levels(8)
    head = default_plugins()["task"].create("reg", {"hidden_dim": 32}, feature_channels=CHANNELS, num_outputs=None)
    assert head.target_kind is TargetKind.TARGET
    out = head(levels, 32)
    assert out.shape == (8,) and ((out > 0) & (out < 1)).all()
    assert torch.equal(head.predict(out), out)
    target = torch.linspace(0.05, 0.95, 8)
    first, last = fit(head, levels, target, steps=30)
    assert last < 0.5 * first


def test_metrics():
    head = reg.build(reg.RegressionOptions(), CHANNELS, None)
    m = head.metrics(np.array([0.2, 0.4]), np.array([0.2, 0.6]), None)
    assert np.isclose(m["mae"], 0.1) and np.isclose(m["mse"], 0.02) and np.isclose(m["r2"], 1 - 0.04 / 0.08)


def test_headline_is_r2():
    head = reg.build(reg.RegressionOptions(), CHANNELS, None)
    pred, truth = np.array([0.1, 0.5, 0.8]), np.array([0.2, 0.4, 0.9])
    assert head.headline == "r2" and head.headline_score(pred, truth) == head.metrics(pred, truth, None)["r2"]
