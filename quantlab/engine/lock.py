"""An exclusive lock on a run (or sweep) directory for the life of the process that writes into it.

The lock is `flock` on `<dir>/.lock`, which holds the holder's PID. The kernel drops it when the
holder exits, however it exits (SIGKILL, preemption, a crash), so a lock left by a dead process is
simply taken over; a second live writer fails at once with one line naming the holder's PID.
A process takes the same directory's lock once (`hold` returns at once when it holds it already).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from quantlab.errors import ConfigError

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # directory -> the open, locked file descriptor


def hold(directory: str | os.PathLike, what: str = "run directory") -> bool:
    """Lock `directory` (created if needed) for this process; False when this process held it already.
    Raises ConfigError naming the live holder's PID."""
    path = Path(directory).expanduser().resolve()
    if path in _held:
        return False
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"{path}: this {what} is in use by another quantlab process (PID {holder}); "
            "wait for it to end, or pick another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = fd
    return True


def release(directory: str | os.PathLike) -> None:
    fd = _held.pop(Path(directory).expanduser().resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


@contextlib.contextmanager
def locked(directory: str | os.PathLike, what: str = "run directory") -> Iterator[None]:
    """The lock for the body's duration (kept when this process held it before: the guards of the
    command line take it before Hydra starts, and it lasts the process)."""
    taken = hold(directory, what)
    try:
        yield
    finally:
        if taken:
            release(directory)


def holder(directory: str | os.PathLike) -> int | None:
    """The PID of a live process holding the lock of `directory`, or None (free, or never taken)."""
    path = Path(directory).expanduser().resolve()
    if path in _held:
        return os.getpid()
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)  # also drops the probe's own lock
    return None
