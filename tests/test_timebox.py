"""``train.max_minutes``: every worker leaves the loop at the same step, decided by rank 0's clock."""

from __future__ import annotations

import time

import torch
from distributed_helpers import run_distributed

from mvssl_dist.train.loop import TimeBox


def test_no_limit_is_never_spent_and_a_passed_deadline_is():
    assert not TimeBox(0.0, torch.device("cpu")).spent()
    box = TimeBox(0.5 / 60, torch.device("cpu"))  # half a second
    assert not box.spent()
    time.sleep(0.6)
    assert box.spent()


def _ranks_follow_rank_zero(rank: int, world: int, out) -> None:
    spent = []
    for late in (0, 1):  # the rank whose clock has run out
        box = TimeBox(10.0, torch.device("cpu"))
        if rank == late:
            box.deadline = time.monotonic() - 1
        spent.append(box.spent())
    torch.save(spent, out / f"rank{rank}.pt")


def test_two_processes_stop_at_the_same_step(tmp_path):
    run_distributed(_ranks_follow_rank_zero, 2, tmp_path)
    # rank 0 out of time: both stop; only rank 1 out of time: both go on
    assert torch.load(tmp_path / "rank0.pt") == torch.load(tmp_path / "rank1.pt") == [True, False]
