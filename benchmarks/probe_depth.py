"""Where a backbone keeps (or loses) each tag: a linear probe at several depths, backbones side by side.

    python benchmarks/probe_depth.py [--workdir mvssl-quickstart] [--model URI] [--baseline random:0]

For every track of WORKDIR's labelled library (``library/labels.csv``, as the quickstart writes
it) the backbone embeds the track's 4 s segments. Four features per track, each the mean over its
segments: stage 3 and stage 4 of the ResNet averaged over time and frequency, stage 4's maximum,
and the attention-pooled embedding that the probes of ``mvssl evaluate`` use. A logistic
regression per tag (standardised features, train + validation tracks) is scored on the test
tracks (ROC-AUC), and the scores are printed per tag family for the model and the baseline side
by side (``all``: the mean over the families). A family the baseline reads at one depth and the model does not has been dropped by
training between the two depths. Labels the library marks inaudible (``mode``) are left out.
``--model`` defaults to the model the quickstart registered in WORKDIR (``quickstart.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from probe_quality import tag_families, track_segments
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mvssl_dist.evaluate.metrics import scorable
from mvssl_dist.evaluate.tasks import read_csv_task
from mvssl_dist.models.loading import load_backbone

DEPTHS = ("stage 3 mean", "stage 4 mean", "stage 4 max", "embedding")
SKIPPED_FAMILIES = ("mode",)  # inaudible in the synthetic library (README, Evaluating)


@torch.no_grad()
def depth_features(model, segments: np.ndarray) -> list[np.ndarray]:
    """``[n, samples]`` segments of one track -> one vector per depth (mean over the segments).

    The backbone's own forward pass runs; hooks keep the outputs of stages 3 and 4 on the way.
    """
    stages = {}
    net = model.embedding
    hooks = [
        stage.register_forward_hook(lambda _m, _i, out, key=key: stages.__setitem__(key, out))
        for key, stage in (("3", net.layer3), ("4", net.layer4))
    ]
    try:
        embedding = model(torch.from_numpy(segments))
    finally:
        for hook in hooks:
            hook.remove()
    per_depth = (stages["3"].mean((2, 3)), stages["4"].mean((2, 3)), stages["4"].amax((2, 3)), embedding)
    return [v.mean(0).numpy() for v in per_depth]


def depth_scores(features: np.ndarray, labels: np.ndarray, train: np.ndarray, families: dict) -> dict:
    """{family: mean test ROC-AUC over its tags} for one depth's ``[tracks, dim]`` features;
    ``families``: {family: [tag column]}."""
    scaled = (features - features[train].mean(0)) / (features[train].std(0) + 1e-6)
    by_family = {}
    for name, columns in families.items():
        scores = []
        for j in columns:
            probe = LogisticRegression(C=0.1, max_iter=2000).fit(scaled[train], labels[train, j])
            scores.append(roc_auc_score(labels[~train, j], probe.decision_function(scaled[~train])))
        by_family[name] = float(np.mean(scores))
    return by_family


def scored_families(vocabulary: list[str], labels: np.ndarray, train: np.ndarray) -> dict[str, list[int]]:
    """{family: columns} of the tags with both classes in train and in test, audible families only."""
    keep = scorable(labels[train]) & scorable(labels[~train])
    column = {tag: j for j, tag in enumerate(vocabulary)}
    families = {
        name: [column[t] for t in tags if keep[column[t]]]
        for name, tags in sorted(tag_families(vocabulary).items())
        if name not in SKIPPED_FAMILIES
    }
    return {name: columns for name, columns in families.items() if columns}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="mvssl-quickstart")
    parser.add_argument("--model", help="backbone URI or file (default: the quickstart's registered model)")
    parser.add_argument("--baseline", default="random:0")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    model_uri = args.model or json.loads((work / "quickstart.json").read_text())["pretrain"]["model_uri"]
    task = read_csv_task(work / "library" / "labels.csv")
    labels = np.stack([t.labels for t in task.tracks])
    train = np.array([t.split != "test" for t in task.tracks])
    families = scored_families(task.vocabulary, labels, train)
    segments = track_segments(work, task)
    print(f"{len(task.tracks)} tracks ({int((~train).sum())} test); logistic regression per tag, test ROC-AUC")
    print(f"{'backbone':14} {'depth':13} {'all':>6}" + "".join(f"{f:>7}" for f in families))
    for name, uri in (("model", model_uri), ("baseline", args.baseline)):
        model = load_backbone(uri).eval()
        per_track = [depth_features(model, track) for track in segments]
        for d, depth in enumerate(DEPTHS):
            scores = depth_scores(np.stack([f[d] for f in per_track]), labels, train, families)
            cells = "".join(f"{scores[f]:>7.3f}" for f in families)
            print(f"{name:14} {depth:13} {np.mean(list(scores.values())):>6.3f}{cells}", flush=True)
    print(f"model: {model_uri}; baseline: {args.baseline}")


if __name__ == "__main__":
    main()
