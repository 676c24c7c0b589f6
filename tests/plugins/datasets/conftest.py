"""Shared fixtures of the dataset tests: the plugin registry and a tiling context factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from sassl_core.interfaces import DatasetContext
from sassl_core.plugins import load_plugins


@pytest.fixture(scope="session")
def datasets():
    return load_plugins()["dataset"]


@pytest.fixture
def context(tmp_path):
    def make(root: Path | None, **kwargs) -> DatasetContext:
        settings = {"patch_size": 64, "max_per_slide": 30, **kwargs}
        return DatasetContext(root=root, cache_dir=tmp_path / "cache", **settings)

    return make
