"""Errors that mean "the user asked for something invalid" (shown as one line, exit code 2)."""


class ModlabError(Exception):
    """Invalid configuration, missing or unreadable files, out-of-range values."""


class ConfigError(ModlabError, ValueError):
    """A configuration value is out of range or inconsistent."""


class CheckpointError(ModlabError):
    """A checkpoint is missing, unreadable, or of the wrong kind."""


class DataError(ModlabError):
    """A data file is missing, empty or malformed."""
