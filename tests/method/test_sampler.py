"""The source-balanced batch sampler: structure, epochs, determinism, ranks and resuming."""

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sassl_core import UserError
from sassl_core.method.sampler import SourceBalancedBatchSampler

# 6 sources with 12, 9, 8, 7, 5 and 1 patches, rows interleaved
SOURCE_IDS = np.array([s for s, n in zip(range(6), [12, 9, 8, 7, 5, 1]) for _ in range(n)])[
    np.random.default_rng(0).permutation(42)
]


def epoch(sampler):
    return list(sampler)


def test_every_batch_has_k_sources_of_m_patches():
    sampler = SourceBalancedBatchSampler(SOURCE_IDS, sources_per_batch=3, patches_per_source=2)
    batches = epoch(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == sampler.batch_size == 6
        assert sorted(Counter(SOURCE_IDS[batch].tolist()).values()) == [2, 2, 2]


def test_no_patch_repeats_within_an_epoch_and_most_are_served():
    sampler = SourceBalancedBatchSampler(SOURCE_IDS, sources_per_batch=3, patches_per_source=2)
    rows = [r for batch in epoch(sampler) for r in batch]
    assert len(rows) == len(set(rows))
    # chunks per source: 6, 4, 4, 3, 2 (the one-patch source is excluded) -> 19 chunks -> 6 batches
    assert len(sampler) == 6 and len(rows) == 36


def test_source_with_fewer_than_m_patches_is_excluded():
    sampler = SourceBalancedBatchSampler(SOURCE_IDS, sources_per_batch=2, patches_per_source=2)
    assert sampler.excluded_sources == [5]
    served = {r for batch in epoch(sampler) for r in batch}
    assert not any(SOURCE_IDS[r] == 5 for r in served)


def test_same_seed_same_batches_other_seed_or_epoch_other_batches():
    def first_epochs(seed):
        sampler = SourceBalancedBatchSampler(SOURCE_IDS, 3, 2, seed=seed)
        return epoch(sampler), epoch(sampler)

    a0, a1 = first_epochs(7)
    b0, b1 = first_epochs(7)
    c0, _ = first_epochs(8)
    assert a0 == b0 and a1 == b1
    assert a0 != c0
    assert a0 != a1  # each epoch reshuffles


def test_ranks_take_disjoint_shares_of_the_global_batch():
    whole = epoch(SourceBalancedBatchSampler(SOURCE_IDS, 3, 2, seed=1))
    shares = [SourceBalancedBatchSampler(SOURCE_IDS, 3, 2, seed=1, rank=r, world_size=3) for r in range(3)]
    assert all(s.batch_size == 2 for s in shares)
    per_rank = [epoch(s) for s in shares]
    for step, global_batch in enumerate(whole):
        parts = [set(batches[step]) for batches in per_rank]
        assert set.union(*parts) == set(global_batch)
        assert sum(len(p) for p in parts) == len(global_batch)


def test_state_dict_resume_continues_with_the_same_batches():
    reference = SourceBalancedBatchSampler(SOURCE_IDS, 3, 2, seed=4, infinite=True)
    expected = list(itertools.islice(iter(reference), 15))  # crosses two epoch boundaries

    first = SourceBalancedBatchSampler(SOURCE_IDS, 3, 2, seed=4, infinite=True)
    served = list(itertools.islice(iter(first), 8))
    state = first.state_dict()
    assert state["epoch"] == 1 and state["position"] == 2

    resumed = SourceBalancedBatchSampler(SOURCE_IDS, 3, 2, seed=4, infinite=True)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the usual per-epoch call keeps the restored position
    assert served + list(itertools.islice(iter(resumed), 7)) == expected


def test_seek_matches_a_trainers_step_count():
    reference = list(itertools.islice(iter(SourceBalancedBatchSampler(SOURCE_IDS, 3, 2, infinite=True)), 10))
    sampler = SourceBalancedBatchSampler(SOURCE_IDS, 3, 2, infinite=True)
    sampler.seek(7)
    assert list(itertools.islice(iter(sampler), 3)) == reference[7:]


def test_finite_iteration_serves_one_epoch_then_the_next():
    sampler = SourceBalancedBatchSampler(SOURCE_IDS, 3, 2)
    first, second = epoch(sampler), epoch(sampler)
    assert len(first) == len(second) == len(sampler)
    assert sampler.state_dict()["epoch"] == 2
    sampler.set_epoch(0)
    assert epoch(sampler) == first


def test_state_of_another_seed_is_refused():
    sampler = SourceBalancedBatchSampler(SOURCE_IDS, 3, 2, seed=1)
    with pytest.raises(UserError, match="seed"):
        sampler.load_state_dict({"epoch": 0, "position": 0, "seed": 2})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sources_per_batch": 6, "patches_per_source": 2}, "sources_per_batch: expected at most 5"),
        ({"sources_per_batch": 2, "patches_per_source": 1}, "patches_per_source: expected at least 2"),
        ({"sources_per_batch": 3, "patches_per_source": 3, "world_size": 2}, "multiple of the world size"),
        ({"sources_per_batch": 2, "patches_per_source": 2, "rank": 2, "world_size": 2}, "rank"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, field):
    with pytest.raises(UserError, match=field):
        SourceBalancedBatchSampler(SOURCE_IDS, **kwargs)


def test_string_source_ids_work():
    names = np.array(["radboud", "karolinska"] * 4)
    batches = epoch(SourceBalancedBatchSampler(names, 2, 2))
    assert len(batches) == 2
    assert all(sorted(Counter(names[b].tolist()).values()) == [2, 2] for b in batches)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=30), min_size=2, max_size=12),
    k=st.integers(min_value=1, max_value=4),
    m=st.integers(min_value=2, max_value=4),
    seed=st.integers(min_value=0, max_value=3),
)
def test_structure_and_optimal_epoch_length_for_any_source_sizes(counts, k, m, seed):
    source_ids = np.repeat(np.arange(len(counts)), counts)
    chunks = np.array([c // m for c in counts])
    if (chunks > 0).sum() < k:
        with pytest.raises(UserError):
            SourceBalancedBatchSampler(source_ids, k, m, seed=seed)
        return
    sampler = SourceBalancedBatchSampler(source_ids, k, m, seed=seed)
    batches = epoch(sampler)
    rows = [r for b in batches for r in b]
    assert len(rows) == len(set(rows))
    for batch in batches:
        assert sorted(Counter(source_ids[batch].tolist()).values()) == [m] * k
    # no epoch of k-distinct-source batches can be longer (a source gives at most one chunk per batch)
    longest = max(b for b in range(chunks.sum() // k + 1) if np.minimum(chunks, b).sum() >= k * b)
    assert len(batches) == longest
