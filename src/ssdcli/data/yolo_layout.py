"""Where a YOLO dataset's images, labels and class names are, in ultralytics' conventions.

Two layouts:

- a ``data.yaml`` (ultralytics ``check_det_dataset``): ``path`` (the root; relative to the
  yaml's folder, else to the working folder; default: the yaml's folder), ``train`` / ``val`` /
  ``test`` each a folder, a list of folders or a ``.txt`` list of image paths (lines ``./x.jpg``
  are relative to the list's folder), ``names`` as a list or ``{index: name}`` and ``nc``;
- a plain folder: ``images/`` + ``labels/`` (``images/<split>/`` with ``--split``), or images
  and ``.txt`` files side by side, with the class names in ``classes.txt`` or ``obj.names``.

Each image's label file follows ultralytics' ``img2label_paths``: the last ``images`` folder
of the image's path becomes ``labels`` and the suffix ``.txt`` (``d/images/train/a.jpg`` ->
``d/labels/train/a.txt``); a path without an ``images`` folder has its labels beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ssdcli.data.classes import load_classes_file
from ssdcli.data.labelfiles import is_image_file, list_images
from ssdcli.data.records import Problem
from ssdcli.errors import DataError

YAML_FILES = ("data.yaml", "data.yml")
NAMES_FILES = ("classes.txt", "obj.names")
SPLIT_KEYS = ("train", "val", "test")
# .txt files beside images that are not label files (notes, class lists, split lists).
NOT_LABELS = frozenset({"classes.txt", "readme.txt", "license.txt", "notes.txt", "train.txt", "val.txt", "test.txt"})
# ssdcli's own key in a data.yaml (ultralytics ignores keys it does not know): the 1-based line
# numbers of VOC "difficult" boxes per label file, so that ``ssd data convert`` is lossless.
DIFFICULT_KEY = "difficult"


@dataclass(frozen=True)
class YoloLayout:
    """A YOLO split, located: what :func:`~ssdcli.data.yolo.read_yolo` reads.

    Attributes:
        source: the yaml or folder the user named (messages, ``DetectionDataset.root``).
        root: the folder the yaml's paths are relative to.
        names: class names, in index order (label line class ``i`` is ``names[i]``).
        images: the split's image files, in order.
        label_dirs: folders whose every ``.txt`` file must belong to an image of ``images``
            (a label file with no image is reported); empty for ``.txt`` image lists.
        keypoints: pose data (``kpt_shape`` in the yaml): lines are a box and then keypoints.
        difficult: label file -> 1-based line numbers of difficult boxes (the yaml's
            :data:`DIFFICULT_KEY`).
        problems: what was wrong in the yaml or the lists (entries skipped).
    """

    source: Path
    root: Path
    names: list[str]
    images: list[Path]
    label_dirs: list[Path] = field(default_factory=list)
    keypoints: bool = False
    difficult: dict[Path, frozenset[int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _swap_images_dir(path: Path, parts_end: int) -> Path:
    """``path`` with the last ``images`` part among its first ``parts_end`` parts -> ``labels``."""
    parts = list(path.parts)
    for i in range(parts_end - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return path


def label_path(image: Path) -> Path:
    """The label file of ``image`` (ultralytics ``img2label_paths``)."""
    return _swap_images_dir(image, len(image.parts) - 1).with_suffix(".txt")


def label_dir(image_dir: Path) -> Path:
    """The folder holding the labels of the images in ``image_dir``."""
    return _swap_images_dir(image_dir, len(image_dir.parts))


def find_yaml(folder: Path) -> Path | None:
    """``data.yaml`` / ``data.yml`` in ``folder``, else its only ``*.yaml`` / ``*.yml``."""
    for name in YAML_FILES:
        if (folder / name).is_file():
            return folder / name
    yamls = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if len(yamls) != 1:
        return None
    try:  # another tool's config is not a dataset: it needs names and a split
        data = load_yaml(yamls[0])
    except DataError:
        return None
    return yamls[0] if "names" in data and any(k in data for k in SPLIT_KEYS) else None


def names_file(folder: Path) -> Path | None:
    return next((folder / n for n in NAMES_FILES if (folder / n).is_file()), None)


def is_yolo_folder(folder: Path) -> bool:
    """``images/`` + ``labels/``, or a class-names file beside ``.txt`` label files."""
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        return True
    return names_file(folder) is not None and any(p.name.lower() not in NOT_LABELS for p in folder.rglob("*.txt"))


def load_yaml(path: Path) -> dict:
    """The yaml as a dict (``yaml.safe_load``: no python objects constructed).

    Raises:
        DataError: naming the file and line when it is not valid YAML or not a mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}: malformed YAML{where} ({exc.problem})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a YOLO data.yaml (expected keys path, train, val, names)")
    return data


def yaml_names(data: dict, path: Path) -> list[str]:
    """``names`` as a list in index order, checked against ``nc``.

    Raises:
        DataError: no ``names``, indices that are not 0..n-1, duplicates, or ``nc`` disagreeing.
    """
    names = data.get("names")
    if names is None:
        raise DataError(f"{path}: no 'names' (the class list); add e.g. names: [cat, dog] or names: {{0: cat, 1: dog}}")
    if isinstance(names, dict):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(f"{path}: 'names' keys must be class indices 0, 1, ...; got {list(names)}") from None
        missing = sorted(set(range(len(by_index))) - set(by_index))
        if missing:
            raise DataError(f"{path}: 'names' must number the classes 0..{len(by_index) - 1}; index {missing[0]} is missing")
        names = [by_index[k] for k in range(len(by_index))]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise DataError(f"{path}: 'names' must be a list or an {{index: name}} mapping, got {type(names).__name__}")
    if not names:
        raise DataError(f"{path}: 'names' is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: class names listed more than once in 'names': {', '.join(duplicates)}")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(f"{path}: nc is {nc} but 'names' lists {len(names)} classes")
    return names


def yaml_root(data: dict, path: Path) -> Path:
    """The folder ``train`` / ``val`` / ``test`` are relative to (see the module docstring)."""
    given = data.get("path")
    if given is None or str(given).strip() == "":
        return path.parent
    root = Path(str(given)).expanduser()
    if root.is_absolute():
        candidates = [root]
    else:
        candidates = [path.parent / root, Path.cwd() / root]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        raise DataError(f"{path}: path '{given}' is not a folder (looked in {', '.join(str(c) for c in candidates)})")
    return found


def _entry_images(entry: str, root: Path, key: str, source: Path, problems: list[Problem]) -> tuple[list[Path], list[Path]]:
    """The images of one ``train``/``val``/``test`` entry and the label folders to check."""
    target = root / entry
    if not target.exists() and entry.startswith("../"):
        target = root / entry[3:]  # ultralytics' fallback for Roboflow's "../train/images"
    if target.is_dir():
        return list_images(target), [label_dir(target)]
    if target.is_file() and target.suffix.lower() == ".txt":
        return _list_file_images(target, root, problems), []
    if target.is_file() and is_image_file(target):
        return [target], []
    problems.append(Problem(str(source), "error", f"{key}: '{entry}' not found ({target}); entry skipped"))
    return [], []


def _list_file_images(list_file: Path, root: Path, problems: list[Problem]) -> list[Path]:
    """Images named in a ``.txt`` list, one path a line (``./`` = the list's folder)."""
    images: list[Path] = []
    try:
        lines = list_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        problems.append(Problem(str(list_file), "error", f"cannot read the image list ({exc}); skipped"))
        return images
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        given = Path(name)
        candidates = [given] if given.is_absolute() else [list_file.parent / name, root / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            problems.append(Problem(str(list_file), "warning", f"line {number}: image '{name}' not found; skipped"))
        else:
            images.append(found)
    return images


def _difficult(data: dict, root: Path, path: Path) -> dict[Path, frozenset[int]]:
    table = data.get(DIFFICULT_KEY) or {}
    if not isinstance(table, dict):
        raise DataError(f"{path}: '{DIFFICULT_KEY}' must map label files to lists of line numbers")
    try:
        return {root / str(k): frozenset(int(n) for n in v) for k, v in table.items()}
    except (TypeError, ValueError):
        raise DataError(f"{path}: '{DIFFICULT_KEY}' must map label files to lists of line numbers") from None


def yaml_layout(path: Path, split: str | None) -> YoloLayout:
    """Locate a split of a data.yaml; ``split`` is a key (``train`` when None), or keys joined with
    ``+`` (``train+val``).

    Raises:
        DataError: bad yaml, no ``names``, the split is not in the yaml, or it has no images.
    """
    path = Path(path)
    data = load_yaml(path)
    names = yaml_names(data, path)
    root = yaml_root(data, path)
    problems: list[Problem] = []
    images: list[Path] = []
    label_dirs: list[Path] = []
    for key in (split or "train").split("+"):
        if not data.get(key):
            present = [k for k in SPLIT_KEYS if data.get(k)]
            raise DataError(f"--split {key}: {path} has no '{key}' entry (it has {', '.join(present) or 'none'})")
        entries = data[key] if isinstance(data[key], list) else [data[key]]
        for entry in entries:
            found, dirs = _entry_images(str(entry), root, key, path, problems)
            images += found
            label_dirs += dirs
    if not images:
        detail = "; ".join(p.message for p in problems) or "the folders hold no images"
        raise DataError(f"{path}: no images for split '{split or 'train'}' ({detail})")
    return YoloLayout(path, root, names, list(dict.fromkeys(images)), label_dirs, keypoints="kpt_shape" in data,
                      difficult=_difficult(data, root, path), problems=problems)


def yaml_splits(path: Path) -> list[str]:
    """The split keys a data.yaml defines, in train, val, test order."""
    data = load_yaml(path)
    return [k for k in SPLIT_KEYS if data.get(k)]


def folder_layout(folder: Path, split: str | None) -> YoloLayout:
    """Locate the images of a plain YOLO folder (see the module docstring).

    Raises:
        DataError: no class-names file, or ``split`` names no ``images/<split>/``.
    """
    folder = Path(folder)
    names_path = names_file(folder)
    if names_path is None:
        raise DataError(f"{folder}: YOLO labels without class names; write them, one per line in index order, "
                        f"to {folder / 'classes.txt'}, or give a data.yaml with names")
    names = load_classes_file(names_path)
    base = folder / "images" if (folder / "images").is_dir() else folder
    if split is not None:
        if not (base / split).is_dir():
            raise DataError(f"--split {split}: {folder} has no data.yaml and no {base / split}/ folder; "
                            f"run `ssd data split {folder} --val 0.2` to make one")
        base = base / split
    images = list_images(base)
    if not images:
        raise DataError(f"{base}: no images")
    return YoloLayout(folder, folder, names, images, [label_dir(base)])
