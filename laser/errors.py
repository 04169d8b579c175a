"""Errors a user can act on: each names the file (or setting) and the problem."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A scene on disk is missing something or is malformed."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(RuntimeError):
    """A checkpoint is absent, unreadable or does not belong to this run."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
