"""Probes on frozen segment embeddings, as the reference evaluates: train on segments with a
sigmoid multi-label loss, early-stop on validation, predict a track as the mean over its segments.

``knn`` is the training-free probe of the self-supervised literature (DINO's weighted k-NN,
solo-learn's online k-NN): a segment's tag scores are a similarity-weighted vote of its ``k``
nearest train segments (k = 20 by default, or chosen on validation). It reads the geometry of the
embedding itself, where a trained classifier can also build on directions the backbone never
organised.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mvssl_dist.models.head import Head


@dataclass
class ProbeConfig:
    kind: str = "mlp"  # mlp (the reference's Head: Linear + BatchNorm + ReLU, then Linear; no biases) | linear | knn
    hidden: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10  # epochs without validation improvement before stopping ...
    # ... and at least this many optimizer steps. On a small train split an epoch is a step or
    # two, and a noisy validation peak in the first epochs would end training after ~20 steps.
    patience_steps: int = 200
    seed: int = 0
    # knn: neighbours per segment and vote temperature; 20 and 0.07 are DINO's and solo-learn's
    # defaults (not tuned here). k = 0 chooses among KNN_CANDIDATES on validation instead.
    k: int = 20
    knn_temperature: float = 0.07


# Raised whenever a change to the trained probes' code changes their scores: a score measured by
# another revision is never compared with this one's (it is part of the scoring fingerprint).
# 2: the output Linear lost its bias, as in the reference's Head (1: it had one), a track gives
# at most TRAIN_SEGMENTS_PER_TRACK segments an epoch (1: all of them), and near-silent segments
# (the reference's rule) are not trained on (1: they were).
PROBE_REVISION = 2
# The reference's downstream training stream draws at most this many segments of a track on each
# pass (DownstreamDataset's n_segments), so a long track weighs no more than that: whole-track
# MTG-Jamendo tracks have ~55 four-second segments, some over 150. Revision 2 too.
TRAIN_SEGMENTS_PER_TRACK = 25
KNN_CANDIDATES = (5, 10, 20, 50)
# The k-NN vote's similarity block, queries x bank rows, is kept under this many float32 cells
# (128 MB): with 512 queries a chunk, a whole-track MTG-Jamendo bank (~1.9 M train segments)
# made a 3.9 GB block.
SIMILARITY_CELLS = 1 << 25
PROBES = ("mlp", "linear", "knn")


@dataclass
class SplitFeatures:
    """One split: every segment embedding, the track each belongs to, the tracks' labels and paths."""

    segments: np.ndarray  # [segments, dim] float32
    owner: np.ndarray  # [segments] int, index into labels
    labels: np.ndarray  # [tracks, tags] float32
    tracks: list[str] = field(default_factory=list)  # the task path of each row of labels
    # [segments] bool: passes the reference's silence rule, so a trained probe may train on it;
    # None: not known (all are used)
    audible: np.ndarray | None = None

    def segment_labels(self) -> np.ndarray:
        return self.labels[self.owner]


@dataclass
class ProbeResult:
    model: nn.Module
    epochs: int
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # what the probe chose, as metrics (e.g. probe_k)


class Probe(nn.Module):
    """Standardises with the train statistics (kept as buffers), then the classifier."""

    def __init__(self, dim: int, tags: int, cfg: ProbeConfig, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        if cfg.kind not in ("mlp", "linear"):
            raise ValueError(f"--probe {cfg.kind}: must be mlp or linear")
        # the reference's downstream head: Linear (no bias) + BatchNorm + ReLU, then Linear (no bias)
        self.classifier = Head(dim, [cfg.hidden, tags] if cfg.kind == "mlp" else [tags])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier((x - self.mean) / self.std)


class KnnProbe(nn.Module):
    """Standardises with the train statistics, then a weighted vote of the ``k`` most cosine-similar
    train segments. ``forward`` returns logits, so ``sigmoid`` gives the vote back."""

    def __init__(self, train: SplitFeatures, k: int, temperature: float, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.temperature = temperature
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("bank", self.directions_of(train.segments))
        self.register_buffer("bank_labels", torch.as_tensor(train.segment_labels(), dtype=torch.float32))
        self.use_k(k)

    def use_k(self, k: int) -> KnnProbe:
        """Vote with ``k`` neighbours (at most the bank's size); the bank is built once."""
        self.k = min(k, len(self.bank))
        return self

    def directions(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize((x - self.mean) / self.std, dim=1)

    def directions_of(self, segments: np.ndarray, rows: int = 65536) -> torch.Tensor:
        """:meth:`directions` of a whole split, ``rows`` at a time into one tensor: the bank is a
        copy of the train segments, and the temporaries stay the size of a chunk."""
        bank = torch.empty(segments.shape, dtype=torch.float32)
        for s in range(0, len(segments), rows):
            bank[s : s + rows] = self.directions(torch.from_numpy(np.asarray(segments[s : s + rows], np.float32)))
        return bank

    def forward(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Logits of the vote, ``chunk`` queries at a time: by default as many as keep the
        ``[queries, bank]`` similarity block within :data:`SIMILARITY_CELLS` (at most 512)."""
        chunk = chunk or max(1, min(512, SIMILARITY_CELLS // max(1, len(self.bank))))
        votes = [self.vote(self.directions(x[s : s + chunk])) for s in range(0, len(x), chunk)]
        return torch.logit(torch.cat(votes).clamp(1e-6, 1 - 1e-6))

    def vote(self, queries: torch.Tensor) -> torch.Tensor:
        """``[queries, dim]`` unit rows -> ``[queries, tags]`` weighted share of neighbours with each tag."""
        similarity, index = (queries @ self.bank.T).topk(self.k, dim=1)
        weight = torch.softmax(similarity / self.temperature, dim=1)  # exp(s/T), normalised
        return torch.einsum("qk,qkt->qt", weight, self.bank_labels[index])


@torch.inference_mode()
def track_scores(model: nn.Module, split: SplitFeatures, batch_size: int = 4096) -> np.ndarray:
    """``[tracks, tags]``: the mean over each track's segments of the sigmoid outputs."""
    model.eval()
    probs = np.concatenate(
        [
            torch.sigmoid(model(torch.from_numpy(split.segments[s : s + batch_size]))).numpy()
            for s in range(0, len(split.segments), batch_size)
        ]
    )
    sums = np.zeros((len(split.labels), probs.shape[1]), np.float64)
    np.add.at(sums, split.owner, probs)
    counts = np.bincount(split.owner, minlength=len(split.labels))[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def validation_score(model: nn.Module, val: SplitFeatures) -> float:
    """Macro ROC-AUC over the tags validation can score; minus the BCE when it can score none."""
    from mvssl_dist.evaluate.metrics import macro_roc_auc, scorable

    scores = track_scores(model, val)
    if scorable(val.labels).any():
        return macro_roc_auc(val.labels, scores)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    return float(np.mean(val.labels * np.log(clipped) + (1 - val.labels) * np.log(1 - clipped)))


def train_statistics(train: SplitFeatures, columns: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (+1e-6) of the train segments: both probes
    standardise their inputs with these. Taken ``columns`` dimensions at a time (the same values
    as over the whole matrix): numpy's ``std`` makes a temporary the size of its input."""
    x = train.segments
    std = np.concatenate([x[:, c : c + columns].std(axis=0) for c in range(0, x.shape[1], columns)])
    return x.mean(axis=0), std + 1e-6


def check_config(cfg: ProbeConfig) -> None:
    """Refuse a probe setting that cannot run, in one line naming the option (ValueError)."""
    if cfg.kind not in PROBES:
        raise ValueError(f"--probe {cfg.kind}: must be one of {', '.join(PROBES)}")
    for name, value in (("--hidden", cfg.hidden), ("--max-epochs", cfg.max_epochs), ("--patience", cfg.patience)):
        if value < 1:
            raise ValueError(f"{name} {value}: must be >= 1")
    if cfg.patience_steps < 0:
        raise ValueError(f"--patience-steps {cfg.patience_steps}: must be >= 0")
    if cfg.k < 0:
        raise ValueError(f"--k {cfg.k}: must be >= 0 (0 chooses k on validation)")
    if cfg.knn_temperature <= 0:
        raise ValueError(f"knn temperature {cfg.knn_temperature}: must be > 0")


def train_probe(
    train: SplitFeatures,
    val: SplitFeatures,
    cfg: ProbeConfig,
    report: Callable[[str], None] | None = None,
    every_s: float = 20.0,
) -> ProbeResult:
    """The probe ``cfg`` asks for, trained on ``train`` and early-stopped on ``val``. ``report``
    gets the epoch reached every ``every_s`` (an MLP on MagnaTagATune trains for minutes) and the
    epoch it stopped at."""
    check_config(cfg)
    if cfg.kind == "knn":
        return fit_knn(train, val, cfg)
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(train.segments, np.float32))
    y = torch.from_numpy(train.segment_labels().astype(np.float32))
    model = Probe(x.shape[1], y.shape[1], cfg, *train_statistics(train))
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    best, best_epoch, best_state, history = -np.inf, 0, copy.deepcopy(model.state_dict()), []
    owner = torch.from_numpy(np.asarray(train.owner, np.int64))
    audible = None if train.audible is None else torch.from_numpy(np.asarray(train.audible, bool))
    rows = epoch_size(train)
    if rows == 0:
        from mvssl_dist.views.sampling import SILENCE_THRESHOLD

        level = np.exp(SILENCE_THRESHOLD / 10)
        raise ValueError(
            f"every train segment is near-silent (under {level:.2f} of its track's RMS): nothing to train on"
        )
    drop_last = rows > cfg.batch_size and rows % cfg.batch_size == 1  # BatchNorm needs 2+ rows
    batch_starts = range(0, rows - (1 if drop_last else 0), cfg.batch_size)  # one optimizer step each
    epoch, said = 0, time.monotonic()
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = epoch_rows(owner, TRAIN_SEGMENTS_PER_TRACK, generator, audible)
        total = 0.0
        for start in batch_starts:
            idx = order[start : start + cfg.batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        score = validation_score(model, val)
        history.append({"epoch": epoch, "train_loss": total / rows, "val_score": score})
        if score > best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        elif stalled(epoch - best_epoch, len(batch_starts), cfg):
            break
        if report and time.monotonic() - said >= every_s:
            report(f"[evaluate] probe epoch {epoch}: validation {score:.4f}, best {best:.4f} at epoch {best_epoch}")
            said = time.monotonic()
    if report:
        report(
            f"[evaluate] the probe stopped after {epoch} epochs; the best on validation, {best:.4f}, at epoch {best_epoch}"
        )
    model.load_state_dict(best_state)
    model.eval()
    return ProbeResult(model, epoch, best_epoch, history)


def epoch_size(train: SplitFeatures, cap: int | None = None) -> int:
    """Segments a trained probe sees per epoch: each train track's audible ones, at most ``cap``
    of them (default :data:`TRAIN_SEGMENTS_PER_TRACK`)."""
    owner = train.owner if train.audible is None else train.owner[train.audible]
    counts = np.bincount(owner, minlength=len(train.labels))
    return int(np.minimum(counts, cap or TRAIN_SEGMENTS_PER_TRACK).sum())


def epoch_rows(
    owner: torch.Tensor, cap: int, generator: torch.Generator, audible: torch.Tensor | None = None
) -> torch.Tensor:
    """One epoch's train rows (``owner``: each row's track), shuffled: a track's ``audible``
    segments (all when None), every one when it has at most ``cap``, else ``cap`` of them drawn
    afresh, as the reference draws each track's segments anew on every pass. With every row
    audible and no track over ``cap``, exactly a permutation of all rows (the same draw as before
    the cap existed)."""
    if audible is not None and not bool(audible.all()):
        rows = torch.nonzero(audible).squeeze(1)
        return rows[epoch_rows(owner[rows], cap, generator)]
    counts = torch.bincount(owner)
    if int(counts.max()) <= cap:
        return torch.randperm(len(owner), generator=generator)
    keys = owner.double() + torch.rand(len(owner), generator=generator, dtype=torch.float64)
    grouped = torch.argsort(keys)  # each track's rows together, in a random order
    rank = torch.arange(len(owner)) - (torch.cumsum(counts, 0) - counts)[owner[grouped]]
    kept = grouped[rank < cap]
    return kept[torch.randperm(len(kept), generator=generator)]


def stalled(epochs_since_best: int, steps_per_epoch: int, cfg: ProbeConfig) -> bool:
    """Early stopping: ``cfg.patience`` epochs and ``cfg.patience_steps`` optimizer steps without a
    validation gain."""
    return epochs_since_best >= cfg.patience and epochs_since_best * steps_per_epoch >= cfg.patience_steps


def fit_knn(train: SplitFeatures, val: SplitFeatures, cfg: ProbeConfig) -> ProbeResult:
    """The k-NN probe; ``cfg.k`` or, when 0, the candidate with the best validation score (smaller
    ``k`` on ties). ``history`` has one row per candidate tried."""
    candidates = [cfg.k] if cfg.k else [k for k in KNN_CANDIDATES if k <= len(train.segments)] or [len(train.segments)]
    model = KnnProbe(train, candidates[0], cfg.knn_temperature, *train_statistics(train)).eval()
    best, history = None, []
    for step, k in enumerate(candidates, 1):
        score = validation_score(model.use_k(k), val)
        history.append({"epoch": step, "k": k, "val_score": score})
        if best is None or score > best[0]:
            best = (score, step, model.k)
    _, step, k = best
    model.use_k(k)
    return ProbeResult(model, len(candidates), step, history, {"probe_k": model.k})
