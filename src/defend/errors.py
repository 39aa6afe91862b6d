"""Errors that the CLI turns into a one-line message and a non-zero exit."""


class DefendError(Exception):
    """A user-facing error: bad input, a bad file, an invalid parameter.

    The message is one line that names the offending file or parameter.
    """


class DataError(DefendError):
    """A data file or folder cannot be used (missing, truncated, wrong layout, NaN/Inf)."""


class CheckpointError(DefendError):
    """A checkpoint or weight file cannot be used (wrong task, wrong shape, not a state dict)."""
