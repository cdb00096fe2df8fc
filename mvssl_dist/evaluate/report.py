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


def alias_holder(name: str, alias: str):
    """The model version holding ``alias``, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def comparable_score(tags: dict, prefix: str, fingerprint: str) -> float | None:
    """A version's ``<prefix>.roc_auc_macro`` if it was measured on the same tracks, labels and
    probe settings (its ``<prefix>.fingerprint`` equals ``fingerprint``), else None."""
    if tags.get(f"{prefix}.fingerprint") != fingerprint or f"{prefix}.roc_auc_macro" not in tags:
        return None
    return float(tags[f"{prefix}.roc_auc_macro"])


def holder_to_score(name: str, version: str, alias: str, prefix: str, fingerprint: str) -> str | None:
    """The version holding ``alias`` when it is another version with no score comparable to this
    evaluation's (never scored on the task, or on other tracks, labels or probe settings)."""
    holder = alias_holder(name, alias)
    if holder is None or str(holder.version) == str(version):
        return None
    return None if comparable_score(holder.tags, prefix, fingerprint) is not None else str(holder.version)


def promote(name: str, version: str, alias: str, prefix: str, score: float, fingerprint: str) -> tuple[bool, str]:
    """Move ``alias`` to ``version`` only if ``score`` beats the holder's macro ROC-AUC measured the
    same way (same ``fingerprint``); ties, and a holder with no such score, keep the holder."""
    import mlflow

    client = mlflow.MlflowClient()
    holder = alias_holder(name, alias)
    if holder is None:
        client.set_registered_model_alias(name, alias, version)
        return True, f"{alias} -> v{version} (no version held it)"
    if str(holder.version) == str(version):
        return True, f"v{version} already holds {alias}"
    old = comparable_score(holder.tags, prefix, fingerprint)
    if old is None:
        return False, (
            f"{alias} stays on v{holder.version}: it has no {prefix}.roc_auc_macro measured on the same "
            "tracks, labels and probe settings to compare with"
        )
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
                "fingerprint": result.fingerprint,
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
    """The version's ``<prefix>.*`` tags: the summary metrics, the run, and the fingerprint of the
    tracks, labels and probe settings they were measured with."""
    import mlflow

    client = mlflow.MlflowClient()
    prefix = tag_prefix(result.task, options.probe.kind, options.train_fraction)
    values = {key: f"{result.metrics[key]:.6f}" for key in SUMMARY_KEYS}
    values.update(run_id=result.run_id, fingerprint=result.fingerprint)
    for key, value in values.items():
        client.set_model_version_tag(result.model_name, result.model_version, f"{prefix}.{key}", value)
