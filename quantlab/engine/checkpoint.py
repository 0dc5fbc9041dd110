"""Atomic checkpoint writes and the RNG state that makes a resumed run exact."""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantlab.engine.files import atomic_write
from quantlab.errors import CheckpointError


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save into a temporary file in the same folder, then rename: never a half-written file.
    Serialized in memory first, so that a full disk is the OSError of our own write (named, one line)
    rather than torch's "enforce fail ... unexpected pos"."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: torch.load(weights_only=True), which refuses any pickled object but
    tensors and plain containers (and the NumPy RNG state older quantlab checkpoints hold), so a
    shared checkpoint cannot run code. A file that is truncated, corrupt or not quantlab's is one
    CheckpointError naming it."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_RNG):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(e))
        if not found and ("Unsupported operand" in str(e) or not zipfile.is_zipfile(path)):
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt)") from None
        what = f"it would load {found.group(1)}" if found else "it holds objects other than tensors"
        raise CheckpointError(
            f"{path}: refused: not a checkpoint quantlab wrote ({what}, which could run code)"
        ) from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        detail = " ".join(str(e).split()).split(". ")[0][:160] or type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {detail})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a quantlab checkpoint (it holds a {type(state).__name__})")
    return state


# What np.random.get_state() pickles to, in checkpoints written before the RNG state was stored as
# tensors: allow-listed for weights_only loading, nothing else of NumPy.
_NUMPY_RNG = [
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
    getattr(np, "_core", np).multiarray._reconstruct,
]


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)}
    numpy_state.update(has_gauss=int(has_gauss), cached_gaussian=float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        numpy_state = (numpy_state["kind"], keys, numpy_state["pos"])
        numpy_state += (state["numpy"]["has_gauss"], state["numpy"]["cached_gaussian"])
    np.random.set_state(numpy_state)
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """random.setstate wants tuples where a round trip through a checkpoint may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
