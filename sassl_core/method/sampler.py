"""The source-balanced batch sampler (paper §3.2).

Every global batch holds ``k`` stain sources x ``m`` patches each (m >= 2), so the relation
matrix R of every batch has both same-source and different-source pairs.

One epoch is one pass without replacement: each source's patches are shuffled and cut into
``n_s // m`` chunks of ``m`` (the remainder waits for a later epoch, whose shuffle differs), and
the chunks are dealt into batches of ``k`` distinct sources, a source drawn with probability
proportional to its remaining chunks. Sources with fewer than ``m`` patches are excluded (listed
in :attr:`SourceBalancedBatchSampler.excluded_sources`): topping them up would repeat patches in
a batch. The number of batches per epoch is the largest number that ``k``-distinct-source
batches allow, the same every epoch; chunks of a very large source beyond that are left out.

Each rank takes the rows ``rank, rank + world_size, ...`` of the global batch, a disjoint share
mixing all its sources. The plan of an epoch depends only on ``(seed, epoch)``, so
``state_dict()`` (epoch and batches served) is enough to resume with the exact same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sassl_core.errors import UserError


class SourceBalancedBatchSampler:
    """Batches of row indices: ``sources_per_batch`` sources x ``patches_per_source`` patches.

    Yields this rank's share (``batch_size`` = k * m / world_size rows). One pass of ``iter()``
    serves the rest of the current epoch, then moves on to the next (``infinite=False``), or
    goes on forever (``infinite=True``).
    """

    def __init__(
        self,
        source_ids: np.ndarray,
        sources_per_batch: int,
        patches_per_source: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        infinite: bool = False,
    ) -> None:
        source_ids = np.asarray(source_ids)
        if source_ids.ndim != 1 or len(source_ids) == 0:
            raise UserError(f"source_ids: expected a non-empty 1-D array, found shape {source_ids.shape}")
        k, m = int(sources_per_batch), int(patches_per_source)
        if m < 2:
            raise UserError(f"patches_per_source: expected at least 2 (same-source pairs), found {m}")
        if k < 1:
            raise UserError(f"sources_per_batch: expected at least 1, found {k}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank: expected 0 <= rank < world_size={world_size}, found {rank}")
        if (k * m) % world_size:
            raise UserError(
                f"sources_per_batch x patches_per_source: expected a multiple of the world size "
                f"{world_size}, found {k} x {m} = {k * m}"
            )
        names, inverse = np.unique(source_ids, return_inverse=True)
        by_source = np.argsort(inverse, kind="stable")
        rows_by_source = np.split(by_source, np.cumsum(np.bincount(inverse))[:-1])
        keep = [len(rows) >= m for rows in rows_by_source]
        self.excluded_sources = [name for name, ok in zip(names.tolist(), keep) if not ok]
        self._rows = [rows for rows, ok in zip(rows_by_source, keep) if ok]
        if k > len(self._rows):
            raise UserError(
                f"sources_per_batch: expected at most {len(self._rows)} (sources with at least "
                f"{m} patches, of {len(names)}), found {k}"
            )
        self.k, self.m = k, m
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.infinite = infinite
        self._chunks = np.array([len(rows) // m for rows in self._rows])
        self._batches_per_epoch = _max_batches(self._chunks, k)
        self.epoch = 0
        self.position = 0  # batches of ``epoch`` already served

    @property
    def batch_size(self) -> int:
        """Rows per batch on this rank."""
        return self.k * self.m // self.world_size

    def __len__(self) -> int:
        """Batches per epoch."""
        return self._batches_per_epoch

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """All global batches of ``epoch``: (batches, k * m) row indices, source-major."""
        rng = np.random.default_rng([self.seed, epoch])
        chunks = [rng.permutation(rows)[: n * self.m].reshape(n, self.m) for rows, n in zip(self._rows, self._chunks)]
        remaining = np.minimum(self._chunks, self._batches_per_epoch)
        plan = np.empty((self._batches_per_epoch, self.k * self.m), dtype=np.int64)
        for b in range(self._batches_per_epoch):
            picked = _draw_sources(rng, remaining, self._batches_per_epoch - b, self.k)
            remaining[picked] -= 1
            plan[b] = np.concatenate([chunks[s][remaining[s]] for s in picked])
        return plan

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            plan = self.epoch_plan(self.epoch)
            while self.position < len(plan):
                batch = plan[self.position, self.rank :: self.world_size]
                self.position += 1
                yield batch.tolist()
            self.epoch, self.position = self.epoch + 1, 0
            if not self.infinite:
                return

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (a no-op for the current epoch, so a position
        restored by :meth:`load_state_dict` survives the usual ``set_epoch`` call)."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        """Where the sampler stands: the epoch and the batches of it already served."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise UserError(f"sampler state: expected seed {self.seed}, found {state['seed']}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def seek(self, batches_consumed: int) -> None:
        """Continue after ``batches_consumed`` batches of a run started at epoch 0 (the trainer's
        step count; use it when a prefetching DataLoader ran the sampler ahead of training)."""
        self.epoch, self.position = divmod(int(batches_consumed), self._batches_per_epoch)


def _max_batches(chunks: np.ndarray, k: int) -> int:
    """Largest b such that b batches of k distinct sources fit: sum(min(chunks, b)) >= k * b.

    The slack ``sum(min(chunks, b)) - k * b`` is concave in b and 0 at b = 0, so the feasible b
    form an interval and binary search finds its end.
    """
    low, high = 0, int(chunks.sum()) // k
    while low < high:
        mid = (low + high + 1) // 2
        if np.minimum(chunks, mid).sum() >= k * mid:
            low = mid
        else:
            high = mid - 1
    return low


def _draw_sources(rng: np.random.Generator, remaining: np.ndarray, batches_left: int, k: int) -> np.ndarray:
    """k distinct sources for the next batch, keeping the remaining batches feasible.

    A source with as many chunks as batches left must be in every one of them, so it is taken
    first; the rest are drawn with probability proportional to their remaining chunks.
    """
    tight = np.flatnonzero(remaining >= batches_left)
    if len(tight) >= k:
        return rng.choice(tight, size=k, replace=False)
    others = np.flatnonzero((remaining > 0) & (remaining < batches_left))
    # weighted sampling without replacement in one pass (Efraimidis & Spirakis, 2006):
    # the k largest log(u) / w, u ~ U(0, 1), are a draw of k items proportional to w
    keys = np.log(rng.random(len(others))) / remaining[others]
    wanted = k - len(tight)  # >= 1 here
    return np.concatenate([tight, others[np.argpartition(-keys, wanted - 1)[:wanted]]])
