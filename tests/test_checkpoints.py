"""A run's checkpoint folders: which one a run goes on from, Ray Train's record of them, and the
folders a failure or a restart left behind."""

import torch

from mvssl_dist.train.checkpoints import trained_to_the_end


def test_a_checkpoint_is_the_runs_last_when_written_as_it_ended(tmp_path):
    """A run stopped early (for collapse, its views run out) whose registration failed was trained
    on by its resume: only the last planned step, or a spent time box, counted as the end."""
    import ray.train

    def checkpoint(**state) -> ray.train.Checkpoint:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        torch.save(state, folder / "state.pt")
        return ray.train.Checkpoint.from_directory(folder)

    cfg = {"total_steps": 12}
    assert trained_to_the_end(checkpoint(step=4, total_steps=12, last=True), cfg)
    assert not trained_to_the_end(checkpoint(step=4, total_steps=12, last=False), cfg)
    assert trained_to_the_end(checkpoint(step=7, total_steps=12, out_of_time=True), cfg)
    assert trained_to_the_end(checkpoint(step=9, total_steps=9), cfg)  # fitted to train.max_minutes
    assert trained_to_the_end(checkpoint(step=12), cfg) and not trained_to_the_end(checkpoint(step=6), cfg)


def test_half_written_checkpoints_go_and_an_unusable_ray_record_is_set_aside(tmp_path):
    """A full disk left Ray's checkpoint copies half-written and its record of them empty; with
    the record empty every --resume failed in Ray ("Expecting value: line 1 column 1")."""
    import json

    import ray

    from mvssl_dist.train.checkpoints import (
        RAY_RECORD,
        ray_record_problem,
        remove_partial_checkpoints,
        set_aside_unusable_ray_record,
    )

    run = tmp_path / "run"
    for name in ("checkpoint_a", "checkpoint_b", "checkpoint_c"):
        (run / name).mkdir(parents=True)
    torch.save({"step": 2}, run / "checkpoint_a" / "state.pt")
    whole = (run / "checkpoint_a" / "state.pt").read_bytes()
    (run / "checkpoint_b" / "state.pt").write_bytes(whole[: len(whole) // 2])  # checkpoint_c: empty
    assert remove_partial_checkpoints(run) == 2
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_a"]

    assert ray_record_problem(run) is None  # no record: Ray starts a new one
    record = {"ray_version": ray.__version__, "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}]}
    (run / RAY_RECORD).write_text(json.dumps(record))
    assert ray_record_problem(run) is None
    cases = {
        "": "it cannot be read (Expecting value: line 1 column 1 (char 0))",
        json.dumps({**record, "ray_version": "2.0.0"}): f"Ray 2.0.0 wrote it and this is Ray {ray.__version__}",
        json.dumps({**record, "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_b"}]}): (
            "it lists 1 checkpoint folder(s) no longer there, e.g. checkpoint_b"
        ),
    }
    for text, problem in cases.items():
        (run / RAY_RECORD).write_text(text)
        assert ray_record_problem(run) == problem
    said: list[str] = []
    set_aside_unusable_ray_record(run, 2, said.append)
    assert not (run / RAY_RECORD).exists() and (run / f"{RAY_RECORD}.unusable").is_file()
    assert said == [
        f"[pretrain] Ray Train's record of the run's checkpoints is set aside as {run / RAY_RECORD}.unusable: "
        "it lists 1 checkpoint folder(s) no longer there, e.g. checkpoint_b; going on from its checkpoint at step 2"
    ]


def test_a_restart_leaves_no_checkpoint_folders_beyond_those_ray_keeps(tmp_path):
    """A rank 0 killed during Ray's copy of a checkpoint left it half-written (42 of 85 MB), and a
    worker lost just after a checkpoint left one Ray never recorded: neither is in Ray Train's
    record, so its num_to_keep never removed them, and every restart added to the run's folder."""
    import json

    import ray

    from mvssl_dist.train.checkpoints import RAY_RECORD, remove_unkept_checkpoints

    run = tmp_path / "run"
    names = ("checkpoint_a", "checkpoint_b", "checkpoint_c", "checkpoint_d", "checkpoint_e")
    for name in names:
        (run / name).mkdir(parents=True)
        torch.save({"step": 2}, run / name / "state.pt")
    whole = (run / "checkpoint_a" / "state.pt").read_bytes()
    (run / "checkpoint_d" / "state.pt").write_bytes(whole[: len(whole) // 2])
    # no usable record (none yet, or cut short): only the half-written copy goes
    said = remove_unkept_checkpoints(run, run / "checkpoint_e")
    assert said == (
        "[pretrain] 1 checkpoint folder(s) a restart left behind were removed (1 half-written, "
        "0 superseded and not in Ray Train's record)"
    )
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_a", "checkpoint_b", "checkpoint_c", "checkpoint_e"]
    (run / "checkpoint_d").mkdir()
    (run / RAY_RECORD).write_text(
        json.dumps(
            {
                "ray_version": ray.__version__,
                "checkpoint_results": [
                    {"checkpoint_dir_name": "checkpoint_a"},
                    {"checkpoint_dir_name": "checkpoint_b"},
                ],
            }
        )
    )
    # recorded: a, b; registered: e (Ray never recorded it); c superseded, d an empty copy
    said = remove_unkept_checkpoints(run, run / "checkpoint_e")
    assert "2 checkpoint folder(s)" in said and "(1 half-written, 1 superseded" in said, said
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_a", "checkpoint_b", "checkpoint_e", RAY_RECORD]
    assert remove_unkept_checkpoints(run, run / "checkpoint_e") is None  # nothing more to remove
