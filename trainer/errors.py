"""The project's errors. Each carries the exit code its CLI returns, so a command catches
`VftError` once instead of listing exception classes: 2 for bad usage or input (a config
field, a dataset file, weights, an image), 1 for a run that failed."""

from __future__ import annotations


class VftError(Exception):
    """Base of every error a `vft` command reports as a one-line message."""

    exit_code = 2


class ConfigError(VftError):
    """An invalid config: each line names a dotted field and what is allowed."""


class DataError(VftError, ValueError):
    """A dataset that cannot be used; the message names the file (and line or entry)."""


class BadImageError(VftError, ValueError):
    """An image that cannot be used; the message names the file."""


class ImageTooLargeError(BadImageError):
    """More bytes or pixels than allowed (checked from the header, before decoding)."""


class UnsupportedFormatError(BadImageError):
    """A readable image in a format that is not allowed here."""


class WeightsError(VftError, ValueError):
    """Weights that cannot be loaded into the model (bad file, mismatched tensors)."""


class RunFailed(VftError):
    """A run that started and failed (exit code 1)."""

    exit_code = 1
