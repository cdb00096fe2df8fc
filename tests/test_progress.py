"""Live progress lines of a pre-training run: what they say, when the printer prints, and that a
failing fetch never breaks a run. (The Ray side runs in tests/test_pretrain.py.)"""

import threading

from mvssl_dist.train.progress import ProgressPost, ProgressPrinter, clock, progress_line, restart_line


def test_a_progress_line_gives_step_loss_pace_and_time_left():
    latest = {"step": 120, "loss": 1.1482, "samples_per_s": 31.4, "data_wait_fraction": 0.01}
    line = progress_line(latest, 372, 130.0, steps_per_s=1.0)
    assert line == "[pretrain] step 120 of 372: loss 1.148, 31 samples/s, 2:10 in, ~4:12 left at this pace"
    starved = progress_line({**latest, "data_wait_fraction": 0.45}, 372, 10.0, None)
    assert "45% of the time waiting for views" in starved and "left" not in starved
    assert progress_line({"step": 372}, 372, 3725.0, 2.0) == "[pretrain] step 372 of 372: 1:02:05 in"
    assert clock(59.6) == "1:00" and clock(0) == "0:00"


def test_the_printer_prints_new_steps_only_and_the_last_one_on_exit():
    posts = iter([None, {"step": 5, "loss": 3.0}, {"step": 5, "loss": 3.0}, {"step": 10, "loss": 2.5}])
    lines = []
    printer = ProgressPrinter(lambda: next(posts), 20, lines.append, every_s=3600)
    for _ in range(3):  # nothing yet, then step 5, then step 5 again (not repeated)
        printer.tick()
    assert [line.split(":")[0] for line in lines] == ["[pretrain] step 5 of 20"]
    with printer:  # the thread waits an hour; leaving prints the step reached since
        pass
    assert [line.split(":")[0] for line in lines] == ["[pretrain] step 5 of 20", "[pretrain] step 10 of 20"]
    assert "left" not in lines[0] and "left at this pace" in lines[1]  # a pace needs two posts


def test_the_printer_polls_while_the_run_goes_on_and_survives_a_failing_fetch():
    calls, seen = [], threading.Event()

    def fetch():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("actor gone")
        if len(calls) >= 3:
            seen.set()
        return {"step": len(calls), "loss": 1.0}

    lines = []
    with ProgressPrinter(fetch, 100, lines.append, every_s=0.01):
        assert seen.wait(10)
    assert lines and all(line.startswith("[pretrain] step ") for line in lines)


def test_only_rank_0_posts_and_a_run_without_the_actor_posts_nothing():
    assert ProgressPost(None, 0).handle is None and ProgressPost("run", 1).handle is None
    ProgressPost(None, 0).post(3, 10, {"loss": 1.0})  # a no-op, no Ray needed


def test_a_restart_of_the_workers_is_said_once_with_the_step_it_goes_on_from():
    """A worker lost and replaced (Ray Train's max_failures) showed only the raylet's line about a
    dead worker, and then the progress went on, or went back, with no word of ours."""
    first, again, last = {"step": 0, "ended": False}, {"step": 4, "ended": False}, {"step": 6, "ended": True}
    posts = iter(
        [
            {"starts": [first]},  # started, nothing logged yet
            {"step": 5, "loss": 3.0, "starts": [first]},
            {"step": 5, "loss": 3.0, "starts": [first, again]},  # lost after step 5: back to the step-4 checkpoint
            {"step": 6, "loss": 2.0, "starts": [first, again]},
            {"step": 6, "loss": 2.0, "starts": [first, again, last]},
        ]
    )
    lines = []
    printer = ProgressPrinter(lambda: next(posts), 6, lines.append, every_s=3600, max_failures=3)
    for _ in range(5):
        printer.tick()
    assert lines == [
        lines[0],
        "[pretrain] a worker failed or was lost; Ray Train restarted the workers (restart 1), going on from the step 4 "
        "checkpoint; 2 more restart(s) allowed (train.max_failures 3)",
        lines[2],
        "[pretrain] a worker failed or was lost; Ray Train restarted the workers (restart 2), going on from the step 6 "
        "checkpoint, the run's last: nothing is left to train",
    ]
    assert lines[0].startswith("[pretrain] step 5 of 6") and lines[2].startswith("[pretrain] step 6 of 6")
    assert printer.restarts == [again, last]  # tagged on the MLflow run at the end
    assert restart_line(1, {"step": 0}).endswith("going on from the start (no checkpoint yet)")  # -1: no limit
    assert restart_line(1, {"step": 2}, 1).endswith(
        "from the step 2 checkpoint; another failure ends the run (train.max_failures 1)"
    )
