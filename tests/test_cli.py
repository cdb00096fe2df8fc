from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mvssl_dist.audio import decode
from mvssl_dist.cli import main
from mvssl_dist.embed import cut_segments, embed_track, peak_normalise
from mvssl_dist.models import Backbone, save_backbone


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "backbone.pt"
    save_backbone(Backbone(), path)
    return path


def test_cut_segments_pads_to_whole_segments():
    audio = np.arange(64000 * 2 + 10, dtype=np.float32)
    segs = cut_segments(audio)
    assert segs.shape == (3, 64000)
    assert segs[2, 9] == audio[-1] and not segs[2, 10:].any()
    assert cut_segments(np.ones(64000, np.float32)).shape == (1, 64000)
    assert cut_segments(np.ones(5, np.float32)).shape == (1, 64000)
    np.testing.assert_allclose(np.abs(peak_normalise(np.array([0.1, -0.5], np.float32))).max(), 1.0)


def test_normalising_the_cut_segments_in_place_gives_the_same_values():
    """``mvssl embed`` normalises after cutting, in place (one copy fewer of a long track); the
    reference recipe (``embed-file``) before. Padding is zeros, so the values are the same."""
    audio = (np.random.default_rng(0).standard_normal(64000 * 2 + 10) * 0.3).astype(np.float32)
    for hop in (None, 16000):
        cut = cut_segments(audio.copy(), 64000, hop)
        normalised = peak_normalise(cut, in_place=True)
        assert np.shares_memory(normalised, cut)
        np.testing.assert_array_equal(normalised, cut_segments(peak_normalise(audio), 64000, hop))
    silence = np.zeros(7, np.float32)
    assert peak_normalise(silence, in_place=True) is silence
    with_nan = np.array([0.5, np.nan, -0.2], np.float32)  # a float WAV can hold NaN: left as it was
    np.testing.assert_array_equal(peak_normalise(with_nan.copy(), in_place=True), with_nan)


def test_embed_file_matches_the_reference_recipe(tmp_path, encoded_dir, weights, capsys):
    out = tmp_path / "e.parquet"
    assert main(["embed-file", str(encoded_dir / "music.mp3"), "--weights", str(weights), "--out", str(out)]) == 0
    table = pq.read_table(out).to_pylist()
    assert len(table) == 1 and table[0]["num_segments"] == 3  # 12 s -> 3 segments of 4 s
    # The recipe written out by hand: mono 16 kHz, peak-normalise, pad, chunk, mean.
    audio = decode(encoded_dir / "music.mp3")
    audio = audio / np.abs(audio).max()
    padded = np.zeros(int(np.ceil(len(audio) / 64000)) * 64000, np.float32)
    padded[: len(audio)] = audio
    model = Backbone()
    model.load_state_dict(torch.load(weights, weights_only=True)["backbone"])
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(padded.reshape(-1, 64000))).mean(0).numpy()
    np.testing.assert_allclose(np.array(table[0]["embedding"]), expected, atol=1e-5)
    assert "embedded 1 file(s), 0 failed" in capsys.readouterr().out


def test_resuming_a_run_that_does_not_exist_says_so_first(tmp_path, capsys, monkeypatch):
    """Without data.path it said 'data.path is required', as if the run were new; a --config
    folder was called 'no such file'."""
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--resume", "nope", "train.storage_path=runs"]) == 1
    assert capsys.readouterr().err == f"mvssl: error: --resume nope: no such run under {tmp_path / 'runs'}\n"
    (tmp_path / "configs").mkdir()
    assert main(["pretrain", "--config", "configs", "data.path=x"]) == 1
    assert capsys.readouterr().err == "mvssl: error: config: configs: a folder, not a YAML file\n"


def test_a_list_of_positionals_may_go_on_after_options(tmp_path, encoded_dir, weights, capsys):
    """`mvssl pretrain --config c data.path=d --tracking-uri u train.lr=...`: the override after
    --tracking-uri is read (here it is the bad one, so the run stops at the config check), and
    a file after --weights is embedded like the first; an unknown option is still refused."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["pretrain", "train.lr=1e-3", "--tracking-uri", uri, "train.fit_to_max_minutes=maybe"]) == 1
    assert "train.fit_to_max_minutes must be true or false, got 'maybe'" in capsys.readouterr().err
    out = tmp_path / "e.parquet"
    files = [str(encoded_dir / "music.mp3"), str(encoded_dir / "music.flac")]
    assert main(["embed-file", files[0], "--weights", str(weights), files[1], "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == 2
    with pytest.raises(SystemExit) as stop:
        main(["embed-file", files[0], "--weights", str(weights), "--bogus", files[1]])
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_embed_file_bad_files_are_reported_and_the_rest_processed(tmp_path, encoded_dir, weights, capsys):
    (tmp_path / "broken.mp3").write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "e.npy"
    files = [str(tmp_path / "broken.mp3"), str(encoded_dir / "music.flac"), str(tmp_path / "absent.wav")]
    assert main(["embed-file", *files, "--weights", str(weights), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"mvssl: error: {tmp_path / 'broken.mp3'}: ")
    assert "absent.wav" in err[1]
    assert np.load(out).shape == (1, 1024)
    model = Backbone()
    model.load_state_dict(torch.load(weights, weights_only=True)["backbone"])
    np.testing.assert_allclose(
        np.load(out)[0], embed_track(model.eval(), decode(encoded_dir / "music.flac"))[0], atol=1e-5
    )


def test_embed_file_refuses_a_file_longer_than_the_limit_and_says_how_to_raise_it(
    tmp_path, encoded_dir, weights, capsys
):
    """embed-file decodes each named file whole: 3 hours took 2.7 GB, 10 would take ~9."""
    music = str(encoded_dir / "music.ogg")
    assert main(["embed-file", music, "--weights", str(weights), "--max-duration-s", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mvssl: error: {music}: ") and err.endswith("; --max-duration-s raises the limit"), err
    assert "1 s limit" in err and len(err.splitlines()) == 1
    assert main(["embed-file", music, "--weights", str(weights), "--max-duration-s", "3600"]) == 0


def test_embed_file_bad_weights_and_bad_out(tmp_path, encoded_dir, capsys):
    (tmp_path / "w.pt").write_bytes(b"nope")
    assert main(["embed-file", str(encoded_dir / "music.wav"), "--weights", str(tmp_path / "w.pt")]) == 1
    assert "w.pt: not a torch checkpoint" in capsys.readouterr().err
    assert main(["embed-file", "x.wav", "--weights", "w", "--out", "x.csv"]) == 2
    capsys.readouterr()
    # these were torch tracebacks
    assert main(["embed-file", "x.wav", "--weights", "w", "--device", "banana"]) == 2
    assert capsys.readouterr().err.strip() == (
        "mvssl: error: --device banana: not a torch device (e.g. cpu, cuda, cuda:1, mps)"
    )
    if not torch.cuda.is_available():
        assert main(["embed-file", "x.wav", "--weights", "w", "--device", "cuda"]) == 2
        assert capsys.readouterr().err.strip() == "mvssl: error: --device cuda: no CUDA GPU on this machine"


def test_console_script_help_and_synth(tmp_path):
    exe = shutil.which("mvssl") or f"{sys.executable} -m mvssl_dist.cli"
    run = subprocess.run([*exe.split(), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "embed-file" in run.stdout
    run = subprocess.run(
        [*exe.split(), "synth-audio", str(tmp_path), "--tracks", "2", "--seconds", "5", "--broken"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert len(list(tmp_path.glob("track*"))) == 2 and (tmp_path / "broken" / "truncated.flac").exists()


@pytest.mark.parametrize("stage", ["ingest", "pretrain", "embed"])
def test_pipeline_entry_points_take_the_cli_arguments(stage):
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "pipelines" / f"{stage}.py"
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and f"usage: mvssl {stage}" in run.stdout


def test_quickstart_refuses_tracks_that_ingest_would_reject(tmp_path, capsys):
    # tracks vary by +-10% around --seconds: 12 s would give some tracks under ingest's 12 s minimum
    assert main(["quickstart", "--workdir", str(tmp_path), "--seconds", "12"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--seconds 12: at least 13.4" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "library").exists()


def test_a_second_quickstart_in_one_workdir_is_refused(tmp_path, capsys):
    """Two quickstarts in one folder raced stage by stage (the second resumed the first's
    pre-training run while it was still training)."""
    import fcntl

    fd = os.open(tmp_path / ".mvssl.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # per open file: conflicts as another process's hold would
    os.write(fd, b"mvssl quickstart (pid 4242 on elsewhere)\n")
    try:
        assert main(["quickstart", "--workdir", str(tmp_path)]) == 1
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mvssl: error: {tmp_path}: mvssl quickstart (pid 4242 on elsewhere) is writing here; "
        "wait for it to end, or choose another folder"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mvssl.lock"]


def test_quickstart_refuses_options_its_workdir_was_not_made_with(tmp_path, capsys):
    """A re-run reuses the library: other --tracks, --layers or --unlabelled would be silently ignored."""
    library = {"tracks": 120, "labels": str(tmp_path / "library" / "labels.csv")}  # made before --layers
    (tmp_path / "quickstart.json").write_text(json.dumps({"library": library}))
    for argv, said in (
        (["--layers", "0.5"], "--layers 0.5: "),
        (["--tracks", "60"], "--tracks 60: "),
        (["--unlabelled", "480"], "--unlabelled 480: "),
    ):
        assert main(["quickstart", "--workdir", str(tmp_path), *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert said in err and "with " + said.split(":")[0].split()[0] in err and "another --workdir" in err, err
        assert len(err.splitlines()) == 1


def test_quickstart_pretrain_overrides_come_last(tmp_path):
    """benchmarks/probe_quality.py --pretrain KEY=VALUE: what a GPU run changes wins over the
    quickstart's own settings, and the rest stays as the quickstart has it."""
    from mvssl_dist.quickstart import QuickstartOptions, pretrain_config

    gpu = ("train.use_gpu=true", "train.num_workers=1", "data.batch_size=256", "train.max_minutes=4")
    cfg = pretrain_config(
        QuickstartOptions(str(tmp_path), pretrain_overrides=gpu), tmp_path, "sqlite:///x.db", (3000, 0.0)
    )
    assert cfg["train"]["use_gpu"] is True and cfg["train"]["num_workers"] == 1
    assert cfg["data"]["batch_size"] == 256 and cfg["train"]["max_minutes"] == 4.0
    assert cfg["train"]["max_steps"] == 3000 and cfg["data"]["pairs_per_track"] == 4
    plain = pretrain_config(QuickstartOptions(str(tmp_path)), tmp_path, "sqlite:///x.db", (120, 4.1))
    assert plain["data"]["batch_size"] == 32 and plain["train"]["num_workers"] == 2 and not plain["train"]["use_gpu"]


def test_quickstart_pretrains_another_method_from_its_config_in_its_own_workdir(tmp_path):
    """benchmarks/probe_quality.py --method: the method's configs/ file under the quickstart's
    settings; a workdir that holds another method's model is refused in one line, not reused."""
    from mvssl_dist.quickstart import (
        QuickstartError,
        QuickstartOptions,
        State,
        check_options,
        check_reuse,
        pretrain_config,
    )

    byol = QuickstartOptions(str(tmp_path), method="BYOL")
    check_options(byol)  # aliases and case as `method.name` takes them
    cfg = pretrain_config(byol, tmp_path, "sqlite:///x.db", (120, 4.1))
    assert cfg["method"] == {"name": "byol", "options": {}} and cfg["train"]["ema_momentum"] == 0.996
    assert cfg["data"]["batch_size"] == 32 and cfg["train"]["max_steps"] == 120  # the quickstart's own
    dino = pretrain_config(QuickstartOptions(method="clustering"), tmp_path, "sqlite:///x.db", (120, 4.1))
    assert dino["train"]["lr"] == 5e-4 and dino["train"]["grad_clip"] == 3.0  # configs/clustering.yaml
    with pytest.raises(QuickstartError, match=r"^--method: unknown method 'mae' \(known: barlow_twins, byol"):
        check_options(QuickstartOptions(method="mae"))
    state = State(tmp_path / "quickstart.json")
    state.set("pretrain_budget", [400, 4.2])  # a workdir from before methods were recorded: contrastive
    with pytest.raises(
        QuickstartError, match="^--method byol: .* with contrastive; continue it with --method contrastive, or"
    ):
        check_reuse(byol, state, tmp_path)
    check_reuse(QuickstartOptions(str(tmp_path)), state, tmp_path)
    state.set("pretrain_method", "byol")
    check_reuse(byol, state, tmp_path)


def test_quickstart_method_is_checked_in_one_line_before_anything_runs(tmp_path, capsys):
    """`mvssl quickstart --method`: an unknown method, or a workdir that holds another method's
    model, is one line and exit 1, with nothing generated."""
    work = tmp_path / "work"
    assert main(["quickstart", "--workdir", str(work), "--method", "mae"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mvssl: error: --method: unknown method 'mae' (known: barlow_twins, byol") and "\n" not in err
    assert not work.exists()
    work.mkdir()
    (work / "quickstart.json").write_text(json.dumps({"pretrain_method": "contrastive"}))
    assert main(["quickstart", "--workdir", str(work), "--method", "VICReg"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mvssl: error: --method vicreg: {work} holds a model pre-trained with contrastive; "
        "continue it with --method contrastive, or use another --workdir"
    )
    assert sorted(p.name for p in work.iterdir()) == [".mvssl.lock", "quickstart.json"]


def test_quickstart_gives_pretraining_the_minutes_left_and_lets_the_run_fit_its_steps(tmp_path):
    """--minutes leaves the loop what the other stages do not need; the run plans 400 steps and
    fits them to that box at the pace it keeps (tests/test_timebox.py, tests/test_pretrain.py)."""
    from mvssl_dist.quickstart import MAX_STEPS, QuickstartOptions, budget_note, pretrain_budget, pretrain_config

    eight = QuickstartOptions(minutes=8.0)
    assert pretrain_budget(eight, 20.0) == (MAX_STEPS, 4.42)  # 480 - 20 - 195 s left for the loop
    assert budget_note(eight, 20.0) is None
    assert pretrain_budget(eight, 400.0) == (MAX_STEPS, 1.0)  # at least a minute: more than asked, and said
    note = budget_note(eight, 400.0)
    assert (
        note.startswith("  --minutes 8 is less than this run needs: the first two stages took 400 s")
        and "\n" not in note
    )
    assert "the run will end later than asked" in budget_note(QuickstartOptions(minutes=1.0), 20.0)
    assert pretrain_budget(QuickstartOptions(steps=7), 20.0) == (7, 0.0)  # --steps: no box
    assert budget_note(QuickstartOptions(minutes=1.0, steps=7), 20.0) is None  # --steps: --minutes unused
    cfg = pretrain_config(eight, tmp_path, "sqlite:///x.db", pretrain_budget(eight, 20.0))
    assert cfg["train"]["max_steps"] == MAX_STEPS and cfg["train"]["max_minutes"] == 4.42
    assert cfg["train"]["fit_to_max_minutes"]


def bad_numbers(music: str, weights: str, tmp: str) -> list[tuple[list[str], str]]:
    embed = ["embed", music, "--model", weights, "--out", f"{tmp}/emb"]
    evaluate = ["evaluate", "--model", "random", "--task", f"csv:{tmp}/labels.csv", "--audio-root", tmp]
    return [
        (["embed-file", music, "--weights", weights, "--batch-size", "0"], "--batch-size 0"),
        (["embed-file", music, "--weights", weights, "--max-duration-s", "0"], "--max-duration-s 0: must be > 0"),
        (["synth-audio", f"{tmp}/lib", "--tracks", "0"], "--tracks 0"),
        (["synth-audio", f"{tmp}/lib", "--seconds", "1e9"], "--seconds 1e+09: at most 3600"),  # was a MemoryError
        (["ingest", music, "--out", f"{tmp}/ds", "--workers", "0"], "--workers 0"),
        (["ingest", music, "--out", f"{tmp}/ds", "--shard-target-mb", "0"], "--shard-target-mb 0"),
        (["ingest", music, "--out", f"{tmp}/ds", "--min-duration-s", "-1"], "--min-duration-s -1"),
        (["ingest", music, "--out", f"{tmp}/ds", "--silence-db", "10"], "--silence-db 10"),
        (["ingest", music, "--out", f"{tmp}/ds", "--max-duration-s", "5"], "--min-duration-s 12 must not exceed"),
        ([*embed, "--batch-size", "0"], "--batch-size 0"),
        ([*embed, "--workers", "0"], "--workers 0"),
        ([*embed, "--gpus", "2"], "--gpus 2"),
        ([*embed, "--max-duration-s", "0"], "--max-duration-s 0: must be > 0"),
        (["neighbours", "--embeddings", tmp, "--key", "x", "-k", "0"], "-k 0"),
        (["neighbours", "--embeddings", tmp, "--query", music, "--max-duration-s", "-1"], "--max-duration-s -1"),
        ([*evaluate, "--hidden", "0"], "--hidden 0"),
        ([*evaluate, "--max-epochs", "0"], "--max-epochs 0"),
        ([*evaluate, "--patience", "0"], "--patience 0"),
        ([*evaluate, "--patience-steps", "-1"], "--patience-steps -1"),
        ([*evaluate, "--workers", "0"], "--workers 0"),
        ([*evaluate, "--max-duration-s", "-1"], "--max-duration-s -1: must be > 0"),
        (["quickstart", "--workdir", f"{tmp}/q", "--minutes", "0"], "--minutes 0"),
        (["quickstart", "--workdir", f"{tmp}/q", "--steps", "-1"], "--steps -1"),
        (["quickstart", "--workdir", f"{tmp}/q", "--layers", "-1"], "--layers -1"),
        (["quickstart", "--workdir", f"{tmp}/q", "--unlabelled", "-1"], "--unlabelled -1"),
        (["quickstart", "--workdir", f"{tmp}/q", "--seconds", "1800"], "--seconds 1800: at most 1636.36"),
    ]


def test_numbers_out_of_range_are_refused_in_one_line(tmp_path, encoded_dir, weights, capsys):
    """Each used to run on (a 0 batch crashed inside Ray, 0 workers or shards were taken as 1)."""
    (tmp_path / "labels.csv").write_text("uri,split,tags\n")
    for argv, flag in bad_numbers(str(encoded_dir / "music.mp3"), str(weights), str(tmp_path)):
        assert main(argv) != 0, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], (argv, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_embed_on_gpus_without_one_is_refused_not_left_waiting(tmp_path, encoded_dir, weights, capsys):
    argv = ["embed", str(encoded_dir / "music.mp3"), "--model", str(weights), "--out", str(tmp_path), "--gpus", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mvssl: error: --gpus 1: this machine has 0 GPUs (run on CPU with --gpus 0)"], err


def test_quickstart_prints_commands_that_survive_a_space_in_the_path(tmp_path, monkeypatch):
    """The summary's `mlflow ui` and `mvssl neighbours` lines are meant to be pasted into a shell."""
    from mvssl_dist import quickstart

    work = tmp_path / "my music"
    monkeypatch.setattr(quickstart, "first_key", lambda folder: "k1")
    scored = {"roc_auc_macro": 0.9, "pr_auc_macro": 0.8, "promotion": "champion -> v1"}
    state = {
        "ingest": {"tracks": 1, "rejects": 0},
        "pretrain": {"model_version": "1", "run_id": "r", "steps": 3},
        "embed": {"out": str(work / "embeddings"), "tracks": 1},
        "evaluate": {"model": scored, "random": scored},
    }
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    lines = quickstart.summary_lines(work, state, tracking)
    commands = [line.split(":  ", 1)[1].split("   (then")[0] for line in lines if line.startswith("  browse")]
    commands += [line.split(":  ", 1)[1] for line in lines if line.startswith("  similar")]
    assert [shlex.split(c) for c in commands] == [
        ["mlflow", "ui", "--backend-store-uri", tracking, "--port", "5000"],
        ["mvssl", "neighbours", "--embeddings", str(work / "embeddings"), "--key", "k1", "-k", "5"],
    ]


def test_every_option_says_what_it_does():
    """`mvssl COMMAND --help` is the manual on a laptop: no option without a line, and a number
    with a default says what the default is."""
    import argparse

    from mvssl_dist.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = []
    for name, parser in subparsers.choices.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                bare.append(f"{label}: no help")
            elif isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
                if "default" not in action.help:
                    bare.append(f"{label}: default {action.default} not shown")
    assert not bare, bare


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, encoded_dir, weights, capsys):
    """These were tracebacks (FileExistsError, NotADirectoryError)."""
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    music = str(encoded_dir / "music.mp3")
    commands = {
        ("synth-audio", str(taken)): "OUT_DIR",
        ("ingest", music, "--out", str(taken)): "--out",
        ("embed", music, "--model", str(weights), "--out", str(taken)): "--out",
        ("quickstart", "--workdir", str(taken)): "--workdir",
    }
    for argv, flag in commands.items():
        assert main(list(argv)) == 2, argv
        assert capsys.readouterr().err.strip() == f"mvssl: error: {flag} {taken}: exists and is not a folder"
    assert main(["ingest", music, "--out", str(taken / "below"), "--no-progress"]) == 1  # any other OSError
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mvssl: error: {taken / 'below'}: Not a directory"], err


@pytest.mark.parametrize("scheme", ["s3://bucket/x", "file:///tmp/x"])
def test_an_output_uri_is_refused_not_made_a_local_folder_of_that_name(
    tmp_path, encoded_dir, weights, scheme, capsys, monkeypatch
):
    """`--out s3://bucket/x` wrote into a local folder `s3:/bucket/x` under the working one."""
    from mvssl_dist.embed.batch import EmbedError, EmbedOptions, embed_library
    from mvssl_dist.shards import IngestError, IngestOptions, ingest

    monkeypatch.chdir(tmp_path)
    music = str(encoded_dir / "music.mp3")
    for argv, flag in {
        ("ingest", music, "--out", scheme): "--out",
        ("embed", music, "--model", str(weights), "--out", scheme): "--out",
        ("quickstart", "--workdir", scheme): "--workdir",
        ("synth-audio", scheme): "OUT_DIR",
    }.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err.strip()
        assert (
            err.startswith(f"mvssl: error: {flag} {scheme}: outputs go to a folder on a local or mounted")
            and "\n" not in err
        )
    with pytest.raises(IngestError, match="outputs go to a folder"):
        ingest(IngestOptions([music], scheme))
    with pytest.raises(EmbedError, match="outputs go to a folder"):
        embed_library(EmbedOptions([music], str(weights), scheme))
    assert list(tmp_path.iterdir()) == []


def test_a_ray_address_where_nothing_listens_is_refused_at_once():
    """ray.init retried such an address for minutes (a typo in --ray-address or RAY_ADDRESS)."""
    import socket
    import time

    from mvssl_dist.raytools import RayAddressError, check_reachable

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    for address in (f"127.0.0.1:{port}", f"ray://localhost:{port}"):
        start = time.perf_counter()
        with pytest.raises(RayAddressError, match=f"Ray address {address}: nothing answers there"):
            check_reachable(address)
        assert time.perf_counter() - start < 10
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")  # something listens: left to Ray
    check_reachable("auto")  # not host:port: left to Ray


def test_nan_and_inf_are_refused_by_every_float_option(capsys):
    """Every range check (`< 0`, `> 0`) lets NaN through: `ingest --silence-db nan` kept every
    track, `--min-duration-s nan` rejected none as short; inf reached int() and JSON records.
    argparse now refuses both by name."""
    from mvssl_dist.cli import build_parser

    floats = [
        (name, action.option_strings[0])
        for name, sub in build_parser()._subparsers._group_actions[0].choices.items()
        for action in sub._actions
        if action.type is not None and getattr(action.type, "__name__", "") == "number"
    ]
    assert len(floats) == 18 and ("ingest", "--silence-db") in floats, floats
    for (command, option), value in zip(floats, itertools.cycle(["nan", "inf", "-inf"])):  # every one of them
        with pytest.raises(SystemExit) as stop:
            main([command, f"{option}={value}", "x", "--out", "y", "--task", "t", "--audio-root", "r", "--model", "m"])
        assert stop.value.code == 2
        assert f"argument {option}: {value}: not a finite number" in capsys.readouterr().err, (command, option)
