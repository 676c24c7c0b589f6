"""Every registered dataset: its options forbid unknown fields; one that reads the user's files
refuses to start without them with one line naming ``data.root`` (or the empty folder it was
given); one that makes its own data returns a patch index that carries the target kinds it
declares."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData, TargetKind
from tests.contract.common import PLUGINS, names


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> DatasetContext:
    """No data root; one cache for the module, so data a dataset makes is made once."""
    return DatasetContext(root=None, cache_dir=tmp_path_factory.mktemp("cache"), patch_size=32, max_per_slide=4)


def _check_usable(prepared: PreparedData, context: DatasetContext) -> None:
    assert isinstance(prepared, PreparedData)
    kinds = prepared.target_kinds
    assert kinds and len(set(kinds)) == len(kinds) and all(isinstance(k, TargetKind) for k in kinds)
    table = prepared.patches
    assert len(table) > 0 and table.patch_size == context.patch_size
    assert "train" in set(table["split"]) and set(table["split"]) <= {"train", "val", "test"}
    for kind in kinds:  # every declared kind has patches to learn from
        assert len(kind.labelled(table)) > 0, kind
    if TargetKind.LABEL in kinds:
        labels = table["label"]
        assert prepared.num_classes >= 2 and labels.min() >= -1 and labels.max() < prepared.num_classes
    if TargetKind.MASK in kinds:
        assert prepared.seg_classes >= 2 and all(str(m) for m in table["mask"])


@pytest.mark.parametrize("name", names("dataset"))
def test_without_a_root(name, context):
    try:
        prepared = PLUGINS["dataset"].create(name, {}, context=context)
    except UserError as err:  # it reads the user's files: the message names the setting
        message = str(err)
        assert message.startswith("data.root: ") and "\n" not in message, message
        return
    _check_usable(prepared, context)


@pytest.mark.parametrize("name", names("dataset"))
def test_with_an_empty_root(name, context, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    try:
        prepared = PLUGINS["dataset"].create(name, {}, context=replace(context, root=empty))
    except UserError as err:  # nothing to read: the message names the folder (or a file in it)
        assert str(empty) in str(err), err
        return
    _check_usable(prepared, context)
    assert np.isin(prepared.patches["split"], ["train", "val", "test"]).all()
