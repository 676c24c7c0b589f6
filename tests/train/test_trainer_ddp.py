"""The training loop under DistributedDataParallel: two CPU processes (gloo) against one process.

A linear model trained with gradient accumulation: DDP all-reduces once per optimiser step
(``no_sync`` on the earlier micro-batches), the weights and the logged loss follow the
1-process run on the same global micro-batches, and a loss that is non-finite on one process
only makes every process skip the step; a signal to one process stops all after the same step.
``in_turn`` lets rank 0 write first.
"""

import math
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sassl_core.config import OutputConfig, TrainerConfig
from sassl_core.train.runtime import Runtime, in_turn, replicate
from sassl_core.train.trainer import Phase, Program, Trainer

WORLD = 2
ROWS = 4  # per process and micro-batch
ACCUM = 2


def _micro_batches(rank: int | None) -> list[dict]:
    """The global micro-batches of one step, or process ``rank``'s share of each."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(WORLD * ROWS, 3, generator=gen) for _ in range(ACCUM)]
    rows = slice(None) if rank is None else slice(rank * ROWS, (rank + 1) * ROWS)
    return [{"image": x[rows], "offset": torch.tensor(0.0)} for x in batches]


def _program(rt: Runtime, all_reduces: list[int] | None = None) -> tuple[Program, nn.Module]:
    torch.manual_seed(1)
    net = nn.Linear(3, 2)
    replica = replicate(net, rt)
    if all_reduces is not None:
        world = dist.get_world_size()

        def counting_mean(state: list[int], bucket):
            state.append(1)
            buffer = bucket.buffer().div_(world)
            return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])

        replica.register_comm_hook(all_reduces, counting_mean)

    def phases(batch: dict, step: int):
        loss = replica(batch["image"]).pow(2).mean() + batch["offset"]  # the offset has no gradient
        yield Phase("net", loss, {"loss": loss.detach()})

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    return Program({"net": net}, {"net": opt}, {}, phases, replicas=[replica]), net


def _trainer(rt: Runtime, tmp: str) -> Trainer:
    return Trainer("pretrain", tmp, TrainerConfig(grad_accum=ACCUM), OutputConfig(quiet=True), rt, total_steps=2)


def _reference(tmp: str) -> tuple[dict, float]:
    rt = Runtime(torch.device("cpu"))
    program, net = _program(rt)
    logs, _, _, finite = _trainer(rt, tmp).train_step(program, iter(_micro_batches(None)), 0)
    assert finite
    return {k: v.clone() for k, v in net.state_dict().items()}, logs["loss"]


def _worker(rank: int, store: str, tmp: str, reference) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        rt = Runtime(torch.device("cpu"), rank, WORLD)  # local rank 0 on both: two one-process nodes
        order = Path(tmp) / "order"
        with in_turn(rt):  # rank 0 alone first, however long it takes
            if rank == 0:
                time.sleep(0.3)
            with open(order, "a") as fh:
                fh.write(str(rank))
        dist.barrier()
        assert order.read_text() == "01"
        all_reduces: list[int] = []
        program, net = _program(rt, all_reduces)
        trainer = _trainer(rt, tmp)
        logs, _, _, finite = trainer.train_step(program, iter(_micro_batches(rank)), 0)
        assert finite and len(all_reduces) == 1  # one bucket, once: not once per micro-batch
        weights, loss = reference
        for key, value in net.state_dict().items():
            torch.testing.assert_close(value, weights[key], rtol=1e-5, atol=1e-6)
        assert logs["loss"] == pytest.approx(loss, rel=1e-5)  # the mean over processes

        batches = _micro_batches(rank)
        batches[-1]["offset"] = torch.tensor(math.inf if rank == 1 else 0.0)  # gradients stay finite
        before = {k: v.clone() for k, v in net.state_dict().items()}
        _, _, _, finite = trainer.train_step(program, iter(batches), 1)
        assert not finite  # on rank 0 too, whose own loss was finite
        for key, value in net.state_dict().items():
            assert torch.equal(value, before[key])

        assert not trainer._stop_requested()
        if rank == 1:
            trainer._on_signal(signal.SIGTERM, None)
        assert trainer._stop_requested()  # on rank 0 too: both stop after the same step
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_accumulates_without_sync_and_shares_the_nonfinite_verdict_and_the_stop(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    reference = _reference(str(tmp_path))
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path), reference), nprocs=WORLD, join=True)


def test_replicate_is_the_module_itself_without_a_process_group():
    net = nn.Linear(2, 2)
    assert replicate(net, Runtime(torch.device("cpu"))) is net
