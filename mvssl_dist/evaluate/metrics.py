"""Tagging metrics with scikit-learn: ROC-AUC and PR-AUC (average precision), macro, micro, per tag.

A tag with no positive (or no negative) track in the scored split has no ROC-AUC; it is left
out of the macro averages (and reported as such in the per-tag table), as the MTAT/Jamendo
literature does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TagScore:
    tag: str
    positives: int
    roc_auc: float | None
    pr_auc: float | None


def scorable(y_true: np.ndarray) -> np.ndarray:
    """Columns with at least one positive and one negative."""
    positives = y_true.sum(axis=0)
    return (positives > 0) & (positives < len(y_true))


def tagging_metrics(y_true: np.ndarray, y_score: np.ndarray, vocabulary: list[str]) -> tuple[dict, list[TagScore]]:
    """``y_true``/``y_score``: ``[tracks, tags]``. Returns (summary metrics, per-tag scores)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_true = np.asarray(y_true, np.int64)
    y_score = np.asarray(y_score, np.float64)
    if y_true.shape != y_score.shape or y_true.shape[1] != len(vocabulary):
        raise ValueError(f"shapes differ: labels {y_true.shape}, scores {y_score.shape}, {len(vocabulary)} tags")
    keep = scorable(y_true)
    if not keep.any():
        raise ValueError("no tag has both positive and negative tracks in this split: nothing to score")
    t, s = y_true[:, keep], y_score[:, keep]
    summary = {
        "roc_auc_macro": float(roc_auc_score(t, s, average="macro")),
        "pr_auc_macro": float(average_precision_score(t, s, average="macro")),
        "roc_auc_micro": float(roc_auc_score(t, s, average="micro")),
        "pr_auc_micro": float(average_precision_score(t, s, average="micro")),
        "tags_scored": int(keep.sum()),
        "tags_unscorable": int((~keep).sum()),
        "tracks": len(y_true),
    }
    per_tag = []
    for j, tag in enumerate(vocabulary):
        ok = bool(keep[j])
        per_tag.append(
            TagScore(
                tag,
                int(y_true[:, j].sum()),
                float(roc_auc_score(y_true[:, j], y_score[:, j])) if ok else None,
                float(average_precision_score(y_true[:, j], y_score[:, j])) if ok else None,
            )
        )
    return summary, per_tag


def macro_roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Macro ROC-AUC over the tags with both classes, as the Mann-Whitney U statistic (ties count half).

    Equal to scikit-learn's ``roc_auc_score(..., average="macro")`` on those tags (tested), and
    vectorised over tags, so a bootstrap of a few thousand resamples takes a fraction of a second.
    """
    from scipy.stats import rankdata

    keep = scorable(y_true)
    y = np.asarray(y_true, np.float64)[:, keep]
    ranks = rankdata(np.asarray(y_score, np.float64)[:, keep], axis=0)
    positives = y.sum(axis=0)
    negatives = len(y) - positives
    return float((((ranks * y).sum(axis=0) - positives * (positives + 1) / 2) / (positives * negatives)).mean())


@dataclass
class Margin:
    """Macro ROC-AUC of one probe minus another's on the same test tracks, with a bootstrap interval."""

    difference: float
    low: float
    high: float
    level: float
    tracks: int

    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "a tie within the test split's noise"

    def describe(self) -> str:
        return (
            f"{self.difference:+.4f} ({self.level:.0%} interval {self.low:+.4f} to {self.high:+.4f} "
            f"over the {self.tracks} test tracks): {self.verdict()}"
        )


def roc_auc_margin(
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Margin:
    """Paired bootstrap over test tracks of macro ROC-AUC(a) - macro ROC-AUC(b).

    ``y_true``, ``score_a``, ``score_b``: ``[tracks, tags]`` for the same tracks in the same order.
    Each resample draws tracks with replacement and scores both probes on the tags that have both
    classes in it, so the interval says how much of a difference the test split can resolve.
    """
    y_true = np.asarray(y_true)
    if not (y_true.shape == np.shape(score_a) == np.shape(score_b)):
        raise ValueError(f"shapes differ: labels {y_true.shape}, scores {np.shape(score_a)} and {np.shape(score_b)}")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        rows = rng.integers(0, len(y_true), len(y_true))
        if scorable(y_true[rows]).any():
            diffs.append(macro_roc_auc(y_true[rows], score_a[rows]) - macro_roc_auc(y_true[rows], score_b[rows]))
    difference = macro_roc_auc(y_true, score_a) - macro_roc_auc(y_true, score_b)
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2]) if diffs else (difference, difference)
    return Margin(difference, float(low), float(high), level, len(y_true))
