"""Classification head (paper §3.3): shapes, learning, softmax, metrics, registration."""

import numpy as np
import pytest
import timm
import torch
from head_helpers import CHANNELS, fit, make_levels

from sassl_core.errors import UserError
from sassl_core.interfaces import TargetKind
from sassl_core.method.transfer import build_dual_encoder
from sassl_core.plugins import load_plugins
from sassl_plugins.tasks import cls


def test_logits_probs_and_learning():
    levels = make_levels(8)
    head = cls.build(cls.ClassificationOptions(hidden_dim=32), CHANNELS, 6)
    logits = head(levels, 32)
    assert logits.shape == (8, 6)
    probs = head.predict(logits)
    assert torch.allclose(probs.sum(1), torch.ones(8)) and (probs >= 0).all()
    target = torch.arange(8) % 6
    first, last = fit(head, levels, target)
    assert last < 0.5 * first


def test_label_smoothing_raises_loss_floor():
    target = torch.zeros(8, dtype=torch.long)
    logits = torch.tensor([[20.0, 0, 0]]).repeat(8, 1)
    plain = cls.build(cls.ClassificationOptions(), CHANNELS, 3)
    smooth = cls.build(cls.ClassificationOptions(label_smoothing=0.2), CHANNELS, 3)
    assert smooth.loss(logits, target) > plain.loss(logits, target) + 0.1


def test_metrics_use_paper_keys():
    head = cls.build(cls.ClassificationOptions(ordinal=True), CHANNELS, 3)
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    m = head.metrics(probs, np.array([0, 1, 2]), np.array(["a", "a", "b"]))
    assert m["qwk"] == 1.0 and m["accuracy"] == 1.0 and len(m["f1_per_class"]) == 3
    assert set(m["qwk_by_source"]) == {"a", "b"}


def test_needs_two_classes():
    with pytest.raises(UserError, match="at least 2 classes"):
        cls.build(cls.ClassificationOptions(), CHANNELS, None)


def test_registered_and_options_validated():
    plugins = load_plugins()
    assert plugins["task"].get("cls").target_kind is TargetKind.LABEL
    with pytest.raises(UserError, match="label_smoothing"):
        plugins["task"].create("cls", {"label_smoothing": 2}, feature_channels=CHANNELS, num_outputs=3)


def test_end_to_end_with_dual_encoder():
    make = lambda: timm.create_model("resnet18", num_classes=0)
    enc = build_dual_encoder(make, make().state_dict())
    head = cls.build(cls.ClassificationOptions(hidden_dim=16), enc.feature_channels, 4)
    out = head(enc(torch.randn(2, 3, 32, 32)), 32)
    head.loss(out, torch.tensor([0, 3])).backward()
    assert out.shape == (2, 4) and enc.special.conv1.weight.grad is not None


def test_ordinal_option_decides_qwk_and_the_headline():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    truth = np.array([0, 1, 2, 2])
    graded = cls.build(cls.ClassificationOptions(ordinal=True), CHANNELS, 3)
    nominal = cls.build(cls.ClassificationOptions(), CHANNELS, 3)  # the default: unordered classes
    assert graded.headline == "qwk" and graded.headline_score(probs, truth) == graded.metrics(probs, truth, None)["qwk"]
    m = nominal.metrics(probs, truth, np.array(["a"] * 4))
    assert "qwk" not in m and {"balanced_accuracy", "f1_macro", "auroc"} <= set(m)
    assert nominal.headline == "balanced_accuracy" and nominal.headline_score(probs, truth) == m["balanced_accuracy"]
