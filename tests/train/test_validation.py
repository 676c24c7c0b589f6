"""The validation split of fine-tuning: never the patches evaluation scores, whole slides when
there are several, none with ``val_fraction = 0``."""

from types import SimpleNamespace

import numpy as np

from sassl_core.train.validation import validation_split
from sassl_core.wsi.patches import PatchTable


def table(slides: int, per_slide: int, splits: dict[int, str] | None = None) -> PatchTable:
    rows = [
        {
            "slide": "s.tif",
            "slide_id": f"s{s}",
            "x": i,
            "y": 0,
            "level": 0,
            "read_size": 8,
            "source": "c",
            "label": 0,
            "split": (splits or {}).get(s, "train"),
        }
        for s in range(slides)
        for i in range(per_slide)
    ]
    return PatchTable.from_rows(rows, 8)


def test_dataset_val_split_used_only_beside_a_test_split():
    with_test = table(6, 2, {4: "val", 5: "test"})
    train, val = validation_split(with_test, 0.5, 0)
    assert set(val["slide_id"]) == {"s4"} and set(train["slide_id"]) == {"s0", "s1", "s2", "s3"}
    no_test = table(6, 2, {5: "val"})  # evaluation reads 'val': validation is carved from training
    train, val = validation_split(no_test, 0.2, 0)
    assert "s5" not in set(val["slide_id"]) | set(train["slide_id"])
    assert len(set(val["slide_id"])) == 1 and len(train) == 8
    train, val = validation_split(with_test, 0.0, 0)  # validation off, even beside the dataset's 'val'
    assert len(val) == 0 and set(train["slide_id"]) == {"s0", "s1", "s2", "s3"}


def test_carved_by_slide_seeded_and_never_everything():
    train, val = validation_split(table(10, 3), 0.2, seed=3)
    assert len(set(val["slide_id"])) == 2 and not set(val["slide_id"]) & set(train["slide_id"])
    assert np.array_equal(validation_split(table(10, 3), 0.2, seed=3)[1]["slide_id"], val["slide_id"])
    train, val = validation_split(table(2, 3), 0.9, seed=0)
    assert len(set(train["slide_id"])) == 1 and len(set(val["slide_id"])) == 1


def test_one_slide_carves_patches_and_zero_fraction_none():
    train, val = validation_split(table(1, 10), 0.1, seed=0)
    assert (len(train), len(val)) == (9, 1)
    train, val = validation_split(table(4, 3), 0.0, seed=0)
    assert (len(train), len(val)) == (12, 0)


def test_no_validation_when_it_would_leave_less_than_a_batch():
    train, val = validation_split(table(2, 3), 0.5, seed=0, min_train=4)
    assert (len(train), len(val)) == (6, 0)


def test_best_model_keeps_the_best_validated_weights_not_the_last(tmp_path, monkeypatch):
    import torch
    from torch import nn

    from sassl_core.config import RunConfig
    from sassl_core.train import validation
    from sassl_core.train.checkpoint import load_checkpoint

    class Head(nn.Module):
        headline = "score"

        def headline_score(self, predictions, targets):
            return float(predictions.mean())

    model = nn.Module()
    model.weight = nn.Parameter(torch.zeros(1))
    model.head = Head()
    scores = iter([0.5, 0.7, 0.2])  # validated at steps 2, 4, 6: the best is step 4's
    monkeypatch.setattr(
        validation,
        "predict_table",
        lambda *a, **k: SimpleNamespace(predictions=np.array([next(scores)]), targets=np.zeros(1)),
    )
    (tmp_path / "checkpoints").mkdir()
    best = validation.BestModel(RunConfig(), model, table(1, 1), tmp_path, rt=None)
    best.start()
    for step in (2, 4, 6):
        model.weight.data.fill_(step)
        best.validate(step)
    assert best.record == {"best_step": 4, "val_score": 0.7}
    best.restore()
    assert model.weight.item() == 4.0
    assert load_checkpoint(tmp_path / "checkpoints" / "finetune_best.pt")["validation"] == best.record
    assert validation.best_record(tmp_path) == best.record
