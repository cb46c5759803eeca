"""The errors a user can cause and fix, each reported by the CLI as one line naming the problem. They live apart
from the code that raises them so that ``vlp.cli`` can catch them without importing torch."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message names it."""


class DataError(RuntimeError):
    """A dataset that cannot be read at all (no files match, every sample is bad); the message names the path."""
