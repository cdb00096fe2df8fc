"""Every loss against an independent, loop-by-loop implementation written here, plus properties
that could fail, and the 2-process equivalence with a single process on the whole batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from distributed_helpers import run_distributed

from mvssl_dist.losses import (
    barlow_twins_loss,
    byol_loss,
    clustering_loss,
    effective_rank,
    embedding_std,
    nt_xent,
    updated_center,
    vicreg_loss,
)
from mvssl_dist.losses.barlow_twins import correlation_terms

ATOL = 1e-5


# ----------------------------------------------------------------- independent implementations
def nt_xent_loops(z, temperature=0.1, tracks=None):
    """With ``tracks``, a different row of the anchor's track is in no denominator."""
    views, batch, _ = z.shape
    tracks = list(range(batch)) if tracks is None else [int(t) for t in tracks]
    items = [(v, b) for v in range(views) for b in range(batch)]
    terms = []
    for v, b in items:
        anchor = z[v, b]
        others = [(w, c) for w, c in items if (w, c) != (v, b) and (c == b or tracks[c] != tracks[b])]
        sims = {(w, c): F.cosine_similarity(anchor, z[w, c], dim=0) / temperature for w, c in others}
        denominator = sum(torch.exp(s) for s in sims.values())
        for w in range(views):
            if w != v:
                terms.append(-torch.log(torch.exp(sims[(w, b)]) / denominator))
    return torch.stack(terms).mean()


def nt_xent_reference_two_views(z, temperature=0.1):
    """The reference's own diag/mask construction, valid for two views."""
    views, batch, _ = z.shape
    y = z.reshape(views * batch, -1)
    y = F.cosine_similarity(y.unsqueeze(0), y.unsqueeze(1), dim=2) / temperature
    pos = torch.cat([torch.diag(y, batch), torch.diag(y, -batch)]).reshape(batch * views, -1)
    neg = y[~torch.eye(views * batch, dtype=torch.bool)].reshape(batch * views, -1)
    m = neg.max(dim=1, keepdim=True)[0]
    return -torch.clamp(torch.log(torch.exp(pos - m) / torch.exp(neg - m).sum(1, keepdim=True)), min=-100).mean()


def byol_loops(pred, target):
    terms = []
    for i in range(pred.shape[0]):
        for j in range(target.shape[0]):
            if i != j:
                for b in range(pred.shape[1]):
                    terms.append(2 - 2 * F.cosine_similarity(pred[i, b], target[j, b], dim=0))
    return torch.stack(terms).mean()


def clustering_loops(student, teacher, center, ts=0.1, tt=0.04):
    terms = []
    for i in range(teacher.shape[0]):
        for j in range(student.shape[0]):
            if i == j:
                continue
            for b in range(student.shape[1]):
                p_t = torch.exp((teacher[i, b] - center[0]) / tt)
                p_t = p_t / p_t.sum()
                p_s = torch.exp(student[j, b] / ts)
                p_s = p_s / p_s.sum()
                terms.append(-(p_t * torch.log(p_s)).sum())
    return torch.stack(terms).mean()


def standardise_loops(x, eps=1e-5):
    n = x.shape[0]
    mean = x.sum(0) / n
    var = ((x - mean) ** 2).sum(0) / n
    return (x - mean) / torch.sqrt(var + eps)


def barlow_loops(z, off_coef=1.0):
    views, n, d = z.shape
    on, off = [], []
    for i in range(views):
        for j in range(i + 1, views):
            a, b = standardise_loops(z[i]), standardise_loops(z[j])
            for p in range(d):
                for q in range(d):
                    c = sum(a[k, p] * b[k, q] for k in range(n)) / (n - 1)
                    (on if p == q else off).append((1 - c) ** 2 if p == q else c**2)
    return torch.stack(on).mean() + off_coef * torch.stack(off).mean()


def vicreg_loops(z, gamma=1.0):
    views, n, d = z.shape
    inv, var, cov = [], [], []
    for i in range(views):
        for j in range(i + 1, views):
            inv += [(z[i, k, p] - z[j, k, p]) ** 2 for k in range(n) for p in range(d)]
            for x in (z[i], z[j]):
                for p in range(d):
                    mean = x[:, p].mean()
                    std = torch.sqrt(((x[:, p] - mean) ** 2).sum() / (n - 1) + 1e-5)
                    var.append(torch.relu(gamma - std))
                s = standardise_loops(x)
                cov += [(s[:, p] @ s[:, q] / (n - 1)) ** 2 for p in range(d) for q in range(d) if p != q]
    return torch.stack(inv).mean() + torch.stack(var).mean() + torch.stack(cov).mean()


# ----------------------------------------------------------------- value checks
@pytest.mark.parametrize("views", [2, 3, 4])
def test_nt_xent_matches_loops(views):
    z = torch.randn(views, 5, 8)
    assert nt_xent(z)[0].item() == pytest.approx(nt_xent_loops(z).item(), abs=ATOL)


def test_nt_xent_equals_reference_construction_for_two_views():
    z = torch.randn(2, 6, 16)
    assert nt_xent(z)[0].item() == pytest.approx(nt_xent_reference_two_views(z).item(), abs=ATOL)


def test_nt_xent_hand_computed():
    # Two tracks, orthogonal, both views identical: each anchor sees its positive at cos 1
    # and two others at cos 0 -> loss = log(1 + 2 e^-10).
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    assert nt_xent(z)[0].item() == pytest.approx(math.log(1 + 2 * math.exp(-10)), abs=1e-6)


@pytest.mark.parametrize("views", [2, 3])
def test_nt_xent_leaves_same_track_rows_out_of_the_negatives(views):
    z = torch.randn(views, 6, 8)
    tracks = torch.tensor([7, 3, 7, 5, 3, 7])
    assert nt_xent(z, tracks=tracks)[0].item() == pytest.approx(nt_xent_loops(z, tracks=tracks).item(), abs=ATOL)
    assert nt_xent(z, tracks=tracks)[0].item() != pytest.approx(nt_xent(z)[0].item(), abs=1e-3)
    distinct = torch.tensor([11, 3, 7, 5, 2, 9])  # one row per track: the reference's loss, unchanged
    assert nt_xent(z, tracks=distinct)[0].item() == pytest.approx(nt_xent(z)[0].item(), abs=1e-6)


def test_nt_xent_same_track_rows_hand_computed():
    # Rows 0 and 1 are one track, row 2 another, all orthogonal, both views identical. Row 0's
    # denominator has its positive (cos 1) and row 2's two views (cos 0); row 1's views are
    # left out. Row 2 sees its positive and four views at cos 0.
    e = torch.eye(3)
    z = torch.stack([e, e])
    loss = nt_xent(z, tracks=torch.tensor([4, 4, 9]))[0].item()
    per_row = [math.log(1 + 2 * math.exp(-10))] * 2 + [math.log(1 + 4 * math.exp(-10))]
    assert loss == pytest.approx(sum(per_row) / 3, abs=1e-6)


def test_nt_xent_lower_for_aligned_than_shuffled():
    base = torch.randn(32, 16)
    aligned = torch.stack([base, base + 0.05 * torch.randn(32, 16)])
    shuffled = torch.stack([base, aligned[1][torch.randperm(32)]])
    assert nt_xent(aligned)[0] < nt_xent(shuffled)[0] - 1.0


@pytest.mark.parametrize("views", [2, 3])
def test_byol_matches_loops_and_is_zero_for_identical_directions(views):
    pred, target = torch.randn(views, 4, 6), torch.randn(views, 4, 6)
    assert byol_loss(pred, target)[0].item() == pytest.approx(byol_loops(pred, target).item(), abs=ATOL)
    same = torch.randn(1, 4, 6).expand(views, 4, 6)
    assert byol_loss(same * 3.0, same)[0].item() == pytest.approx(0.0, abs=1e-6)
    # hand case: orthogonal -> 2 per pair
    e = torch.eye(2)[None]
    assert byol_loss(torch.cat([e, e]), torch.cat([e.roll(1, -1), e.roll(1, -1)]))[0].item() == pytest.approx(2.0)


@pytest.mark.parametrize("views", [2, 3])
def test_clustering_matches_loops(views):
    student, teacher, center = torch.randn(views, 4, 10), torch.randn(views, 4, 10), torch.randn(1, 10) * 0.1
    ours = clustering_loss(student, teacher, center, 0.1, 0.04)[0].item()
    assert ours == pytest.approx(clustering_loops(student, teacher, center).item(), abs=1e-4)


def test_clustering_hand_case_uniform_logits():
    # All-zero logits: both distributions uniform over K -> cross-entropy log K.
    zeros = torch.zeros(2, 3, 7)
    assert clustering_loss(zeros, zeros, torch.zeros(1, 7))[0].item() == pytest.approx(math.log(7), abs=1e-6)


def test_dino_center_moves_by_exactly_the_ema_rule():
    center, teacher = torch.randn(1, 5), torch.randn(3, 4, 5)
    expected = center * 0.9 + teacher.reshape(-1, 5).mean(0, keepdim=True) * 0.1
    torch.testing.assert_close(updated_center(center, teacher, 0.9), expected.float())


@pytest.mark.parametrize("views", [2, 3])
def test_barlow_twins_matches_loops(views):
    z = torch.randn(views, 6, 4)
    assert barlow_twins_loss(z)[0].item() == pytest.approx(barlow_loops(z).item(), abs=ATOL)


def test_barlow_twins_terms_vanish_for_an_identity_cross_correlation():
    on, off = correlation_terms(torch.eye(5))
    assert on.item() == 0.0 and off.item() == 0.0
    # hand case: c = [[0.5, 0.2], [-0.1, 1.0]] -> on = mean(0.25, 0), off = mean(0.04, 0.01)
    on, off = correlation_terms(torch.tensor([[0.5, 0.2], [-0.1, 1.0]]))
    assert (on.item(), off.item()) == pytest.approx((0.125, 0.025))
    # identical, decorrelated views: only the reference's N/(N-1) diagonal remains
    n = 4
    q = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    loss, parts = barlow_twins_loss(torch.stack([q, q]))
    assert parts["off_diag"] == pytest.approx(0.0, abs=1e-10)
    assert loss.item() == pytest.approx((1 - n / (n - 1)) ** 2, abs=1e-4)


@pytest.mark.parametrize("views", [2, 3])
def test_vicreg_matches_loops(views):
    z = torch.randn(views, 6, 4)
    assert vicreg_loss(z)[0].item() == pytest.approx(vicreg_loops(z).item(), abs=ATOL)


def test_vicreg_variance_term_is_zero_when_std_at_least_one():
    z = torch.randn(2, 64, 8) * 3.0
    assert vicreg_loss(z)[1]["var"] == 0.0
    assert vicreg_loss(z * 0.01)[1]["var"] > 0.9


def test_collapse_signals():
    spread = torch.randn(256, 64)
    collapsed = torch.randn(1, 64).expand(256, 64) + 1e-6 * torch.randn(256, 64)
    assert embedding_std(spread) > 10 * embedding_std(collapsed)
    assert effective_rank(spread) > 40 and effective_rank(collapsed) < effective_rank(spread) / 2
    rank_two = torch.randn(256, 2) @ torch.randn(2, 64)
    assert effective_rank(rank_two) == pytest.approx(2.0, abs=0.6)


# ----------------------------------------------------------------- distributed equivalence
def _losses(inputs):
    """Each loss on ``inputs`` (a dict of leaf tensors); returns name -> loss tensor."""
    z, pred, target = inputs["z"], inputs["pred"], inputs["target"]
    student, teacher, center = inputs["student"], inputs["teacher"], inputs["center"]
    return {
        "nt_xent": nt_xent(z, tracks=inputs["tracks"])[0],
        "byol": byol_loss(pred, target)[0],
        "clustering": clustering_loss(student, teacher, center)[0],
        "barlow_twins": barlow_twins_loss(z)[0],
        "vicreg": vicreg_loss(z)[0],
    }


def _make_inputs(seed=0, batch=8):
    g = torch.Generator().manual_seed(seed)
    shapes = {"z": (3, batch, 6), "pred": (3, batch, 6), "target": (3, batch, 6), "student": (3, batch, 5)}
    inputs = {k: torch.randn(*s, generator=g, dtype=torch.float32) for k, s in shapes.items()}
    inputs["teacher"] = torch.randn(3, batch, 5, generator=g, dtype=torch.float32)
    inputs["center"] = torch.randn(1, 5, generator=g, dtype=torch.float32) * 0.1
    inputs["tracks"] = torch.arange(batch) % (batch - 3)  # rows 0-2 share tracks with rows on the other rank
    return inputs


def _whole_batch_results():
    results = {}
    for name in ("nt_xent", "byol", "clustering", "barlow_twins", "vicreg"):
        inputs = {k: v.requires_grad_(k in ("z", "pred", "student")) for k, v in _make_inputs().items()}
        loss = _losses(inputs)[name]
        loss.backward()
        grad = {k: v.grad.clone() for k, v in inputs.items() if v.grad is not None}
        results[name] = (loss.detach(), grad)
    center = updated_center(_make_inputs()["center"], _make_inputs()["teacher"])
    return results, center


def _distributed_worker(rank, world, expected, expected_center, out_dir):
    half = 8 // world
    for name, (loss_full, grads_full) in expected.items():
        inputs = {}
        for k, v in _make_inputs().items():
            rows = slice(rank * half, (rank + 1) * half)
            local = v if k == "center" else v[rows].clone() if k == "tracks" else v[:, rows].clone()
            inputs[k] = local.requires_grad_(k in ("z", "pred", "student"))
        loss = _losses(inputs)[name]
        loss.backward()
        torch.testing.assert_close(loss.detach(), loss_full, atol=1e-5, rtol=1e-5, msg=f"{name} loss")
        for k, g_full in grads_full.items():
            # DDP averages over ranks: the local gradient / world is the whole-batch one.
            torch.testing.assert_close(
                inputs[k].grad / world,
                g_full[:, rank * half : (rank + 1) * half],
                atol=1e-6,
                rtol=1e-4,
                msg=f"{name} grad {k}",
            )
    local_teacher = _make_inputs()["teacher"][:, rank * half : (rank + 1) * half]
    torch.testing.assert_close(updated_center(_make_inputs()["center"], local_teacher), expected_center)
    (out_dir / f"rank{rank}.ok").write_text("ok")


def test_two_process_gloo_equals_one_process_on_the_whole_batch(tmp_path):
    expected, center = _whole_batch_results()
    run_distributed(_distributed_worker, 2, expected, center, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.ok", "rank1.ok"]


@pytest.mark.parametrize(
    "loss",
    [
        lambda z: nt_xent(z, tracks=torch.tensor([0, 0, 1, 2])),
        lambda z: byol_loss(z, z.flip(0)),
        lambda z: clustering_loss(z, z.flip(0), torch.zeros(1, z.shape[-1])),
        barlow_twins_loss,
        vicreg_loss,
    ],
    ids=["nt_xent", "byol", "clustering", "barlow_twins", "vicreg"],
)
def test_every_loss_traces_as_one_graph(loss):
    """No Python-only step and no data-dependent shape: torch.compile keeps the loss in one graph."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(loss)(torch.randn(3, 4, 16))
    assert explained.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explained.break_reasons]
