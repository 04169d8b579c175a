"""Hydra's ``instantiate``, letting an error the user can act on (:class:`~laser.errors.LaserError`) through as
itself: Hydra wraps whatever a constructor raises in an ``InstantiationException`` whose message reads like a
traceback, and ``train.py`` could no longer print the message alone."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate

from laser.errors import LaserError


def instantiate(config, *args, **kwargs):
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, LaserError):
            raise cause from None
        raise
