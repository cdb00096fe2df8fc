"""One writer per output folder: a second ingest or embed into it is refused, an evaluation waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mvssl_dist.cli import main
from mvssl_dist.folder_lock import FolderBusy, exclusive

HOLD = """
import sys, time
from mvssl_dist.folder_lock import exclusive
with exclusive(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def hold(folder, command="mvssl embed", seconds=60.0) -> subprocess.Popen:
    """Another process holding ``folder``; returns once it does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), command, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_one_frees_the_folder(tmp_path):
    holder = hold(tmp_path / "out")
    try:
        with pytest.raises(FolderBusy) as busy, exclusive(tmp_path / "out", "mvssl embed"):
            pass
        said = str(busy.value)
        assert said.startswith(f"{tmp_path / 'out'}: mvssl embed (pid {holder.pid} on ") and "is writing here" in said
    finally:
        holder.send_signal(signal.SIGKILL)  # the OS releases the lock, however the holder ends
        holder.wait()
    # held again once it is free; inside, the evaluation's nested hold (it embeds into its folder) is free
    with exclusive(tmp_path / "out", "mvssl embed"), exclusive(tmp_path / "out", "nested"):
        assert (tmp_path / "out" / ".mvssl.lock").read_text().startswith(f"mvssl embed (pid {os.getpid()} on ")


def test_with_wait_the_second_says_so_and_goes_on_when_the_first_ends(tmp_path):
    holder = hold(tmp_path / "out", "mvssl evaluate", seconds=1.5)
    said = []
    start = time.perf_counter()
    with exclusive(tmp_path / "out", "mvssl evaluate", wait=True, report=said.append):
        waited = time.perf_counter() - start
    holder.wait()
    assert waited > 0.5 and len(said) == 1 and said[0].startswith("[lock] waiting for mvssl evaluate (pid "), said


@pytest.mark.parametrize("command", ["embed", "ingest"])
def test_the_cli_refuses_a_folder_another_run_is_writing(tmp_path, encoded_dir, capsys, command):
    out = tmp_path / "out"
    holder = hold(out, f"mvssl {command}")
    try:
        argv = [command, str(encoded_dir / "music.flac"), "--out", str(out)]
        assert main(argv + (["--model", "random"] if command == "embed" else [])) == 1
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mvssl: error: {out}: mvssl {command} (pid {holder.pid} on "), err


def test_a_file_system_without_locks_runs_unguarded_rather_than_not_at_all(tmp_path, monkeypatch):
    import errno
    import fcntl

    failure = OSError(errno.ENOLCK, "No locks available")

    def flock(fd, how):
        raise failure

    monkeypatch.setattr(fcntl, "flock", flock)
    ran = []
    with exclusive(tmp_path / "out", "mvssl embed"):
        ran.append(True)
    assert ran
    failure = PermissionError(errno.EACCES, "Permission denied")  # other errors are not swallowed
    with pytest.raises(PermissionError), exclusive(tmp_path / "out", "mvssl embed"):
        pass
