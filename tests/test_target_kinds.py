"""Target kinds: what each kind of task head learns from, and the defaults a head gets from its
kind (which rows supervise it, its targets, heatmap value and slide pooling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.interfaces import PreparedData, TargetKind, TaskHead
from sassl_core.metrics import aggregate_by_slide
from sassl_core.plugins import default_plugins
from sassl_core.train.finetune import build_downstream
from sassl_core.wsi.patches import PatchTable


def _table() -> PatchTable:
    rows = [
        {"slide": "a.tif", "source": "c0", "label": -1, "target": 0.25, "mask": "a_mask.tif"},
        {"slide": "a.tif", "source": "c0", "label": 2, "mask": "a_mask.tif"},
        {"slide": "b.tif", "source": "c1", "label": 0, "target": 0.5, "mask": "b_mask.tif"},
    ]
    return PatchTable.from_rows([{**r, "x": 0, "y": 0, "level": 0, "read_size": 32} for r in rows], 32)


def _prepared(*kinds: TargetKind, classes: int = 3) -> PreparedData:
    return PreparedData(_table(), kinds, [f"c{k}" for k in range(classes)], seg_classes=4)


def _head(kind: TargetKind) -> TaskHead:
    head = TaskHead()
    head.target_kind = kind  # what the registry sets on a head it builds
    return head


def test_each_kind_reads_its_own_column():
    assert [k.column for k in TargetKind] == ["label", "target", "mask"]
    assert [f"{k}" for k in TargetKind] == ["label", "target", "mask"]  # messages read "learns from labels"
    assert [k.reads_masks for k in TargetKind] == [False, False, True]
    assert TargetKind("mask") is TargetKind.MASK


def test_labelled_rows_are_those_carrying_the_kind():
    table = _table()
    assert list(TargetKind.LABEL.labelled(table)["label"]) == [2, 0]
    assert list(TargetKind.TARGET.labelled(table)["target"]) == [0.25, 0.5]
    assert len(TargetKind.MASK.labelled(table)) == 3


def test_num_outputs_follow_the_kind():
    prepared = _prepared(*TargetKind)
    assert TargetKind.LABEL.num_outputs(prepared, "cls") == 3
    assert TargetKind.TARGET.num_outputs(prepared, "reg") is None
    assert TargetKind.MASK.num_outputs(prepared, "seg") == 4
    with pytest.raises(UserError, match="dataset has 1 classes; the 'ordinal' task needs at least 2"):
        TargetKind.LABEL.num_outputs(_prepared(TargetKind.LABEL, classes=1), "ordinal")


def test_targets_are_class_indices_or_values():
    batch = {
        "label": torch.tensor([1, 0]),
        "target": torch.tensor([0.25, 0.5], dtype=torch.float64),
        "mask": torch.ones(2, 4, 4, dtype=torch.uint8),
    }
    label, target, mask = (_head(k).targets(batch) for k in TargetKind)
    assert label.dtype == torch.long and torch.equal(label, batch["label"])
    assert target.dtype == torch.float32 and torch.allclose(target, torch.tensor([0.25, 0.5]))
    assert mask.dtype == torch.long and mask.shape == (2, 4, 4)


def test_heatmap_value_per_kind():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert torch.equal(_head(TargetKind.LABEL).heatmap_value(probs, 2), torch.tensor([0.1, 0.6]))
    values = torch.tensor([0.3, 0.9])
    assert torch.equal(_head(TargetKind.TARGET).heatmap_value(values, 2), values)
    maps = torch.zeros(2, 4, 4, dtype=torch.long)
    maps[0, :2] = 1  # half the pixels foreground
    maps[1] = 2  # every pixel of another foreground class
    assert torch.equal(_head(TargetKind.MASK).heatmap_value(maps, 2), torch.tensor([0.5, 1.0]))


def test_only_label_heads_pool_by_slide_and_explain_classes():
    slides = np.array(["b", "a", "b"])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    names, pooled = _head(TargetKind.LABEL).slide_predictions(slides, probs)
    expected_names, expected = aggregate_by_slide(slides, probs)
    assert list(names) == list(expected_names) == ["a", "b"] and np.allclose(pooled, expected)
    assert np.allclose(pooled[1], [0.3, 0.7])
    assert _head(TargetKind.TARGET).slide_predictions(slides, probs[:, 0]) is None
    assert _head(TargetKind.MASK).slide_predictions(slides, probs) is None
    assert [_head(k).class_scores for k in TargetKind] == [True, False, False]


def test_a_task_needs_a_dataset_carrying_its_kind():
    cfg = RunConfig.model_validate({"task": {"name": "seg"}, "data": {"dataset": "breastpathq"}})
    with pytest.raises(UserError) as err:
        build_downstream(cfg, default_plugins(), _prepared(TargetKind.TARGET), None)
    assert str(err.value) == "task.name: 'seg' learns from masks, but dataset 'breastpathq' has none (it has: target)"
