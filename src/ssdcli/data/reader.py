"""One entry point for every dataset layout: :func:`load_dataset` finds out which it is.

Layouts read (first match wins):

1. a file: a COCO instances ``.json``, a YOLO ``data.yaml`` (any ``.yaml``), a ``.csv``;
2. a VOCdevkit: ``VOC2007/``, ``VOC2012/``, ... each with ``Annotations/`` and ``JPEGImages/``;
3. one VOC folder: ``Annotations/`` + ``JPEGImages/`` (``ImageSets/Main/*.txt`` optional; a
   ``classes.txt`` there is the class order, unless ``--classes`` gives one);
4. a COCO folder: ``annotations/*.json`` or ``instances*.json`` next to the image folder(s);
5. a YOLO folder: a ``data.yaml``, or ``images/`` + ``labels/`` with ``classes.txt`` /
   ``obj.names``;
6. a folder with any other ``.json`` (COCO);
7. a folder with a single child of layout 2 or 3 (``bccd/BCCD/``, ``.../VOCdevkit/``);
8. a plain folder of ``.xml`` files and images, together or in sibling folders
   (``raccoon/annotations`` + ``raccoon/images``);
9. a folder with ``classes.txt`` / ``obj.names`` and images with ``.txt`` labels beside them (YOLO);
10. a folder holding one-row-per-box ``.csv`` files (``--split`` picks ``<split>*.csv``).

Split lists written by ``ssd data split``: VOC ``ImageSets/Main/<split>.txt`` (also in a plain
folder of XML files), YOLO keys of the data.yaml, CSV and COCO ``splits/<split>.txt`` beside the
CSV / the ``annotations/`` folder (one image file name a line).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from ssdcli.data.classes import load_classes_file  # also imported from here by the CLI and engine
from ssdcli.data.coco import read_coco
from ssdcli.data.csv_labels import CsvCoords, read_csv_labels
from ssdcli.data.labelfiles import read_list_file
from ssdcli.data.records import DetectionDataset
from ssdcli.data.voc import IMAGE_SUFFIXES, ProgressFn, VocItem, read_voc
from ssdcli.data.yolo import read_yolo
from ssdcli.data.yolo_layout import find_yaml, folder_layout, is_yolo_folder, yaml_layout
from ssdcli.errors import DataError, UserError

EXPECTED = (
    "expected a VOCdevkit (VOC2007/, VOC2012/), a folder with Annotations/ and JPEGImages/, "
    "a folder of images with Pascal VOC .xml files, a COCO instances .json "
    "(annotations/instances_*.json), a YOLO data.yaml or images/ + labels/ + classes.txt, "
    "or a one-row-per-box .csv"
)

_YEAR_DIR = re.compile(r"VOC(\d{4})")
# A devkit split token: "07", "2007", "VOC2007", optionally followed by -, _, : or / and a split
# name ("2007-test", "07_trainval", "VOC2012/val"); or a split name alone ("trainval").
_SPLIT_TOKEN = re.compile(r"^(?:(?:VOC)?(\d{2}|\d{4}))?(?:[-_:/]?([A-Za-z][\w-]*))?$", re.IGNORECASE)


def load_dataset(
    path: Path,
    split: str | None = None,
    classes: list[str] | None = None,
    check_images: bool = True,
    progress: ProgressFn | None = None,
    *,
    verify_pixels: bool = True,
    unknown_classes: Literal["warning", "error"] = "warning",
    csv_coords: CsvCoords = "voc",
    image_dir: Path | None = None,
) -> DetectionDataset:
    """Read a VOC, COCO, YOLO or CSV dataset, detecting its layout (see the module docstring).

    Args:
        path: a dataset folder, a COCO instances json, a YOLO yaml or a CSV file.
        split: VOC: an ``ImageSets/Main`` name (``train``, ``val``, ``trainval``, ``test``), in a
            devkit optionally per year and joined with ``+``: ``07+12`` (= ``2007-trainval+2012-
            trainval``), ``2007-test``. COCO: a ``splits/<split>.txt`` list, else picks
            ``instances_<split>*.json`` (``val`` -> ``instances_val2017.json``). YOLO: a key of
            the yaml (keys joined with ``+`` read together), or ``images/<split>/``. CSV: a
            ``splits/<split>.txt`` list, else the CSV named ``<split>*``. None: every annotation
            of a VOC folder; for COCO the only json, or the train json; YOLO ``train``; the only
            CSV, or the one whose name is no split's.
        classes: class list to use (a ``--classes`` file); objects of other classes are dropped
            with a problem of severity ``unknown_classes``. None: SPEC.md default order.
        check_images: read every image header (true sizes, missing / unreadable files). False
            trusts the annotation's sizes where it gives them and skips ``verify_pixels``.
        progress: called as ``progress(done, total)`` while reading.
        verify_pixels: also decode every image (JPEGs at 1/8 scale, several times faster than in full) so that a
            truncated file is skipped here, with a warning, rather than failing mid-epoch; False
            reads headers only (when pixels are never decoded, e.g. prior coverage).
        unknown_classes: ``warning`` when ``classes`` lists what to keep (the ``--classes``
            case), ``error`` when the data must match it (e.g. a model's classes).
        csv_coords: CSV corners are ``voc`` (1-based inclusive) or ``pixels`` (continuous).
        image_dir: CSV only: the folder the images are in (found beside the CSV when None).

    Returns:
        The dataset. What could not be read is skipped and listed in ``problems``: an ``error``
        means the data needs fixing before training (``ssd data check`` exits 1), a ``warning``
        that the reader fixed or skipped something and training can go on.

    Raises:
        DataError: the path is missing, holds no dataset we read, or ``split`` names no split.
    """
    path = Path(path)
    options = dict(classes=classes, unknown_classes=unknown_classes, check_images=check_images,
                   verify_pixels=verify_pixels, progress=progress)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        return _read_file(path, split, options, csv_coords, image_dir)

    folder = resolve_folder(path)
    devkit_years = year_dirs(folder)
    if devkit_years:
        return read_voc(path, _devkit_items(folder, devkit_years, split), **options)  # type: ignore[arg-type]
    if (folder / "Annotations").is_dir():
        return read_voc(path, _voc_folder_items(folder, split), **_folder_classes(folder, options))  # type: ignore[arg-type]
    jsons = _coco_jsons(folder)
    strong_coco = [j for j in jsons if j.parent.name == "annotations" or j.name.startswith("instances")]
    yaml_file = None if strong_coco else find_yaml(folder)
    if yaml_file is not None:
        return _with_root(read_yolo(yaml_layout(yaml_file, split), **options), path)  # type: ignore[arg-type]
    if not strong_coco and (folder / "images").is_dir() and (folder / "labels").is_dir():
        return read_yolo(folder_layout(folder, split), **options)  # type: ignore[arg-type]
    if jsons:
        return _with_root(_read_coco_split(_pick_json(folder, jsons, split, coco_root(folder)), split, options), path)
    xml_dirs = [d for d in [folder, *subdirs(folder)] if any(d.glob("*.xml"))]
    if xml_dirs:
        return read_voc(path, _plain_items(folder, xml_dirs, split), **_folder_classes(folder, options))  # type: ignore[arg-type]
    if is_yolo_folder(folder):  # class names beside .txt labels (CVAT's obj.names + obj_train_data/)
        return read_yolo(folder_layout(folder, split), **options)  # type: ignore[arg-type]
    csvs = sorted(folder.glob("*.csv"))
    if csvs:
        return _read_csv(_pick_csv(folder, csvs, split), split, options, csv_coords, image_dir)
    raise DataError(_nothing_found(folder))


def _read_file(path: Path, split: str | None, options: dict, csv_coords: CsvCoords, image_dir: Path | None) -> DetectionDataset:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_coco_split(path, split, options)
    if suffix in (".yaml", ".yml"):
        return read_yolo(yaml_layout(path, split), **options)
    if suffix == ".csv":
        return _read_csv(path, split, options, csv_coords, image_dir)
    raise DataError(f"{path}: not a dataset; give a dataset folder, a COCO .json, a YOLO .yaml or a .csv ({EXPECTED})")


def _folder_classes(folder: Path, options: dict) -> dict:
    """``options`` with the class list of ``folder/classes.txt`` (as ``ssd data convert`` writes
    it, to keep a class order VOC's sorted default would lose) unless ``--classes`` gave one."""
    if options["classes"] is None and (folder / "classes.txt").is_file():
        return {**options, "classes": load_classes_file(folder / "classes.txt")}
    return options


def _with_root(dataset: DetectionDataset, root: Path) -> DetectionDataset:
    dataset.root = root
    return dataset


def coco_root(json_or_folder: Path) -> Path:
    """The COCO dataset folder: the parent of ``annotations/``, else the json's folder."""
    folder = json_or_folder.parent if json_or_folder.is_file() else json_or_folder
    return folder.parent if folder.name == "annotations" else folder


def split_list(folder: Path, split: str | None) -> Path | None:
    """``folder/splits/<split>.txt`` when ``split`` is given and that list exists."""
    if split is None:
        return None
    listed = folder / "splits" / f"{split}.txt"
    return listed if listed.is_file() else None


def _read_coco_split(json_path: Path, split: str | None, options: dict) -> DetectionDataset:
    """The json's images, only those of ``splits/<split>.txt`` (file names) when it exists."""
    dataset = read_coco(json_path, **options)
    listed = split_list(coco_root(json_path), split)
    if listed is not None:
        names = set(read_list_file(listed))
        depth = max((n.count("/") + 1 for n in names), default=1)
        tails = [{"/".join(r.image_path.parts[-k:]) for k in range(1, depth + 1)} for r in dataset.records]
        dataset.records = [r for r, t in zip(dataset.records, tails) if t & names]
    return dataset


def _pick_csv(folder: Path, csvs: list[Path], split: str | None) -> Path:
    """The CSV to read: the only one; else for a split without a list the one named after it
    (``train_labels.csv``); else the one named after no split (``raccoon_labels.csv``)."""
    if len(csvs) == 1:
        return csvs[0]
    tokens = [set(re.split(r"[_\-. ]", c.stem.lower())) for c in csvs]
    if split is not None and split_list(folder, split) is None:
        chosen = [c for c, t in zip(csvs, tokens) if split.lower() in t]
    else:
        chosen = [c for c, t in zip(csvs, tokens) if not t & {"train", "val", "valid", "test", "trainval"}]
    if len(chosen) != 1:
        names = ", ".join(c.name for c in csvs)
        raise UserError(f"{folder} has several CSV files ({names}); give the one to read as --data FILE.csv")
    return chosen[0]


def _read_csv(path: Path, split: str | None, options: dict, csv_coords: CsvCoords, image_dir: Path | None) -> DetectionDataset:
    listed = split_list(path.parent, split)
    if split is not None and listed is None and not re.search(rf"(^|[_\-. ]){re.escape(split)}", path.stem, re.I):
        raise DataError(f"--split {split}: no {path.parent / 'splits' / (split + '.txt')}; run "
                        f"`ssd data split {path} --val 0.2` to write split lists")
    only = set(read_list_file(listed)) if listed is not None else None
    return read_csv_labels(path, csv_coords, image_dir, only, **options)


def subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def year_dirs(folder: Path) -> list[Path]:
    return [d for d in subdirs(folder) if _YEAR_DIR.fullmatch(d.name) and (d / "Annotations").is_dir()]


def resolve_folder(path: Path) -> Path:
    """``path``, or its one child that is a VOC folder or devkit (``bccd/`` -> ``bccd/BCCD``)."""
    if year_dirs(path) or (path / "Annotations").is_dir() or _coco_jsons(path):
        return path
    children = [d for d in subdirs(path) if (d / "Annotations").is_dir() or year_dirs(d)]
    if len(children) > 1:
        names = ", ".join(d.name for d in children)
        raise DataError(f"{path} holds several datasets ({names}); name the one to read")
    return children[0] if children else path


def _split_ids(year_dir: Path, name: str) -> list[str]:
    split_file = year_dir / "ImageSets" / "Main" / f"{name}.txt"
    if not split_file.is_file():
        main = year_dir / "ImageSets" / "Main"
        available = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
        hint = f"available: {', '.join(available)}" if available else "this folder has no split files"
        raise DataError(f"split '{name}': {split_file} not found ({hint})")
    # Each line starts with the image id; class files (aeroplane_train.txt) add a flag after it.
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


def _items_for_ids(year_dir: Path, ids: list[str]) -> list[VocItem]:
    image_dirs = (year_dir / "JPEGImages", year_dir / "Annotations")
    return [VocItem(year_dir / "Annotations" / f"{image_id}.xml", image_dirs) for image_id in ids]


def _voc_folder_items(folder: Path, split: str | None, year: str | None = None) -> list[VocItem]:
    if split is None:
        xml_files = sorted((folder / "Annotations").glob("*.xml"))
        return [VocItem(x, (folder / "JPEGImages", folder / "Annotations")) for x in xml_files]
    items = []
    for token in split.split("+"):
        token_year, name = _parse_split_token(token, split)
        if token_year is not None and year is not None and token_year != year:
            continue
        if token_year is not None and year is None and not folder.name.endswith(token_year):
            raise UserError(f"--split {split}: {folder} is not VOC{token_year}; give the VOCdevkit folder "
                            "to combine years")
        items += _items_for_ids(folder, _split_ids(folder, name or "trainval"))
    return items


def _devkit_items(folder: Path, year_dirs: list[Path], split: str | None) -> list[VocItem]:
    if split is None:
        return [item for d in year_dirs for item in _voc_folder_items(d, None)]
    by_year = {_YEAR_DIR.fullmatch(d.name).group(1): d for d in year_dirs}  # type: ignore[union-attr]
    items = []
    for token in split.split("+"):
        year, name = _parse_split_token(token, split)
        targets = list(by_year.values()) if year is None else [by_year.get(year)]
        if targets == [None]:
            raise DataError(f"--split {split}: {folder} has no VOC{year}/ (found {', '.join(d.name for d in year_dirs)})")
        for year_dir in targets:
            items += _items_for_ids(year_dir, _split_ids(year_dir, name or "trainval"))  # type: ignore[arg-type]
    return items


def _parse_split_token(token: str, split: str) -> tuple[str | None, str | None]:
    """``"07"`` -> ("2007", None); ``"2012-val"`` -> ("2012", "val"); ``"test"`` -> (None, "test")."""
    match = _SPLIT_TOKEN.fullmatch(token.strip())
    if not token.strip() or match is None:
        raise UserError(f"--split {split}: cannot read '{token}'; use e.g. trainval, test, 07+12 or 2007-test")
    year, name = match.groups()
    if year is not None and len(year) == 2:
        year = "20" + year  # VOC years are 2005..2012
    return year, name


def _coco_jsons(folder: Path) -> list[Path]:
    jsons = sorted((folder / "annotations").glob("*.json")) + sorted(folder.glob("*.json"))
    instances = [j for j in jsons if j.name.startswith("instances")]
    return instances or jsons


def _pick_json(folder: Path, jsons: list[Path], split: str | None, root: Path) -> Path:
    names = ", ".join(j.name for j in jsons)
    if split is None or split_list(root, split) is not None:  # a split list filters the default json
        if len(jsons) == 1:
            return jsons[0]
        train = [j for j in jsons if "train" in j.stem]
        if len(train) == 1:
            return train[0]
        raise UserError(f"{folder} has several annotation files ({names}); choose one with --split")
    chosen = [j for j in jsons if j.stem.removeprefix("instances_").startswith(split)]
    if len(chosen) != 1:
        raise UserError(f"--split {split}: matches {len(chosen)} of the annotation files in {folder} ({names}); "
                        "name exactly one")
    return chosen[0]


def _plain_items(folder: Path, xml_dirs: list[Path], split: str | None) -> list[VocItem]:
    """Each XML's image may lie beside it, in a sibling folder (images/ first), or in ``folder``;
    with ``split``, only the XML stems listed in ``folder/ImageSets/Main/<split>.txt``."""
    siblings = sorted(subdirs(folder), key=lambda d: d.name.lower() not in ("images", "jpegimages", "imgs"))
    items = []
    for xml_dir in xml_dirs:
        image_dirs = tuple(dict.fromkeys([xml_dir, *siblings, folder]))
        items += [VocItem(x, image_dirs) for x in sorted(xml_dir.glob("*.xml"))]
    if split is None:
        return items
    if not (folder / "ImageSets" / "Main").is_dir():
        raise UserError(f"--split {split}: {folder} has no ImageSets/Main/*.txt split files; "
                        "leave --split out to read every annotation")
    wanted = set(_split_ids(folder, split))
    return [item for item in items if item.xml_path.stem in wanted]


def _nothing_found(folder: Path) -> str:
    """The "empty folder" message, naming what was found instead where that helps."""
    images, texts = 0, []
    for visited, (current, _, files) in enumerate(os.walk(folder)):
        images += sum(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files)
        texts += [Path(current, f) for f in files if f.endswith(".txt") and f not in ("README.txt", "LICENSE.txt")]
        if visited > 200:  # a bounded look, for the message only
            break
    if texts:
        nested = [t for t in texts if t.parent != folder]  # notes at the top are rarely annotations
        example = (nested or texts)[0].relative_to(folder)
        return (f"no annotations read in {folder}: found .txt annotation files (e.g. {example}) but no data.yaml, "
                "classes.txt or obj.names; YOLO labels need their class names (a data.yaml with names, or "
                "classes.txt beside images/ + labels/), and Cartucho-style text annotations (class names in the "
                f"lines) are not read ({EXPECTED})")
    if images:
        return f"{folder} has {images} images but no annotations; {EXPECTED}"
    return f"no images/annotations found in {folder}; {EXPECTED}"

