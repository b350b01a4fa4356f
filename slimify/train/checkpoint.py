"""Training checkpoints that survive a crash mid-write and load without unpickling code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts written with ``torch.save``
to a temporary file in the target directory and moved into place with ``os.replace`` (atomic on
POSIX and Windows); it is read back with ``torch.load(weights_only=True)``, which refuses
anything but those plain types. RNG states are converted to such types as well.
"""
from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimify.errors import SlimifyError
from slimify.store.atomic import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "FORMAT"]

FORMAT = "slimify.train.checkpoint/1"  # the "format" entry of every checkpoint this module writes


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):  # left by a writer that was killed mid-write
        stale.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no code is ever unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise SlimifyError(f"checkpoint {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes would break the one-line error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle refusals, truncated files, foreign formats
        why = "damaged, or holds objects other than tensors and plain data (never unpickled)" \
            if isinstance(e, pickle.UnpicklingError) else (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SlimifyError(f"{path}: not a readable slimify checkpoint: {why}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SlimifyError(f"{path}: not a slimify training checkpoint (expected format {FORMAT})")
    return state


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
