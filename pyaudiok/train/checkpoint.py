"""Training checkpoints shared by every trainer: atomic save, load, numbered files in a directory,
and the random number generators' states, so that a resumed run takes bit-exactly the step an
uninterrupted one would have taken.

A checkpoint is a `torch.save`d dict of tensors, numbers, strings, lists, tuples and dicts only
(numpy's RNG state is converted to a tensor), so it loads with `weights_only=True`: loading a
checkpoint never runs pickled code.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyaudiok.codec.bitstream import atomic_writer

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "expect_checkpoint", "capture_rng_state",
           "restore_rng_state", "checkpoint_path", "list_checkpoints", "latest_checkpoint", "resolve_checkpoint",
           "prune_checkpoints"]

PathLike = str | os.PathLike[str]
_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint, or a checkpoint of another system."""


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a temporary file beside it, fsynced, then `os.replace`d
    over it. A crash at any point leaves either the previous file or the new one, never a torn one,
    and no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        torch.save(state, f)


def load_checkpoint(path: PathLike, map_location: str | torch.device | None = "cpu",
                    weights_only: bool = True) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors onto `map_location`); CheckpointError
    for a file that is not one (truncated, empty, another format)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except OSError:  # missing, a directory, unreadable: the OS's own error says which
        raise
    except Exception as e:  # torch.load's errors for a damaged file: UnpicklingError, RuntimeError, EOFError
        # A file that is no pickle at all makes the unpickler look up an unknown opcode: a bare KeyError.
        reason = "no pickle data" if isinstance(e, KeyError) else \
            (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated, or not a checkpoint file): "
                              f"{reason}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint's dict")
    return state


def expect_checkpoint(state: dict[str, Any], path: PathLike, system: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """`state` itself when it is a checkpoint of `system` (its "system" entry, where it has one)
    holding every one of `keys`; else CheckpointError naming what it is."""
    found = state.get("system")
    if found is not None and found != system:
        raise CheckpointError(f"checkpoint {path} is a {found} checkpoint, not a {system} one")
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a {system} checkpoint (it has no {', '.join(missing)})")
    return state


# ----------------------------------------------------------------------------------------------
# Random number generators.

def capture_rng_state() -> dict[str, Any]:
    """The states of Python's `random`, numpy's global generator, torch's CPU generator and, once
    CUDA is initialised, every CUDA device's generator."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))  # a loaded tuple may come back as a list
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].cpu().numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------------------------
# Numbered checkpoints in a directory: step_00001000.pt, ...

def checkpoint_path(directory: PathLike, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `directory`, oldest first (temporary files of
    an interrupted save are hidden names and never listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def resolve_checkpoint(path: PathLike) -> Path:
    """A checkpoint file as given, or for a training output directory its newest checkpoint
    (in `checkpoints/` or the directory itself); FileNotFoundError when there is none."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint found in directory {path}")
        path = found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def prune_checkpoints(directory: PathLike, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints (keep <= 0 keeps everything)."""
    if keep > 0:
        for _, path in list_checkpoints(directory)[:-keep]:
            path.unlink(missing_ok=True)
