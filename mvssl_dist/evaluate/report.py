"""What an evaluation leaves behind: an MLflow run, tags on the model version, the alias decision."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from mvssl_dist.evaluate.metrics import TagScore

SUMMARY_KEYS = ("roc_auc_macro", "pr_auc_macro", "roc_auc_micro", "pr_auc_micro")


def write_per_tag(path: Path, per_tag: list[TagScore]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag", "positives", "roc_auc", "pr_auc"])
        for t in per_tag:
            writer.writerow(
                [
                    t.tag,
                    t.positives,
                    "" if t.roc_auc is None else f"{t.roc_auc:.6f}",
                    "" if t.pr_auc is None else f"{t.pr_auc:.6f}",
                ]
            )


def per_tag_figure(per_tag: list[TagScore], title: str):
    """A bare ``Figure``: not registered with pyplot (nothing to close, however many evaluations a
    process runs) and no backend switched under the caller."""
    from matplotlib.figure import Figure

    scored = sorted((t for t in per_tag if t.roc_auc is not None), key=lambda t: t.roc_auc)
    fig = Figure(figsize=(7, max(2.5, 0.25 * len(scored) + 1)))
    ax = fig.subplots()
    names = [t.tag for t in scored]
    ax.barh(names, [t.roc_auc for t in scored], label="ROC-AUC", color="#4c72b0")
    ax.barh(names, [t.pr_auc for t in scored], height=0.35, label="PR-AUC", color="#dd8452")
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def promote(name: str, version: str, alias: str, key: str, score: float) -> tuple[bool, str]:
    """Move ``alias`` to ``version`` only if it beats the holder's ``key`` tag (ties keep the holder)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None
    if holder is None:
        client.set_registered_model_alias(name, alias, version)
        return True, f"{alias} -> v{version} (no version held it)"
    if str(holder.version) == str(version):
        return True, f"v{version} already holds {alias}"
    if key not in holder.tags:
        client.set_registered_model_alias(name, alias, version)
        return True, f"{alias} -> v{version} (holder v{holder.version} has no {key})"
    old = float(holder.tags[key])
    if score > old:
        client.set_registered_model_alias(name, alias, version)
        return True, f"{alias} -> v{version}: {score:.4f} beats v{holder.version}'s {old:.4f}"
    return False, f"{alias} stays on v{holder.version}: {score:.4f} does not beat {old:.4f}"


def log_evaluation(
    result, options, task, facts: dict, history: list[dict], missing_file: Path, tracking_uri: str
) -> None:
    import mlflow

    from mvssl_dist.tracking import connect

    experiment_id = connect(tracking_uri, options.experiment)
    tags = {"task": result.task, "model_uri": options.model, "probe": options.probe.kind, "mvssl.kind": "evaluation"}
    if result.model_version:
        tags.update(
            model_name=result.model_name,
            model_version=str(result.model_version),
            source_run_id=facts.get("run_id") or "",
        )
    name = (
        f"eval-{result.task}-{result.model_name}-v{result.model_version}"
        if result.model_version
        else f"eval-{result.task}"
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as run:
        mlflow.log_params(
            {
                "task": task.name,
                "audio_root": options.audio_root,
                "train_fraction": options.train_fraction,
                **{f"probe.{k}": v for k, v in vars(options.probe).items()},
            }
        )
        mlflow.log_metrics({f"test.{k}": float(v) for k, v in result.metrics.items()})
        mlflow.log_metric("tracks_missing", len(result.missing))
        for row in history:
            mlflow.log_metrics({f"probe.{k}": v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / f"per_tag_{result.task}.csv"
            write_per_tag(table, result.per_tag)
            mlflow.log_artifact(str(table))
            if result.missing:
                mlflow.log_artifact(str(missing_file))
        fig = per_tag_figure(result.per_tag, f"{result.task}: per-tag scores ({options.model})")
        mlflow.log_figure(fig, f"per_tag_{result.task}.png")
        result.run_id = run.info.run_id
    if result.model_version:
        tag_version(result, options)


def tag_prefix(task: str, probe: str, train_fraction: float) -> str:
    """``eval.<task>`` for the reference protocol (MLP probe, all train labels); another probe or a
    label fraction gets its own keys (``eval.<task>.knn``, ``eval.<task>.linear.train0.1``), so a
    version's tags, and the alias decision, only ever compare like with like."""
    prefix = f"eval.{task}" + ("" if probe == "mlp" else f".{probe}")
    return prefix + ("" if train_fraction == 1 else f".train{train_fraction:g}")


def tag_version(result, options) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    prefix = tag_prefix(result.task, options.probe.kind, options.train_fraction)
    for key in SUMMARY_KEYS:
        client.set_model_version_tag(
            result.model_name, result.model_version, f"{prefix}.{key}", f"{result.metrics[key]:.6f}"
        )
    client.set_model_version_tag(result.model_name, result.model_version, f"{prefix}.run_id", result.run_id)
    if options.promote_alias:
        key = f"{prefix}.roc_auc_macro"
        score = float(f"{result.metrics['roc_auc_macro']:.6f}")  # the value the tag holds
        result.promoted, result.promotion_note = promote(
            result.model_name, str(result.model_version), options.promote_alias, key, score
        )
