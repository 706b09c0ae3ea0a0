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


# Wrong values, paths or names in a config or on the command line (ConfigError, BackboneLoadError and
# DataError are ValueErrors), files that cannot be read or written, and runs that stop for a reason to fix:
# the command-line tools print `error_line(error)` and exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, RunError)


def error_line(error: BaseException) -> str:
    """One line for a user error. An error re-raised from a DataLoader worker carries the worker's traceback
    in its message; its last line holds the original message."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if "Original Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(message.split())
