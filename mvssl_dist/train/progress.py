"""Live pre-training progress on the driver's console.

Workers' output does not reach the driver (``log_to_driver=False`` keeps Ray's worker logs off the
console), and ``trainer.fit()`` returns only at the end, so a run used to print nothing between its
first and last line for minutes. Rank 0 now posts each logged step to a small named actor (the
same pattern as the views' counter actor), and a thread in the driver prints the newest post every
``every_s`` seconds, and once more at the end if the run moved since. Rank 0 also posts the step
each start of the workers goes on from, so that a restart after a lost worker (Ray Train's
``max_failures``) is said in a line of ours, not only in the raylet's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def progress_actor_name(run_id: str) -> str:
    """The run's progress actor: the driver creates it, rank 0 finds it by this name."""
    return f"mvssl-progress-{run_id}"


def _progress_actor_class():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressBoard:
        def __init__(self) -> None:
            self.latest: dict | None = None
            self.starts: list[dict] = []

        def post(self, latest: dict) -> None:
            self.latest = latest

        def start(self, start: dict) -> None:
            self.starts.append(start)

        def get(self) -> dict | None:
            if self.latest is None and not self.starts:
                return None
            return {**(self.latest or {}), "starts": self.starts}

    return ProgressBoard


class ProgressPost:
    """Rank 0's side: ``post`` sends a logged step's figures without waiting (a no-op elsewhere,
    or when the driver asked for no progress)."""

    def __init__(self, run_id: str | None, rank: int) -> None:
        self.handle = None
        if run_id and rank == 0:
            import ray

            try:
                self.handle = ray.get_actor(progress_actor_name(run_id))
            except ValueError:  # a driver that asked for none
                self.handle = None

    def post(self, step: int, total_steps: int, metrics: dict) -> None:
        if self.handle is not None:
            keep = ("loss", "samples_per_s", "data_wait_fraction", "metrics_unlogged")
            figures = {k: float(metrics[k]) for k in keep if k in metrics}
            self.handle.post.remote({"step": step, "total_steps": total_steps, **figures})

    def started(self, step: int, ended: bool) -> None:
        """The workers (re)started from ``step``; ``ended``: that checkpoint was the run's last."""
        if self.handle is not None:
            self.handle.start.remote({"step": step, "ended": ended})


def restart_line(restart: int, start: dict, max_failures: int = -1) -> str:
    """``[pretrain] a worker failed or was lost; Ray Train restarted the workers (restart 1), going on from ...``,
    and how many more failures the run survives (``train.max_failures``; -1: any number)."""
    step = start["step"]
    where = f"the step {step} checkpoint" if step else "the start (no checkpoint yet)"
    if start.get("ended"):
        where = f"the step {step} checkpoint, the run's last: nothing is left to train"
    elif max_failures >= 0:
        left = max_failures - restart
        more = f"{left} more restart(s) allowed" if left > 0 else "another failure ends the run"
        where += f"; {more} (train.max_failures {max_failures})"
    return f"[pretrain] a worker failed or was lost; Ray Train restarted the workers (restart {restart}), going on from {where}"


def progress_line(latest: dict, total_steps: int, elapsed_s: float, steps_per_s: float | None) -> str:
    """``[pretrain] step 120 of 372: loss 1.148, 31 samples/s, 2:10 in, ~4:12 left at this pace``."""
    parts = [f"loss {latest['loss']:.3f}"] if "loss" in latest else []
    if "samples_per_s" in latest:
        parts.append(f"{latest['samples_per_s']:.0f} samples/s")
    if latest.get("data_wait_fraction", 0.0) >= 0.2:
        parts.append(f"{latest['data_wait_fraction']:.0%} of the time waiting for views")
    if latest.get("metrics_unlogged"):
        parts.append(f"MLflow unreachable, {latest['metrics_unlogged']:.0f} metrics kept to send")
    parts.append(f"{clock(elapsed_s)} in")
    left = total_steps - latest["step"]
    if steps_per_s and left > 0:
        parts.append(f"~{clock(left / steps_per_s)} left at this pace")
    return f"[pretrain] step {latest['step']} of {total_steps}: " + ", ".join(parts)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class ProgressPrinter:
    """The driver's side: ``with ProgressPrinter(fetch, total, report):`` around ``trainer.fit()``.

    ``fetch()`` returns the newest post (or ``None``); a failing fetch is skipped, never raised:
    progress lines must not break a run.
    """

    def __init__(
        self,
        fetch: Callable[[], dict | None],
        total_steps: int,
        report: Callable[[str], None],
        every_s: float = 20.0,
        max_failures: int = -1,
    ) -> None:
        self.fetch, self.total_steps, self.report, self.every_s = fetch, total_steps, report, every_s
        self.max_failures = max_failures
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mvssl-progress", daemon=True)
        self.started = time.monotonic()
        self.printed_step: int | None = None
        self.first_seen: tuple[float, int] | None = None  # (time, step) of the first post seen
        self.restarts: list[dict] = []  # every start of the workers after the first: {"step", "ended"}

    def __enter__(self) -> ProgressPrinter:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.tick()  # the last step reached, if not printed yet

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.tick()

    def tick(self) -> None:
        try:
            latest = self.fetch()
        except Exception:  # noqa: BLE001 - the actor may be gone with a failed run; the run reports that
            return
        if not latest:
            return
        starts = latest.get("starts") or []
        for restart in range(len(self.restarts) + 1, len(starts)):  # the first start is the run's own
            self.report(restart_line(restart, starts[restart], self.max_failures))
            self.restarts.append(starts[restart])
        if "step" not in latest or latest["step"] == self.printed_step:
            return
        now = time.monotonic()
        if self.first_seen is None:
            self.first_seen = (now, latest["step"])
        seen_s, seen_step = now - self.first_seen[0], latest["step"] - self.first_seen[1]
        rate = seen_step / seen_s if seen_s > 0 and seen_step > 0 else None
        total = latest.get("total_steps", self.total_steps)  # fewer once fitted to train.max_minutes
        self.report(progress_line(latest, total, now - self.started, rate))
        self.printed_step = latest["step"]


class RunProgress:
    """The named actor and the printer for one run: ``with RunProgress(name, total, report):``."""

    def __init__(
        self, name: str, total_steps: int, report: Callable[[str], None], every_s: float = 20.0, max_failures: int = -1
    ) -> None:
        self.actor = _progress_actor_class().options(name=name, get_if_exists=True).remote()
        self.printer = ProgressPrinter(self._fetch, total_steps, report, every_s, max_failures)

    def _fetch(self) -> dict | None:
        import ray

        return ray.get(self.actor.get.remote(), timeout=10)

    def __enter__(self) -> RunProgress:
        self.printer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        import ray

        self.printer.__exit__(*exc)
        try:
            ray.kill(self.actor)
        except Exception:  # noqa: BLE001 - Ray may be down with a failed run: its own error is the one to see
            pass
