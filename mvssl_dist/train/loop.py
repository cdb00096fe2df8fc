"""The Ray Train per-worker loop: views shard in, SSL step, checkpoints out, rank-0 MLflow logging.

``train_loop_per_worker(cfg)`` receives the validated config plus what the driver derived
(``steps_per_epoch``, ``total_steps``, ``start_step``, ``run_id``...). Everything needed to
continue is in each checkpoint: student, teacher, DINO centre (module state), optimizer,
step, epoch, RNG states, config.
"""

from __future__ import annotations

import math
import os
import random
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mvssl_dist.config import recorded_config
from mvssl_dist.losses.distributed import world_size
from mvssl_dist.methods import build_method
from mvssl_dist.tracking import first_line
from mvssl_dist.train.batchnorm import convert_cross_rank_batchnorm
from mvssl_dist.train.checkpoints import STATE_FILE, is_whole, newest_checkpoint
from mvssl_dist.train.progress import ProgressPost
from mvssl_dist.train.schedules import Schedules

INT16_SCALE = 32768.0


def schedules_for(cfg: dict) -> Schedules:
    t = cfg["train"]
    spe = cfg["steps_per_epoch"]
    return Schedules(
        total_steps=cfg["total_steps"],
        steps_per_epoch=spe,
        lr=t["lr"],
        min_lr=t["min_lr"],
        warmup_steps=min(t["warmup_epochs"] * spe, cfg["total_steps"] // 2),
        weight_decay=t["weight_decay"],
        weight_decay_end=t["weight_decay_end"],
        ema_momentum=t["ema_momentum"],
        teacher_temp_warmup_epochs=t["teacher_temp_warmup_epochs"],
    )


def param_groups(method: torch.nn.Module) -> list[dict]:
    """Weight decay on weights of 2+ dimensions only (not biases, norms, positional embeddings)."""
    decay, no_decay = [], []
    for name, p in method.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "positional_embedding" not in name else no_decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay if group.get("apply_wd") else 0.0


def rng_state() -> dict:
    """RNG states as tensors and plain values, so checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def save_state(directory: Path, method, optimizer, step: int, epoch: int, cfg: dict, extra: dict) -> None:
    torch.save(
        {
            "format": "mvssl-train-checkpoint",
            "method": cfg["method"]["name"],
            "model": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "rng": rng_state(),
            "config": recorded_config(cfg),
            **extra,
        },
        directory / STATE_FILE,
    )


class Rank0Tracker:
    """Per-step metrics and tags to MLflow from rank 0 only; a no-op elsewhere.

    A tracking server that cannot be reached for a while (a restart, a network cut) does not stop
    training: what could not be sent is kept (the newest ``KEPT`` metrics) and sent with the next
    flush that gets through, and :meth:`behind` tells the progress line."""

    BATCH = 1000  # MLflow's limit on metrics per log_batch call
    KEPT = 100_000

    def __init__(self, cfg: dict, rank: int) -> None:
        self.active = rank == 0 and cfg.get("run_id")
        self.buffer: list = []
        self.tags: list[tuple[str, str]] = []
        self.failing = False
        if self.active:
            import mlflow

            mlflow.set_tracking_uri(cfg["tracking_uri"])
            self.tracking_uri = cfg["tracking_uri"]
            self.client = mlflow.MlflowClient(self.tracking_uri)
            self.run_id = cfg["run_id"]

    def log(self, metrics: dict, step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = {**metrics, **system_metrics()}
        self.buffer += [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
        if len(self.buffer) >= 200:
            self.flush()

    def tag(self, key: str, value: str) -> None:
        if self.active:
            self.tags.append((key, value))
            self.flush()

    def flush(self, patience_s: float = 0.0) -> None:
        """Send what is kept; with ``patience_s`` (the run's last flush), try again every 10 s
        for that long before leaving the rest unsent."""
        deadline = time.monotonic() + patience_s
        self.send()
        while self.failing and time.monotonic() < deadline:
            time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
            self.send()

    def send(self) -> None:
        if not self.active:
            return
        try:
            while self.tags:
                self.client.set_tag(self.run_id, *self.tags[0])
                self.tags.pop(0)
            while self.buffer:
                self.client.log_batch(self.run_id, metrics=self.buffer[: self.BATCH])
                del self.buffer[: self.BATCH]
            self.failing = False
        except Exception as err:  # noqa: BLE001  the server away for a while must not end a long run
            if not self.failing:
                cause = first_line(err, self.tracking_uri)  # MLflow quotes the URL: its password masked
                print(f"[pretrain] MLflow unreachable ({cause}); training goes on, metrics kept", flush=True)
            self.failing = True
            del self.buffer[: max(0, len(self.buffer) - self.KEPT)]

    def behind(self) -> dict:
        """``{"metrics_unlogged": N}`` while the tracking server cannot be reached, else nothing."""
        return {"metrics_unlogged": len(self.buffer)} if self.failing else {}


def system_metrics() -> dict:
    """CPU, memory and (when present) GPU memory of this worker's machine, as ``system/*`` metrics."""
    out = {}
    try:
        import psutil

        out["system/cpu_percent"] = psutil.cpu_percent(interval=None)
        out["system/memory_used_gb"] = psutil.virtual_memory().used / 1e9
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["system/gpu_memory_allocated_gb"] = torch.cuda.memory_allocated() / 1e9
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class CollapseWatch:
    """Counts the steps for which the embedding std or effective rank has stayed below its threshold.

    Read on logged steps (every ``train.log_every``): a low reading counts the steps since the
    previous reading, a normal one starts the count again.
    """

    def __init__(self, t: dict, step: int = 0) -> None:
        self.std, self.rank, self.patience = t["collapse_std"], t["collapse_rank"], t["collapse_patience"]
        self.run, self.last = 0, step

    def update(self, metrics: dict, step: int) -> bool:
        low = metrics.get("embedding_std", 1.0) < self.std or metrics.get("effective_rank", 1e9) < self.rank
        self.run = self.run + (step - self.last) if low else 0
        self.last = step
        return self.run >= self.patience


def as_floats(metrics: dict) -> dict:
    """The step's metrics as plain numbers (0-dim tensors are read here: one wait for the GPU)."""
    return {k: float(v) for k, v in metrics.items()}


def logged(step: int, cfg: dict) -> bool:
    """Whether the loop logs after ``step`` (and so asks the method for its collapse signals)."""
    return step % cfg["train"]["log_every"] == 0 or step >= cfg["total_steps"]


class TimeBox:
    """``train.max_minutes`` as a stop every rank agrees on, and the schedules fitted to it.

    Rank 0's clock decides, broadcast (two scalars), so that all workers change course at the same
    step. With ``fit``, once ``FIT_AT[0]`` of the minutes have passed, the steps that fit in the
    time left at the pace kept since ``PACE_FROM`` of them become the run's last step (never more
    than planned), so the learning rate and the other schedules finish their course inside the box
    wherever the step time was mis-guessed. At each later share of ``FIT_AT`` the fit is made again
    from the pace since the one before, and only ever brings the last step forward: the first
    pace can be quicker than the rest (batches the views made during start-up, no checkpoint yet;
    the quickstart's 266 fitted steps once met the box at step 225). The stop still holds if the
    machine slows down after the last fit. A no-op at 0. The loop asks on logged steps only (every
    ``train.log_every``): reading the answer waits for the device.
    """

    PACE_FROM = 0.1  # share of the minutes from which the pace is measured (the warm-up left out)
    FIT_AT = (0.25, 0.5, 0.75)  # shares of the minutes at which the last step is fitted
    MARGIN = 0.9  # of the time left: checkpoints and slower stretches (0.95 ran 6 steps over once)

    def __init__(self, minutes: float, device: torch.device, fit: bool = True) -> None:
        self.seconds = minutes * 60
        self.started = time.monotonic()
        self.deadline = self.started + self.seconds if minutes > 0 else None
        self.device = device
        self.mark: tuple[float, int] | None = None  # (time, step) the pace is measured from
        self.fits = list(self.FIT_AT) if fit else []  # the shares not fitted at yet

    def check(self, step: int, total_steps: int) -> tuple[bool, int]:
        """(out of time, the run's last step), the same on every rank."""
        if self.deadline is None:
            return False, total_steps
        now = time.monotonic()
        total = self.fit(now, step, total_steps) if self.fits else total_steps
        out_of_time, total = rank0_values([float(now >= self.deadline), float(total)], self.device)
        return bool(out_of_time), int(total)

    def fit(self, now: float, step: int, total: int) -> int:
        """The last step: ``total``, or fewer once a share of ``FIT_AT`` has passed and the pace
        since the mark says they would not fit in ``MARGIN`` of the time left."""
        elapsed = now - self.started
        if self.mark is None and elapsed >= self.PACE_FROM * self.seconds:
            self.mark = (now, step)
        if self.mark is None or elapsed < self.fits[0] * self.seconds or step <= self.mark[1]:
            return total
        while self.fits and elapsed >= self.fits[0] * self.seconds:
            self.fits.pop(0)
        mark_time, mark_step = self.mark
        pace = (now - mark_time) / (step - mark_step)
        self.mark = (now, step)  # the next fit's pace: from here
        return min(total, step + max(1, int(self.MARGIN * (self.deadline - now) / pace)))


def rank0_values(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's ``values`` on every rank (one broadcast), so that all ranks take the same branch."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return tensor.tolist()


def rank0_says(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (one broadcast scalar), so that all ranks take the same branch."""
    return bool(rank0_values([float(flag)], device)[0])


def maybe_fault(step: int, rank: int, cfg: dict) -> None:
    """Fault injection for the fault-tolerance tests: slow steps down, or kill this worker once at a
    step. At a checkpoint's step the kill waits until that checkpoint is whole in the run's folder:
    a worker lost just after a checkpoint, not during rank 0's copy of it (under load the copy
    could still be running, and the kill cut it short)."""
    if delay := float(os.environ.get("MVSSL_FAULT_STEP_DELAY_S", "0")):
        time.sleep(delay)
    at, marker = os.environ.get("MVSSL_FAULT_KILL_AT_STEP"), os.environ.get("MVSSL_FAULT_MARKER")
    if at and marker and rank == int(os.environ.get("MVSSL_FAULT_RANK", "1")) and step == int(at):
        if not Path(marker).exists():
            if step % cfg["train"]["checkpoint_every"] == 0:
                wait_for_checkpoint(Path(cfg["run_dir"]), step)
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def wait_for_checkpoint(run_dir: Path, step: int, timeout_s: float = 120.0) -> None:
    """Until a whole checkpoint of ``step`` or later is in ``run_dir``, for at most ``timeout_s``.
    Each whole checkpoint is read once: an earlier one is not loaded again every poll."""
    read: set[Path] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for folder in sorted(set(run_dir.glob("checkpoint_*")) - read):
            if not is_whole(folder):
                continue
            read.add(folder)
            if torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)["step"] >= step:
                return
        time.sleep(0.2)


def prepare(method, cfg: dict, device: torch.device):
    t = cfg["train"]
    on_gpu = device.type == "cuda"
    if world_size() > 1 and on_gpu:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)  # as the reference trained
    elif world_size() > 1 and t["cpu_sync_batchnorm"]:
        method = convert_cross_rank_batchnorm(method)  # SyncBatchNorm refuses CPU tensors
    method = method.to(device)
    if on_gpu and t["channels_last"]:
        method = method.to(memory_format=torch.channels_last)
    wrapped = method
    if world_size() > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if on_gpu else None)
    if on_gpu and t["compile"]:
        wrapped = torch.compile(wrapped)
    return method, wrapped


def restore(method, optimizer, cfg: dict) -> tuple[int, bool, bool]:
    """Load the run's latest checkpoint into ``method`` and ``optimizer``: (step, collapse already
    tagged, the run had ended: its last checkpoint, written as it stopped for whatever reason).

    The furthest trained of the one Ray Train hands back after a worker failure and the newest
    whole one in the run's folder (which Ray's record can lag; for ``--resume`` it is the one the
    driver found). Without either the run starts at ``start_step``. Every rank reads the same
    folder before the first collective, so all of them restore the same step.
    """
    import ray.train

    _, state = newest_checkpoint(ray.train.get_checkpoint(), Path(cfg["run_dir"]))
    if state is None:
        return cfg["start_step"], False, False
    method.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    cfg["total_steps"] = min(cfg["total_steps"], state.get("total_steps", cfg["total_steps"]))  # once fitted
    return state["step"], state.get("collapsed", False), state.get("last", False)


def view_batches(cfg: dict, device: torch.device, rank: int, workers: int):
    """This worker's share of each global batch from its views shard."""
    import ray.train

    from mvssl_dist.views.dataset import collate_views

    data, seed = cfg["data"], cfg["train"]["seed"]
    return ray.train.get_dataset_shard("train").iter_torch_batches(
        batch_size=data["batch_size"] // workers,
        collate_fn=collate_views(),
        drop_last=True,
        local_shuffle_buffer_size=data["shuffle_buffer"] or None,
        local_shuffle_seed=seed + rank if data["shuffle_buffer"] else None,
        pin_memory=device.type == "cuda",  # Ray copies to the GPU in its fetch thread, from pinned memory
    )


def timed(batches, skip: int):
    """``(batch, seconds waited for it)``, after passing over the ``skip`` batches trained before a restart."""
    batches = iter(batches)
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return
        if skip > 0:
            skip -= 1
            continue
        yield batch, time.perf_counter() - start


def device_augmentation(cfg: dict, device: torch.device, rank: int, step: int):
    """The views' augmentations when ``data.augment_on`` is ``device`` (else the identity), seeded per rank and step."""
    from mvssl_dist.views.augment import augment_views, per_view_chains

    data, seed = cfg["data"], cfg["train"]["seed"]
    chains = per_view_chains(data["augment"], data["n_views"]) if data["augment_on"] == "device" else []
    if not any(chains):
        return lambda views: views
    generator = torch.Generator(device=device).manual_seed(seed * 7919 + rank * 104729 + step)
    return lambda views: augment_views(views, chains, generator)


def train_step(method, model, optimizer, views, tracks, values: dict, t: dict, watched: bool) -> dict:
    """One optimizer step at the schedules' ``values``: the step's metrics (tensors)."""
    set_hyperparameters(optimizer, values["lr"], values["weight_decay"])
    device_type = views.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=device_type == "cuda" and t["bf16"]):
        loss, metrics = model(views, values, tracks, watch=watched)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if t["grad_clip"] > 0:
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(method.parameters(), t["grad_clip"]).detach()
    optimizer.step()
    method.update_teacher(values["ema_momentum"])
    return metrics


class Throughput:
    """Samples per second and the share of time spent waiting for views, since the last logged step."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.reset()

    def reset(self) -> None:
        self.start, self.samples, self.wait = time.perf_counter(), 0, 0.0

    def add(self, samples: int, waited: float) -> None:
        self.samples += samples * self.workers
        self.wait += waited

    def metrics(self) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"samples_per_s": self.samples / elapsed, "data_wait_fraction": self.wait / elapsed}


def train_loop_per_worker(cfg: dict) -> None:
    import ray.train
    from ray.train.torch import get_device

    t = cfg["train"]
    ctx = ray.train.get_context()
    rank, workers = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg["threads_per_worker"])))
    device = get_device()
    if t["deterministic"] and device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.manual_seed(t["seed"] + rank)
    method = build_method(cfg["method"]["name"], **cfg["method"]["options"])
    optimizer = torch.optim.AdamW(param_groups(method), lr=t["lr"], weight_decay=t["weight_decay"])
    step, collapsed_tagged, ended = restore(method, optimizer, cfg)
    progress = ProgressPost(cfg.get("run_id"), rank)
    progress.started(step, ended)
    if ended:  # a worker lost after the run's last checkpoint: Ray restarts the group, nothing is left to train
        return
    method, model = prepare(method, cfg, device)
    method.train()
    schedules = schedules_for(cfg)
    tracker = Rank0Tracker(cfg, rank)
    watch = CollapseWatch(t, step)
    timebox = TimeBox(t["max_minutes"], device, fit=t["fit_to_max_minutes"])
    augment = device_augmentation(cfg, device, rank, step)
    throughput = Throughput(workers)
    metrics: dict = {}
    reported = step
    for batch, waited in timed(view_batches(cfg, device, rank, workers), skip=step - cfg["start_step"]):
        if step >= cfg["total_steps"]:
            break
        maybe_fault(step, rank, cfg)
        views = augment(batch["views"].to(device, non_blocking=True).float() / INT16_SCALE)
        values = schedules.at(step)
        watched = logged(step + 1, cfg)
        metrics = train_step(method, model, optimizer, views, batch["track"].to(device), values, t, watched)
        step += 1
        throughput.add(views.shape[0], waited)
        collapsed = False
        if watched:
            metrics = as_floats(metrics)
            # each rank watches its own embeddings; rank 0 decides, or ranks could leave at different steps
            collapsed = rank0_says(watch.update(metrics, step), device)
        if collapsed and not collapsed_tagged:
            tracker.tag("collapsed", "true")
            collapsed_tagged = True
        out_of_time, total = timebox.check(step, cfg["total_steps"]) if watched else (False, cfg["total_steps"])
        if total < cfg["total_steps"]:  # fitted to train.max_minutes: the schedules end at the new last step
            cfg["total_steps"] = total
            schedules = schedules_for(cfg)
            tracker.tag("steps_fitted_to_max_minutes", str(total))
        if out_of_time:
            tracker.tag("max_minutes_reached_at_step", str(step))
        done = step >= cfg["total_steps"] or (collapsed and t["stop_on_collapse"]) or out_of_time
        if watched:  # every way of being done is decided on a watched step, the last step included
            metrics.update(values, **throughput.metrics())
            tracker.log(metrics, step)
            progress.post(step, cfg["total_steps"], {**metrics, **tracker.behind()})
            throughput.reset()
        if step % t["checkpoint_every"] == 0 or done:
            tracker.flush()
            report(method, optimizer, step, cfg, metrics, collapsed_tagged, rank, out_of_time, done)
            reported = step
        if done:
            break
    if step > reported:  # the views ran out before total_steps: keep every step trained
        tracker.tag("views_ran_out_at_step", str(step))
        tracker.flush()
        report(method, optimizer, step, cfg, metrics, collapsed_tagged, rank, last=True)
    tracker.flush(patience_s=120.0)  # a tracking server restarting now still gets the run's metrics


def report(
    method,
    optimizer,
    step: int,
    cfg: dict,
    metrics: dict,
    collapsed: bool,
    rank: int,
    out_of_time: bool = False,
    last: bool = False,
) -> None:
    """Rank 0 checkpoints the run (``last``: the run ends here, whatever the reason); every rank reports."""
    import ray.train

    epoch = step // max(1, cfg["steps_per_epoch"])
    summary = {"step": step, "epoch": epoch, "loss": float(metrics.get("loss", float("nan"))), "collapsed": collapsed}
    if rank != 0:
        ray.train.report(summary, checkpoint=None)
        return
    extra = {"collapsed": collapsed, "out_of_time": out_of_time, "total_steps": cfg["total_steps"], "last": last}
    with tempfile.TemporaryDirectory() as directory:
        try:
            save_state(Path(directory), method, optimizer, step, epoch, cfg, extra)
        except (OSError, RuntimeError) as err:  # torch.save names no folder: a full /tmp said as one
            raise OSError(f"the step {step} checkpoint could not be written to {directory}: {first_line(err)}") from err
        try:
            ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(directory))
        except OSError as err:  # Ray's copy to storage names no folder either (a full disk, a lost mount)
            raise OSError(
                f"the step {step} checkpoint could not be copied to {cfg['run_dir']}: {first_line(err)}"
            ) from err
