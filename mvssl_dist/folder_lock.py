"""One writer per output folder.

Two ``mvssl ingest`` runs into one DATASET_DIR, or two ``mvssl embed`` runs into one OUT_DIR (a
cron job that overlaps itself, a command started twice), would each do all the work and the
second would add every embedding again. The folder's ``.mvssl.lock`` is held with ``flock`` for
the run: the operating system releases it when the process ends, however it ends, so a killed
run leaves nothing stale behind. (``flock`` is reliable on local disks; NFS and object stores
are out of its reach.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILE = ".mvssl.lock"
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}
_HELD: set[Path] = set()  # folders this process holds: a nested hold (evaluate -> embed) is free


class FolderBusy(RuntimeError):
    """Another process is writing into the folder."""


@contextlib.contextmanager
def exclusive(folder: Path, command: str, wait: bool = False, report: Callable[[str], None] | None = None) -> Iterator:
    """Hold ``folder`` for ``command`` (a few words, such as ``mvssl embed``). Busy: raise
    :class:`FolderBusy` naming the holder, or with ``wait`` say so through ``report`` and wait."""
    folder = Path(folder).resolve()
    if folder in _HELD:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if take(fd, folder, wait, report):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{command} (pid {os.getpid()} on {socket.gethostname()})\n".encode(), 0)
        _HELD.add(folder)
        try:
            yield
        finally:
            _HELD.discard(folder)
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def output_folder(value: str, flag: str, command: str, error: type[Exception]) -> Iterator[Path]:
    """The output folder ``value`` (``--out``) resolved and held for ``command``; a URI, or a
    folder another run is writing, becomes ``error`` (the command's own one-line error)."""
    from mvssl_dist.shards.uris import local_folder

    try:
        folder = local_folder(value, flag)
    except ValueError as err:
        raise error(str(err)) from None
    try:
        with exclusive(folder, command):
            yield folder
    except FolderBusy as err:
        raise error(str(err)) from None


def take(fd: int, folder: Path, wait: bool, report: Callable[[str], None] | None) -> bool:
    """Lock ``fd``; False on a file system without locks (some NFS mounts), which then runs
    unguarded rather than not at all."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
        if not wait:
            raise FolderBusy(
                f"{folder}: {holder} is writing here; wait for it to end, or choose another folder"
            ) from None
        if report:
            report(f"[lock] waiting for {holder} to finish writing {folder}")
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except OSError as err:
        if err.errno in UNSUPPORTED:
            return False
        raise
