"""Every registered task: it declares a :class:`TargetKind`, builds on three fused levels of 8, 16
and 32 channels (paper §3.3, Eq. 9), and its output, loss, predictions, heatmap values and
metrics have the form its kind promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sassl_core.interfaces import PreparedData, TargetKind, TaskHead
from sassl_core.wsi.patches import PatchTable
from tests.contract.common import PLUGINS, names

CHANNELS = [8, 16, 32]
REDUCTIONS = [2, 4, 8]
IMAGE = 32
BATCH = 4
#: a dataset carrying every kind: 3 classes, 2 mask classes
DATA = PreparedData(PatchTable.from_rows([], IMAGE), tuple(TargetKind), ["a", "b", "c"], seg_classes=2)


def _levels() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(BATCH, c, IMAGE // r, IMAGE // r, generator=g) for c, r in zip(CHANNELS, REDUCTIONS)]


def _batch() -> dict[str, torch.Tensor]:
    """Targets of every kind, typed as the patch dataset yields them."""
    g = torch.Generator().manual_seed(1)
    return {
        "label": torch.randint(0, DATA.num_classes, (BATCH,), generator=g),
        "target": torch.rand(BATCH, generator=g, dtype=torch.float64),
        "mask": torch.randint(0, DATA.seg_classes, (BATCH, IMAGE, IMAGE), generator=g).to(torch.uint8),
    }


def _check_predictions(kind: TargetKind, predictions: torch.Tensor, num_outputs: int | None) -> None:
    if kind is TargetKind.LABEL:  # class probabilities
        assert predictions.shape == (BATCH, num_outputs)
        assert (predictions >= 0).all() and torch.allclose(predictions.sum(1), torch.ones(BATCH), atol=1e-5)
    elif kind is TargetKind.TARGET:  # one value per patch
        assert predictions.shape == (BATCH,) and torch.isfinite(predictions).all()
    else:  # a class map at the input size
        assert predictions.shape == (BATCH, IMAGE, IMAGE) and not predictions.is_floating_point()
        assert predictions.min() >= 0 and predictions.max() < num_outputs


@pytest.mark.parametrize("name", names("task"))
def test_head_follows_its_declared_target_kind(name):
    torch.manual_seed(0)
    kind = PLUGINS["task"].get(name).target_kind
    assert isinstance(kind, TargetKind)
    num_outputs = kind.num_outputs(DATA, name)
    head = PLUGINS["task"].create(name, {}, feature_channels=CHANNELS, num_outputs=num_outputs)
    assert isinstance(head, TaskHead) and head.target_kind is kind

    batch = _batch()
    output = head(_levels(), IMAGE)
    loss = head.loss(output.float(), head.targets(batch))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())

    head.eval()
    with torch.no_grad():
        predictions = head.predict(head(_levels(), IMAGE).float())
    _check_predictions(kind, predictions, num_outputs)
    heat = head.heatmap_value(predictions, DATA.num_classes - 1)
    assert heat.shape == (BATCH,) and (heat >= 0).all() and (heat <= 1).all()

    sources = np.array(["c0", "c0", "c1", "c1"])
    metrics = head.metrics(predictions.numpy(), batch[kind.column].numpy(), sources)
    assert metrics and all(isinstance(key, str) for key in metrics)
