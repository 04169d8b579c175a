"""Stage-1 results shared between runs: an ablation sweep or a method comparison trains each reconstruction once.

A stage's checkpoint and its test outputs are published under ``<root>/<scene>-<digest>/``, the digest covering
everything the stage's result depends on (its identity: scene, field and schedule configs, seed; and where the
data was read). A run whose folder has no checkpoint of the stage takes the published one (a hard link when the
file system allows, else a copy) and so skips the training; a run that trains the stage publishes it. Files are
written to a temporary name and renamed, so jobs running side by side (a SLURM array) never see a partial copy;
two of them training the same stage at once both succeed, and the second publication replaces the first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def digest(identity: dict, data: str) -> str:
    text = json.dumps({"identity": identity, "data": str(data)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def _copy_tree(source: Path, target: Path) -> None:
    if not source.is_dir():
        return
    for path in source.rglob("*"):
        if path.is_file():
            _link_or_copy(path, target / path.relative_to(source))


class StageStore:
    """Published stage results. ``root=None`` disables sharing (every run trains its own)."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    def folder(self, stage: str, identity: dict, data: str) -> Path:
        return self.root / f"{identity['scene']}-{stage}-{digest(identity, data)}"

    def fetch(self, checkpoint: Path, outputs: Path, stage: str, identity: dict, data: str) -> bool:
        """Give a run without a checkpoint of ``stage`` the published one and its outputs; True when it did."""
        if self.root is None or checkpoint.exists():
            return False
        folder = self.folder(stage, identity, data)
        if not (folder / "checkpoint.pt").is_file():
            return False
        _copy_tree(folder / "outputs", outputs)
        _link_or_copy(folder / "checkpoint.pt", checkpoint)
        return True

    def publish(self, checkpoint: Path, outputs: Path, stage: str, identity: dict, data: str) -> None:
        """Publish a finished stage (checkpoint last, so a published checkpoint always has its outputs)."""
        if self.root is None:
            return
        folder = self.folder(stage, identity, data)
        if (folder / "checkpoint.pt").is_file():
            return
        _copy_tree(outputs, folder / "outputs")
        _link_or_copy(checkpoint, folder / "checkpoint.pt")
