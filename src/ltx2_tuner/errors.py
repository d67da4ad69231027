"""User-facing errors.

Each message is the one line a user sees: the file, the problem, the fix. Command-line entry points catch
`Ltx2TunerError`, print its message and exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class Ltx2TunerError(Exception):
    """Base class of every error whose message is meant for the user."""


class CheckpointError(Ltx2TunerError):
    """A model checkpoint cannot be read or does not hold what was asked for."""


class ConfigError(Ltx2TunerError):
    """A configuration file or flag is invalid."""


class DatasetError(Ltx2TunerError):
    """The dataset config or a dataset item (caption, listing) is invalid."""


class MediaError(Ltx2TunerError):
    """A video, image or audio file cannot be decoded or lacks what is needed (e.g. an audio track)."""


class CacheError(Ltx2TunerError):
    """A cache file is missing, stale or damaged."""
