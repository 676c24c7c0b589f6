"""Bucketed gradient averaging: bucket boundaries, and two gloo processes averaging for real."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sassl_core.train.grad_sync import average_gradients, gradient_buckets

WORLD = 2


def test_buckets_keep_order_respect_the_byte_limit_and_split_on_dtype():
    grads = [
        torch.zeros(10),
        torch.zeros(10),
        torch.zeros(30),
        torch.zeros(5, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
    ]
    buckets = gradient_buckets(grads, bucket_bytes=100)  # 25 float32 values
    assert [[g.numel() for g in b] for b in buckets] == [[10, 10], [30], [5, 2]]
    assert [g for b in buckets for g in b] == grads  # same tensors, same order


def _worker(rank: int, store: str, expected: list[torch.Tensor]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        for i, p in enumerate(model.parameters()):
            p.grad = torch.full_like(p, float(rank + 1)) * (i + 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        average_gradients(opt, WORLD, bucket_bytes=40)  # several buckets, one tensor larger than a bucket
        for p, want in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, want)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_two_processes_end_with_the_mean_gradient(tmp_path):
    shapes = [p.shape for p in nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).parameters()]
    expected = [torch.full(s, 1.5 * (i + 1)) for i, s in enumerate(shapes)]  # mean of rank 1 and rank 2 values
    mp.spawn(_worker, args=(str(tmp_path / "store"), expected), nprocs=WORLD, join=True)
