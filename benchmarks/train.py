"""Pre-training step rate: `mvssl pretrain` (Ray Train + views dataset) vs. a bare torch loop, same run.

    python benchmarks/train.py [--steps 30] [--batch 8] [--workdir /tmp/mvssl-bench-train]
    python benchmarks/train.py --device cuda --batch 1024 --steps 200   # on a GPU machine

(a) CPU: 2 Ray Train workers (gloo DDP) fed by the views dataset; steps/s from the run's own
per-step metric timestamps after warm-up. Bare loop: one process, the same global batch, the
same method and optimizer, on pre-cut tensors already in memory, 2 threads. Target: the Ray
Train run loses <= 10% (ratio >= 0.9).
(b) --device cuda: pairs/s and data-wait fraction of the real run (1 GPU worker) at bf16 +
channels_last + compile, beside the bare loop with the same setup and a plain fp32 one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_library  # noqa: E402

from mvssl_dist.config import load_config  # noqa: E402
from mvssl_dist.methods import build_method  # noqa: E402
from mvssl_dist.raytools import init_ray  # noqa: E402
from mvssl_dist.shards import IngestOptions, ingest  # noqa: E402
from mvssl_dist.train.loop import as_floats, prepare  # noqa: E402
from mvssl_dist.train.schedules import Schedules  # noqa: E402

LOG_EVERY = 10  # the config's default train.log_every
WARMUP_STEPS = 20  # left out of the rates: start-up and compiling


def bare_loop(batch: int, steps: int, device: str, fast: bool) -> float:
    """Steps/s of one process on pre-cut tensors already on ``device``.

    ``fast`` (GPU): the training workers' own setup (``prepare``: channels_last, torch.compile)
    under bf16 autocast, as ``train.bf16/channels_last/compile`` give them; else plain fp32 eager.
    """
    torch.manual_seed(0)
    method = build_method("contrastive")
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    flags = {"channels_last": fast, "compile": fast, "cpu_sync_batchnorm": False}
    method, model = prepare(method, {"train": flags}, torch.device(device))
    method.train()
    views = torch.randn(batch, 2, 64000, device=device) * 0.1
    schedule = Schedules(steps, steps).at(0)
    warmup = LOG_EVERY  # compiling (both graphs: with and without the collapse signals) happens here
    for i in range(steps + warmup):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        watched = (i + 1) % LOG_EVERY == 0  # as the real loop: collapse signals and a read on logged steps
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=fast):
            loss, metrics = model(views, schedule, watch=watched)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if watched:
            as_floats(metrics)
    sync(device)
    return steps / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ray_run(dataset: Path, batch: int, steps: int, device: str, workdir: Path) -> tuple[float, float]:
    import mlflow

    from mvssl_dist.train.pretrain import pretrain

    gpu = device == "cuda"
    overrides = [
        f"data.path={dataset}",
        f"data.batch_size={batch}",
        "data.pairs_per_track=64",
        "data.shuffle_buffer=0",
        f"train.max_steps={steps + WARMUP_STEPS}",
        f"train.checkpoint_every={steps + WARMUP_STEPS}",
        f"train.log_every={LOG_EVERY}",
        f"train.num_workers={1 if gpu else 2}",
        f"train.use_gpu={str(gpu).lower()}",
        f"train.compile={str(gpu).lower()}",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        f"train.storage_path={workdir / 'runs'}",  # not ./mvssl_runs in whatever folder it is run from
    ]
    result = pretrain(load_config(None, overrides), run_name=f"bench-{time.time():.0f}", report=lambda m: None)
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    # logged every LOG_EVERY steps, each after the GPU caught up: steps/s between the first
    # logged point after warm-up and the last
    points = sorted((m.step, m.timestamp) for m in client.get_metric_history(result.run_id, "loss"))
    points = [p for p in points if p[0] >= WARMUP_STEPS]
    rate = (points[-1][0] - points[0][0]) / ((points[-1][1] - points[0][1]) / 1000)
    waits = [m.value for m in client.get_metric_history(result.run_id, "data_wait_fraction") if m.step > WARMUP_STEPS]
    return rate, sum(waits) / max(1, len(waits))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default="/tmp/mvssl-bench-train")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    files = make_library(work / "audio", 10, ("mp3", "flac"))
    init_ray(num_gpus=torch.cuda.device_count() if args.device == "cuda" else None)
    dataset = work / "dataset"
    ingest(IngestOptions([str(f) for f in files], str(dataset), progress=False), report=lambda m: None)
    rate, wait = ray_run(dataset, args.batch, args.steps, args.device, work)
    if args.device == "cpu":
        torch.set_num_threads(2)
    gpu = args.device == "cuda"
    bare = bare_loop(args.batch, args.steps, args.device, fast=gpu)
    setup = "bf16 + channels_last + compile" if gpu else "fp32"
    print(f"global batch {args.batch} x 2 views, {args.steps} steps on {args.device}, {setup}")
    print(
        f"mvssl pretrain (Ray Train + views): {rate:8.3f} steps/s ({rate * args.batch:8.1f} pairs/s), data wait {wait:.1%}"
    )
    print(f"bare torch loop, pre-cut tensors  : {bare:8.3f} steps/s ({bare * args.batch:8.1f} pairs/s)")
    if gpu:
        plain = bare_loop(args.batch, max(10, args.steps // 10), args.device, fast=False)
        print(f"bare torch loop, fp32 eager       : {plain:8.3f} steps/s ({plain * args.batch:8.1f} pairs/s)")
        print("goal on one H200: >= 20,000 pairs/s with data wait < 10% (anchor: fp32 4,900, bf16 + compile 25,000)")
    print(f"ratio pretrain / bare: {rate / bare:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
