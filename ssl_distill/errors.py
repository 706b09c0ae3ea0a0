"""Errors a user can fix: the command-line tools print their message on one line and exit 2.

A leaf module (it imports nothing from the package), so every layer can raise them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config or command-line value is wrong; the message names the key, file or value."""


class BackboneLoadError(ValueError):
    """Weights do not fit the backbone, or a source (file, run, part) cannot be read."""


class DataError(ValueError):
    """Data cannot be read as configured (a list naming missing files, every video unreadable, ...)."""


class RunError(RuntimeError):
    """A run stopped and cannot go on as it is (a NaN loss, a full disk, a run directory in use); what was
    written before is intact and the message says what to do."""
