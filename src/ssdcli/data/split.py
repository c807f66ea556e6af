"""``ssd data split``: a reproducible, stratified train / val / test split written as list files in
the dataset's own convention, so that ``--split train`` and ``--val-split val`` then read it.

Stratified by each image's rarest class (the class of its boxes found in the fewest images;
images without boxes form their own group): the groups, rarest first, are shuffled with the seed
and shared out so that the running totals follow the requested fractions, except that a group
gives one image to each split that has no image of its class yet (train, then val, then test, as
far as the group reaches). Rare classes so reach every split where they can, at the cost of exact
fractions when many classes are rare (coco128, 71 classes in 128 images: ``--val 0.25`` gives 39
val images rather than 32). Images, labels and annotations are never moved or rewritten; lists are:

- VOC: ``ImageSets/Main/{train,val,trainval,test}.txt`` (annotation stems) in the VOC folder,
  or in a plain folder of XML files;
- YOLO: ``{train,val,test}.txt`` (``./``-relative image paths) in the dataset root and the
  data.yaml's ``train`` / ``val`` / ``test`` pointing at them (a new data.yaml for a plain folder);
- CSV and COCO: ``splits/{train,val,test}.txt`` (image file names) beside the CSV, or in the
  folder holding ``annotations/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ssdcli.data.csv_labels import CsvCoords
from ssdcli.data.reader import coco_root, load_dataset, resolve_folder, subdirs, year_dirs
from ssdcli.data.records import DetectionDataset, ImageRecord
from ssdcli.data.voc import ProgressFn
from ssdcli.data.yolo_layout import find_yaml, load_yaml, yaml_root, yaml_splits
from ssdcli.errors import DataError, UserError
from ssdcli.files import atomic_write_text

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitResult:
    """What :func:`write_split` wrote.

    Attributes:
        format: the dataset's format.
        files: the list files (and data.yaml) written.
        classes: class names in index order.
        num_images: images per split, in :data:`SPLIT_NAMES` order (test 0 when not asked).
        boxes_per_class: per split, boxes of each class (same order as ``classes``).
    """

    format: str
    files: list[Path]
    classes: list[str]
    num_images: dict[str, int]
    boxes_per_class: dict[str, list[int]]


def _rarest_class(records: list[ImageRecord], num_classes: int) -> np.ndarray:
    """int64[N]: each image's class present in the fewest images (ties: lower index); 0 if none."""
    present = np.zeros((len(records), num_classes + 1), dtype=bool)  # (N, C + 1), column 0 unused
    for i, record in enumerate(records):
        present[i, record.labels] = True
    present[:, 0] = False
    images_with = present.sum(axis=0)  # (C + 1,)
    rarity = np.where(present, images_with[None, :], np.iinfo(np.int64).max)  # (N, C + 1)
    rarest = rarity.argmin(axis=1)  # first minimum: the lower class index on ties
    return np.where(present.any(axis=1), rarest, 0)


def _share(n: int, want_val: int, want_test: int, needs: tuple[bool, bool, bool]) -> tuple[int, int]:
    """Val and test counts for a group of ``n``: the running targets (``want_*``), and one image
    for each split that still lacks the group's class (``needs``: train, val, test), train first."""
    minimum, left = [0, 0, 0], n
    for k, need in enumerate(needs):
        if need and left > 0:
            minimum[k], left = 1, left - 1
    n_val = min(max(want_val, minimum[1]), n - minimum[0] - minimum[2])
    n_test = min(max(want_test, minimum[2]), n - minimum[0] - n_val)
    return n_val, n_test


def check_fractions(val: float, test: float) -> None:
    """Raises UserError unless both are in [0, 1) and add up to more than 0 and less than 1."""
    if not (0 <= val < 1 and 0 <= test < 1 and 0 < val + test < 1):
        raise UserError(f"--val {val:g} --test {test:g}: each must be in [0, 1), together more than 0 and less than 1")


def assign_splits(records: list[ImageRecord], num_classes: int, val: float, test: float = 0.0, seed: int = 0) -> np.ndarray:
    """int64[N]: 0 (train), 1 (val) or 2 (test) per record, stratified (module docstring).

    Depends only on the records' image ids and labels, never on their order.

    Raises:
        UserError: fractions outside [0, 1) or adding up to 1 or more, or both zero.
    """
    check_fractions(val, test)
    order = sorted(range(len(records)), key=lambda i: str(records[i].image_id))
    records = [records[i] for i in order]
    rarest = _rarest_class(records, num_classes)
    images_with = np.bincount(rarest, minlength=num_classes + 1)
    # rarest groups first, so that they get their minimum share; images without boxes last
    groups = sorted(set(rarest.tolist()), key=lambda c: (c == 0, images_with[c], c))
    rng = np.random.default_rng(seed)
    assigned = np.zeros(len(records), dtype=np.int64)
    present = np.zeros((3, num_classes + 1), dtype=bool)  # (split, class): some image of it there
    seen = given_val = given_test = 0
    for group in groups:
        members = np.flatnonzero(rarest == group)[rng.permutation(int((rarest == group).sum()))]
        seen += len(members)
        needs = (not present[0, group], val > 0 and not present[1, group], test > 0 and not present[2, group])
        n_val, n_test = _share(len(members), round(val * seen) - given_val, round(test * seen) - given_test, needs)
        assigned[members[:n_val]] = 1
        assigned[members[n_val:n_val + n_test]] = 2
        given_val, given_test = given_val + n_val, given_test + n_test
        for index in members:
            present[assigned[index], records[index].labels] = True
    result = np.empty_like(assigned)
    result[order] = assigned  # back to the caller's record order
    return result


def _counts(dataset: DetectionDataset, assigned: np.ndarray) -> tuple[dict[str, int], dict[str, list[int]]]:
    images, boxes = {}, {}
    for k, name in enumerate(SPLIT_NAMES):
        chosen = [r for r, a in zip(dataset.records, assigned) if a == k]
        labels = np.concatenate([r.labels for r in chosen]) if chosen else np.zeros(0, np.int64)
        images[name] = len(chosen)
        boxes[name] = np.bincount(labels, minlength=dataset.num_classes + 1)[1:].tolist()
    return images, boxes


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not force:
        raise DataError(f"{existing[0]} exists: the dataset has a split already; give --force to replace it")


def _lists_by_split(dataset: DetectionDataset, assigned: np.ndarray, line_of) -> dict[str, str]:
    return {name: "".join(f"{line_of(r)}\n" for r, a in zip(dataset.records, assigned) if a == k)
            for k, name in enumerate(SPLIT_NAMES)}


def _write_lists(folder: Path, lists: dict[str, str], test: float, force: bool, extra: dict[str, str] | None = None) -> list[Path]:
    """``folder/<split>.txt`` for train, val (and test when asked), refusing to replace any list
    that exists (any of the three, so no stale test list is left beside new ones) without ``force``."""
    wanted = {name: text for name, text in lists.items() if name != "test" or test > 0}
    wanted.update(extra or {})
    _refuse_existing([folder / f"{n}.txt" for n in [*SPLIT_NAMES, *wanted]], force)
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / "test.txt"
    if test == 0 and os.path.lexists(stale):
        stale.unlink()  # --force: a test list of the old split would no longer match
    for name, text in wanted.items():
        atomic_write_text(folder / f"{name}.txt", text)
    return [folder / f"{n}.txt" for n in wanted]


def split_files_voc(dataset: DetectionDataset, folder: Path, xml_dirs: list[Path], assigned: np.ndarray,
                    test: float, force: bool) -> list[Path]:
    """ImageSets/Main lists of annotation stems (each checked to be an XML in ``xml_dirs``)."""
    for record in dataset.records:
        if not any((d / f"{record.image_id}.xml").is_file() for d in xml_dirs):
            raise DataError(f"{record.image_path}: no annotation file {record.image_id}.xml; VOC split lists name "
                            "annotations by the image's stem")
    lists = _lists_by_split(dataset, assigned, lambda r: r.image_id)
    trainval = lists["train"] + lists["val"]
    return _write_lists(folder / "ImageSets" / "Main", lists, test, force, {"trainval": trainval})


def split_files_named(dataset: DetectionDataset, folder: Path, assigned: np.ndarray, test: float, force: bool) -> list[Path]:
    """``folder/splits/<split>.txt`` of image file names (CSV, COCO)."""
    names = [r.image_path.name for r in dataset.records]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DataError(f"two images are named {twice}; split lists name images by file name")
    return _write_lists(folder / "splits", _lists_by_split(dataset, assigned, lambda r: r.image_path.name), test, force)


def relative_line(image: Path, root: Path) -> str:
    """An image path as ultralytics reads it from a list in ``root``: ``./`` + the relative path."""
    try:
        return "./" + image.relative_to(root).as_posix()
    except ValueError:
        return str(image.resolve())


def split_summary(dataset: DetectionDataset, assigned: np.ndarray, files: list[Path]) -> SplitResult:
    images, boxes = _counts(dataset, assigned)
    return SplitResult(dataset.format, files, list(dataset.classes), images, boxes)



def split_files_yolo(dataset: DetectionDataset, yaml_path: Path | None, root: Path, assigned: np.ndarray,
                     test: float, force: bool) -> list[Path]:
    """``root/{train,val,test}.txt`` and the data.yaml pointing at them (a new one in ``root``
    when the dataset had none)."""
    target = yaml_path if yaml_path is not None else root / "data.yaml"
    data = load_yaml(target) if target.is_file() else {"names": dict(enumerate(dataset.classes))}
    already = [k for k in ("val", "test") if data.get(k)]
    if already and not force:
        raise DataError(f"{target} has a '{already[0]}' split already; give --force to replace it")
    if yaml_path is None:
        _refuse_existing([target], force)
    files = _write_lists(root, _lists_by_split(dataset, assigned, lambda r: relative_line(r.image_path, root)), test, force)
    lists = {"train": "train.txt", "val": "val.txt", **({"test": "test.txt"} if test > 0 else {})}
    head = {"path": data["path"]} if "path" in data else {}
    data = {**head, **lists, **{k: v for k, v in data.items() if k not in ("path", *SPLIT_NAMES)}}
    header = "# train / val / test lists written by ssd data split\n"
    atomic_write_text(target, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return [*files, target]


def _yaml_of(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() in (".yaml", ".yml") else None
    return find_yaml(resolve_folder(path))


def write_split(
    path: Path,
    val: float,
    test: float = 0.0,
    seed: int = 0,
    force: bool = False,
    *,
    csv_coords: CsvCoords = "voc",
    image_dir: Path | None = None,
    progress: ProgressFn | None = None,
) -> SplitResult:
    """Split every image of the dataset at ``path`` and write the lists (module docstring).

    Args:
        path: a dataset as ``ssd data check`` takes it (for YOLO every split of the yaml is
            pooled and split anew).
        val, test: fractions of the images for validation and test.
        seed: the shuffle's seed; the same seed and data give the same split on any machine.
        force: replace an existing split.
        csv_coords, image_dir: for CSV data, as in :func:`~ssdcli.data.reader.load_dataset`.
        progress: called as ``progress(done, total)`` while reading.

    Raises:
        UserError: bad fractions, a dataset with no images, a split that exists (no ``force``),
            or a devkit of several years.
    """
    path = Path(path)
    check_fractions(val, test)  # before reading anything
    yaml_path = _yaml_of(path)
    split = "+".join(yaml_splits(yaml_path)) if yaml_path is not None else None
    dataset = load_dataset(path, split=split or None, check_images=False, progress=progress, verify_pixels=False,
                           csv_coords=csv_coords, image_dir=image_dir)
    if not dataset.records:
        raise DataError(f"{path}: no usable images to split")
    assigned = assign_splits(dataset.records, dataset.num_classes, val, test, seed)
    if dataset.format == "yolo":
        root = yaml_root(load_yaml(yaml_path), yaml_path) if yaml_path is not None else resolve_folder(path)
        files = split_files_yolo(dataset, yaml_path, root, assigned, test, force)
    elif dataset.format == "voc":
        files = split_files_voc(dataset, *_voc_target(path), assigned, test, force)
    elif dataset.format == "csv":
        files = split_files_named(dataset, Path(dataset.root).parent, assigned, test, force)
    else:
        files = split_files_named(dataset, coco_root(Path(dataset.annotation_file or dataset.root)), assigned, test, force)
    return split_summary(dataset, assigned, files)


def _voc_target(path: Path) -> tuple[Path, list[Path]]:
    """The VOC folder to write ImageSets/Main in, and the folders its annotations are in."""
    folder = resolve_folder(path)
    years = year_dirs(folder)
    if len(years) > 1:
        raise UserError(f"{folder} is a devkit of {len(years)} years; split one year folder (e.g. {years[-1]})")
    folder = years[0] if years else folder
    if (folder / "Annotations").is_dir():
        return folder, [folder / "Annotations"]
    return folder, [d for d in [folder, *subdirs(folder)] if any(d.glob("*.xml"))]
