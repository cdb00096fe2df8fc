"""Evaluation: task readers in the exact MTAT / MTG-Jamendo formats, the safe unpickler,
metrics against scikit-learn, probes on generated music, MLflow tags and alias promotion."""

from __future__ import annotations

import csv
import os
import pickle
import re
import subprocess
import sys

import matplotlib.pyplot
import mlflow
import numpy as np
import pytest
import torch
from distributed_helpers import ensure_ray
from sklearn.metrics import average_precision_score, roc_auc_score

from mvssl_dist.audio.synth import STYLES, encode, render, style_tags
from mvssl_dist.cli import main
from mvssl_dist.evaluate import (
    EvaluateError,
    EvaluateOptions,
    ProbeConfig,
    TaskError,
    evaluate,
    load_string_list,
    load_task,
    macro_roc_auc,
    roc_auc_margin,
    tagging_metrics,
    track_scores,
    train_probe,
)
from mvssl_dist.evaluate.probe import KNN_CANDIDATES, SplitFeatures
from mvssl_dist.evaluate.report import holder_to_score, promote, tag_prefix
from mvssl_dist.evaluate.run import (
    EvaluateResult,
    compare,
    embed_features,
    find_missing,
    one_sided_tags,
    read_features,
    scoring_fingerprint,
    split_features,
    track_uri,
)
from mvssl_dist.evaluate.tasks import checked_labels
from mvssl_dist.models import Backbone, save_backbone
from mvssl_dist.tracking import connect, log_and_register_backbone

MTAT_SPLITS = {"train": "train", "validation": "valid", "test": "test"}


# --------------------------------------------------------------------------- fixtures in the exact formats
def write_mtat_fixture(root, tracks_per_split=(24, 8, 8), seconds=6.0, missing=()):
    """MTAT layout: audio/<dir>/<name>.mp3; splits/{train,valid,test}_list_pub.cP + y_*_pub.npy (50 columns).

    Track i has style STYLES[i % 4]; its tags (lead, tempo, mode, drums, bass) are columns of a
    50-tag vocabulary listed in splits/tags.txt, so labels follow the audio content.
    """
    vocabulary = sorted({t for s in STYLES for t in style_tags(s)})
    names = vocabulary + [f"unused{i:02d}" for i in range(50 - len(vocabulary))]
    audio, splits = root / "audio", root / "splits"
    splits.mkdir(parents=True)
    (splits / "tags.txt").write_text("\n".join(names) + "\n")
    i = 0
    for split, count in zip(MTAT_SPLITS.values(), tracks_per_split, strict=True):
        entries, labels = [], np.zeros((count, 50), np.int64)
        for row in range(count):
            style = STYLES[i % 4]
            entry = f"{i % 16:x}/track{i:03d}_{style.name}.npy"  # the .cP lists name .npy files
            entries.append(entry)
            labels[row, [names.index(t) for t in style_tags(style)]] = 1
            if entry not in missing:
                path = audio / entry.replace(".npy", ".mp3")
                path.parent.mkdir(parents=True, exist_ok=True)
                encode(path, render(style, seconds, 22050, seed=500 + i), 22050, "mp3")
            i += 1
        (splits / f"{split}_list_pub.cP").write_bytes(pickle.dumps(entries, protocol=2))
        np.save(splits / f"y_{split}_pub.npy", labels)
    return audio, splits, names


def write_jamendo_fixture(root):
    folder = root / "data" / "splits" / "split-0"
    folder.mkdir(parents=True)
    header = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS"]
    rows = {
        "train": [
            ("track_0000001", "14/1.mp3", ["genre---rock", "genre---pop"]),
            ("track_0000002", "15/2.mp3", ["genre---jazz"]),
        ],
        "validation": [("track_0000003", "16/3.mp3", ["genre---rock"])],
        "test": [("track_0000004", "17/4.mp3", ["genre---jazz", "genre---pop"])],
    }
    for split, items in rows.items():
        with open(folder / f"autotagging_genre-{split}.tsv", "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(header)
            for track, path, tags in items:
                writer.writerow([track, "artist_000001", "album_000001", path, "212.5", *tags])
    return folder


# --------------------------------------------------------------------------- readers
def test_mtat_reader_parses_the_exact_format(tmp_path):
    audio, splits, names = write_mtat_fixture(tmp_path, (4, 2, 2), seconds=1.0)
    task = load_task("mtat", splits)
    assert task.vocabulary == names and len(task.tracks) == 8
    assert [len(task.split(s)) for s in ("train", "validation", "test")] == [4, 2, 2]
    first = task.split("train")[0]
    assert first.path == "0/track000_bright_pop.mp3" and (audio / first.path).is_file()
    assert sorted(names[j] for j in np.flatnonzero(first.labels)) == sorted(style_tags(STYLES[0]))
    (splits / "tags.txt").unlink()
    assert load_task("mtat", splits).vocabulary[:2] == ["tag00", "tag01"]


def test_mtat_reader_rejects_labels_that_do_not_match_the_list(tmp_path):
    _, splits, _ = write_mtat_fixture(tmp_path, (4, 2, 2), seconds=1.0)
    np.save(splits / "y_valid_pub.npy", np.zeros((3, 50)))
    with pytest.raises(TaskError, match=r"y_valid_pub.npy: shape \(3, 50\), expected \(2, 50\)"):
        load_task("mtat", splits)
    np.save(splits / "y_valid_pub.npy", np.zeros((2, 50)))
    (splits / "test_list_pub.cP").unlink()
    with pytest.raises(TaskError, match="test_list_pub.cP: split file not found"):
        load_task("mtat", splits)


def test_mtat_labels_that_are_not_a_0_1_matrix_are_one_line_naming_the_file(tmp_path):
    """np.load's own errors named no file, and it takes any file not .npy for a pickle."""
    _, splits, _ = write_mtat_fixture(tmp_path, (4, 2, 2), seconds=1.0)
    labels = splits / "y_test_pub.npy"
    cases = [
        (lambda: labels.write_bytes(b"0,1,0\n1,0,1\n"), r"y_test_pub.npy: not a NumPy .npy file$"),
        (lambda: np.save(labels, np.array([[object()] * 50] * 2), allow_pickle=True), "Object arrays cannot be loaded"),
        (lambda: labels.write_bytes(labels.read_bytes()[:140]), "y_test_pub.npy: not a NumPy .npy array"),
        (lambda: np.save(labels, np.full((2, 50), "1")), "labels must be numbers 0 or 1, found dtype <U1"),
        (lambda: np.save(labels, np.eye(2, 50) * 0.7), r"labels must be 0 or 1, found 0.7 at row 0, column 0"),
        (lambda: np.save(labels, np.where(np.eye(2, 50) > 0, np.nan, 0)), "found nan at row 0, column 0"),
    ]
    for write, message in cases:
        np.save(labels, np.zeros((2, 50)))
        write()
        with pytest.raises(TaskError, match=message):
            load_task("mtat", splits)
    np.save(labels, np.eye(2, 50, dtype=bool))  # booleans and integers are labels too
    assert load_task("mtat", splits).split("test")[0].labels.tolist()[:2] == [1, 0]


def test_task_files_that_are_not_utf8_name_the_file_and_line(tmp_path):
    """A Latin-1 export used to end the CLI in a UnicodeDecodeError traceback."""
    _, splits, names = write_mtat_fixture(tmp_path / "mtat", (4, 2, 2), seconds=1.0)
    (splits / "tags.txt").write_bytes("\n".join(names[:2] + ["gu\xeftar"] + names[3:]).encode("latin-1"))
    with pytest.raises(TaskError, match=r"tags.txt:3: not UTF-8 text \(byte 0xef\); save it as UTF-8"):
        load_task("mtat", splits)
    write_jamendo_fixture(tmp_path)
    tsv = tmp_path / "data/splits/split-0/autotagging_genre-validation.tsv"
    tsv.write_bytes(tsv.read_bytes().replace(b"album_000001", b"\xe1lbum"))
    with pytest.raises(TaskError, match="autotagging_genre-validation.tsv:2: not UTF-8 text"):
        load_task("jamendo-genre", tmp_path)
    path = tmp_path / "task.csv"
    path.write_bytes(
        "uri,split,tags\na.mp3,train,rock\nb.mp3,validation,rock\ncaf\xe9.mp3,test,rock\n".encode("cp1252")
    )
    with pytest.raises(TaskError, match=r"task.csv:4: not UTF-8 text \(byte 0xe9\)"):
        load_task(f"csv:{path}", None)
    path.write_text("uri;split;tags\na.mp3;train;rock\n")  # a spreadsheet set to semicolons
    with pytest.raises(TaskError, match="the header is one field 'uri;split;tags': separate the columns with commas"):
        load_task(f"csv:{path}", None)
    path.write_text("uri,split,tags\ncaf\u00e9.mp3,train,ros\u00e9\nb.mp3,validation,ros\u00e9\nc.mp3,test,ros\u00e9\n")
    assert load_task(f"csv:{path}", None).vocabulary == ["ros\u00e9"]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "train_list_pub.cP"
    crafted.write_bytes(pickle.dumps(["a.npy", _Exploit(marker)], protocol=2))
    with pytest.raises(TaskError, match="refused to load posix.system"):
        load_string_list(crafted)
    assert not marker.exists()
    # the same bytes through the standard unpickler do run the command: the test is meaningful
    pickle.loads(crafted.read_bytes())
    assert marker.exists()
    for protocol in (0, 2, 4, 5):
        ok = tmp_path / f"ok{protocol}.cP"
        ok.write_bytes(pickle.dumps(["a/b.npy", "c/d.npy"], protocol=protocol))
        assert load_string_list(ok) == ["a/b.npy", "c/d.npy"]
    not_list = tmp_path / "dict.cP"
    not_list.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(TaskError, match="expected a pickled list of strings, got dict"):
        load_string_list(not_list)


def test_jamendo_reader_parses_the_exact_format(tmp_path):
    write_jamendo_fixture(tmp_path)
    task = load_task("jamendo-genre", tmp_path)
    assert task.vocabulary == ["genre---jazz", "genre---pop", "genre---rock"]
    test = task.split("test")[0]
    assert (test.track_id, test.path, test.labels.tolist()) == ("track_0000004", "17/4.mp3", [1, 1, 0])
    with pytest.raises(TaskError, match="autotagging_moodtheme-train.tsv: split file not found"):
        load_task("jamendo-mood", tmp_path)
    bad = tmp_path / "data/splits/split-0/autotagging_genre-test.tsv"
    bad.write_text(bad.read_text().replace("genre---jazz", "mood/theme---happy"))
    with pytest.raises(TaskError, match=r"autotagging_genre-test.tsv:2: tag 'mood/theme---happy' is not a genre tag"):
        load_task("jamendo-genre", tmp_path)


def test_jamendo_audio_is_found_in_the_low_quality_download_too(tmp_path):
    """MTG-Jamendo's ``audio-low`` archives hold ``17/4.low.mp3`` where the split files say ``17/4.mp3``."""
    write_jamendo_fixture(tmp_path)
    task = load_task("jamendo-genre", tmp_path)
    audio = tmp_path / "audio"
    for name in ("14/1.mp3", "15/2.low.mp3", "17/4.low.mp3"):  # 16/3 is absent in both forms
        (audio / name).parent.mkdir(parents=True, exist_ok=True)
        (audio / name).write_bytes(b"")
    present, missing = find_missing(task, str(audio))
    found = {task.tracks[i].path: uri.rsplit("/", 2)[-2:] for i, uri in present.items()}
    assert found == {"14/1.mp3": ["14", "1.mp3"], "15/2.mp3": ["15", "2.low.mp3"], "17/4.mp3": ["17", "4.low.mp3"]}
    assert missing == [("16/3.mp3", "not_found")]
    # only MTG-Jamendo names its files so: a CSV task's x.mp3 is not looked for as x.low.mp3
    labels = tmp_path / "labels.csv"
    labels.write_text("uri,split,tags\n15/2.mp3,train,a\n14/1.mp3,validation,a\n17/4.mp3,test,a\n")
    present, missing = find_missing(load_task(f"csv:{labels}", None), str(audio))
    assert len(present) == 1 and missing == [("15/2.mp3", "not_found"), ("17/4.mp3", "not_found")]


def test_csv_task_errors_name_the_problem(tmp_path):
    path = tmp_path / "task.csv"
    path.write_text('uri,split,tags\na.mp3,train,rock\nb.mp3,validation,rock\nc.mp3,test,"rock,jazz"\n')
    with pytest.raises(TaskError, match="test track c.mp3 has tag 'jazz' that no train track has"):
        load_task(f"csv:{path}", None)
    path.write_text("uri,tags\na.mp3,rock\n")
    with pytest.raises(TaskError, match="missing column"):
        load_task(f"csv:{path}", None)
    path.write_text("uri,split,tags\na.mp3,dev,rock\n")
    with pytest.raises(TaskError, match="task.csv:2: split 'dev'"):
        load_task(f"csv:{path}", None)
    path.write_text("uri,split,tags\na.mp3,train\nb.mp3\n")
    with pytest.raises(TaskError, match="task.csv:3: too few fields"):
        load_task(f"csv:{path}", None)
    path.write_text("uri,split,tags\na.mp3,train,rock\nb.mp3,validation,rock\nc.mp3,test,rock\n a.mp3 ,test,rock\n")
    with pytest.raises(TaskError, match=r"task.csv:5: a.mp3 is listed again \(first on line 2\)"):
        load_task(f"csv:{path}", None)  # in train and test: the probe would be scored on what it learned
    with pytest.raises(TaskError, match="needs --split-dir"):
        load_task("mtat", None)
    # Said before any audio is embedded; they used to end the run after the probe's 200 epochs.
    path.write_text("uri,split,tags\na.mp3,train,\nb.mp3,validation,\nc.mp3,test,\n")
    with pytest.raises(TaskError, match="task.csv: no train track has a tag: nothing to learn"):
        checked_labels(load_task(f"csv:{path}", None))
    path.write_text("uri,split,tags\na.mp3,train,rock\nb.mp3,validation,rock\nc.mp3,test,rock\nd.mp3,test,rock\n")
    with pytest.raises(TaskError, match="test split: no tag is on some test tracks and not on others"):
        checked_labels(load_task(f"csv:{path}", None))


def test_csv_task_from_a_spreadsheet_export_reads_as_typed(tmp_path):
    """Spreadsheets write UTF-8 with a byte-order mark, which made the header's first name
    '\\ufeffuri' and the file 'missing column(s) uri'; spaces after commas in the header too."""
    path = tmp_path / "task.csv"
    rows = 'uri, split, tags\r\na.mp3,train,"rock, jazz"\r\nb.mp3,validation,rock\r\nc.mp3,test,jazz\r\n'
    path.write_bytes(b"\xef\xbb\xbf" + rows.encode())
    task = load_task(f"csv:{path}", None)
    assert task.vocabulary == ["jazz", "rock"] and [t.track_id for t in task.tracks] == ["a.mp3", "b.mp3", "c.mp3"]
    assert task.split("train")[0].labels.tolist() == [1, 1]
    with pytest.raises(TaskError, match="unknown"):
        load_task("msd", None)


# --------------------------------------------------------------------------- metrics
def test_metrics_equal_scikit_learn_and_a_hand_computed_case():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 6)) < 0.3).astype(int)
    y[:, 5] = 0  # no positive: unscorable, left out of the macro averages
    s = rng.random((60, 6)) + 0.5 * y
    summary, per_tag = tagging_metrics(y, s, [f"t{i}" for i in range(6)])
    keep = slice(0, 5)
    assert summary["roc_auc_macro"] == pytest.approx(roc_auc_score(y[:, keep], s[:, keep], average="macro"))
    assert summary["pr_auc_micro"] == pytest.approx(average_precision_score(y[:, keep], s[:, keep], average="micro"))
    assert summary["tags_unscorable"] == 1 and per_tag[5].roc_auc is None
    # tiny case by hand: positives at 0.35 and 0.8, negatives at 0.1 and 0.4 -> 3 of 4 pairs ordered
    tiny, _ = tagging_metrics(np.array([[0], [0], [1], [1]]), np.array([[0.1], [0.4], [0.35], [0.8]]), ["x"])
    assert tiny["roc_auc_macro"] == pytest.approx(0.75)
    # AP: ranked 0.8(+) 0.4(-) 0.35(+) 0.1(-): precision at the two hits 1 and 2/3 -> 5/6
    assert tiny["pr_auc_macro"] == pytest.approx(5 / 6)


def test_rank_form_macro_auc_equals_scikit_learn_with_ties_and_unscorable_tags():
    rng = np.random.default_rng(1)
    y = (rng.random((40, 5)) < 0.4).astype(int)
    y[:, 4] = 1  # no negative: left out, as in tagging_metrics
    s = np.round(rng.random((40, 5)) + 0.3 * y, 1)  # rounded: many ties
    assert macro_roc_auc(y, s) == pytest.approx(roc_auc_score(y[:, :4], s[:, :4], average="macro"), abs=1e-12)


def test_paired_margin_resolves_a_real_gap_and_calls_equal_probes_a_tie():
    rng = np.random.default_rng(2)
    y = (rng.random((200, 6)) < 0.4).astype(int)
    good, poor = rng.normal(size=y.shape) + 2.0 * y, rng.normal(size=y.shape) + 0.3 * y
    gap = roc_auc_margin(y, good, poor, resamples=500)
    assert gap.low > 0 and gap.verdict() == "better"
    assert gap.difference == pytest.approx(
        roc_auc_score(y, good, average="macro") - roc_auc_score(y, poor, average="macro")
    )
    assert roc_auc_margin(y, poor, good, resamples=500).verdict() == "worse"
    same = roc_auc_margin(y, good, good + 1e-9 * rng.normal(size=y.shape), resamples=500)
    assert same.low <= 0 <= same.high and same.verdict().startswith("a tie")
    few = roc_auc_margin(y[:12], good[:12], poor[:12], resamples=500)  # 12 tracks cannot resolve it as well
    assert few.high - few.low > gap.high - gap.low
    with pytest.raises(ValueError, match="shapes differ"):
        roc_auc_margin(y, good[:10], poor)


def test_compare_pairs_tracks_by_path_and_narrows_to_chosen_tags(tmp_path):
    rng = np.random.default_rng(3)
    y = (rng.random((120, 4)) < 0.5).astype(int)
    tracks = [f"t{i}.mp3" for i in range(120)]
    good = rng.normal(size=y.shape) + 2.0 * y
    poor = good.copy()
    poor[:, :2] = rng.normal(size=(120, 2)) + 0.2 * y[:, :2]  # b is as good as a on tags c and d

    def result(scores, order):
        metrics, per_tag = tagging_metrics(y[order], scores[order], ["a", "b", "c", "d"])
        return EvaluateResult(
            "csv-x",
            metrics,
            per_tag,
            [],
            tmp_path,
            test_tracks=[tracks[i] for i in order],
            test_labels=y[order],
            test_scores=scores[order],
        )

    first, second = result(good, np.arange(120)), result(poor, rng.permutation(120))  # rows in another order
    assert compare(first, second, resamples=300).verdict() == "better"
    assert compare(first, second, tags=["a", "b"], resamples=300).low > 0.2
    same = compare(first, second, tags=["c", "d"], resamples=300)
    assert same.difference == pytest.approx(0.0, abs=1e-12) and same.verdict().startswith("a tie")
    with pytest.raises(EvaluateError, match="'e' is not in task csv-x"):
        compare(first, second, tags=["e"])


# --------------------------------------------------------------------------- the k-NN probe
def write_segment_parts(out, parts, errors=(), ratio=lambda uri, segment: 1.0, levels=True):
    """A features folder as ``mvssl embed --level segment`` writes it: ``parts`` is a list of
    lists of (uri, segment) rows; each row's embedding is filled with ``segment_value(uri,
    segment)``, its RMS ratio is ``ratio(uri, segment)``; ``levels=False`` writes the parts as
    mvssl did before it kept ratios."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mvssl_dist.embed.batch import ERROR_SCHEMA, fixed_list, segment_schema

    out.mkdir(parents=True, exist_ok=True)
    for n, rows in enumerate(parts):
        columns = {
            "key": [u[-1] for u, _ in rows],
            "source_uri": [u for u, _ in rows],
            "source_bytes": [1] * len(rows),
            "source_mtime_ns": [1] * len(rows),
            "start_s": [4.0 * g for _, g in rows],
            "segment": [g for _, g in rows],
            "embedding": fixed_list(np.stack([np.full(1024, segment_value(u, g), np.float32) for u, g in rows])),
            "rms_ratio": [ratio(u, g) for u, g in rows],
        }
        schema = segment_schema()
        if not levels:
            del columns["rms_ratio"]
            schema = schema.remove(schema.get_field_index("rms_ratio"))
        pq.write_table(pa.table(columns, schema=schema), out / f"segments-{n:03d}.parquet")
    table = pa.table(
        {"source_uri": [u for u, _ in errors], "reason": [r for _, r in errors], "detail": [""] * len(errors)}
    )
    pq.write_table(table.cast(ERROR_SCHEMA), out / "errors.parquet")


def segment_value(uri, segment):
    return 10.0 * int(uri[-1]) + segment


def test_split_features_gather_each_tracks_segments_in_order_across_parts(tmp_path):
    from mvssl_dist.evaluate.tasks import Task, TaskTrack

    # u1's segments are written out of order and over two parts; z is not in the task
    parts = [[("u1", 1), ("z9", 0), ("u1", 0), ("u2", 0)], [("u3", 1), ("u1", 2), ("u3", 0)]]
    write_segment_parts(tmp_path, parts, errors=[("u4", "undecodable"), ("z8", "unreadable")])
    label = np.eye(2, dtype=np.float32)
    splits = ("train", "validation", "test", "train", "test")
    task = Task("t", ["a", "b"], [TaskTrack(str(i), f"p{i}", s, label[i % 2]) for i, s in enumerate(splits)])
    present = {0: "u1", 1: "u2", 2: "u3", 3: "u4", 4: "u1"}  # the same audio twice (tracks 0 and 4)
    index = read_features(tmp_path, set(present.values()))
    assert index.count == {"u1": 3, "u2": 1, "u3": 2} and index.failed == {"u4": "undecodable"}
    got = split_features(task, present, index)
    expected = {
        "train": (["u1", "u1", "u1"], [0, 1, 2], [0, 0, 0], ["p0"]),
        "validation": (["u2"], [0], [0], ["p1"]),
        "test": (["u3", "u3", "u1", "u1", "u1"], [0, 1, 0, 1, 2], [0, 0, 1, 1, 1], ["p2", "p4"]),
    }
    for split, (uris, segments, owner, tracks) in expected.items():
        values = [segment_value(u, g) for u, g in zip(uris, segments, strict=True)]
        np.testing.assert_array_equal(got[split].segments, np.repeat(np.array(values, np.float32)[:, None], 1024, 1))
        assert got[split].owner.tolist() == owner and got[split].tracks == tracks
    np.testing.assert_array_equal(got["test"].labels, label[[0, 0]])
    with pytest.raises(EvaluateError, match="no validation track has audio features"):
        split_features(task, {0: "u1", 2: "u3"}, index)


def test_only_a_tracks_first_10_minutes_are_read(tmp_path):
    """As the reference's loader: a 640 s track gives its 150 segments that end by 600 s."""
    write_segment_parts(tmp_path, [[("u1", g) for g in range(160)], [("u2", g) for g in range(8)]])
    index = read_features(tmp_path, {"u1", "u2"})
    assert index.count == {"u1": 150, "u2": 8}


def test_split_features_carry_which_segments_are_audible(tmp_path):
    from mvssl_dist.evaluate.tasks import Task, TaskTrack

    # the reference's rule: 10 * ln(ratio) < -7.5, i.e. a ratio under exp(-0.75) = 0.472, is silent
    levels = {("u1", 0): 1.3, ("u1", 1): 0.46, ("u1", 2): 0.48, ("u2", 0): 1.0, ("u3", 0): 0.0, ("u3", 1): 1.4}
    write_segment_parts(tmp_path / "new", [list(levels)], ratio=lambda u, g: levels[(u, g)])
    label = np.eye(2, dtype=np.float32)
    task = Task("t", ["a", "b"], [TaskTrack(str(i), f"p{i}", s, label[i % 2]) for i, s in enumerate(SPLIT_NAMES)])
    present = {0: "u1", 1: "u2", 2: "u3"}
    got = split_features(task, present, read_features(tmp_path / "new", set(present.values())))
    assert got["train"].audible.tolist() == [True, False, True] and got["test"].audible.tolist() == [False, True]
    # parts written before levels were kept: not known, so every segment is trained on
    write_segment_parts(tmp_path / "old", [list(levels)], levels=False)
    index = read_features(tmp_path / "old", set(present.values()))
    assert np.isnan(index.ratio).all() and split_features(task, present, index)["train"].audible is None


SPLIT_NAMES = ("train", "validation", "test")


def test_split_features_copy_the_embeddings_once(tmp_path):
    """Whole-track MTG-Jamendo features are gigabytes: reading them into the three splits and
    taking the probe's statistics must not hold several copies (it held 4.4x before)."""
    import tracemalloc

    from mvssl_dist.evaluate.probe import train_statistics
    from mvssl_dist.evaluate.tasks import Task, TaskTrack

    uris = [f"t{i:03d}{i % 10}" for i in range(120)]
    parts = [[(u, g) for u in uris[p : p + 30] for g in range(40)] for p in range(0, 120, 30)]
    write_segment_parts(tmp_path, parts)
    splits = ["train", "train", "train", "validation", "test"]
    task = Task(
        "t",
        ["a", "b"],
        [TaskTrack(u, u, splits[i % 5], np.eye(2, dtype=np.float32)[i % 2]) for i, u in enumerate(uris)],
    )
    present = dict(enumerate(uris))
    tracemalloc.start()
    got = split_features(task, present, read_features(tmp_path, set(uris)))
    train_statistics(got["train"])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = sum(s.segments.nbytes for s in got.values())  # 120 tracks x 40 segments x 4 KB: 19.7 MB
    assert peak < 1.4 * size, (peak, size)


def test_knn_vote_equals_a_hand_computed_case():
    # Train segments on a circle, standardised first: with mean 0 / std 1 per column they stay put.
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)
    labels = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    train = SplitFeatures(bank, np.arange(4), labels)
    val = SplitFeatures(bank[:2], np.arange(2), labels[:2])
    probe = train_probe(train, val, ProbeConfig("knn", k=2, knn_temperature=0.5)).model
    query = np.array([[0.8, 0.6]], np.float32)  # cosines 0.8, 0.6, -0.8, -0.6: neighbours 0 and 1
    w0, w1 = np.exp(0.8 / 0.5), np.exp(0.6 / 0.5)
    expected = (w0 * labels[0] + w1 * labels[1]) / (w0 + w1)
    got = torch.sigmoid(probe(torch.from_numpy(query))).numpy()[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_knn_vote_keeps_its_similarity_block_small(monkeypatch):
    """Queries go to the vote in chunks sized to the bank (a whole-track MTG-Jamendo bank of ~1.9 M
    segments made a 3.9 GB block at 512 queries a chunk); the scores do not depend on the chunk."""
    import mvssl_dist.evaluate.probe as probe_module

    train, queries = clustered(0), torch.from_numpy(clustered(1).segments)  # a bank of 180 rows, 180 queries
    probe = train_probe(train, clustered(2), ProbeConfig("knn", k=5)).model
    whole = probe(queries, chunk=512)
    sizes = []
    vote = probe.vote
    monkeypatch.setattr(probe, "vote", lambda q: sizes.append(len(q)) or vote(q))
    monkeypatch.setattr(probe_module, "SIMILARITY_CELLS", 180 * 16)
    torch.testing.assert_close(probe(queries), whole)
    assert max(sizes) == 16 and sum(sizes) == 180


CENTRES = np.random.default_rng(99).standard_normal((3, 16)).astype(np.float32) * 3


def clustered(seed: int, tracks: int = 60, segments: int = 3) -> SplitFeatures:
    """Tracks of one of 3 tags; a track's segments lie near its tag's centre (unit noise)."""
    rng = np.random.default_rng(seed)
    tags = rng.integers(0, 3, tracks)
    x = CENTRES[np.repeat(tags, segments)] + rng.standard_normal((tracks * segments, CENTRES.shape[1]))
    return SplitFeatures(
        x.astype(np.float32), np.repeat(np.arange(tracks), segments), np.eye(3, dtype=np.float32)[tags]
    )


def test_knn_separates_clusters_shuffled_labels_score_chance_and_k_is_chosen_on_validation():
    train, val, test = clustered(0), clustered(1), clustered(2)
    fitted = train_probe(train, val, ProbeConfig("knn", k=0))
    assert fitted.facts["probe_k"] in KNN_CANDIDATES and [r["k"] for r in fitted.history] == list(KNN_CANDIDATES)
    best = max(fitted.history, key=lambda r: r["val_score"])
    assert fitted.facts["probe_k"] == best["k"] and fitted.best_epoch == best["epoch"]
    assert macro_roc_auc(test.labels, track_scores(fitted.model, test)) > 0.95
    shuffled = []
    for seed in range(5):
        mixed = SplitFeatures(train.segments, train.owner, train.labels[np.random.default_rng(seed).permutation(60)])
        probe = train_probe(mixed, val, ProbeConfig("knn")).model
        shuffled.append(macro_roc_auc(test.labels, track_scores(probe, test)))
    assert 0.3 < np.mean(shuffled) < 0.7, shuffled


def test_an_epoch_takes_at_most_25_segments_of_a_track_drawn_afresh():
    """The reference's downstream stream draws at most 25 segments of a track on each pass; a
    track with fewer gives all of them, and with no track over the cap the epoch is the plain
    permutation it was before."""
    from mvssl_dist.evaluate.probe import TRAIN_SEGMENTS_PER_TRACK, epoch_rows, epoch_size

    assert TRAIN_SEGMENTS_PER_TRACK == 25
    owner = torch.repeat_interleave(torch.arange(3), torch.tensor([60, 3, 30]))  # 93 rows
    generator = torch.Generator().manual_seed(0)
    drawn = []
    for _ in range(20):
        rows = epoch_rows(owner, 25, generator)
        assert len(rows) == len(set(rows.tolist())) == 25 + 3 + 25
        assert torch.bincount(owner[rows]).tolist() == [25, 3, 25]
        assert owner[rows[:28]].tolist() != sorted(owner[rows[:28]].tolist())  # shuffled, not by track
        drawn.append(set(rows[owner[rows] == 0].tolist()))
    assert len({frozenset(d) for d in drawn}) == 20 and set().union(*drawn) == set(range(60))
    short = torch.repeat_interleave(torch.arange(4), torch.tensor([5, 3, 25, 1]))
    expected = torch.randperm(34, generator=torch.Generator().manual_seed(7))
    assert torch.equal(epoch_rows(short, 25, torch.Generator().manual_seed(7)), expected)
    split = SplitFeatures(np.zeros((93, 2), np.float32), owner.numpy(), np.eye(3, dtype=np.float32))
    assert epoch_size(split) == 53 and epoch_size(split, cap=100) == 93


def test_an_epoch_leaves_out_near_silent_segments():
    from mvssl_dist.evaluate.probe import epoch_rows, epoch_size

    owner = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 4, 3]))
    audible = torch.ones(47, dtype=torch.bool)
    audible[[0, 1, 2, 40]] = False  # three of track 0's, one of track 1's
    audible[44:] = False  # all of track 2's: it sits this epoch out, as in the reference's stream
    for seed in range(5):
        rows = epoch_rows(owner, 25, torch.Generator().manual_seed(seed), audible)
        assert audible[rows].all() and torch.bincount(owner[rows], minlength=3).tolist() == [25, 3, 0]
    plain = epoch_rows(owner, 25, torch.Generator().manual_seed(3))
    assert torch.equal(epoch_rows(owner, 25, torch.Generator().manual_seed(3), torch.ones(47, dtype=torch.bool)), plain)
    split = SplitFeatures(
        np.zeros((47, 2), np.float32), owner.numpy(), np.eye(3, dtype=np.float32), [], audible.numpy()
    )
    assert epoch_size(split) == 28
    from mvssl_dist.evaluate.run import epoch_note

    assert (
        epoch_note(split, ProbeConfig())
        == " (28 an epoch: 7 near-silent left out; at most 25 of a track's, drawn afresh)"
    )
    assert epoch_note(split, ProbeConfig("knn")) == ""
    with pytest.raises(ValueError, match="every train segment is near-silent"):
        silent = SplitFeatures(split.segments, split.owner, split.labels, [], np.zeros(47, bool))
        train_probe(silent, clustered(1), ProbeConfig())


def test_a_probe_on_long_tracks_trains_on_capped_epochs():
    train, val, test = clustered(0, tracks=30, segments=40), clustered(1), clustered(2)
    result = train_probe(train, val, ProbeConfig(seed=0, batch_size=64))
    scores = track_scores(result.model, test)
    assert macro_roc_auc(test.labels, scores) > 0.95
    assert all(np.isfinite(h["train_loss"]) for h in result.history)


def test_early_stopping_counts_optimizer_steps_as_well_as_epochs():
    # Two validation tracks with equal features: every tag ties, so the score is flat from epoch 1.
    train = clustered(0)  # 180 train segments
    flat = SplitFeatures(np.zeros((2, 16), np.float32), np.arange(2), np.eye(3, dtype=np.float32)[[0, 1]])
    said = []
    config = ProbeConfig(batch_size=256, patience=10, patience_steps=30)
    one_step_epochs = train_probe(train, flat, config, report=said.append, every_s=0)
    assert (one_step_epochs.best_epoch, one_step_epochs.epochs) == (1, 31)  # 30 steps, not 10
    # and it said how far it got, every epoch here (every 20 s by default), then where it stopped
    assert said[0].startswith("[evaluate] probe epoch 1: validation ") and len(said) == 31, said
    assert said[-1].startswith("[evaluate] the probe stopped after 31 epochs; the best on validation, ")
    assert said[-1].endswith(", at epoch 1"), said[-1]
    three_step_epochs = train_probe(train, flat, ProbeConfig(batch_size=64, patience=10, patience_steps=30))
    assert (three_step_epochs.best_epoch, three_step_epochs.epochs) == (1, 11)  # 10 epochs are 30 steps


def test_probe_settings_that_cannot_run_are_refused_in_one_line(tmp_path, capsys):
    split = clustered(0)
    with pytest.raises(ValueError, match=r"--probe svm: must be one of mlp, linear, knn"):
        train_probe(split, split, ProbeConfig("svm"))
    code = main(
        ["evaluate", "--model", "random", "--task", "csv:x.csv", "--audio-root", ".", "--probe", "knn", "--k", "-1"]
    )
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "mvssl: error: --k -1: must be >= 0 (0 chooses k on validation)"
    ]


def test_an_alias_mlflow_would_refuse_is_one_line_before_any_work(capsys):
    """MLflow refused these with a traceback once the evaluation had run; ``latest`` even "held"."""
    for alias, said in (
        ("bad alias", "letters, digits, _ and - only"),
        ("", "letters, digits, _ and - only"),
        ("latest", "MLflow reserves 'latest' and v<number>"),
        ("Latest", "MLflow reserves 'latest' and v<number>"),
        ("v2", "MLflow reserves 'latest' and v<number>"),
    ):
        args = ["evaluate", "--model", "random", "--task", "csv:x.csv", "--audio-root", ".", "--promote-alias", alias]
        assert main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mvssl: error: --promote-alias") and said in err[0], err


def test_version_tags_keep_probes_and_label_fractions_apart():
    assert tag_prefix("mtat", "mlp", 1.0) == "eval.mtat"  # the reference protocol keeps the plain keys
    assert tag_prefix("mtat", "knn", 1.0) == "eval.mtat.knn"
    assert tag_prefix("mtat", "linear", 0.1) == "eval.mtat.linear.train0.1"
    assert tag_prefix("mtat", "mlp", 0.5) == "eval.mtat.train0.5"


# --------------------------------------------------------------------------- probes on generated music
@pytest.fixture(scope="module")
def mtat(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtat")
    missing = ("3/track035_plucked_folk.npy",)  # in the test list, no audio: 1 of 40 is missing
    audio, splits, names = write_mtat_fixture(root, missing=missing)
    weights = root / "random_backbone.pt"
    torch.manual_seed(0)
    save_backbone(Backbone(), weights)
    return root, audio, splits, names, weights


@pytest.fixture(scope="module")
def registered(mtat):
    """The random backbone registered twice in a SQLite MLflow store (versions 1 and 2)."""
    root, *_, weights = mtat
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    experiment = connect(uri, "eval-test")
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment):
            log_and_register_backbone(weights, "mvssl-eval-test", {"method": "random"})
    yield uri
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def mtat_options(mtat, registered: str, version: str) -> EvaluateOptions:
    """The fixture task evaluated for a version of the registered model, promoting ``champion``."""
    root, audio, splits, _, _ = mtat
    return EvaluateOptions(
        f"models:/mvssl-eval-test/{version}",
        "mtat",
        str(audio),
        str(splits),
        promote_alias="champion",
        cache_dir=str(root / "evaluations"),
        tracking_uri=registered,
    )


@pytest.fixture(scope="module")
def evaluated(mtat, registered):
    ensure_ray()
    options = mtat_options(mtat, registered, "1")
    return options, evaluate(options, report=lambda m: None)


@pytest.mark.slow
def test_probe_on_a_separating_backbone_scores_high_and_is_logged(evaluated, registered):
    options, result = evaluated
    assert result.metrics["roc_auc_macro"] > 0.9, result.metrics
    assert result.missing == [("3/track035_plucked_folk.mp3", "not_found")]
    client = mlflow.MlflowClient(registered)
    version = client.get_model_version("mvssl-eval-test", "1")
    assert result.features_dir.parent.name == f"mvssl-eval-test-v1-{version.run_id[:8]}"  # never another registry's v1
    assert float(version.tags["eval.mtat.roc_auc_macro"]) == pytest.approx(result.metrics["roc_auc_macro"], abs=1e-6)
    run = client.get_run(result.run_id)
    assert run.data.tags["source_run_id"] == version.run_id and run.data.tags["model_version"] == "1"
    assert run.data.metrics["test.pr_auc_micro"] == pytest.approx(result.metrics["pr_auc_micro"])
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"per_tag_mtat.csv", "per_tag_mtat.png", "missing-mtat.csv"} <= artifacts
    assert not matplotlib.pyplot.get_fignums()  # the chart is logged, then closed
    assert result.promoted and str(client.get_model_version_by_alias("mvssl-eval-test", "champion").version) == "1"


@pytest.mark.slow
def test_shuffled_labels_score_chance(mtat, evaluated):
    _, audio, splits, _, _ = mtat
    options, result = evaluated
    task = load_task("mtat", splits)
    present = {i: track_uri(str(audio), t.path) for i, t in enumerate(task.tracks)}
    index = read_features(result.features_dir, set(present.values()))
    scores = []
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(len(task.tracks))
        labels = [task.tracks[j].labels for j in perm]
        for track, label in zip(task.tracks, labels, strict=True):
            track.labels = label
        split = split_features(task, present, index)
        probe = train_probe(split["train"], split["validation"], ProbeConfig(seed=seed))
        summary, _ = tagging_metrics(split["test"].labels, track_scores(probe.model, split["test"]), task.vocabulary)
        scores.append(summary["roc_auc_macro"])
    assert 0.35 < np.mean(scores) < 0.65, scores


@pytest.mark.slow
def test_second_probe_reuses_the_cached_features(mtat, evaluated, registered):
    _, audio, splits, _, _ = mtat
    options, _ = evaluated
    messages = []
    options.probe = ProbeConfig("linear")
    options.promote_alias = None
    options.train_fraction = 0.5
    result = evaluate(options, report=messages.append)
    assert "[embed] 27 tracks, 27 already embedded, 0 to do" in messages, messages  # 12 + 8 + 8 - 1 missing
    assert result.metrics["roc_auc_macro"] > 0.75
    # Its tags sit beside, not over, the reference-protocol ones the first evaluation wrote.
    tags = mlflow.MlflowClient(registered).get_model_version("mvssl-eval-test", "1").tags
    assert float(tags["eval.mtat.linear.train0.5.roc_auc_macro"]) == pytest.approx(
        result.metrics["roc_auc_macro"], abs=1e-6
    )
    assert tags["eval.mtat.roc_auc_macro"] == f"{evaluated[1].metrics['roc_auc_macro']:.6f}"
    options.probe = ProbeConfig("knn")
    knn = evaluate(options, report=messages.append)
    assert knn.metrics["probe_k"] == 20 and knn.metrics["roc_auc_macro"] > 0.75
    assert not [m for m in messages if "the probe cannot learn" in m]
    options.train_fraction, options.max_missing = 0.05, 0.1  # one train track: each tag is on it or not
    evaluate(options, report=messages.append)
    (said,) = [m for m in messages if "the probe cannot learn" in m]
    counts = re.match(r"\[evaluate\] (\d+) of the (\d+) tags scored are on every train track or on none \(", said)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 1, said


@pytest.mark.slow
def test_cached_features_without_segment_levels_are_embedded_again(mtat, evaluated):
    """A cache written before segment levels were kept cannot apply the silence rule: its parts
    are embedded again, and the score is the one a fresh cache gives."""
    import pyarrow.parquet as pq

    options, first = evaluated
    options.probe, options.promote_alias, options.train_fraction = ProbeConfig(), None, 1.0
    for part in first.features_dir.glob("segments-*.parquet"):
        pq.write_table(pq.read_table(part).drop_columns(["rms_ratio"]), part)
    messages = []
    again = evaluate(options, report=messages.append)
    assert any("predate segment levels; embedding their tracks again" in m for m in messages), messages
    assert "[embed] 39 tracks, 0 already embedded, 39 to do" in messages, messages  # 40 less the one missing
    assert all("rms_ratio" in pq.read_schema(p).names for p in first.features_dir.glob("segments-*.parquet"))
    assert again.fingerprint == first.fingerprint
    assert again.metrics["roc_auc_macro"] == pytest.approx(first.metrics["roc_auc_macro"], abs=1e-6)


@pytest.mark.slow
def test_promotion_scores_first_a_holder_measured_otherwise(mtat, evaluated, registered):
    """v1 holds champion with an mtat score from other data (as after the task's files were edited):
    promoting v2 scores v1 again, the same way, and only then compares."""
    client = mlflow.MlflowClient(registered)
    client.set_model_version_tag("mvssl-eval-test", "1", "eval.mtat.fingerprint", "measured-otherwise")
    messages = []
    result = evaluate(mtat_options(mtat, registered, "2"), report=messages.append)
    assert any("champion is on v1" in m and "scoring it first" in m for m in messages), messages
    tags = client.get_model_version("mvssl-eval-test", "1").tags
    assert tags["eval.mtat.fingerprint"] == result.fingerprint
    held = float(tags["eval.mtat.roc_auc_macro"])
    assert held == pytest.approx(result.metrics["roc_auc_macro"], abs=0.02)  # the same weights, registered twice
    holder = client.get_model_version_by_alias("mvssl-eval-test", "champion").version
    assert result.promoted == (round(result.metrics["roc_auc_macro"], 6) > held)
    assert str(holder) == ("2" if result.promoted else "1"), result.promotion_note


def test_one_sided_tags_are_those_on_every_track_or_none():
    labels = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    assert one_sided_tags(labels, ["all", "one", "other", "none"]) == ["all", "none"]


def test_too_many_missing_files_refuse_to_run(mtat, registered):
    root, audio, splits, *_ = mtat
    options = EvaluateOptions(
        "random:0", "mtat", str(audio), str(splits), max_missing=0.01, cache_dir=str(root / "ev2")
    )
    with pytest.raises(
        EvaluateError, match=r"1 of 40 task tracks are missing .* \(first: 3/track035_plucked_folk.mp3: not_found\)"
    ):
        evaluate(options, report=lambda m: None)
    listing = (root / "ev2" / "random-0" / "missing-mtat.csv").read_text().splitlines()
    assert listing == ["path,reason", "3/track035_plucked_folk.mp3,not_found"]


def test_audio_too_long_for_an_earlier_limit_is_embedded_again_under_a_higher_one(tmp_path, monkeypatch):
    """Features are cached per model, errors included: without retrying too_long, a file over the
    limit stayed missing after the limit was raised."""
    from mvssl_dist.embed import batch

    seen = []
    monkeypatch.setattr(batch, "embed_library", lambda opts, report: seen.append(opts))
    options = EvaluateOptions("random:0", "csv:x.csv", str(tmp_path), max_duration_s=7200.0)
    embed_features(["file:///a.mp3"], "random:0", tmp_path / "features", tmp_path / "uris.txt", options, print, True)
    (opts,) = seen
    assert opts.max_duration_s == 7200.0 and "too_long" in opts.retry and "unreadable" in opts.retry


def test_promotion_moves_only_on_improvement(registered):
    client = mlflow.MlflowClient(registered)
    name, prefix = "mvssl-eval-test", "eval.demo"
    client.set_registered_model_alias(name, "best", "1")
    client.set_model_version_tag(name, "1", f"{prefix}.roc_auc_macro", "0.800000")
    client.set_model_version_tag(name, "1", f"{prefix}.fingerprint", "same-data")
    assert promote(name, "2", "best", prefix, 0.7, "same-data")[0] is False
    assert promote(name, "2", "best", prefix, 0.8, "same-data")[0] is False  # a tie keeps the holder
    assert str(client.get_model_version_by_alias(name, "best").version) == "1"
    moved, note = promote(name, "2", "best", prefix, 0.81, "same-data")
    assert moved and "beats v1" in note and str(client.get_model_version_by_alias(name, "best").version) == "2"


def test_promotion_never_compares_scores_measured_on_other_data(registered):
    """Two label files with the same name (two tasks ``csv-labels``), an edited one, or other probe
    settings give the same tag keys; the fingerprint keeps their scores apart."""
    client = mlflow.MlflowClient(registered)
    name, prefix = "mvssl-eval-test", "eval.other"
    client.set_registered_model_alias(name, "held", "1")
    client.set_model_version_tag(name, "1", f"{prefix}.roc_auc_macro", "0.500000")
    client.set_model_version_tag(name, "1", f"{prefix}.fingerprint", "other-data")
    assert holder_to_score(name, "2", "held", prefix, "this-data") == "1"
    assert holder_to_score(name, "2", "held", prefix, "other-data") is None
    assert holder_to_score(name, "1", "held", prefix, "this-data") is None  # the holder itself
    moved, note = promote(name, "2", "held", prefix, 0.9, "this-data")
    assert not moved and "stays on v1" in note and "same tracks, labels and probe settings" in note
    assert str(client.get_model_version_by_alias(name, "held").version) == "1"


def test_scoring_fingerprint_names_tracks_labels_and_probe_settings(monkeypatch):
    import mvssl_dist.evaluate.run as run_module

    def splits(rows):
        return {
            s: SplitFeatures(
                np.zeros((len(rows), 2), np.float32),
                np.arange(len(rows)),
                np.array([r[1] for r in rows]),
                [r[0] for r in rows],
            )
            for s in ("train", "validation", "test")
        }

    rows = [("a.mp3", [1, 0]), ("b.mp3", [0, 1])]
    base = scoring_fingerprint(splits(rows), ["x", "y"], ProbeConfig())
    assert len(base) == 16 and base == scoring_fingerprint(splits(rows[::-1]), ["x", "y"], ProbeConfig())
    assert base != scoring_fingerprint(splits([("a.mp3", [1, 1]), rows[1]]), ["x", "y"], ProbeConfig())
    assert base != scoring_fingerprint(splits(rows[:1]), ["x", "y"], ProbeConfig())
    assert base != scoring_fingerprint(splits(rows), ["x", "z"], ProbeConfig())
    assert base != scoring_fingerprint(splits(rows), ["x", "y"], ProbeConfig(hidden=256))
    # a score of another revision of the trained probes' code is never compared; the k-NN vote's
    # fingerprint does not follow it
    knn = scoring_fingerprint(splits(rows), ["x", "y"], ProbeConfig("knn"))
    monkeypatch.setattr(run_module, "PROBE_REVISION", run_module.PROBE_REVISION + 1)
    assert base != scoring_fingerprint(splits(rows), ["x", "y"], ProbeConfig())
    assert knn == scoring_fingerprint(splits(rows), ["x", "y"], ProbeConfig("knn"))
    monkeypatch.setattr(run_module, "READ_SECONDS", 300.0)  # how much of a track is read: every probe
    assert knn != scoring_fingerprint(splits(rows), ["x", "y"], ProbeConfig("knn"))
    monkeypatch.undo()
    levels = splits(rows)
    for split in levels.values():
        split.audible = np.ones(len(rows), bool)
    # ``splits`` leaves audible None, as features embedded before levels were kept (every segment
    # trained on): not comparable with a score trained under the silence rule
    assert scoring_fingerprint(levels, ["x", "y"], ProbeConfig()) != base
    assert scoring_fingerprint(levels, ["x", "y"], ProbeConfig("knn")) == knn


def test_the_trained_probes_are_the_references_head_without_biases():
    """The reference's downstream model puts its ``Head`` on the backbone: Linear (no bias) +
    BatchNorm1d + ReLU per hidden width, then Linear (no bias)."""
    from torch import nn

    from mvssl_dist.evaluate.probe import Probe

    mean, std = np.zeros(1024), np.ones(1024)
    mlp = Probe(1024, 50, ProbeConfig(hidden=512), mean, std).classifier.ops
    assert [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert [tuple(m.weight.shape) for m in (mlp[0], mlp[3])] == [(512, 1024), (50, 512)]
    linear = Probe(1024, 50, ProbeConfig("linear"), mean, std).classifier.ops
    assert [type(m) for m in linear] == [nn.Linear] and linear[0].weight.shape == (50, 1024)
    assert all(m.bias is None for m in (*mlp, *linear) if isinstance(m, nn.Linear))


def test_cli_bad_input_is_one_line_and_exit_1(tmp_path, capsys):
    code = main(["evaluate", "--model", "random", "--task", "mtat", "--audio-root", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mvssl: error: --task mtat needs --split-dir (the folder holding its split files)"]
    code = main(
        ["evaluate", "--model", "random", "--task", "mtat", "--split-dir", str(tmp_path / "nope"), "--audio-root", "."]
    )
    assert code == 1 and "--split-dir" in capsys.readouterr().err


def test_pipeline_entry_point_shows_the_same_options():
    script = os.path.join(os.path.dirname(__file__), "..", "pipelines", "evaluate.py")
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--promote-alias" in out.stdout
