"""Cost of BatchNorm over the global batch on CPU workers: cross-rank BN vs. per-worker BN, same run.

    python benchmarks/batchnorm.py [--steps 6] [--batch 32] [--rounds 2]

Two gloo processes with one thread each (the quickstart's 2 Ray Train workers on 2 cores), DDP over
the contrastive method, the global batch split between them; the same training step with the
backbone's BatchNorm per worker (plain) and across ranks (:mod:`mvssl_dist.train.batchnorm`),
alternated in rounds so both see the same machine. Prints seconds per step and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from distributed_helpers import run_distributed  # noqa: E402

from mvssl_dist.methods import build_method  # noqa: E402
from mvssl_dist.train.batchnorm import convert_cross_rank_batchnorm  # noqa: E402
from mvssl_dist.train.schedules import Schedules  # noqa: E402


def seconds_per_step(method, views: torch.Tensor, tracks: torch.Tensor, steps: int) -> float:
    model = torch.nn.parallel.DistributedDataParallel(method)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
    schedule = Schedules(steps, steps).at(0)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        loss, _ = model(views, schedule, tracks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def worker(rank: int, world: int, batch: int, steps: int, rounds: int, out: Path) -> None:
    torch.manual_seed(0)
    plain = build_method("contrastive").train()
    cross = convert_cross_rank_batchnorm(copy.deepcopy(plain)).train()
    views = torch.randn(batch // world, 2, 64000) * 0.1
    tracks = torch.arange(batch // world) + rank * batch
    results: dict[str, list[float]] = {"plain": [], "cross-rank": []}
    for _ in range(rounds):
        results["plain"].append(seconds_per_step(plain, views, tracks, steps))
        results["cross-rank"].append(seconds_per_step(cross, views, tracks, steps))
    if rank == 0:
        out.write_text(json.dumps({k: statistics.median(v) for k, v in results.items()}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32, help="global batch (pairs), split over 2 processes")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "result"
        run_distributed(worker, 2, args.batch, args.steps, args.rounds, out)
        result = json.loads(out.read_text())
    print(f"2 gloo processes x 1 thread, global batch {args.batch}, median of {args.rounds} rounds:")
    for name, seconds in result.items():
        print(f"  {name:11} BatchNorm: {seconds:.3f} s/step")
    print(f"ratio cross-rank / plain: {result['cross-rank'] / result['plain']:.3f}")


if __name__ == "__main__":
    main()
