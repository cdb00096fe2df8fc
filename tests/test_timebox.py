"""``train.max_minutes``: every worker leaves the loop at the same step, decided by rank 0's clock,
and the schedules are fitted to the box from the pace the run keeps."""

from __future__ import annotations

import time

import pytest
import torch
from distributed_helpers import run_distributed

from mvssl_dist.train.loop import TimeBox, schedules_for

CPU = torch.device("cpu")


def test_no_limit_is_never_spent_and_a_passed_deadline_is():
    assert TimeBox(0.0, CPU).check(50, 100) == (False, 100)
    box = TimeBox(0.5 / 60, CPU, fit=False)  # half a second
    assert box.check(1, 100) == (False, 100)
    time.sleep(0.6)
    assert box.check(2, 100) == (True, 100)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_last_step_is_fitted_from_the_pace_after_start_up(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("mvssl_dist.train.loop.time.monotonic", clock)
    box = TimeBox(100 / 60, CPU)  # 100 s
    clock.now += 5  # the views' warm-up: not counted in the pace
    assert box.check(5, 1000) == (False, 1000)
    clock.now += 7  # 12 s in: the pace is measured from here (step 10)
    assert box.check(10, 1000) == (False, 1000)
    clock.now += 8  # 20 s in: under a quarter of the box, no pace trusted yet
    assert box.check(20, 1000) == (False, 1000)
    clock.now += 10  # 30 s in, 20 steps in 18 s since step 10: 0.9 s a step, 70 s left
    assert box.check(30, 1000) == (False, 30 + 70)  # 90 % of 70 s at 0.9 s a step
    clock.now += 10  # a faster stretch later does not move it again
    assert box.check(80, 100) == (False, 100)
    clock.now += 60
    assert box.check(99, 100) == (True, 100)  # and the deadline still stops a slower one


def test_a_run_that_slows_after_the_first_fit_is_brought_forward_and_never_pushed_back(monkeypatch):
    """The quickstart's 400 steps were fitted to 266 from the pace before its first checkpoint and
    met the box at step 225, its learning rate at 6 % of the peak. At half and three quarters of
    the box the fit is made again from the pace since the one before: fewer steps if they have
    slowed, never more if they have quickened, and no change when the pace holds."""
    clock = Clock()
    monkeypatch.setattr("mvssl_dist.train.loop.time.monotonic", clock)
    slowing, steady = TimeBox(100 / 60, CPU), TimeBox(100 / 60, CPU)
    for box in (slowing, steady):  # 100 s; as above: 0.9 s a step from 12 s in, fitted to step 100 at 30 s
        clock.now = 1000.0
        box.started, box.deadline = clock.now, clock.now + 100
        clock.now += 12
        box.check(10, 1000)
        clock.now += 18
        assert box.check(30, 1000) == (False, 100)
    clock.now = 1050.0  # half the box: 15 steps in 20 s since the fit, 50 s left
    assert slowing.check(45, 100) == (False, 45 + int(0.9 * 50 / (20 / 15)))  # 78
    assert steady.check(52, 100) == (False, 100)  # 22 steps in 20 s: step 100 still fits
    clock.now = 1075.0  # three quarters: quicker again (25 steps in 25 s), the last step stays put
    assert slowing.check(70, 78) == (False, 78)
    clock.now = 1100.0
    assert slowing.check(77, 78) == (True, 78)  # past the last fit the deadline still stops it


def test_fitting_never_adds_steps_and_can_be_switched_off(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("mvssl_dist.train.loop.time.monotonic", clock)
    # measured from step 5 at 10 s: 25 steps in 20 s, 70 s left: 30 + 78 = 108 steps would fit
    for fit, planned, last in ((True, 60, 60), (False, 1000, 1000), (True, 1000, 108)):
        box = TimeBox(100 / 60, CPU, fit=fit)
        clock.now += 10
        box.check(5, planned)
        clock.now += 20
        assert box.check(30, planned) == (False, last)


def test_fitted_schedules_end_their_course_at_the_new_last_step():
    cfg = {
        "train": {
            "lr": 1e-3,
            "min_lr": 1e-7,
            "warmup_epochs": 1,
            "weight_decay": 0.04,
            "weight_decay_end": 0.4,
            "ema_momentum": 0.996,
            "teacher_temp_warmup_epochs": 10,
        },
        "steps_per_epoch": 15,
        "total_steps": 372,
    }
    planned = schedules_for(cfg).at(230)["lr"]
    fitted = schedules_for({**cfg, "total_steps": 230}).at(230)["lr"]
    assert planned > 0.3e-3 and fitted == pytest.approx(1e-7)  # cut at the peak vs annealed


def _ranks_follow_rank_zero(rank: int, world: int, out) -> None:
    answers = []
    for late in (0, 1):  # the rank whose clock has run out
        box = TimeBox(10.0, CPU)
        if rank == late:
            box.deadline = time.monotonic() - 1
        answers.append(box.check(1, 100)[0])
    for fits in (0, 1):  # the rank whose clock says the pace can be trusted
        box = TimeBox(10.0, CPU)
        if rank == fits:
            box.started, box.deadline = box.started - 300, box.deadline - 300  # half the box gone
            box.mark = (time.monotonic() - 1, 0)  # 1 step in 1 s: 0.9 * 300 more steps fit
        answers.append(box.check(1, 10_000)[1])
    torch.save(answers, out / f"rank{rank}.pt")


def test_two_processes_stop_and_fit_at_the_same_step(tmp_path):
    run_distributed(_ranks_follow_rank_zero, 2, tmp_path)
    # rank 0 out of time: both stop; only rank 1 out of time: both go on. The same for the fitted
    # last step: rank 0's on both ranks, and none where only rank 1's clock would fit one
    expected = [True, False, 1 + int(0.9 * 300 / 1), 10_000]
    for rank in (0, 1):
        answers = torch.load(tmp_path / f"rank{rank}.pt")
        assert answers[:2] == expected[:2] and answers[3] == expected[3]
        assert abs(answers[2] - expected[2]) <= 2, answers  # rank 0's clock moved between the reads
