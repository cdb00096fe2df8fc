"""Cross-rank BatchNorm: two gloo processes holding half a batch each behave as one BatchNorm on it."""

from __future__ import annotations

import copy

import torch
from distributed_helpers import run_distributed
from torch import nn

from mvssl_dist.train.batchnorm import CrossRankBatchNorm, convert_cross_rank_batchnorm


def _batch() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(8, 3, 5, 4) * 20 - 60  # a large mean, like log-mel dB after a conv


def _weights() -> torch.Tensor:
    return torch.linspace(-1, 1, 8 * 3 * 5 * 4).reshape(8, 3, 5, 4) ** 2


def _bn() -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    return bn


def _plain_results() -> dict:
    bn = _bn()
    x = _batch().requires_grad_()
    y = bn(x)
    (y * _weights()).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "w_grad": bn.weight.grad, "bn": bn.state_dict()}


def _worker(rank: int, world: int, expected: dict, out_dir) -> None:
    bn = _bn()
    converted = convert_cross_rank_batchnorm(nn.Sequential(bn))[0]
    assert isinstance(converted, CrossRankBatchNorm) and converted.weight is bn.weight
    rows = slice(rank * 4, (rank + 1) * 4)
    x = _batch()[rows].clone().requires_grad_()
    y = converted(x)
    (y * _weights()[rows]).sum().backward()  # the whole-batch loss is the sum of the ranks' parts
    torch.testing.assert_close(y.detach(), expected["y"][rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, expected["x_grad"][rows], atol=1e-5, rtol=1e-4)
    # each rank holds the gradient of its own part of the loss; their sum is the whole batch's
    torch.distributed.all_reduce(bn.weight.grad)
    torch.testing.assert_close(bn.weight.grad, expected["w_grad"], atol=1e-4, rtol=1e-4)
    for key, value in expected["bn"].items():
        torch.testing.assert_close(converted.state_dict()[key], value, msg=key)
    (out_dir / f"rank{rank}.ok").write_text("ok")


def test_two_processes_normalise_with_the_whole_batch(tmp_path):
    run_distributed(_worker, 2, _plain_results(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.ok", "rank1.ok"]


def test_single_process_and_eval_mode_are_plain_batchnorm():
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(6, 1, 8, 8)
    plain(x)  # materialise the lazy layer
    converted = convert_cross_rank_batchnorm(copy.deepcopy(plain))
    assert isinstance(converted[1], CrossRankBatchNorm)
    assert list(converted.state_dict()) == list(plain.state_dict())
    torch.testing.assert_close(converted(x), plain(x))
    plain.eval()
    converted.eval()
    torch.testing.assert_close(converted(x), plain(x))


def _prepare_worker(rank: int, world: int, out_dir) -> None:
    from mvssl_dist.config import load_config
    from mvssl_dist.train.loop import prepare

    for flag, expected in (("false", nn.BatchNorm2d), ("true", CrossRankBatchNorm)):
        cfg = load_config(None, [f"train.cpu_sync_batchnorm={flag}"])
        method, wrapped = prepare(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), cfg, torch.device("cpu"))
        assert type(method[1]) is expected, (flag, type(method[1]))
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    (out_dir / f"rank{rank}.ok").write_text("ok")


def test_cpu_workers_use_cross_rank_batchnorm_only_when_asked(tmp_path):
    run_distributed(_prepare_worker, 2, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.ok", "rank1.ok"]
