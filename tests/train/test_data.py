"""From the data config to the patch index: the dataset-independent held-out source."""

from __future__ import annotations

import pytest

from sassl_core.config import validate
from sassl_core.errors import UserError
from sassl_core.plugins import default_plugins
from sassl_core.train.data import prepare_dataset

SMALL = {"centres": 3, "slides_per_centre": 2, "slide_size": 384, "regions": 3, "seed": 0}


def _cfg(tmp_path, **data):
    return validate({"data": {"options": SMALL, "max_per_slide": 4, "cache_dir": str(tmp_path), **data}})


def test_held_out_source_is_the_whole_test_split(tmp_path):
    table = prepare_dataset(_cfg(tmp_path, held_out_source="centre1"), default_plugins()).patches
    sources, splits = table["source"].astype(str), table["split"].astype(str)
    assert set(splits[sources == "centre1"]) == {"test"}
    assert set(splits[sources != "centre1"]) <= {"train", "val"} and "train" in set(splits)


def test_unknown_held_out_source_names_the_field_and_the_sources(tmp_path):
    with pytest.raises(UserError, match=r"data.held_out_source: .*centre0, centre1, centre2.*'centre7'"):
        prepare_dataset(_cfg(tmp_path, held_out_source="centre7"), default_plugins())
