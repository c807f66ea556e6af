"""Type checks of a COCO instances json, before anything reads its values.

A json from elsewhere can hold anything: ``"image_id": [1]``, ``"file_name": 12345``, string
category ids, a 400-digit id. :func:`validate_coco` finds the first entry whose field has the
wrong type and raises one :class:`DataError` naming the file, the list, the entry's index and
the field, so that no reader or metric fails later on a value it cannot hash, sort or convert.

What is checked here are types and ranges that would crash; values of the right type that make no
sense (an undefined category id, a box outside the image, a duplicate id) are reported by the
reader as problems of the dataset.
"""

from __future__ import annotations

import math
from pathlib import Path

from ssdcli.errors import DataError

# Ids must fit numpy's int64 (records, metrics); sizes a float without overflow.
MAX_ID = 2**63 - 1
MAX_SIZE_PX = 2**31 - 1


def describe(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (a 400-digit number stays one short line)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of {len(str(abs(value)))} digits"  # repr() would refuse past 4300 digits
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def is_int(value: object) -> bool:
    """A json integer (not a bool) that fits int64."""
    return type(value) is int and -MAX_ID - 1 <= value <= MAX_ID


def is_finite_number(value: object) -> bool:
    """A json number (not a bool) that converts to a finite float."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except OverflowError:  # an integer too large for a float
        return False


def _size(value: object) -> bool:
    return value is None or (type(value) is int and 0 <= value <= MAX_SIZE_PX)


def _crowd(value: object) -> bool:
    return value is None or value in (0, 1) and type(value) in (int, bool)


def _area(value: object) -> bool:
    return is_finite_number(value) and value >= 0  # type: ignore[operator]


# (field, check of a present value, what it must be, required): a missing required field is an
# error too.
# Images without 'id' / 'file_name' and annotations with a bad bbox are not type errors here:
# the reader skips those entries and reports them.
_IMAGE_FIELDS = (
    ("id", is_int, "an integer", False),
    ("file_name", lambda v: isinstance(v, str), "a string (the image's path in the image folder)", False),
    ("width", _size, "a non-negative integer (pixels; 0 = unknown)", False),
    ("height", _size, "a non-negative integer (pixels; 0 = unknown)", False),
)
_ANNOTATION_FIELDS = (
    ("id", is_int, "an integer", False),
    ("image_id", is_int, "an integer (the id of an entry of 'images')", True),
    ("category_id", is_int, "an integer (the id of an entry of 'categories')", True),
    ("iscrowd", _crowd, "0 or 1", False),
)
_EVAL_FIELDS = (
    ("id", is_int, "an integer", True),
    ("area", _area, "a non-negative number (the object's area in pixels, COCO's size ranges use it)", True),
)
_CATEGORY_FIELDS = (
    ("id", is_int, "an integer", True),
    ("name", lambda v: isinstance(v, str), "a string", False),
)


def _check_list(path: Path, section: str, entries: list, fields: tuple, note: str = "") -> None:
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: {section}[{index}] is a json {type(entry).__name__}, not an object")
        for field, check, must_be, required in fields:
            value = entry.get(field)
            if field not in entry and required:
                raise DataError(f"{path}: {section}[{index}] has no '{field}'; it must be {must_be}{note}")
            if field in entry and not check(value):
                raise DataError(f"{path}: {section}[{index}] '{field}' must be {must_be}, got {describe(value)}{note}")


def validate_coco(data: dict, path: Path, evaluation: bool = False) -> None:
    """Check the types of every entry of ``images``, ``annotations`` and ``categories``.

    Args:
        data: the parsed json, a dict with the ``images`` and ``categories`` lists (and an
            optional ``annotations`` list).
        path: the json file, for the messages.
        evaluation: also require what COCO metrics read from the ground truth: every
            annotation's integer ``id`` and its ``area``.

    Raises:
        DataError: ``<file>: <list>[<index>] '<field>' must be ..., got ...`` for the first bad
            entry.
    """
    _check_list(path, "images", data["images"], _IMAGE_FIELDS)
    _check_list(path, "categories", data["categories"], _CATEGORY_FIELDS)
    annotations = data.get("annotations", [])
    _check_list(path, "annotations", annotations, _ANNOTATION_FIELDS)
    if evaluation:
        _check_list(path, "annotations", annotations, _EVAL_FIELDS, note=" for COCO metrics")
