"""The patch cache cannot feed training bytes it did not extract: sizes and per-chunk digests are
checked on open, a corrupt cache is rebuilt with a warning (refused under ``data.strict``), a
build killed half-way is never trusted and its folder is cleaned up, and a build the disk has no
room for is refused before it starts."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest

from sassl_core.errors import UserError
from sassl_core.wsi import cache as cache_module
from sassl_core.wsi.cache import CorruptCache, PatchCache, remove_dead_builds
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import tile_slide


@pytest.fixture(scope="module")
def table(blob_slide) -> PatchTable:
    with open_slide(blob_slide.path) as reader:
        rows = tile_slide(reader, 32, target_mpp=0.75, tissue_threshold=0.0, max_patches=12)
    for r in rows:
        r.update(source="blob", mask="")
    return PatchTable.from_rows(rows, 32)


@pytest.fixture
def built(tmp_path, table):
    path = tmp_path / "patches" / "key"
    PatchCache.build(table, path)
    return path


def _open_or_build(table, path, **kwargs) -> tuple[PatchCache, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        cache = PatchCache.open_or_build(table, path, **kwargs)
    return cache, err.getvalue()


def test_a_zeroed_cache_is_rebuilt_with_a_warning(built, table):
    expected = np.array(PatchCache.open(built).images)
    with open(built / "images.u8", "r+b") as fh:  # same size, zeroed content
        fh.write(bytes(expected.nbytes))
    with pytest.raises(CorruptCache, match=r"images\.u8: content changed since the cache was built \(chunk 0"):
        PatchCache.open(built, table)
    cache, err = _open_or_build(table, built)
    assert f"warning: {built / 'images.u8'}: content changed" in err and "rebuilding the patch cache" in err
    assert np.array_equal(cache.images, expected)


def test_a_truncated_cache_is_rebuilt_and_refused_under_strict(built, table):
    os.truncate(built / "images.u8", 1000)
    with pytest.raises(CorruptCache, match=r"images\.u8: expected 36864 bytes for 12 patches of 32 px, found 1000"):
        _open_or_build(table, built, strict=True)
    assert (built / "images.u8").stat().st_size == 1000  # refused, left as it is
    cache, err = _open_or_build(table, built)
    assert "found 1000; rebuilding the patch cache" in err and len(cache) == 12


def test_a_build_killed_half_way_is_never_trusted(tmp_path, table):
    path = tmp_path / "key"

    def killed(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        PatchCache.build(table, path, progress=killed)
    assert list(tmp_path.iterdir()) == []
    cache, err = _open_or_build(table, path)
    assert len(cache) == 12 and err == ""


def test_folders_of_dead_builds_are_removed_and_live_ones_kept(tmp_path, table):
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout
    dead = tmp_path / f"key.tmp-{int(dead_pid)}"
    live = tmp_path / f"other.tmp-{os.getppid()}"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "images.u8").write_bytes(b"half")
    remove_dead_builds(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
    PatchCache.build(table, tmp_path / "key")  # a build cleans up first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key", live.name]


def test_a_build_without_room_on_disk_is_refused_naming_path_and_bytes(tmp_path, table, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(UserError, match=f"{tmp_path}: the patch cache needs 36864 bytes, only 1000 free"):
        PatchCache.build(table, tmp_path / "key")
    assert list(tmp_path.iterdir()) == []


def test_workers_reopen_without_rehashing(built, monkeypatch):
    cache = PatchCache.open(built)
    monkeypatch.setattr(cache_module, "file_digests", lambda path: pytest.fail("re-hashed in a worker"))
    clone = pickle.loads(pickle.dumps(cache))
    assert np.array_equal(clone.images, cache.images)


def test_a_cache_folder_copied_whole_still_opens(built, tmp_path, table):
    copy = shutil.copytree(built, tmp_path / "copy")
    assert len(PatchCache.open(copy, table)) == 12
