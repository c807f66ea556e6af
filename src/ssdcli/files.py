"""Atomic file writes: the one place ssdcli writes a file the user keeps.

Every write goes to a hidden temp file in the target's folder, is flushed and fsync'ed, then
``os.replace``'d onto the target (atomic on POSIX and Windows), and the folder is fsync'ed so the
rename itself survives a power cut. Any failure, KeyboardInterrupt included, removes the temp
file and leaves an existing target untouched; only SIGKILL or a power cut can leave a stale
``.<name>.*.tmp`` behind (:func:`remove_stale_temps` clears those), never a partial target.

The temp file is created with mode 0o666 minus the umask, as for any file the user creates
(``tempfile.mkstemp`` would force 0o600 onto every checkpoint and json).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def temp_path_beside(path: Path) -> Path:
    """A fresh hidden name in ``path``'s folder: ``.<name>.<pid>.<random>.tmp``."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def is_temp_of(candidate: Path, path: Path) -> bool:
    """Whether ``candidate`` is a temp file :func:`temp_path_beside` made for ``path``."""
    return candidate.name.startswith(f".{path.name}.") and candidate.name.endswith(".tmp")


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync the directory). Windows cannot open a
    directory for fsync; its ``MoveFileEx`` replace is already durable enough there."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(tmp: Path, path: Path) -> None:
    """Move a finished temp file onto ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_folder(path.parent)


@contextlib.contextmanager
def temp_file_for(path: Path) -> Iterator[Path]:
    """A temp path beside ``path`` for writers that take a file name (ONNX, TorchScript).

    The caller writes the temp file and decides whether to keep it with :func:`replace_atomically`;
    whatever is left at the temp path when the block ends is removed.
    """
    tmp = temp_path_beside(path)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a binary temp file beside ``path``, then replace ``path`` with it.

    Raises:
        OSError: the folder is missing or not writable, the disk is full, ...
    """
    path = Path(path)
    tmp = temp_path_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike[str], data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files an earlier, killed process left beside ``path``; returns them.

    Only names :func:`temp_path_beside` makes for ``path`` are touched, and only those whose
    writer process no longer runs (the pid in the name), so a concurrent writer is never robbed.
    """
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        if not is_temp_of(candidate, path):
            continue
        pid_text = candidate.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            candidate.unlink()
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


class JsonListWriter:
    """A json list streamed one entry at a time to a temp file beside ``path`` and moved onto
    ``path`` by :meth:`close`, so nothing accumulates in memory, the target is always a valid
    list (call :meth:`close` in a ``finally``: after Ctrl-C it holds the entries so far) and an
    earlier file there is only replaced by a finished one.

    Raises:
        OSError: the folder cannot be created or written to.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        self._tmp = temp_path_beside(self.path)
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        self._file.write("[")

    def add(self, entry: object) -> None:
        """Append one entry (anything ``json.dumps`` takes)."""
        self._file.write(("\n" if self.count == 0 else ",\n") + json.dumps(entry))
        self.count += 1

    def close(self) -> None:
        """End the list and replace ``path`` with it; a second call does nothing."""
        if self._file.closed:
            return
        try:
            self._file.write("\n]\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            replace_atomically(self._tmp, self.path)
        except BaseException:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            raise
