"""A run's checkpoint folders: finding the newest whole one, Ray Train's record of them, tidying.

Each ``checkpoint_*`` folder under a run's folder holds one ``state.pt`` (written by
:func:`mvssl_dist.train.loop.save_state`). Ray Train keeps its own list of them
(``checkpoint_manager_snapshot.json``) and removes the ones past ``train.num_to_keep``; that
list lags what is on disk (a checkpoint enters it once every worker has reported it) and misses
what a failure left (a copy cut short by a full disk or a kill), so the newest checkpoint is
read from both, and what the list does not hold is removed at the end of a fit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mvssl_dist.tracking import first_line

STATE_FILE = "state.pt"
RAY_RECORD = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's checkpoints


def load_state(checkpoint) -> dict:
    import torch

    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def newest_on_disk(run_dir: Path) -> tuple:
    """The newest checkpoint under ``run_dir`` whose state loads (a kill can leave a partial copy):
    ``(checkpoint, its state)``, or ``(None, None)``."""
    import torch
    from ray.train import Checkpoint

    candidates = sorted(run_dir.glob(f"checkpoint_*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # partial or corrupt: try the one before
            continue
        return Checkpoint.from_directory(str(path.parent)), state
    return None, None


def latest_checkpoint(run_dir: Path) -> tuple:
    """:func:`newest_on_disk` as ``(checkpoint, its step)``, or ``(None, 0)``."""
    checkpoint, state = newest_on_disk(run_dir)
    return checkpoint, state["step"] if state else 0


def newest_checkpoint(recorded, run_dir: Path) -> tuple:
    """The furthest trained of Ray Train's ``recorded`` checkpoint (or ``None``) and the newest
    whole one under ``run_dir``: ``(checkpoint, its state)``, or ``(None, None)``; a tie keeps Ray's.

    Ray Train records a checkpoint once it has collected every worker's report of it (it polls
    every 2 s): one written just before a worker died is on disk but not in its record, and a
    restart would go back to the checkpoint before it, or to step 0."""
    best, best_state = newest_on_disk(run_dir)
    if recorded is None or (best is not None and Path(recorded.path).resolve() == Path(best.path).resolve()):
        return best, best_state
    state = load_state(recorded)
    if best_state is None or state["step"] >= best_state["step"]:
        return recorded, state
    return best, best_state


def trained_to_the_end(checkpoint, cfg: dict) -> bool:
    """Whether a run's checkpoint is its last: written as the run ended (its last step, its time box
    spent, stopped for collapse, the views run out), or, from before that was recorded, at its last step."""
    state = load_state(checkpoint)
    if state.get("last") or state.get("out_of_time"):
        return True
    return state["step"] >= state.get("total_steps", cfg["total_steps"])


def ray_record(run_dir: Path) -> tuple[dict | None, str | None]:
    """Ray Train's record of the run's checkpoints (None when there is none) and why Ray Train would
    refuse to resume from it (None when it would not)."""
    import ray

    try:
        record = json.loads((run_dir / RAY_RECORD).read_text())
    except FileNotFoundError:
        return None, None
    except (ValueError, OSError) as err:  # cut short by a full disk or a kill
        return None, f"it cannot be read ({first_line(err)})"
    if not isinstance(record, dict):
        return None, "it is not a record of checkpoints"
    if record.get("ray_version") != ray.__version__:
        return record, f"Ray {record.get('ray_version')} wrote it and this is Ray {ray.__version__}"
    missing = sorted(n for n in recorded_names(record) if not (run_dir / n).is_dir())
    problem = f"it lists {len(missing)} checkpoint folder(s) no longer there, e.g. {missing[0]}" if missing else None
    return record, problem


def recorded_names(record: dict) -> set[str]:
    """The checkpoint folder names a record of Ray Train lists."""
    results = record.get("checkpoint_results") or []
    return {str(r.get("checkpoint_dir_name")) for r in results if isinstance(r, dict)}


def ray_record_problem(run_dir: Path) -> str | None:
    """Why Ray Train would refuse to resume from its record of the run's checkpoints, if it would."""
    return ray_record(run_dir)[1]


def set_aside_unusable_ray_record(run_dir: Path, start_step: int, report: Callable[[str], None]) -> None:
    """A record Ray Train cannot resume from (a full disk cut it short, Ray was upgraded, a
    checkpoint folder was deleted to free space) would fail every ``--resume``: it is renamed, and
    the run goes on from its newest checkpoint on disk (:func:`latest_checkpoint`)."""
    problem = ray_record_problem(run_dir)
    if problem is None:
        return
    kept = run_dir / f"{RAY_RECORD}.unusable"
    (run_dir / RAY_RECORD).replace(kept)
    start = f"its checkpoint at step {start_step}" if start_step else "the start (no checkpoint loads)"
    report(
        f"[pretrain] Ray Train's record of the run's checkpoints is set aside as {kept}: {problem}; going on from {start}"
    )


def is_whole(folder: Path) -> bool:
    """Whether a checkpoint folder's copy is complete: ``state.pt`` is a whole zip archive
    (``torch.save``), which ends with its central directory."""
    import zipfile

    state = folder / STATE_FILE
    return state.is_file() and zipfile.is_zipfile(state)


def remove_partial_checkpoints(run_dir: Path) -> int:
    """Remove the checkpoint folders a failed copy left half-written (a full disk): how many.

    Ray Train leaves them behind, and with them the space a resume needs."""
    return sum(remove_checkpoint_folders(run_dir, kept=None, registered=None))


def remove_checkpoint_folders(run_dir: Path, kept: set[str] | None, registered: Path | None) -> tuple[int, int]:
    """Remove every half-written checkpoint folder, and the whole ones not in ``kept`` (None: keep
    them all), ``registered`` always kept: ``(half-written, whole)`` removed."""
    import shutil

    partial = superseded = 0
    for folder in sorted(run_dir.glob("checkpoint_*")):
        if not folder.is_dir() or (registered is not None and folder.resolve() == registered.resolve()):
            continue
        if not is_whole(folder):
            partial += 1
        elif kept is not None and folder.name not in kept:
            superseded += 1
        else:
            continue
        shutil.rmtree(folder, ignore_errors=True)
    return partial, superseded


def recorded_folders(run_dir: Path) -> set[str] | None:
    """The checkpoint folders Ray Train's record of the run holds; None when it has no usable record."""
    record, problem = ray_record(run_dir)
    return None if record is None or problem is not None else recorded_names(record)


def remove_unkept_checkpoints(run_dir: Path, registered: Path) -> str | None:
    """After a fit: remove the checkpoint folders Ray Train's record does not hold, but for the one
    ``registered``; the line that says so, or None.

    A restart leaves two kinds behind, which Ray's ``num_to_keep`` never removes as it does not know
    them: the copy a killed rank 0 left half-written, and a whole one written just before a worker
    was lost (Ray records a checkpoint once every worker has reported it), which later ones
    superseded. Without a usable record, only half-written ones go."""
    partial, superseded = remove_checkpoint_folders(run_dir, recorded_folders(run_dir), registered)
    if not partial + superseded:
        return None
    return (
        f"[pretrain] {partial + superseded} checkpoint folder(s) a restart left behind were removed "
        f"({partial} half-written, {superseded} superseded and not in Ray Train's record)"
    )


def removed_partial_line(removed: int) -> str:
    return f"{removed} checkpoint folder(s) the failure left half-written were removed; " if removed else ""


def tidy_checkpoints(run_dir: Path, registered: Path, report: Callable[[str], None]) -> None:
    """:func:`remove_unkept_checkpoints`, said; storage that fails here does not fail a trained run."""
    try:
        line = remove_unkept_checkpoints(run_dir, registered)
    except (OSError, ValueError) as err:
        line = f"[pretrain] the checkpoint folders were left as they are: {first_line(err)}"
    if line:
        report(line)
