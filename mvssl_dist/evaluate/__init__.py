"""Frozen-backbone tagging probes that score a model version (ROC-AUC / PR-AUC)."""

from mvssl_dist.evaluate.metrics import TagScore, tagging_metrics
from mvssl_dist.evaluate.probe import ProbeConfig, SplitFeatures, track_scores, train_probe
from mvssl_dist.evaluate.run import EvaluateError, EvaluateOptions, EvaluateResult, evaluate
from mvssl_dist.evaluate.tasks import Task, TaskError, TaskTrack, load_string_list, load_task

__all__ = [
    "EvaluateError",
    "EvaluateOptions",
    "EvaluateResult",
    "ProbeConfig",
    "SplitFeatures",
    "TagScore",
    "Task",
    "TaskError",
    "TaskTrack",
    "evaluate",
    "load_string_list",
    "load_task",
    "tagging_metrics",
    "track_scores",
    "train_probe",
]
