"""EMA update and BYOL's cosine momentum schedule."""

import pytest
import torch
from torch import nn

from sassl_core.ssl.momentum import cosine_momentum, ema_update, frozen_copy


def test_ema_update_formula():
    torch.manual_seed(0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, momentum=0.8)
    for new, old, src in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(new, 0.8 * old + 0.2 * src)


def test_ema_with_momentum_one_keeps_target_and_zero_copies_online():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = target.weight.clone()
    ema_update(target, online, momentum=1.0)
    assert torch.equal(target.weight, before)
    ema_update(target, online, momentum=0.0)
    assert torch.equal(target.weight, online.weight)


def test_frozen_copy_is_independent_and_takes_no_grad():
    online = nn.Linear(2, 2)
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        online.weight.add_(1.0)
    assert not torch.equal(online.weight, target.weight)


def test_cosine_schedule_endpoints_midpoint_and_monotonicity():
    assert cosine_momentum(0.0, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(1.0, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(0.5, 0.99, 1.0) == pytest.approx(0.995)
    values = [cosine_momentum(p / 10, 0.9) for p in range(11)]
    assert values == sorted(values)
    assert cosine_momentum(0.3, 0.99, 0.99) == pytest.approx(0.99)  # constant when base == final
