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
import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ssdcli.errors import UserError

DISK_FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})
"""``OSError.errno`` values that mean "no space left" (disk full, or the user's quota)."""

# torch.save to a path, and torch.jit.save, report a short write as a c10 error without errno:
# "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598" (a full disk).
_TORCH_SHORT_WRITE = ("unexpected pos", "failed writing file", "file write failed")


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
    except RuntimeError as exc:
        tmp.unlink(missing_ok=True)
        if not is_torch_short_write(exc):
            raise
        raise OSError(errno.ENOSPC, f"could not write every byte, the disk is probably full ({exc})", str(path)) from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _naming(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc``, or for an error without a file name (a write, an fsync) the same error naming
    ``path``, the file the user asked for."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror, str(path))


def is_torch_short_write(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's RuntimeError for a write that stopped short (a full disk)."""
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _TORCH_SHORT_WRITE)


def _check_parent(path: Path, flag: str, shown: Path) -> None:
    """Raise :class:`UserError` (about ``flag shown``) unless the closest existing ancestor of
    ``path`` is a folder this process may create files in."""
    ancestor = next((p for p in path.parents if p.exists()), Path("."))
    if not ancestor.is_dir():
        raise UserError(f"{flag} {shown}: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and bool(os.statvfs(ancestor).f_flag & os.ST_RDONLY)
        why = "it is on a read-only file system" if read_only else "permission denied"
        raise UserError(f"{flag} {shown}: cannot write in {ancestor} ({why}); choose another path")


def check_file_target(path: str | os.PathLike[str], flag: str) -> None:
    """Check, before any work, that a file can be written at ``path`` (``flag`` names the option).

    Raises:
        UserError: ``path`` is a folder, a part of it is a file, or the folder that would hold
            it is not writable (permissions, read-only file system).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    _check_parent(path, flag, path)


def check_folder_target(path: str | os.PathLike[str], flag: str) -> None:
    """Check, before any work, that files can be written into the folder ``path`` (made if need be).

    Raises:
        UserError: ``path`` is a file, a part of it is a file, or it is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a folder; give a folder to write into")
    _check_parent(path / "x", flag, path)  # the folder itself when it exists, else its closest ancestor


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
    earlier file there is only replaced by a finished one. After a failed write (a full disk),
    which may have left part of an entry, :meth:`close` drops the temp file and keeps the earlier
    file.

    Raises:
        OSError: the folder cannot be created or written to.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._failed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        self._tmp = temp_path_beside(self.path)
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        self._file.write("[")

    def add(self, entry: object) -> None:
        """Append one entry (anything ``json.dumps`` takes)."""
        text = ("\n" if self.count == 0 else ",\n") + json.dumps(entry)
        try:
            self._file.write(text)
        except OSError as exc:
            self._failed = True
            raise _naming(exc, self.path) from exc
        self.count += 1

    def close(self) -> None:
        """End the list and replace ``path`` with it; a second call does nothing."""
        if self._file.closed:
            return
        if self._failed:
            with contextlib.suppress(OSError):
                self._file.close()
            self._tmp.unlink(missing_ok=True)
            return
        try:
            self._file.write("\n]\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            replace_atomically(self._tmp, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                self._file.close()
            self._tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _naming(exc, self.path) from exc
            raise
