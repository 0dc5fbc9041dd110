"""An exclusive lock on a run (or sweep) directory for the life of the process that writes into it.

The lock is `flock` on `<dir>/.lock`, which holds the holder's PID and host. The kernel drops it when
the holder exits, however it exits (SIGKILL, preemption, a crash), so a lock left by a dead process is
simply taken over; a second live writer fails at once with one line naming the holder's PID.
`holder()` (what `quantlab table` asks to tell a killed run from a running one) only reads the file.
A process takes the same directory's lock once (`hold` returns at once when it holds it already).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from quantlab.engine import rundir
from quantlab.errors import ConfigError

LOCK_FILE = rundir.LOCK
_held: dict[Path, int] = {}  # directory -> the open, locked file descriptor


def hold(directory: str | os.PathLike, what: str = "run directory") -> bool:
    """Lock `directory` (created if needed) for this process; False when this process held it already.
    Raises ConfigError naming the live holder (PID and host)."""
    path = Path(directory).expanduser().resolve()
    if path in _held:
        return False
    existed = path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if not existed:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise ConfigError(
            f"{path}: cannot write this {what} ({e.strerror or e}); pick a writable directory"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid, host = _read(fd)
        os.close(fd)
        raise ConfigError(
            f"{path}: this {what} is in use by another quantlab process (PID {pid} on {host}); "
            "wait for it to end, or pick another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _held[path] = fd
    return True


def check_free(directory: str | os.PathLike, what: str = "run directory") -> None:
    """The ConfigError `hold` would raise, without taking the lock or writing anything: for checks
    that must leave a directory as it was when they refuse."""
    path = Path(directory).expanduser().resolve()
    pid = holder(path)
    if pid is not None and pid != os.getpid():
        _, host = _read_path(path)
        raise ConfigError(
            f"{path}: this {what} is in use by another quantlab process (PID {pid} on {host}); "
            "wait for it to end, or pick another directory"
        )


def _read_path(path: Path) -> tuple[str, str]:
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return "?", "?"
    try:
        return _read(fd)
    finally:
        os.close(fd)


def release(directory: str | os.PathLike) -> None:
    fd = _held.pop(Path(directory).expanduser().resolve(), None)
    if fd is not None:
        os.ftruncate(fd, 0)  # no holder named any more
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
    """The PID of the process that holds `directory`, or None when it is free. It only reads: a
    holder on this host is alive or not; one on another host (a shared disk) is taken as alive."""
    path = Path(directory).expanduser().resolve()
    if path in _held:
        return os.getpid()
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        pid, host = _read(fd)
    finally:
        os.close(fd)
    if not pid.isdigit():
        return None
    if host != socket.gethostname():
        return int(pid)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return int(pid)


def _read(fd: int) -> tuple[str, str]:
    """(PID, host) as the holder wrote them ("?" where unknown)."""
    words = os.pread(fd, 256, 0).decode(errors="replace").split()
    return (words[0] if words else "?"), (words[1] if len(words) > 1 else "?")
