"""torch.distributed helpers: rank and world size from an initialised process group (torchrun's env).

Everything works unchanged in a single process: rank 0 of a world of 1.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def init_from_env() -> bool:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1 in the env).

    NCCL when CUDA is available, gloo otherwise. Returns whether this process is part of a group.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True


def training_device() -> torch.device:
    """This process's device: its local GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", get_local_rank())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in place, returned); the identity in a single process."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating a dataset), the others after it finished."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()
