"""Errors a user can act on: each names the file, the setting or the step, and the problem. ``train.py`` and
``eval.py`` print them as their message alone (:class:`LaserError`), without a traceback."""

from __future__ import annotations

from pathlib import Path


class LaserError(Exception):
    """Base of the errors whose message says what to do."""


class DataError(LaserError, ValueError):
    """A scene on disk is missing something or is malformed."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(LaserError, RuntimeError):
    """A checkpoint is absent, unreadable or does not belong to this run."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(LaserError, ValueError):
    """A setting that cannot work, refused before any training."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class NonFiniteError(LaserError, FloatingPointError):
    """A training step produced a non-finite loss term or gradient; nothing of that step was applied or saved."""

    def __init__(self, step: int, problem: str):
        self.step = step
        self.problem = problem
        super().__init__(f"step {step}: {problem}")
