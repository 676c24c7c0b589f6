"""The four shipped SSL methods through the plugin registry: embedding size, training, momentum,
queue. What every SSL method must do (outputs, gradients, options) is tests/contract/test_ssl_contract.py."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from sassl_core.plugins import load_plugins
from tests.fixtures.encoders import FEATURE_DIM, tiny_encoder

METHODS = ["simsiam", "moco", "byol", "simclr"]
SMALL = {
    "simsiam": {"proj_dim": 32, "proj_hidden_dim": 32, "pred_hidden_dim": 8},
    "moco": {"proj_dim": 32, "proj_hidden_dim": 32, "queue_size": 64},
    "byol": {"proj_dim": 32, "proj_hidden_dim": 32, "pred_hidden_dim": 32},
    "simclr": {"proj_dim": 32, "proj_hidden_dim": 32},
}


@pytest.fixture
def ssl_registry(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    modules = [(name, importlib.import_module(f"sassl_plugins.ssl.{name}")) for name in METHODS]
    plugins = load_plugins(extra=modules)
    assert not plugins.failures
    return plugins["ssl"]


def create(registry, name, **overrides):
    torch.manual_seed(0)
    return registry.create(name, {**SMALL[name], **overrides}, encoder=tiny_encoder(), feature_dim=FEATURE_DIM)


def test_every_method_is_registered(ssl_registry):
    assert ssl_registry.names() == sorted(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_embeddings_are_the_projector_outputs_and_encoder_features(ssl_registry, name, views):
    out = create(ssl_registry, name)(*views)
    assert out.s1.shape == out.s2.shape == (8, 32)  # proj_dim
    assert out.h1.shape == out.h2.shape == (8, FEATURE_DIM)  # every shipped method gives h1, h2


@pytest.mark.parametrize("name", METHODS)
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(ssl_registry, name, views):
    model = create(ssl_registry, name)
    queue = model.queue.clone() if name == "moco" else None
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def loss_now():
        if queue is not None:  # same negatives at every step: the loss is then comparable
            model.queue.copy_(queue)
        return model(*views).loss

    start = loss_now().item()
    for step in range(12):
        loss = loss_now()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step((step + 1) / 12)
    assert loss_now().item() < start - 1e-3


@pytest.mark.parametrize("name", ["simsiam", "byol", "simclr"])
def test_batch_norm_false_leaves_no_batch_statistics(ssl_registry, name, views):
    """Heads without BatchNorm keep no batch statistics, so a batch split across processes trains
    like the whole batch even where SyncBatchNorm is unavailable (CPUs)."""
    with_bn, without = create(ssl_registry, name), create(ssl_registry, name, batch_norm=False)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in with_bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in without.modules())
    out = without(*views)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", ["moco", "byol"])
def test_after_step_moves_the_target_by_the_scheduled_momentum(ssl_registry, name):
    model = create(ssl_registry, name, base_momentum=0.9, final_momentum=1.0)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    online = [p.clone() for p in model.encoder.parameters()]
    target = [p.clone() for p in model.target_encoder.parameters()]
    model.after_step(0.0)  # momentum 0.9
    for new, old, src in zip(model.target_encoder.parameters(), target, online):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * src)
    moved = [p.clone() for p in model.target_projector.parameters()]
    model.after_step(1.0)  # momentum 1: the target stays put
    assert all(torch.equal(a, b) for a, b in zip(model.target_projector.parameters(), moved))


@pytest.mark.parametrize("name", ["moco", "byol"])
def test_target_branch_takes_no_gradient(ssl_registry, name, views):
    model = create(ssl_registry, name)
    model(*views).loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert all(p.grad is None for p in model.target_projector.parameters())
    assert model.encoder[0].weight.grad is not None


def test_moco_queue_wraps_around(ssl_registry):
    model = create(ssl_registry, "moco", queue_size=5, proj_dim=4)
    first, second = torch.randn(3, 4), torch.randn(3, 4)
    model.enqueue(first)
    assert model.queue_ptr.item() == 3
    torch.testing.assert_close(model.queue[:3], F.normalize(first, dim=1))
    model.enqueue(second)
    assert model.queue_ptr.item() == 1
    torch.testing.assert_close(model.queue[3:5], F.normalize(second[:2], dim=1))
    torch.testing.assert_close(model.queue[0], F.normalize(second[2], dim=0))
    torch.testing.assert_close(model.queue[1:3], F.normalize(first[1:], dim=1))


def test_moco_keeps_only_the_newest_keys_when_a_batch_exceeds_the_queue(ssl_registry):
    model = create(ssl_registry, "moco", queue_size=4, proj_dim=4)
    keys = torch.randn(6, 4)
    model.enqueue(keys)
    torch.testing.assert_close(model.queue, F.normalize(keys[2:], dim=1))
    assert model.queue_ptr.item() == 0  # 0 + 4 slots written, wrapped


def test_moco_forward_enqueues_both_views_keys_in_training_only(ssl_registry, views):
    model = create(ssl_registry, "moco", queue_size=64)
    model.eval()
    model(*views)
    assert model.queue_ptr.item() == 0
    model.train()
    model(*views)
    assert model.queue_ptr.item() == 16
    with torch.no_grad():
        keys = F.normalize(model.target_embedding(views[0]), dim=1)
    torch.testing.assert_close(model.queue[:8], keys)  # view 1's keys first, then view 2's


def test_moco_queue_is_in_the_state_dict(ssl_registry):
    state = create(ssl_registry, "moco").state_dict()
    assert state["queue"].shape == (64, 32)
    assert "queue_ptr" in state
