"""Configuration values are read as a user types them: ``1e-4`` is a number, ``2024`` can be a name."""

from __future__ import annotations

import re

import pytest

from mvssl_dist.config import ConfigError, load_config


def test_exponent_numbers_are_numbers_in_overrides_and_files(tmp_path):
    """PyYAML follows YAML 1.1, where ``1e-4`` (no dot) is a string: ``train.lr=1e-4`` was refused
    as "must be a number", and ``temperature=1e-1`` reached the method as text."""
    cfg = load_config(None, ["train.lr=1e-4", "train.min_lr=+2E-8", "method.options.temperature=1e-1"])
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["min_lr"] == 2e-8
    assert cfg["method"]["options"] == {"temperature": 0.1}
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3e-4\n  weight_decay: 5E-2\nmethod:\n  options: {temperature: 2e-1}\n")
    cfg = load_config(path)
    assert (cfg["train"]["lr"], cfg["train"]["weight_decay"]) == (3e-4, 5e-2)
    assert cfg["method"]["options"] == {"temperature": 0.2}


def test_names_that_look_like_numbers_stay_text():
    cfg = load_config(None, ["tracking.experiment=2024", "tracking.run_name=1e5", "train.storage_path=007"])
    assert cfg["tracking"]["experiment"] == "2024" and cfg["tracking"]["run_name"] == "1e5"
    assert cfg["train"]["storage_path"] == "007"
    assert load_config(None, ["data.path="])["data"]["path"] is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=fast", "train.lr must be a number, got 'fast'"),
        ("train.lr=1e", "train.lr must be a number, got '1e'"),
        ("train.max_steps=1e3", "train.max_steps must be an integer, got 1000.0"),
        ("train.lrr=1e-4", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ("train.batch_size=8", "unknown key 'train.batch_size' (did you mean 'data.batch_size'?)"),
        ("tracking.register_as=a:b", "tracking.register_as 'a:b': must be a registered model name"),
    ],
)
def test_what_is_not_a_number_is_still_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_an_unknown_key_with_no_near_name_gets_no_guess():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.colour=red"])
    assert str(err.value) == "config: unknown key 'train.colour'"


def test_numbers_outside_their_range_are_refused_with_the_field():
    """These reached the workers: max_steps=-5 never stopped, segment_s=2 failed in the model after
    Ray Train's ~1.5 minutes of start-up, lr=0 trained nothing."""
    cases = {
        "train.max_steps=-5": "config: train.max_steps must be >= 0, got -5 (0: run train.epochs)",
        "data.segment_s=2": "config: data.segment_s must be 4, got 2.0 (the backbone's attention pooling",
        "train.lr=0": "config: train.lr must be > 0, got 0.0",
        "train.ema_momentum=1.5": "config: train.ema_momentum must be <= 1, got 1.5",
        "data.n_views=1": "config: data.n_views must be >= 2, got 1",
        "data.pairs_per_track=0": "config: data.pairs_per_track must be >= 1, got 0",
        "train.max_minutes=-1": "config: train.max_minutes must be >= 0, got -1.0 (0: no time limit)",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, [override])
    edges = [
        "train.max_steps=0",
        "train.max_failures=-1",
        "train.ema_momentum=1",
        "data.min_gap_s=0",
        "data.segment_s=4",
    ]
    load_config(None, edges)  # the documented special values stay allowed


def test_a_resumed_run_keeps_its_config_and_may_change_only_how_it_runs():
    from mvssl_dist.train.pretrain import resume_differences

    saved = load_config(None, ["data.batch_size=32", "method.options.temperature=0.2"])
    resumed = load_config(None, ["train.max_minutes=5"], base=saved)
    assert resumed["data"]["batch_size"] == 32 and resumed["method"]["options"] == {"temperature": 0.2}
    moved = load_config(None, ["train.num_workers=4", "train.max_minutes=5", "data.path=/moved"], base=saved)
    assert resume_differences(saved, moved) == []
    changed = load_config(None, ["train.lr=0.01", "method.options.temperature=0.5"], base=saved)
    assert resume_differences(saved, changed) == [
        "method.options {'temperature': 0.2} -> {'temperature': 0.5}",
        "train.lr 0.001 -> 0.01",
    ]


def test_tracks_too_short_for_the_views_are_not_counted_as_training_data(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mvssl_dist.train.pretrain import dataset_facts

    shard = "shards/shard-000000.tar"
    index = pa.table({"shard": [shard] * 3, "num_samples": [16000 * 13, 16000 * 11, 16000 * 12]})
    pq.write_table(index, tmp_path / "index.parquet")
    (tmp_path / "shards").mkdir()
    (tmp_path / shard).touch()  # its size is not checked: no shard_bytes, as before sizes were kept
    (tmp_path / "dataset.json").write_text(json.dumps({"index_sha256": "x"}))
    facts = dataset_facts(load_config(None, [f"data.path={tmp_path}"]))  # 2 views of 4 s, 4 s apart: 12 s
    assert (facts["tracks"], facts["too_short"], facts["need_s"]) == (2, 1, 12.0)
    with pytest.raises(ConfigError, match=r"none of its 3 tracks is long enough .* \(20 s; the longest is 13.0 s\)"):
        dataset_facts(load_config(None, [f"data.path={tmp_path}", "data.n_views=3"]))


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    """read_text() raised a UnicodeDecodeError, which the CLI showed as a traceback."""
    path = tmp_path / "c.yaml"
    path.write_bytes("tracking:\n  experiment: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"config: .*c.yaml: not valid YAML \(unacceptable character #x00e9"):
        load_config(path)
    path.write_text("tracking:\n  experiment: caf\u00e9\n", encoding="utf-8")
    assert load_config(path)["tracking"]["experiment"] == "caf\u00e9"


def test_a_saved_name_mlflow_refuses_can_be_corrected_when_resuming():
    """A run whose registration failed on its name is resumed with --register-as another name."""
    saved = {"tracking": {"register_as": "team/model"}}
    with pytest.raises(ConfigError, match="tracking.register_as 'team/model'"):
        load_config(None, [], base=saved)
    assert load_config(None, ["tracking.register_as=team-model"], base=saved)["tracking"]["register_as"] == "team-model"
