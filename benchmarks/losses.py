"""Cost of each loss (forward + backward) vs. the backbone's forward + backward on the same batch.

    python benchmarks/losses.py [--batch 256] [--device cpu|cuda] [--repeats 3]

Prints, per method, the loss time, the backbone step time and their ratio (target: a loss
costs < 5% of the step). With --device cuda it also measures the whole training step in
fp32, bf16 autocast + channels_last, and bf16 + torch.compile, in pairs/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time  # noqa: E402

from mvssl_dist.losses import barlow_twins_loss, byol_loss, clustering_loss, nt_xent, vicreg_loss  # noqa: E402
from mvssl_dist.methods import build_method  # noqa: E402
from mvssl_dist.models import Backbone  # noqa: E402
from mvssl_dist.train.schedules import Schedules  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def loss_cases(batch: int, device: str):
    def leaf(*shape):
        return torch.randn(*shape, device=device, requires_grad=True)

    center = torch.zeros(1, 4096, device=device)
    return {
        "contrastive": lambda: nt_xent(leaf(2, batch, 2048))[0],
        "byol": lambda: byol_loss(leaf(2, batch, 2048), torch.randn(2, batch, 2048, device=device))[0],
        "clustering": lambda: clustering_loss(leaf(2, batch, 4096), torch.randn(2, batch, 4096, device=device), center)[
            0
        ],
        "barlow_twins": lambda: barlow_twins_loss(leaf(2, batch, 2048))[0],
        "vicreg": lambda: vicreg_loss(leaf(2, batch, 2048))[0],
    }


def backbone_step(model: Backbone, views: torch.Tensor, device: str) -> None:
    for view in views:
        model(view).sum().backward()
    sync(device)


def step_rate(method, views, device: str, bf16: bool, channels_last: bool, compiled: bool, steps: int = 10) -> float:
    """Training pairs per second of the whole method step (forward, loss, backward, optimizer)."""
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    forward = torch.compile(method) if compiled else method
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    schedule = Schedules(1000, 1000).at(0)

    def one():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = forward(views, schedule)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        one()  # warm-up (and compilation)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    return views.shape[0] * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device, batch = args.device, args.batch
    model = Backbone().to(device).train()
    views = torch.randn(2, batch, 64000, device=device) * 0.1
    backbone_s = best_time(lambda: backbone_step(model, views, device), args.repeats)
    print(f"batch {batch} x 2 views on {device}: backbone forward+backward {backbone_s * 1e3:.1f} ms")
    print(f"{'loss':14} {'ms':>9} {'loss/backbone':>14}")
    for name, make in loss_cases(batch, device).items():

        def run(make=make):
            make().backward()
            sync(device)

        seconds = best_time(run, args.repeats)
        print(f"{name:14} {seconds * 1e3:9.2f} {seconds / backbone_s:13.1%}")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        pairs = torch.randn(batch, 2, 64000, device=device) * 0.1
        for label, flags in [
            ("fp32", (False, False, False)),
            ("bf16+channels_last", (True, True, False)),
            ("bf16+compile", (True, True, True)),
        ]:
            rate = step_rate(build_method("contrastive").to(device), pairs, device, *flags)
            print(f"contrastive step {label:20} {rate:10.0f} pairs/s")


if __name__ == "__main__":
    main()
