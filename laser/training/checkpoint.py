"""Atomic, self-describing checkpoints that refuse to load into a run they do not belong to."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from laser.errors import CheckpointError


def atomic_save(payload: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(path, f"cannot read checkpoint ({type(err).__name__}: {err})") from err


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(saved) | set(current))
    out = []
    for key in keys:
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} in the checkpoint, {b!r} now")
    return out


def check_compatible(path: str | Path, checkpoint: dict, identity: dict) -> None:
    """Refuse a checkpoint written for another scene, an incompatible configuration or another layout."""
    saved_layout = checkpoint.get("identity", {}).get("layout", 1 if "layout" in identity else None)
    if saved_layout != identity.get("layout"):
        raise CheckpointError(path, f"written by an earlier version of laser whose {identity['stage']} checkpoints "
                                    f"have another layout ({saved_layout}; this version writes "
                                    f"{identity.get('layout')}: stage-2 methods are now compositions of parts), so "
                                    f"it cannot be continued. Train this stage again in another run folder "
                                    f"(hydra.run.dir=...), or move this file away")
    differences = config_differences(checkpoint.get("identity", {}), identity)
    if differences:
        raise CheckpointError(path, "written by an incompatible run; refusing to continue it. Differences:\n  "
                              + "\n  ".join(differences)
                              + "\nUse another run folder (hydra.run.dir=...) or restore the original settings.")


def restore_stage(stage, path: str | Path, identity: dict) -> dict:
    """Load a stage's checkpoint after checking it belongs to this run; returns the checkpoint (step, RNG states)."""
    saved = load(path)
    check_compatible(path, saved, identity)
    stage.load_state_dict(saved["stage"])
    return saved
