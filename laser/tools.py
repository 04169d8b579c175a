"""What the tools that use a trained scene share (``python -m laser.query | viewer | export | video | lerf_ovs``):
their ``key=value`` command line, checked against the tool's options, and their error reporting.

The command line reads like Hydra's overrides (``run=runs/synthetic text='["red apple", "a mug"]'``) but starts no
Hydra job: these tools write only what they are asked to write.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from laser.errors import ConfigError, LaserError

Options = TypeVar("Options")


def parse_options(schema: type[Options], argv: Sequence[str]) -> Options:
    """``key=value`` arguments over the dataclass ``schema``'s defaults; an unknown key, a value of the wrong type
    or a required option left out is a :class:`~laser.errors.ConfigError` naming the key."""
    names = {f.name for f in fields(schema)}
    for argument in argv:
        key = argument.split("=", 1)[0]
        if "=" not in argument or key not in names:
            raise ConfigError(key, f"unknown option (expected key=value with a key among {', '.join(sorted(names))})")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(list(argv)))
    except OmegaConfBaseException as err:
        raise ConfigError(getattr(err, "full_key", None) or "command line", str(err).splitlines()[0]) from None
    missing = [f.name for f in fields(schema) if OmegaConf.is_missing(merged, f.name)]
    if missing:
        raise ConfigError(missing[0], "is required")
    return OmegaConf.to_object(merged)


def phrases(text: Any) -> list[str]:
    """A tool's ``text`` option as a list of phrases: a list, or one string with phrases separated by ';' (as LERF's
    viewer takes them). Refuses an empty list and empty phrases."""
    items = list(text) if isinstance(text, (list, tuple)) or OmegaConf.is_list(text) else str(text).split(";")
    items = [str(item).strip() for item in items]
    if not items or not all(items):
        raise ConfigError("text", f"needs one or more non-empty phrases, got {text!r}")
    return items


def run_tool(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> None:
    """Call a tool's ``main`` with the command line; an error the user can act on is printed as its message alone."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except LaserError as err:
        sys.exit(f"error: {err}")


__all__ = ["MISSING", "parse_options", "phrases", "run_tool"]
