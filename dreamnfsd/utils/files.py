"""Crash-safe output files: write beside the target, fsync, rename over it."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from dreamnfsd.utils.errors import UserError

# Temp names keep the target's suffix, because writers such as imageio and trimesh pick the format from it.
TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)(\.\w+)?$")


# What an export write's error adds: the run itself is safe and its outputs can be written again.
REEXPORT_HINT = "the run's checkpoints are intact; re-export with dreamnfsd-export"


class OutputWriteError(UserError):
    """The run's folder cannot be written (disk full, read-only, permissions). Earlier files are intact."""


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_output(path: Path, what: str = "earlier files are intact") -> Iterator[Path]:
    """Yield a temp path to write ``path``'s content to; on success it replaces ``path`` in one rename.

    A reader sees either the old file or the whole new one. The temp file is fsync'ed before the rename and the
    folder after it, so the result survives a power cut. Any failure removes the temp file and leaves ``path`` as it
    was; an ``OSError`` (full disk, unwritable folder) becomes a one-line :class:`OutputWriteError` ending in
    ``what``. A process killed half-way leaves at most a hidden ``.<name>.tmp-<pid><suffix>``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        with contextlib.suppress(OSError):  # e.g. the folder itself could not be made
            tmp.unlink(missing_ok=True)
        reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise OutputWriteError(
            f"output: could not write {path} ({reason}); free space or choose another output_root — {what}"
        ) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(data: bytes, path: Path, what: str = "earlier checkpoints are intact") -> None:
    """Write ``data`` to ``path`` through :func:`atomic_output` (``what`` ends its error message)."""
    with atomic_output(path, what) as tmp, open(tmp, "wb") as f:
        f.write(data)


def remove_stale_temp_files(folder: Path) -> None:
    """Delete temp files that killed writers left in ``folder`` (not this process's own)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        m = TEMP_NAME.match(p.name)
        if m and int(m.group(1)) != os.getpid():
            p.unlink(missing_ok=True)


LOCK_NAME = ".dreamnfsd.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run folder while training writes to it, so that two processes resuming the same
    run cannot interleave checkpoints. The kernel drops the lock when its holder dies, so a killed run can always be
    resumed. Raises a one-line :class:`UserError` if another live process holds it.
    """
    import fcntl

    path = Path(run_dir) / LOCK_NAME
    while True:
        f = open(path, "a+")  # noqa: SIM115 (held open for the whole block)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise UserError(
                f"resume: {run_dir} is being trained by another dreamnfsd process (pid {holder}); wait for it to "
                "end or stop it, then resume"
            ) from None
        # A holder that just finished unlinks the file it locked; a lock on that orphan would guard nothing.
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still locked: a waiter that opened it sees the unlink and retries
    finally:
        f.close()
