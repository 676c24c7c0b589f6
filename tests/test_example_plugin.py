"""The third-party example plugin (examples/sassl-barlow): discovery, loss, head, training.

CI installs it with ``pip install -e examples/sassl-barlow``; without it these tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip(
    "sassl_example_plugin",
    reason="example plugin not installed (pip install -e examples/sassl-barlow --no-deps)",
)

from sassl_core.interfaces import TargetKind
from sassl_core.plugins import load_plugins
from sassl_example_plugin import barlow_twins, ordinal

PLUGIN = "example_plugin"


@pytest.fixture(scope="module")
def plugin_set():
    return load_plugins()


def test_entry_point_registers_both_components(plugin_set):
    assert not [f.message() for f in plugin_set.failures if f.name == PLUGIN]
    info = next(p for p in plugin_set.plugins if p.name == PLUGIN)
    assert info.distribution == "sassl-example-plugin"
    assert info.components == {"ssl": ["barlow_twins"], "task": ["ordinal"]}
    assert plugin_set["ssl"].get("barlow_twins").plugin == PLUGIN
    assert plugin_set["task"].get("ordinal").plugin == PLUGIN
    assert plugin_set["task"].get("ordinal").target_kind is TargetKind.LABEL  # learns from class labels


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGINS", PLUGIN)
    plugins = load_plugins()
    assert "barlow_twins" not in plugins["ssl"].names()
    assert "ordinal" not in plugins["task"].names()


def test_registered_in_code_without_autoload(monkeypatch):
    import sassl_example_plugin

    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = load_plugins(extra=[(PLUGIN, sassl_example_plugin)])
    assert plugins["ssl"].names() == ["barlow_twins"]
    assert plugins["task"].names() == ["ordinal"]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "sassl_core.app.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_listed_by_cli():
    pytest.importorskip("sassl_core.app.cli", reason="the CLI is not in this tree")
    done = _cli("plugins", "--json")
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert "barlow_twins" in listing["ssl"]
    assert "ordinal" in listing["task"]
    entry = next(p for p in listing["plugins"] if p["name"] == PLUGIN)
    assert entry["distribution"] == "sassl-example-plugin"


def test_options_are_validated(plugin_set):
    from sassl_core.errors import UserError

    with pytest.raises(UserError, match="barlow_twins.*proj_dimm"):
        plugin_set["ssl"].create("barlow_twins", {"proj_dimm": 8}, encoder=nn.Identity(), feature_dim=4)


# --- Barlow Twins -----------------------------------------------------------------------------


def test_loss_is_zero_for_identical_decorrelated_views():
    # Orthonormal, zero-mean columns (QR of a centred matrix): C is the identity.
    z = torch.randn(32, 4)
    z = torch.linalg.qr(z - z.mean(0))[0]
    c = barlow_twins.cross_correlation(z, z)
    assert torch.allclose(torch.diagonal(c), torch.ones(4), atol=1e-3)
    assert float(barlow_twins.barlow_twins_loss(z, z, redundancy_weight=1.0)) < 0.05


def test_loss_matches_definition():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 5), torch.randn(16, 5)
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    c = a.T @ b / 16
    lam = 0.3
    expected = sum((1 - c[i, i]) ** 2 for i in range(5)) + lam * sum(
        c[i, j] ** 2 for i in range(5) for j in range(5) if i != j
    )
    assert torch.allclose(barlow_twins.barlow_twins_loss(z1, z2, lam), expected, atol=1e-4)


def test_redundancy_term_penalises_correlated_dimensions():
    torch.manual_seed(0)
    base = torch.randn(64, 1)
    redundant = torch.cat([base, base + 0.01 * torch.randn(64, 1)], dim=1)
    independent = torch.randn(64, 2)
    loss_redundant = barlow_twins.barlow_twins_loss(redundant, redundant, redundancy_weight=1.0)
    loss_independent = barlow_twins.barlow_twins_loss(independent, independent, redundancy_weight=1.0)
    assert loss_redundant > 1.5 > loss_independent


def _tiny_encoder() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_method_built_through_registry_returns_projector_outputs(plugin_set):
    torch.manual_seed(0)
    method = plugin_set["ssl"].create(
        "barlow_twins", {"proj_hidden_dim": 16, "proj_dim": 12}, encoder=_tiny_encoder(), feature_dim=8
    )
    x1, x2 = torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32)
    out = method(x1, x2)
    assert out.s1.shape == out.s2.shape == (6, 12)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in method.encoder.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_few_steps_lower_the_loss(plugin_set):
    torch.manual_seed(0)
    method = plugin_set["ssl"].create(
        "barlow_twins", {"proj_hidden_dim": 32, "proj_dim": 16}, encoder=_tiny_encoder(), feature_dim=8
    )
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    x = torch.rand(16, 3, 32, 32)
    views = (x + 0.05 * torch.randn_like(x), x + 0.05 * torch.randn_like(x))
    losses = []
    for _ in range(15):
        loss = method(*views).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# --- ordinal head -----------------------------------------------------------------------------


def _levels(batch: int = 5) -> list[torch.Tensor]:
    return [torch.randn(batch, 4, 8, 8), torch.randn(batch, 16, 2, 2)]


@pytest.mark.parametrize("num_classes", [2, 3, 6])
def test_head_probabilities_are_valid(plugin_set, num_classes):
    torch.manual_seed(0)
    head = plugin_set["task"].create(
        "ordinal", {"hidden_dim": 8, "dropout": 0.2}, feature_channels=[4, 16], num_outputs=num_classes
    )
    output = head(_levels(), image_size=32)
    assert output.shape == (5, num_classes - 1)
    probs = head.predict(output)
    assert probs.shape == (5, num_classes)
    assert (probs >= 0).all()
    assert torch.allclose(probs.sum(1), torch.ones(5))
    assert (torch.diff(head.thresholds()) > 0).all()
    # the defaults of a label head read its probabilities; Grad-CAM needs per-class scores, which it has not
    assert torch.equal(head.heatmap_value(probs, num_classes - 1), probs[:, -1])
    assert head.target_kind is TargetKind.LABEL and not head.class_scores


def test_head_rejects_regression_datasets(plugin_set):
    from sassl_core.errors import UserError

    with pytest.raises(UserError, match="ordinal"):
        plugin_set["task"].create("ordinal", {}, feature_channels=[16], num_outputs=None)


def test_head_loss_prefers_near_misses():
    head = ordinal.OrdinalHead(16, 6, ordinal.OrdinalOptions(num_layers=1))
    # Logits of P(y > k) for a confident prediction of grade 3.
    predicted_three = torch.tensor([[9.0, 9.0, 9.0, -9.0, -9.0]])
    assert head.predict(predicted_three).argmax(1).item() == 3
    near = head.loss(predicted_three, torch.tensor([4]))
    far = head.loss(predicted_three, torch.tensor([0]))
    exact = head.loss(predicted_three, torch.tensor([3]))
    assert exact < near < far


def test_head_learns_an_ordinal_target():
    torch.manual_seed(0)
    head = ordinal.OrdinalHead(16, 4, ordinal.OrdinalOptions(num_layers=1))
    features = torch.randn(64, 16, 1, 1)
    labels = (features[:, 0, 0, 0] * 1.5 + 1.5).round().clamp(0, 3).long()
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(150):
        loss = head.loss(head([features], 32), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = (head.predict(head([features], 32)).argmax(1) == labels).float().mean()
    assert accuracy > 0.8


def test_head_metrics_use_the_classification_metrics():
    head = ordinal.OrdinalHead(16, 3, ordinal.OrdinalOptions())
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    targets = np.array([0, 1, 2, 2])
    sources = np.array(["a", "a", "b", "b"])
    metrics = head.metrics(probs, targets, sources)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert head.headline == "qwk" and head.headline_score(probs, targets) == metrics["qwk"]


# --- end to end -------------------------------------------------------------------------------


TINY = ("--set", "ssl.options.proj_hidden_dim=32", "--set", "ssl.options.proj_dim=32", "--steps", "3",
        "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--quiet")  # fmt: skip


@pytest.mark.slow
def test_pretrain_through_cli(tmp_path):
    pytest.importorskip("sassl_core.app.cli", reason="the CLI is not in this tree")
    out = tmp_path / "run"
    done = _cli("pretrain", "--ssl", "barlow_twins", *TINY, "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "encoder.safetensors").exists()
    assert "barlow_twins" in (out / "config.yaml").read_text()


@pytest.mark.slow
def test_ordinal_task_through_cli(tmp_path):
    pytest.importorskip("sassl_core.app.cli", reason="the CLI is not in this tree")
    out = tmp_path / "run"
    done = _cli(
        "run", "--ssl", "barlow_twins", "--task", "ordinal", *TINY, "--finetune-steps", "3", "--out", str(out),
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "ordinal"
    assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0
    assert -1.0 <= metrics["metrics"]["qwk"] <= 1.0
