"""One process at a time in a run directory: an OS lock on its ``.lock`` file.

The lock is ``flock`` (``msvcrt.locking`` on Windows) on a file that holds the holder's
PID, so a second process is refused with that PID; the kernel drops the lock when the
holder exits for any reason, so a killed run never blocks its ``--resume``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from diffmm.errors import DataError


class RunLockedError(DataError):
    """Another process is training in this run directory."""


class RunLock:
    """The lock of the run directory ``path`` (its file is ``path / name``)."""

    def __init__(self, path: Path, name: str = ".lock") -> None:
        self.file = path / name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock now, or raise :class:`RunLockedError` naming the holder's PID."""
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _try_lock(fd)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"{self.file.parent} is in use by another diffmm process (PID {holder}); "
                "wait for it to finish or stop it, or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self, remove_file: bool) -> None:
        """Let go of the lock (removing its file first if asked)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if remove_file:
            self.file.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _try_lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(errno.EAGAIN, str(exc)) from None
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
