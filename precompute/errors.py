"""Errors that the CLI turns into one clear line and a non-zero exit."""

from __future__ import annotations


class InfluenceExplorerError(Exception):
    """Base class: the message is shown to the user as is, so it names the file/field and the fix."""

    exit_code = 2


class ConfigError(InfluenceExplorerError):
    """A config value or flag is invalid."""


class DataError(InfluenceExplorerError):
    """The dataset cannot be loaded or fails validation."""


class ModelError(InfluenceExplorerError):
    """The model cannot be built, loaded or does not fit the data."""


class MethodError(InfluenceExplorerError):
    """An influence method cannot run with these settings (too big, diverged, unsupported layer)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised by the CLI's handler, so partial folders are cleaned up on the way out)."""


class CacheError(InfluenceExplorerError):
    """The cache directory cannot be written, or holds a run made with a different config."""
