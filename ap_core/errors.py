"""Errors a user can cause: each carries a one-line message naming the bad value and what would be valid."""


class ConfigError(ValueError):
    """A bad configuration value, reported before any work starts."""


class DatasetUnavailableError(ConfigError):
    """The requested dataset is not on disk and may not be downloaded."""


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or inf loss); the trial cannot produce meaningful numbers."""
