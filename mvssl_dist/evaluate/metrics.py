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
