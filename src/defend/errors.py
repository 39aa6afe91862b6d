"""Errors that the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import json
from typing import Any


class DefendError(Exception):
    """A user-facing error: bad input, a bad file, an invalid parameter.

    The message is one line that names the offending file or parameter.
    """


class DataError(DefendError):
    """A data file or folder cannot be used (missing, truncated, wrong layout, NaN/Inf)."""


class CheckpointError(DefendError):
    """A checkpoint or weight file cannot be used (wrong task, wrong shape, not a state dict)."""


class DeviceError(DefendError):
    """A requested torch device is unknown or not present on this machine."""


class OutputError(DefendError):
    """An output path cannot be written (under a file, in a read-only folder, ...)."""


class ModelOptionError(DefendError):
    """A model option (``--set KEY=VALUE``) is unknown or has a value of the wrong kind.

    Attributes:
        key: the option's name.
        value: the value given.
        reason: what was wrong with it (e.g. ``expected an integer``).
    """

    def __init__(self, key: str, value: Any, reason: str) -> None:
        self.key, self.value, self.reason = key, value, reason
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        super().__init__(f"model option {key}={shown}: {reason}")
