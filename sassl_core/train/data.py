"""From the data config to batches: dataset plugin → patch index → (cached) patches → batches.

Batches stay uint8 until they reach the device, where views and normalisation are made.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData
from sassl_core.plugins import PluginSet
from sassl_core.progress import progress_reporter
from sassl_core.wsi.cache import PatchCache, table_fingerprint
from sassl_core.wsi.dataset import PatchDataset, make_loader
from sassl_core.wsi.patches import PatchTable


def cache_root(cfg: RunConfig) -> Path:
    if cfg.data.cache_dir is not None:
        return Path(cfg.data.cache_dir)
    return Path(os.environ.get("SASSL_CACHE", Path.home() / ".cache" / "sassl"))


def reads_root(options: type) -> bool:
    """Whether a dataset reads the user's files: its options model says ``reads_root = False``
    (a ``ClassVar``) when it makes its own data."""
    return bool(getattr(options, "reads_root", True))


def prepare_dataset(cfg: RunConfig, plugins: PluginSet) -> PreparedData:
    """Ask the dataset plugin for its patch index (it validates its folder). A data root given
    to a dataset that makes its own data is refused first: it would be silently ignored."""
    dataset = plugins["dataset"].get(cfg.data.dataset)
    if cfg.data.root is not None and not reads_root(dataset.options):
        raise UserError(
            f"data.root: dataset '{cfg.data.dataset}' takes no data root (it generates its data); "
            "pick a dataset that reads folders, e.g. --dataset folder"
        )
    if cfg.data.root is not None and not Path(cfg.data.root).exists():
        raise UserError(f"data.root: folder {cfg.data.root} does not exist")
    context = DatasetContext(
        root=cfg.data.root,
        cache_dir=cache_root(cfg),
        patch_size=cfg.data.image_size,
        target_mpp=cfg.data.target_mpp,
        fallback_mpp=cfg.data.mpp,
        max_per_slide=cfg.data.max_per_slide,
        tissue_threshold=cfg.data.tissue_threshold,
        seed=cfg.trainer.seed,
        strict=cfg.data.strict,
    )
    prepared = dataset.build(cfg.data.options, context=context)
    if len(prepared.patches) == 0:
        raise UserError(f"dataset '{cfg.data.dataset}': no patches found under {cfg.data.root}")
    held_out = cfg.data.held_out_source
    if held_out is not None:
        sources = sorted(set(prepared.patches["source"].astype(str)))
        if held_out not in sources or len(sources) < 2:
            raise UserError(
                f"data.held_out_source: expected one of the dataset's {len(sources)} sources "
                f"({', '.join(sources[:8])}{', ...' if len(sources) > 8 else ''}) with others left to train on, found {held_out!r}"
            )
        prepared = replace(prepared, patches=prepared.patches.hold_out(held_out))
    return prepared


def source_ids(table: PatchTable, key: str) -> np.ndarray:
    """Stain-source id per patch: its slide, or its data provider (paper §3.2)."""
    return table.source_ids("slide_id" if key == "slide" else "source")


def _cache_key(table: PatchTable, with_masks: bool) -> str:
    """Which rows (the table's fingerprint), with masks or not, from which version of each slide."""
    stamps = hashlib.sha1()
    for slide in sorted(set(map(str, table["slide"])) | set(m for m in map(str, table["mask"]) if m)):
        try:
            stamps.update(f"{slide}:{os.stat(slide).st_mtime_ns}".encode())
        except OSError:
            pass
    return f"{table_fingerprint(table)[:16]}{'-masks' if with_masks else ''}-{stamps.hexdigest()[:8]}"


def patch_dataset(cfg: RunConfig, table: PatchTable, with_masks: bool, quiet: bool) -> PatchDataset:
    """A dataset over ``table``, read from a memory-mapped patch cache when ``data.cache``."""
    if not cfg.data.cache:
        return PatchDataset(table, None, with_masks=with_masks)
    path = cache_root(cfg) / "patches" / _cache_key(table, with_masks)
    if not quiet and not path.exists():
        print(f"caching {len(table)} patches to {path}", flush=True)
    progress = None if quiet else progress_reporter("caching patches")
    cache = PatchCache.open_or_build(table, path, with_masks=with_masks, strict=cfg.data.strict, progress=progress)
    return PatchDataset(table, cache, with_masks=with_masks)


def sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    """Rows ``0 .. n-1`` in order, cut into batches (the last may be short): for inference."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def shuffled_batches(n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[list[int]]:
    """Endless epochs of a seeded permutation, cut into global batches; each rank takes its share."""
    if batch_size > n:
        raise UserError(f"batch size {batch_size} is larger than the data ({n} patches)")
    per_rank = batch_size // world
    for epoch in itertools.count():
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            batch = order[start : start + batch_size]
            yield batch[rank * per_rank : (rank + 1) * per_rank].tolist()


def batch_stream(
    dataset: PatchDataset, index_batches: Callable[[], Iterable[list[int]]], num_workers: int
) -> Callable[[int], Iterator[dict]]:
    """``stream(skip)``: batches from ``dataset`` after skipping ``skip`` index batches (resume)."""

    def stream(skip: int) -> Iterator[dict]:
        indices = itertools.islice(iter(index_batches()), skip, None)
        return iter(make_loader(dataset, batch_sampler=indices, num_workers=num_workers))

    return stream


def inference_batches(
    cfg: RunConfig, dataset: PatchDataset, order: Iterable[list[int]], device: torch.device
) -> Iterator[dict]:
    """The batches of ``order`` (lists of row indices), in that order, on ``device``: the one
    loop evaluation, AdaBN and the centre probe read patches through."""
    for batch in make_loader(dataset, batch_sampler=order, num_workers=cfg.data.num_workers):
        yield to_device(batch, device)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
