"""Errors people can act on.

Each error carries one line that says what is wrong, where, and how to fix it. The CLI turns a
``LandslideError`` into that line and a non-zero exit code, without a traceback.
"""

from __future__ import annotations


class LandslideError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InputError(LandslideError, ValueError):
    """Bad user input: a catalog entry, a path, a band name, an ROI, a checkpoint."""


class SourceError(LandslideError, RuntimeError):
    """A data source could not deliver what was asked of it."""


class CheckpointError(InputError):
    """A checkpoint or model card is unreadable, inconsistent, or unusable with this source."""
