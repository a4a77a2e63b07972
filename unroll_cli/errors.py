"""The two errors a user can act on, raised anywhere in the package and reported in one line."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any training."""


class TrainingFailure(RuntimeError):
    """A run that failed while training for a reason the user can act on (not a bug): recorded as
    failed and reported in one line."""
