"""The training loop's pure parts: which steps log, collapse counting, metrics read once."""

import torch

from mvssl_dist.methods import build_method
from mvssl_dist.train.loop import CollapseWatch, as_floats, logged
from mvssl_dist.train.schedules import Schedules

THRESHOLDS = {"collapse_std": 1e-4, "collapse_rank": 1.5, "collapse_patience": 50}
LOW = {"embedding_std": 1e-6, "effective_rank": 1.01}
NORMAL = {"embedding_std": 0.03, "effective_rank": 300.0}


def test_logged_steps_are_every_log_every_and_the_last():
    cfg = {"train": {"log_every": 10}, "total_steps": 25}
    assert [s for s in range(1, 26) if logged(s, cfg)] == [10, 20, 25]


def test_collapse_counts_the_steps_between_low_readings():
    watch = CollapseWatch(THRESHOLDS)
    assert [watch.update(LOW, step) for step in (10, 20, 30, 40)] == [False] * 4
    assert watch.update(LOW, 50)  # 50 steps low, read every 10


def test_a_normal_reading_starts_the_count_again():
    watch = CollapseWatch(THRESHOLDS, step=100)  # a resumed run counts from its own start
    for step in (110, 120, 130, 140):
        watch.update(LOW, step)
    assert not watch.update(NORMAL, 150)
    assert not watch.update(LOW, 190) and watch.update(LOW, 200)
    assert not CollapseWatch(THRESHOLDS).update({"embedding_std": 0.03, "effective_rank": 1.2}, 49)
    assert CollapseWatch(THRESHOLDS).update({"embedding_std": 0.03, "effective_rank": 1.2}, 50)


def test_a_step_returns_tensors_and_only_watched_steps_compute_the_collapse_signals():
    torch.manual_seed(0)
    method = build_method("vicreg").train()
    views = torch.randn(4, 2, 64000) * 0.1
    schedule = Schedules(total_steps=10, steps_per_epoch=10).at(0)
    _, quiet = method(views, schedule, watch=False)
    assert "effective_rank" not in quiet and "embedding_std" not in quiet
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in quiet.values())
    _, watched = method(views, schedule, watch=True)
    numbers = as_floats(watched)
    assert {"loss", "inv", "var", "cov", "embedding_std", "effective_rank"} <= set(numbers)
    assert all(isinstance(v, float) for v in numbers.values())
    assert 1.0 < numbers["effective_rank"] <= 8 and numbers["embedding_std"] > 0
    assert abs(numbers["loss"] - (numbers["inv"] + numbers["var"] + numbers["cov"])) < 1e-5
