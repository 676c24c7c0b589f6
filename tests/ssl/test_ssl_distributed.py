"""Global-batch maths under torch.distributed: two CPU processes (gloo) against one process."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sassl_core.method.adversary import StainAdversary
from sassl_core.ssl.distributed import gather_with_grad, world_info
from sassl_core.ssl.losses import nt_xent

WORLD = 2
ROWS = 4  # per process


def test_without_distributed_gather_is_identity_and_world_is_one():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert world_info() == (0, 1)


def _data():
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(WORLD * ROWS, 6, generator=gen)
    z2 = torch.randn(WORLD * ROWS, 6, generator=gen)
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    return z1, z2, ids


def _adversary():
    torch.manual_seed(3)
    return StainAdversary(6, hidden_dim=8, layers=2)


def _reference():
    """Single-process values and gradients on the whole batch."""
    z1, z2, ids = (t.clone() for t in _data())
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss = nt_xent(z1, z2, 0.5)
    grads = torch.autograd.grad(loss, [z1, z2])
    adversary = _adversary()
    term, stats = adversary.generator_term(z1, z2, ids, step=0)
    adv_grads = torch.autograd.grad(term, [z1, z2])
    return loss.item(), grads, {k: float(v) for k, v in stats.items()}, adv_grads


def _worker(rank, store_path, reference):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        assert world_info() == (rank, WORLD)
        rows = slice(rank * ROWS, (rank + 1) * ROWS)

        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = gather_with_grad(x)
        torch.testing.assert_close(gathered, torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)]))
        weights = torch.arange(12.0).reshape(4, 3)
        (gathered * weights).sum().backward()  # every rank's loss reads the whole batch
        torch.testing.assert_close(x.grad, WORLD * weights[rank * 2 : rank * 2 + 2])

        ids_all = gather_with_grad(torch.tensor([rank, rank]))
        assert ids_all.tolist() == [0, 0, 1, 1]

        ref_loss, ref_grads, ref_stats, ref_adv_grads = reference
        z1_all, z2_all, ids = _data()
        z1 = z1_all[rows].clone().requires_grad_(True)
        z2 = z2_all[rows].clone().requires_grad_(True)
        loss = nt_xent(z1, z2, 0.5)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        assert mean_loss.item() / WORLD == pytest.approx(ref_loss, rel=1e-5)
        grads = torch.autograd.grad(loss, [z1, z2])
        # DDP averages over ranks: WORLD * (1/WORLD) * grad == gradient of the global mean loss
        for grad, ref in zip(grads, ref_grads):
            torch.testing.assert_close(grad, WORLD * ref[rows])

        term, stats = _adversary().generator_term(z1, z2, ids[rows], step=0)
        assert {k: float(v) for k, v in stats.items()} == pytest.approx(ref_stats, rel=1e-5)
        for grad, ref in zip(torch.autograd.grad(term, [z1, z2]), ref_adv_grads):
            torch.testing.assert_close(grad, WORLD * ref[rows])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    reference = _reference()
    mp.spawn(_worker, args=(str(tmp_path / "store"), reference), nprocs=WORLD, join=True)
