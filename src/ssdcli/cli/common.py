"""What every command shares: consoles, the error boundary, enums for common choices."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ssdcli.config import DEVICES
from ssdcli.errors import UserError
from ssdcli.files import DISK_FULL_ERRNOS, is_torch_short_write

# Results (tables, JSON, CSV) go to stdout; progress, warnings and errors go to stderr.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_INTERNAL = 1
EXIT_USER = 2

F = TypeVar("F", bound=Callable[..., Any])


Device = Enum("Device", {name: name for name in DEVICES}, type=str)
"""``--device`` choices of every command that runs a model (:data:`ssdcli.config.DEVICES`): auto =
CUDA when available."""


def user_error(message: str) -> typer.Exit:
    """Print one clear line on stderr and return the exit to raise (code 2)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    return typer.Exit(EXIT_USER)


# OS errors the user fixes by choosing another path: one line, exit 2, as a UserError.
_PATH_ERRORS = {
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EEXIST: "exists and is not a folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ELOOP: "a symlink loop",
    errno.ENAMETOOLONG: "the name is too long",
}


def os_error_exit(exc: OSError) -> typer.Exit | None:
    """The one line and exit for an ``OSError`` that escaped a command: a path the user can
    change (exit 2), a full disk (exit 1, saying so); ``None`` for any other (an internal error)."""
    name = exc.filename2 if exc.filename2 is not None else exc.filename  # os.replace(tmp, target)
    where = f"{os.fsdecode(name)}: " if name is not None else ""
    if exc.errno in DISK_FULL_ERRNOS:
        err.print(f"[bold red]error:[/] {escape(where)}no space left on the device (disk full or quota "
                  "reached); free some space or write elsewhere, and run again", highlight=False)
        return typer.Exit(EXIT_INTERNAL)
    if exc.errno in _PATH_ERRORS:
        return user_error(f"{where}{_PATH_ERRORS[exc.errno]}; choose another path")
    return None


def error_boundary(fn: F) -> F:
    """Turn library exceptions into one line on stderr and the SPEC exit codes.

    UserError, missing files, bad values and unusable paths (a folder where a file goes, no
    permission, ...) -> exit 2; a full disk -> exit 1 with that message; anything else -> exit 1
    (set ``SSD_DEBUG=1`` to see the traceback).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter, KeyboardInterrupt):
            raise
        except UserError as exc:
            raise user_error(str(exc)) from None
        except FileNotFoundError as exc:
            name = exc.filename or str(exc)
            raise user_error(f"{name}: no such file or directory") from None
        except OSError as exc:
            exit_ = None if os.environ.get("SSD_DEBUG") else os_error_exit(exc)
            if exit_ is None:
                raise _internal_error(exc) from None
            raise exit_ from None
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if is_torch_short_write(exc):
                raise os_error_exit(OSError(errno.ENOSPC, str(exc))) from None
            raise _internal_error(exc) from None

    return wrapper  # type: ignore[return-value]


def _internal_error(exc: BaseException) -> typer.Exit:
    """Print the internal-error line for ``exc`` (exit 1); re-raise it under ``SSD_DEBUG=1``."""
    if os.environ.get("SSD_DEBUG"):
        raise exc
    err.print(
        f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
        "Re-run with SSD_DEBUG=1 for the traceback, and please report it.",
        highlight=False,
    )
    return typer.Exit(EXIT_INTERNAL)
