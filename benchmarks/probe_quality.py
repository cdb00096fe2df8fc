"""Probe quality: a briefly pre-trained contrastive backbone vs. a random one vs. the shared fixture weights.

    python benchmarks/probe_quality.py [--workdir mvssl-quickstart] [--steps 0] [--seeds 3] [--probes mlp,knn]
                                       [--layers 0] [--unlabelled 0] [--method contrastive]
                                       [--pretrain KEY=VALUE ...] [--export-model PATH] [--model SOURCE]

Runs (or reuses) the quickstart in WORKDIR: its labelled synthetic library (tags for lead timbre,
tempo, mode, drums and bass, drawn independently per track) and its pre-trained contrastive model.
Then the same MLP probe (same splits, same seeds) scores each backbone's frozen segment
embeddings; features are cached per model, so only the probes are re-run per seed.
Two probes by default: the reference's MLP (trained, early-stopped; it can build on any direction
of the features, so on this library it reaches the ceiling from random features too) and the
training-free weighted k-NN vote (DINO's / solo-learn's k = 20, T = 0.07), which scores how the
embedding itself groups tracks by tag. The k-NN probe is deterministic: it runs once.
``--layers 0.5`` runs on a harder library (the quickstart's ``--layers``: untagged pad and
arpeggio layers that change every section) where random features are far from the ceiling; use a
fresh workdir for it. ``--unlabelled N`` pre-trains on N more tracks whose tags the probe never
sees (the catalogue-with-few-labels setting: more music without more labels for the probe, so the
random backbone gains nothing from it); again a fresh workdir. ``--method`` pre-trains another of
the five methods from its ``configs/`` file under the quickstart's settings and time box, as
``mvssl quickstart --method`` does (again in a fresh workdir). ``--pretrain`` adds pre-training
overrides to the quickstart's (for a long run on a GPU: ``--steps 3000 --pretrain
train.use_gpu=true --pretrain train.num_workers=1 --pretrain data.batch_size=256``;
``benchmarks/device/gpu_probe.sh`` runs that on the device). ``--export-model PATH`` saves the
pre-trained backbone as a weights file (the device call brings it back in ``$OUT``), and ``--model
SOURCE`` scores such a file, or any source ``load_backbone`` takes, as the first row in place of
the quickstart's model: a CPU session can then set a GPU-trained backbone beside the shared
fixture, paired on the same library (the labelled tracks do not depend on ``--unlabelled``; give
``--steps 1`` so that the quickstart's own pre-training, still run, costs seconds).
The shared fixture is a release-format file with non-trivial but untrained weights: a second
"no pre-training" baseline, not a trained model.
A third: ``random:0``'s weights with BatchNorm statistics measured on the library. A fresh
backbone's BatchNorm buffers are identity placeholders, so ``random:0`` runs un-normalised, while
the pre-trained backbone is normalised by its data's statistics; this row holds the weights random
and normalises as the trained one does, and the pre-trained backbone is also compared with it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import numpy as np

from mvssl_dist.evaluate import EvaluateOptions, ProbeConfig, compare, evaluate
from mvssl_dist.quickstart import QuickstartOptions, normalised_control, run_quickstart

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "seed_compat" / "contrastive_backbone_only.pt"


def scores(
    model: str, work: Path, seeds: int, kind: str = "mlp"
) -> tuple[list[float], list[float], dict[str, list[float]], list]:
    """(ROC-AUC macro per seed, PR-AUC macro per seed, {tag: ROC-AUC per seed}, the results)."""
    roc, pr, per_tag, results = [], [], {}, []
    for seed in range(seeds if kind != "knn" else 1):
        options = EvaluateOptions(
            model,
            f"csv:{work / 'library' / 'labels.csv'}",
            str(work / "library"),
            probe=ProbeConfig(kind, seed=seed),
            cache_dir=str(work / "evaluations"),
            experiment="mvssl-benchmark-probe",
        )
        result = evaluate(options, report=lambda m: None)
        results.append(result)
        roc.append(result.metrics["roc_auc_macro"])
        pr.append(result.metrics["pr_auc_macro"])
        for tag in result.per_tag:
            per_tag.setdefault(tag.tag, []).append(tag.roc_auc)
    return roc, pr, per_tag, results


def seed_mean(results: list):
    """One result whose test scores are the mean over the probe seeds (same tracks, same order)."""
    mean = copy.copy(results[0])
    mean.test_scores = np.mean([r.test_scores for r in results], axis=0)
    return mean


def summary(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="mvssl-quickstart")
    parser.add_argument("--tracks", type=int, default=120)
    parser.add_argument("--steps", type=int, default=0, help="pre-training steps (0: the quickstart's choice)")
    parser.add_argument("--seeds", type=int, default=3, help="probe seeds per backbone (trained probes)")
    parser.add_argument("--probes", default="mlp,knn", help="comma-separated: mlp, linear, knn")
    parser.add_argument("--layers", type=float, default=0.0, help="the library's untagged layers (quickstart --layers)")
    parser.add_argument(
        "--unlabelled", type=int, default=0, help="more tracks pre-trained on, not labelled (quickstart --unlabelled)"
    )
    parser.add_argument("--method", default="contrastive", help="the SSL method pre-trained (a fresh --workdir each)")
    parser.add_argument(
        "--pretrain",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pre-training override on top of the quickstart's, repeatable (e.g. train.use_gpu=true)",
    )
    parser.add_argument("--export-model", metavar="PATH", help="save the pre-trained backbone's weights here")
    parser.add_argument("--model", metavar="SOURCE", help="score this backbone in place of the pre-trained one")
    args = parser.parse_args(argv)
    if args.model and ":" not in args.model and not Path(args.model).is_file() and not exported_first(args):
        parser.error(f"--model {args.model}: no such file")  # before minutes of quickstart, not after
    work = Path(args.workdir).resolve()
    options = QuickstartOptions(
        str(work),
        args.tracks,
        steps=args.steps,
        layers=args.layers,
        unlabelled=args.unlabelled,
        method=args.method,
        pretrain_overrides=tuple(args.pretrain),
    )
    state = run_quickstart(options, say=lambda m: None).state
    if args.export_model:
        from mvssl_dist.models import load_backbone, save_backbone

        uri = state["pretrain"]["model_uri"]
        save_backbone(load_backbone(uri), args.export_model, source=uri, steps=state["pretrain"]["steps"])
    if args.model:
        candidates = [(f"given model ({Path(args.model).name[:26]})", args.model)]
    else:
        trained = f"pre-trained {options.method} ({state['pretrain']['steps']} steps)"
        candidates = [(trained, state["pretrain"]["model_uri"])]
    candidates.append((RANDOM, "random:0"))
    candidates.append((CALIBRATED, str(normalised_control(work))))  # the quickstart's control
    if FIXTURE.is_file():
        candidates.append(("shared fixture weights (untrained)", str(FIXTURE)))
    for kind in args.probes.split(","):
        rows = {name: scores(model, work, args.seeds, kind) for name, model in candidates}
        print_probe(kind, rows, work, args.seeds)


def exported_first(args) -> bool:
    """``--model`` names the file ``--export-model`` writes before the probes run."""
    return bool(args.export_model) and Path(args.export_model).resolve() == Path(args.model).resolve()


RANDOM = "random initialisation"
CALIBRATED = "random init, BatchNorm from the library"


def track_segments(work: Path, task) -> list[np.ndarray]:
    """Each of ``task``'s tracks in WORKDIR's library as ``[n, samples]`` segments, cut as the
    embedding pipeline cuts them (peak-normalised, 4 s, the last one padded)."""
    from mvssl_dist.evaluate.baselines import file_segments

    return file_segments([work / "library" / t.path for t in task.tracks])


def print_probe(kind: str, rows: dict, work: Path, seeds: int) -> None:
    runs = f"{seeds} seeds (mean ± sd)" if kind != "knn" else "deterministic (one run)"
    print(f"\n== {kind} probe on {work / 'library' / 'labels.csv'} test split, {runs}")
    print(f"{'backbone':42} {'ROC-AUC macro':>18} {'PR-AUC macro':>18}")
    for name, (roc, pr, _, _) in rows.items():
        print(f"{name:42} {summary(roc):>18} {summary(pr):>18}")
    print("ROC-AUC per tag (mean over seeds); a tag near 1.0 for the random backbone leaves no room to win:")
    short = [name.split(" (")[0][:22] for name in rows]
    print(f"{'tag':16}" + "".join(f"{n:>24}" for n in short))
    for tag in sorted(next(iter(rows.values()))[2]):
        cells = [[v for v in per[2][tag] if v is not None] for per in rows.values()]
        print(f"{tag:16}" + "".join(f"{statistics.mean(c):>24.3f}" if c else f"{'n/a':>24}" for c in cells))
    trained, random_ = next(iter(rows.values())), rows[RANDOM]
    print(
        f"margin (pre-trained - random), ROC-AUC macro: {statistics.mean(trained[0]) - statistics.mean(random_[0]):+.4f}"
    )
    print(
        f"margin (pre-trained - random), PR-AUC macro:  {statistics.mean(trained[1]) - statistics.mean(random_[1]):+.4f}"
    )
    a, b = seed_mean(trained[3]), seed_mean(random_[3])
    print(f"paired over test tracks (probe outputs averaged over seeds), ROC-AUC macro: {compare(a, b).describe()}")
    print("the same, tag family by family (where a gap lies, and whether the test split can tell):")
    families = tag_families([t.tag for t in a.per_tag])
    for family, tags in families.items():
        print(f"  {family:8} {compare(a, b, tags=tags).describe()}")
    if "mode" in families and len(families) > 1:  # no backbone can hear the mode (README, Evaluating)
        audible = [t for family, tags in families.items() if family != "mode" for t in tags]
        print(f"  all but mode (the tags a backbone can hear): {compare(a, b, tags=audible).describe()}")
    for name, row in list(rows.items())[1:]:  # the control (random weights, normalised), the fixture
        if name != RANDOM:
            print(f"paired, pre-trained - {name}, ROC-AUC macro: {compare(a, seed_mean(row[3])).describe()}")


def tag_families(tags: list[str]) -> dict[str, list[str]]:
    """``lead:brass`` -> ``lead``; ``bass`` and ``no_bass`` -> ``bass``."""
    families: dict[str, list[str]] = {}
    for tag in tags:
        families.setdefault(tag.split(":")[0].removeprefix("no_"), []).append(tag)
    return families


if __name__ == "__main__":
    main()
