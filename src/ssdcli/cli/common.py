"""What every command shares: consoles, the error boundary, enums for common choices."""

from __future__ import annotations

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


def error_boundary(fn: F) -> F:
    """Turn library exceptions into one line on stderr and the SPEC exit codes.

    UserError, missing files and bad values -> exit 2; anything else -> exit 1 (set
    ``SSD_DEBUG=1`` to see the traceback).
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
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if os.environ.get("SSD_DEBUG"):
                raise
            err.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
                "Re-run with SSD_DEBUG=1 for the traceback, and please report it.",
                highlight=False,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]
