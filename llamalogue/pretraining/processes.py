"""Pretraining as several processes (`torchrun --nproc_per_node=K train_lm.py ...`): what changes when K > 1.

Each process is one DistributedDataParallel replica; a step's windows (K x grad_accum x batch_size) are split between
them, each takes its own slice, and the gradients are averaged across processes, so K processes with batch B train
like one process with batch K*B. Only rank 0 measures the speed settings (llamalogue.pretraining.speed), logs and
writes the run folder; the others take its choices. Without torchrun there is one process and none of this runs.
"""

import os
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.distributed as dist

from llamalogue.model import default_device


@contextmanager
def process_group(device: str | None):
    """`with process_group(device) as (rank, world, device):` torchrun sets RANK/WORLD_SIZE/LOCAL_RANK, and each
    process joins the group, which it leaves at the end; without them, one process (rank 0 of 1) and no group."""
    device = device or default_device()
    if "RANK" not in os.environ:
        yield 0, 1, device
        return
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()


def mean_over_processes(value: float, world: int, device: str) -> float:
    """The mean of a number every process holds (its training loss, whether Ctrl-C was pressed)."""
    if world == 1:
        return value
    total = torch.tensor(value, device=device)
    dist.all_reduce(total)
    return total.item() / world


def same_windows_per_step(config, record: dict | None, world: int):
    """A resumed run trains on as many windows a step as it began with (record["windows_per_step"] = processes x
    grad_accum x batch_size): its step count, learning-rate schedule and data order are in those steps. Resumed on
    another number of processes (torchrun), grad_accum takes up the difference; when it cannot, one error line."""
    if record is None:
        return config
    recorded = record["windows_per_step"]
    if recorded == world * config.grad_accum * config.batch_size:
        return config
    if recorded % (world * config.batch_size):
        raise ValueError(f"--resume: the run trains on {recorded} windows a step, which {world} process(es) x "
                         f"{config.batch_size} windows cannot make: resume with a number of processes that divides "
                         f"{recorded // config.batch_size}")
    grad_accum = recorded // (world * config.batch_size)
    print(f"resumed on {world} process(es): grad_accum {config.grad_accum} -> {grad_accum}, the run's {recorded} "
          f"windows a step")
    return replace(config, grad_accum=grad_accum)
