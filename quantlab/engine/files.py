"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed into place,
so that a reader (or a resumed run) never sees a half-written results.json, checkpoint or figure."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from quantlab.errors import WriteFailed

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, fsync it, then rename it to `path`.
    Whatever fails, `path` keeps its previous content; an OSError (disk full, quota, file too large,
    read-only) becomes a WriteFailed that names the file and the cause."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it (mkstemp's is private: 0600)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise WriteFailed(f"{path}: cannot write it: {e.strerror or e}") from e
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as strings ("nan", "inf"): strict JSON readers accept it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(json_safe(data), indent=2) + "\n")
