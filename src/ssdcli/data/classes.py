"""Class-list files: one name per line (``--classes FILE``, YOLO's ``classes.txt`` / ``obj.names``)."""

from __future__ import annotations

from pathlib import Path

from ssdcli.errors import DataError

def load_classes_file(path: Path) -> list[str]:
    """Class names, one per line, in label order (blank lines ignored).

    Raises:
        DataError: the file is missing, empty, names a class twice, or names a background class
            (label 0 is background already).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: classes file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read classes file ({exc})") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DataError(f"{path}: classes file is empty; write one class name per line")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"{path}: class names listed more than once: {', '.join(duplicates)}")
    if "__background__" in names:
        raise DataError(f"{path}: remove '__background__'; label 0 is the background class already")
    return names
