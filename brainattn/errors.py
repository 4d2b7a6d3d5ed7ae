"""Errors raised for user mistakes.

Every exception here is turned by the CLI into one line ``error: <message>`` and exit code 2.
Messages name the file or argument, say what is wrong and what is expected.
"""

from __future__ import annotations


class BrainAttnError(Exception):
    """Base class of every error caused by user input (files, arguments, configs)."""


class DataError(BrainAttnError):
    """A data file or folder is missing, malformed or inconsistent."""


class UnsafeFileError(DataError):
    """A file would need arbitrary code execution (pickle) to load."""


class ConfigError(BrainAttnError, ValueError):
    """An argument or config value is unknown or impossible."""


class OutputExistsError(BrainAttnError):
    """An output folder exists and is not empty, and ``overwrite`` was not given."""


class OutputError(BrainAttnError):
    """An output could not be written: read-only file system, no permission, disk full."""


class ShapeError(BrainAttnError, ValueError):
    """Arrays or tensors have shapes that do not fit together."""
