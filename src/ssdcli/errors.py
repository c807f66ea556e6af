"""Exceptions that mean "the user can fix this": the CLI prints their message and exits 2.

Library code raises these (never prints or exits); anything else that escapes a command is an
internal failure (exit 1).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: a file, a flag value, a dataset. The message names the
    file or flag and says what to do."""


class DataError(UserError):
    """A dataset cannot be read as asked (missing folder, malformed annotation, unknown class)."""


class CheckpointError(UserError):
    """A file is not an ssdcli checkpoint, or is not safe to load."""
