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
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mvssl_dist.audio.decode import decode
from mvssl_dist.embed.segments import cut_segments, peak_normalise
from mvssl_dist.evaluate.tasks import read_csv_task
from mvssl_dist.models.loading import load_backbone

DEPTHS = ("stage 3 mean", "stage 4 mean", "stage 4 max", "embedding")
SKIPPED_FAMILIES = ("mode",)  # inaudible in the synthetic library (README, Evaluating)


@torch.no_grad()
def depth_features(model, segments: np.ndarray) -> list[np.ndarray]:
    """``[n, samples]`` segments of one track -> one vector per depth (mean over the segments)."""
    net = model.embedding
    x = model.melspec(torch.from_numpy(segments)).to(net.conv1.weight.dtype)
    for conv, bn in ((net.conv1, net.bn1), (net.conv2, net.bn2), (net.conv3, net.bn3)):
        x = net.relu(bn(conv(x)))
    stage3 = net.layer3(net.layer2(net.layer1(net.avgpool(x))))
    stage4 = net.layer4(stage3)
    per_depth = (stage3.mean((2, 3)), stage4.mean((2, 3)), stage4.amax((2, 3)), net.attnpool(stage4))
    return [v.mean(0).numpy() for v in per_depth]


def family(tag: str) -> str:
    return tag.split(":")[0].removeprefix("no_")


def both_classes(column: np.ndarray) -> bool:
    return column.min() != column.max()


def depth_scores(features: np.ndarray, labels: np.ndarray, train: np.ndarray, vocabulary: list[str]) -> dict:
    """{family: mean test ROC-AUC over its tags} for one depth's ``[tracks, dim]`` features."""
    scaled = (features - features[train].mean(0)) / (features[train].std(0) + 1e-6)
    by_family: dict[str, list[float]] = {}
    for j, tag in enumerate(vocabulary):
        if family(tag) in SKIPPED_FAMILIES or not (both_classes(labels[train, j]) and both_classes(labels[~train, j])):
            continue
        probe = LogisticRegression(C=0.1, max_iter=2000).fit(scaled[train], labels[train, j])
        score = roc_auc_score(labels[~train, j], probe.decision_function(scaled[~train]))
        by_family.setdefault(family(tag), []).append(score)
    return {name: float(np.mean(values)) for name, values in by_family.items()}


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
    audio = [peak_normalise(decode(work / "library" / t.path)) for t in task.tracks]
    print(f"{len(task.tracks)} tracks ({int((~train).sum())} test); logistic regression per tag, test ROC-AUC")
    print(f"{'backbone':14} {'depth':13} {'all':>6}" + "".join(f"{f:>7}" for f in families_of(task.vocabulary)))
    for name, uri in (("model", model_uri), ("baseline", args.baseline)):
        model = load_backbone(uri).eval()
        per_track = [depth_features(model, cut_segments(a)) for a in audio]
        for d, depth in enumerate(DEPTHS):
            scores = depth_scores(np.stack([f[d] for f in per_track]), labels, train, task.vocabulary)
            cells = "".join(f"{scores.get(f, float('nan')):>7.3f}" for f in families_of(task.vocabulary))
            print(f"{name:14} {depth:13} {np.mean(list(scores.values())):>6.3f}{cells}", flush=True)
    print(f"model: {model_uri}; baseline: {args.baseline}")


def families_of(vocabulary: list[str]) -> list[str]:
    return sorted({family(t) for t in vocabulary} - set(SKIPPED_FAMILIES))


if __name__ == "__main__":
    main()
