"""Run a function in N gloo processes on this machine (torch.multiprocessing.spawn)."""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        # Every rank reaches here before any tears down: a rank that destroys its
        # gloo pairs while a peer still uses them aborts ("terminate called ...").
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # Tearing gloo down after the barrier still aborted now and then under load (once in a
    # full-suite run): past the barrier the work is done and checked, so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn, world: int, *args) -> None:
    """``fn(rank, world, *args)`` in ``world`` processes; raises if any of them fails."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def ensure_ray():
    """Start a local 2-CPU Ray unless one is running; returns the ``ray`` module."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray
