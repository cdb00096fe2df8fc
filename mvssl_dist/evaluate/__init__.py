"""Frozen-backbone tagging probes that score a model version (ROC-AUC / PR-AUC)."""

from mvssl_dist.evaluate.metrics import Margin, TagScore, macro_roc_auc, roc_auc_margin, tagging_metrics
from mvssl_dist.evaluate.probe import ProbeConfig, SplitFeatures, track_scores, train_probe
from mvssl_dist.evaluate.run import EvaluateError, EvaluateOptions, EvaluateResult, compare, evaluate
from mvssl_dist.evaluate.tasks import Task, TaskError, TaskTrack, load_string_list, load_task

__all__ = [
    "EvaluateError",
    "EvaluateOptions",
    "EvaluateResult",
    "Margin",
    "ProbeConfig",
    "SplitFeatures",
    "TagScore",
    "Task",
    "TaskError",
    "TaskTrack",
    "compare",
    "evaluate",
    "load_string_list",
    "load_task",
    "macro_roc_auc",
    "roc_auc_margin",
    "tagging_metrics",
    "track_scores",
    "train_probe",
]
