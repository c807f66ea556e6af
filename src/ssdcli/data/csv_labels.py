"""One-row-per-box CSV files (TensorFlow object-detection tutorials, raccoon, BCCD) -> records.

The first row names the columns; they are found by name in any order (:data:`COLUMNS`), so
raccoon's ``filename,width,height,class,xmin,ymin,xmax,ymax`` and BCCD's
``filename,cell_type,xmin,xmax,ymin,ymax`` both read as they are. A row whose class and corners
are all empty lists a negative image (background only).

Coordinates (``coords``): ``voc`` (the default) reads the corners as VOC does, 1-based inclusive
pixels, giving continuous ``(xmin - 1, ymin - 1, xmax, ymax)``; ``pixels`` reads them as
continuous 0-based corners. The files these tools write copy VOC XML corners, so ``voc`` gives
the same boxes as the XML they came from.

Images are found by the file column, relative to the CSV's folder, then by name in an
``images/`` or ``JPEGImages/`` folder beside the CSV, beside its folder, or one level below it
(raccoon: ``data/*_labels.csv`` + ``images/``; BCCD: ``test.csv`` + ``BCCD/JPEGImages/``), or only
in ``image_dir`` when given. Images in those folders that no row names are not part of the
dataset (one warning says how many).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ssdcli.data.check import usable_box_problems
from ssdcli.data.labelfiles import escapes, is_image_file, make_record, measure_image, unique_stems
from ssdcli.data.records import DetectionDataset, ImageRecord, Problem
from ssdcli.data.voc import ProgressFn, default_class_order
from ssdcli.errors import DataError

CsvCoords = Literal["voc", "pixels"]

# Accepted header names (compared lower-case, spaces and dashes as underscores), per role.
COLUMNS: dict[str, tuple[str, ...]] = {
    "file": ("filename", "file_name", "image", "image_name", "image_path", "img", "path", "file"),
    "class": ("class", "label", "cell_type", "class_name", "category", "name"),
    "xmin": ("xmin", "x_min", "x1", "left"),
    "ymin": ("ymin", "y_min", "y1", "top"),
    "xmax": ("xmax", "x_max", "x2", "right"),
    "ymax": ("ymax", "y_max", "y2", "bottom"),
    "width": ("width", "image_width", "img_width"),
    "height": ("height", "image_height", "img_height"),
}
REQUIRED = ("file", "class", "xmin", "ymin", "xmax", "ymax")
IMAGE_FOLDERS = ("images", "JPEGImages")
CORNERS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class CsvBox:
    """One row: the image named, the class, the corners as written, the row's line number."""

    filename: str
    name: str
    corners: tuple[float, float, float, float]
    line: int


def _normalise(header: str) -> str:
    return header.strip().lower().replace(" ", "_").replace("-", "_")


def find_columns(header: list[str], path: Path) -> dict[str, int]:
    """``role -> column index`` for every role found.

    Raises:
        DataError: a required role has no column; the message lists the columns found and the
            names accepted for each missing role.
    """
    normalised = [_normalise(h) for h in header]
    found = {}
    for role, names in COLUMNS.items():
        index = next((normalised.index(n) for n in names if n in normalised), None)
        if index is not None:
            found[role] = index
    missing = [role for role in REQUIRED if role not in found]
    if missing:
        accepted = "; ".join(f"{role}: {' / '.join(COLUMNS[role])}" for role in missing)
        raise DataError(f"{path}: no column for {', '.join(missing)} (columns found: {', '.join(header) or 'none'}; "
                        f"names accepted: {accepted})")
    return found


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _delimiter(first_line: str) -> str:
    """``,`` unless the header line is clearly separated by ``;`` or tabs."""
    if "," in first_line:
        return ","
    return ";" if ";" in first_line else ("\t" if "\t" in first_line else ",")


def parse_csv(path: Path) -> tuple[list[CsvBox], list[str], dict[str, tuple[int, int]], list[Problem]]:
    """Rows of a CSV: boxes, negative images, ``filename -> (width, height)`` where the CSV gives
    them, and one problem per bad or repeated row (naming its line).

    Raises:
        DataError: the file cannot be read or lacks a required column.
    """
    boxes, negatives, sizes, problems, seen = [], [], {}, [], {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            delimiter = _delimiter(handle.readline())
            handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, [])
            columns = find_columns(header, path)
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                box = _parse_row(row, len(header), columns, line, path, sizes, negatives, problems)
                if box is None:
                    continue
                key = (box.filename, box.name, box.corners)
                if key in seen:
                    problems.append(Problem(str(path), "warning", f"line {line}: same row as line {seen[key]}; dropped"))
                    continue
                seen[key] = line
                boxes.append(box)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    return boxes, negatives, sizes, problems


def _parse_row(
    row: list[str], num_fields: int, columns: dict[str, int], line: int, path: Path,
    sizes: dict[str, tuple[int, int]], negatives: list[str], problems: list[Problem],
) -> CsvBox | None:
    """One row as a box (None for a negative or a bad row, recorded in ``negatives`` / ``problems``)."""
    if len(row) != num_fields:
        problems.append(Problem(str(path), "error", f"line {line}: {len(row)} fields, the header has {num_fields}; row skipped"))
        return None
    cell = {role: row[index].strip() for role, index in columns.items()}
    filename = cell["file"].replace("\\", "/")
    if not filename:
        problems.append(Problem(str(path), "error", f"line {line}: no image file name; row skipped"))
        return None
    if "width" in cell and "height" in cell and filename not in sizes:
        try:
            sizes[filename] = (int(_number(cell["width"])), int(_number(cell["height"])))
        except ValueError:
            pass  # the image's own size is used anyway
    if not cell["class"] and not any(cell[c] for c in CORNERS):
        negatives.append(filename)
        return None
    try:
        corners = tuple(_number(cell[c]) for c in CORNERS)
    except ValueError:
        values = ", ".join(f"{c}={cell[c]!r}" for c in CORNERS)
        problems.append(Problem(str(path), "error", f"line {line}: corners must be finite numbers, got {values}; row skipped"))
        return None
    if not cell["class"]:
        problems.append(Problem(str(path), "error", f"line {line}: no class name; row skipped"))
        return None
    return CsvBox(filename, cell["class"], corners, line)  # type: ignore[arg-type]


class _ImageFinder:
    """Finds the image a row names in the search folders (see the module docstring)."""

    def __init__(self, csv_path: Path, image_dir: Path | None) -> None:
        if image_dir is not None:
            self.roots = [Path(image_dir)]
        else:
            here = csv_path.parent
            below = [d / name for d in sorted(here.iterdir()) if d.is_dir() for name in IMAGE_FOLDERS]
            self.roots = [here, *(here / n for n in IMAGE_FOLDERS), *(here.parent / n for n in IMAGE_FOLDERS), *below]
            self.roots = [r for r in dict.fromkeys(self.roots) if r.is_dir()]
        self._listings: dict[Path, dict[str, Path]] = {}

    def _listing(self, root: Path) -> dict[str, Path]:
        if root not in self._listings:
            self._listings[root] = {p.name.lower(): p for p in root.iterdir() if is_image_file(p)}
        return self._listings[root]

    def find(self, filename: str) -> Path | None:
        if not escapes(filename):
            for root in self.roots:
                if (root / filename).is_file():
                    return root / filename
        base = Path(filename).name.lower()
        return next((self._listing(r)[base] for r in self.roots if base in self._listing(r)), None)

    def unlisted(self, used: set[Path]) -> tuple[int, Path | None]:
        """How many images in the folders images were found in are named by no row."""
        folders = {p.parent for p in used}
        extra = [p for root in self.roots if root in folders for p in self._listing(root).values() if p not in used]
        return len(extra), (min(extra) if extra else None)


def _pixel_boxes(boxes: list[CsvBox], coords: CsvCoords, source: str, problems: list[Problem]) -> list[tuple[CsvBox, list[float]]]:
    """Each box in continuous 0-based pixels; VOC corners that cross are dropped, equal ones are 1 px."""
    converted = []
    for box in boxes:
        xmin, ymin, xmax, ymax = box.corners
        if coords == "pixels":
            converted.append((box, [xmin, ymin, xmax, ymax]))
            continue
        if xmax < xmin or ymax < ymin:
            problems.append(Problem(source, "warning", f"{_describe(box)}: inverted box; box dropped"))
            continue
        if xmax == xmin or ymax == ymin:
            problems.append(Problem(source, "warning", f"{_describe(box)}: xmin == xmax or ymin == ymax, a 1-pixel "
                                    "box in VOC's inclusive corners; kept"))
        converted.append((box, [xmin - 1, ymin - 1, xmax, ymax]))  # 1-based inclusive -> continuous
    return converted


def _describe(box: CsvBox) -> str:
    corners = ", ".join(f"{c}={v:g}" for c, v in zip(CORNERS, box.corners))
    return f"line {box.line} '{box.name}' ({corners})"


def read_csv_labels(
    csv_path: Path,
    coords: CsvCoords = "voc",
    image_dir: Path | None = None,
    only: set[str] | None = None,
    classes: list[str] | None = None,
    unknown_classes: Literal["warning", "error"] = "warning",
    check_images: bool = True,
    verify_pixels: bool = False,
    progress: ProgressFn | None = None,
) -> DetectionDataset:
    """Read a one-row-per-box CSV (see the module docstring).

    Args:
        csv_path: the CSV file.
        coords: ``voc`` (1-based inclusive corners) or ``pixels`` (continuous 0-based).
        image_dir: the only folder to look for images in; None: the search of the module docstring.
        only: file names to keep (as in the file column, or their base names), from a split
            list; None keeps all.
        classes: the class list to use; other classes are dropped with a problem of severity
            ``unknown_classes``. None: the 20 VOC classes when every name is one, else the sorted names.
        check_images: read each header (true size, missing files); False trusts the CSV's
            width / height where it has them.
        verify_pixels: also decode every image to find truncated files.
        progress: called as ``progress(done, total)`` over the images.

    Raises:
        DataError: the CSV cannot be read or lacks a required column.
    """
    csv_path = Path(csv_path)
    source = str(csv_path)
    if image_dir is not None and not Path(image_dir).is_dir():
        raise DataError(f"--images {image_dir}: no such folder")
    boxes, negatives, sizes, problems = parse_csv(csv_path)
    if only is not None:
        def listed(filename: str) -> bool:  # the list names files as the CSV does, or by base name
            return filename in only or filename.rsplit("/", 1)[-1] in only

        named = {b.filename for b in boxes} | set(negatives)
        named |= {n.rsplit("/", 1)[-1] for n in named}
        problems += [Problem(source, "warning", f"split list names '{n}', which no row of the CSV has; skipped")
                     for n in sorted(only - named)]
        boxes, negatives = [b for b in boxes if listed(b.filename)], [n for n in negatives if listed(n)]
    class_list = list(classes) if classes is not None else default_class_order({b.name for b in boxes})
    label_of = {name: k for k, name in enumerate(class_list, start=1)}
    by_image: dict[str, list[tuple[CsvBox, list[float]]]] = {name: [] for name in [*(b.filename for b in boxes), *negatives]}
    for box, corners in _pixel_boxes(boxes, coords, source, problems):
        if box.name in label_of:
            by_image[box.filename].append((box, corners))
        else:
            problems.append(Problem(source, unknown_classes, f"{_describe(box)}: class '{box.name}' is not in the "
                                    "class list; box dropped"))
    finder = _ImageFinder(csv_path, image_dir)
    records = _records(by_image, finder, sizes, label_of, check_images, verify_pixels, source, problems, progress)
    if only is None:
        count, example = finder.unlisted({r.image_path for r in records})
        if count:
            problems.append(Problem(source, "warning", f"{count} images (e.g. {example}) appear in no row of the CSV: "
                                    "not part of the dataset"))
    dataset = DetectionDataset("csv", csv_path, class_list, unique_stems(records, {}, problems), problems)
    dataset.problems += usable_box_problems(dataset)
    return dataset


def _records(
    by_image: dict[str, list[tuple[CsvBox, list[float]]]], finder: _ImageFinder, sizes: dict[str, tuple[int, int]],
    label_of: dict[str, int], check_images: bool, verify_pixels: bool, source: str, problems: list[Problem],
    progress: ProgressFn | None,
) -> list[ImageRecord]:
    records = []
    for done, (filename, rows) in enumerate(by_image.items(), start=1):
        if progress is not None:
            progress(done, len(by_image))
        image = finder.find(filename)
        if image is None:
            where = ", ".join(str(r) for r in finder.roots) or "no image folder"
            problems.append(Problem(source, "warning", f"image '{filename}' not found (looked in {where}); skipped"))
            continue
        try:
            width, height, size_problems = measure_image(image, sizes.get(filename), check_images, verify_pixels, source)
        except DataError as exc:
            problems.append(Problem(str(image), "warning", f"{exc}; image skipped"))
            continue
        problems += size_problems
        boxes_xyxy_px = np.array([corners for _, corners in rows], dtype=np.float64).reshape(-1, 4)  # (N, 4)
        records.append(make_record(
            image, width, height, boxes_xyxy_px,
            labels=np.array([label_of[box.name] for box, _ in rows], dtype=np.int64),
            difficult=np.zeros(len(rows), dtype=bool), source=source,
            descriptions=[_describe(box) for box, _ in rows], problems=problems,
        ))
    return records
