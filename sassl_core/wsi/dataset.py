"""Patch datasets and their loaders.

Samples stay uint8 ``(P, P, 3)`` on the CPU: batches travel to the device as uint8 (4x less
than float32) and the views are made there (``sassl_core.train.views``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sassl_core.errors import UserError
from sassl_core.wsi.cache import PatchCache, read_mask, read_patch, table_row
from sassl_core.wsi.patches import PatchTable


class PatchDataset(Dataset):
    """Patches of a :class:`PatchTable`, from a :class:`PatchCache` when given, else from slides.

    ``dataset[i]`` is ``{"image": uint8 (P, P, 3), "index": i, "source": int stain-source id,
    "label": int, "target": float}`` plus ``"mask": uint8 (P, P)`` with ``with_masks``. Slides
    are read through :func:`sassl_core.wsi.reader.get_reader`: one handle per worker process.
    """

    def __init__(self, table: PatchTable, cache: PatchCache | None = None, with_masks: bool = False):
        if cache is not None:
            if len(cache) != len(table) or cache.patch_size != table.patch_size:
                raise UserError(
                    f"{cache.path}: cache holds {len(cache)} patches of {cache.patch_size} px, "
                    f"the patch table {len(table)} of {table.patch_size} px"
                )
            if with_masks and not cache.with_masks:
                raise UserError(f"{cache.path}: cache was built without masks; rebuild it with masks")
        if with_masks and cache is None and not all(table["mask"]):
            raise UserError("mask: some patches have no label mask; with_masks needs one per patch")
        self.table = table
        self.cache = cache
        self.with_masks = with_masks
        self.sources = table.source_ids()
        self.labels = table["label"].astype(np.int64)
        self.targets = table["target"].astype(np.float32)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if self.cache is not None:
            image = np.array(self.cache.images[i])
            mask = np.array(self.cache.masks[i]) if self.with_masks and self.cache.masks is not None else None
        else:
            row = table_row(self.table, i)
            image = read_patch(row, self.table.patch_size)
            mask = read_mask(row, self.table.patch_size) if self.with_masks else None
        return self._sample(i, image, mask)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """Batched fetch (used by DataLoader): one sorted gather from the cache per batch."""
        if self.cache is None:
            return [self[i] for i in indices]
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(idx))  # position of each requested row in the sorted gather
        images = self.cache.images[idx[order]]
        masks = self.cache.masks[idx[order]] if self.with_masks and self.cache.masks is not None else None
        return [self._sample(int(i), images[r], None if masks is None else masks[r]) for i, r in zip(idx, rank)]

    def _sample(self, i: int, image: np.ndarray, mask: np.ndarray | None) -> dict:
        sample = {
            "image": torch.from_numpy(image if image.flags.writeable else image.copy()),
            "index": i,
            "source": int(self.sources[i]),
            "label": int(self.labels[i]),
            "target": float(self.targets[i]),
        }
        if mask is not None:
            sample["mask"] = torch.from_numpy(mask if mask.flags.writeable else mask.copy())
        return sample


def make_loader(
    dataset: Dataset,
    batch_size: int | None = None,
    batch_sampler: Sampler[list[int]] | Iterable[list[int]] | None = None,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    prefetch: int = 2,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over ``dataset``: either ``batch_sampler`` (e.g. the slide-balanced sampler) or
    ``batch_size`` (+ ``shuffle``, ``drop_last``, seeded). Memory is pinned when CUDA is available
    (unless ``pin_memory`` says otherwise); workers persist across epochs and prefetch
    ``prefetch`` batches each."""
    if (batch_size is None) == (batch_sampler is None):
        raise ValueError("make_loader: give exactly one of batch_size and batch_sampler")
    kwargs: dict = {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
    }
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator, **kwargs
    )
