"""YOLO reader: the same records as the VOC reader on data written in tmp from the shared VOC
sample, ultralytics' data.yaml conventions, plain folders, and one test per bad input of issue 15."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ssdcli.cli.app import app
from ssdcli.data.reader import load_dataset
from ssdcli.data.records import DetectionDataset
from ssdcli.data.yolo_layout import label_path
from ssdcli.errors import DataError

runner = CliRunner()


def assert_same_records(a: DetectionDataset, b: DetectionDataset, tol: float = 1e-3) -> None:
    """Same images (by file name), sizes, labels, difficult flags and boxes within ``tol`` px."""
    assert a.classes == b.classes
    assert [r.image_path.name for r in a.records] == [r.image_path.name for r in b.records]
    for ra, rb in zip(a.records, b.records):
        assert (ra.image_id, ra.width, ra.height) == (rb.image_id, rb.width, rb.height)
        assert ra.labels.tolist() == rb.labels.tolist()
        assert ra.difficult.tolist() == rb.difficult.tolist()
        np.testing.assert_allclose(ra.boxes_xyxy_px, rb.boxes_xyxy_px, atol=tol, rtol=0)


def write_image(path: Path, width: int = 100, height: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 30)).save(path)
    return path


def yolo_from_voc(voc: DetectionDataset, root: Path, subset: str = "") -> None:
    """images/<subset>/ (symlinks) + labels/<subset>/*.txt written with the plain formula
    cx = (x1 + x2) / 2 / W, w = (x2 - x1) / W from the VOC reader's records (difficult boxes left
    out: YOLO has no flag)."""
    for record in voc.records:
        image = root / "images" / subset / record.image_path.name
        image.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(record.image_path, image)
        lines = []
        for (x1, y1, x2, y2), label, difficult in zip(record.boxes_xyxy_px.tolist(), record.labels, record.difficult):
            if not difficult:
                W, H = record.width, record.height
                lines.append(f"{label - 1} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} {(x2 - x1) / W:.6f} {(y2 - y1) / H:.6f}")
        label_file = root / "labels" / subset / f"{record.image_path.stem}.txt"
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("\n".join(lines) + ("\n" if lines else ""))


def without_difficult(dataset: DetectionDataset) -> DetectionDataset:
    from dataclasses import replace

    records = [replace(r, boxes_xyxy_px=r.boxes_xyxy_px[~r.difficult], labels=r.labels[~r.difficult],
                       difficult=r.difficult[~r.difficult], iscrowd=r.iscrowd[~r.difficult]) for r in dataset.records]
    return DetectionDataset(dataset.format, dataset.root, dataset.classes, records)


@pytest.fixture(scope="module")
def voc_sample(shared_data: Path) -> DetectionDataset:
    return load_dataset(shared_data / "voc2007_sample", verify_pixels=False)


# ---------------------------------------------------------------- the same records as VOC


def test_data_yaml_gives_the_voc_records(voc_sample: DetectionDataset, tmp_path: Path) -> None:
    yolo_from_voc(voc_sample, tmp_path, "train")
    names = "".join(f"  {k}: {name}\n" for k, name in enumerate(voc_sample.classes))
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/train\nnc: 20\nnames:\n{names}")
    for source in (tmp_path / "data.yaml", tmp_path):
        dataset = load_dataset(source, verify_pixels=False)
        assert dataset.format == "yolo" and dataset.problems == []
        # 6 decimals of a 500-px image: |error| <= 0.5e-6 * 500 * 1.5 < 1e-3 px
        assert_same_records(without_difficult(voc_sample), dataset)
    assert [r.image_id for r in dataset.records][:2] == ["000001", "000002"]  # stems, as VOC


def test_plain_folder_with_classes_txt_gives_the_voc_records(voc_sample: DetectionDataset, tmp_path: Path) -> None:
    yolo_from_voc(voc_sample, tmp_path)
    (tmp_path / "classes.txt").write_text("\n".join(voc_sample.classes) + "\n")
    dataset = load_dataset(tmp_path, verify_pixels=False)
    assert dataset.format == "yolo" and dataset.problems == []
    assert_same_records(without_difficult(voc_sample), dataset)


def test_side_by_side_with_obj_names(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")  # 100 x 50
    (tmp_path / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (tmp_path / "obj.names").write_text("cat\ndog\n")
    dataset = load_dataset(tmp_path)
    # cx 50 +- 10, cy 25 +- 10
    np.testing.assert_allclose(dataset.records[0].boxes_xyxy_px, [[40, 15, 60, 35]], atol=1e-4)
    assert dataset.records[0].labels.tolist() == [2] and dataset.classes == ["cat", "dog"]


# ---------------------------------------------------------------- data.yaml conventions


def small_yolo(root: Path, splits=("train", "val")) -> Path:
    """images/<split>/a.jpg (100x50) with a label 0 box; names [cat, dog]."""
    for split in splits:
        write_image(root / "images" / split / f"{split}_a.jpg")
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"{split}_a.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    return root


def test_split_keys_lists_txt_lists_and_names_mapping(tmp_path: Path) -> None:
    root = small_yolo(tmp_path / "d", ("train", "extra", "val"))
    (root / "val.txt").write_text("./images/val/val_a.jpg\n\nimages/train/train_a.jpg\n")
    (tmp_path / "d" / "data.yaml").write_text(
        "train: [images/train, images/extra]\nval: val.txt\nnames: {0: cat, 1: dog}\n")
    train = load_dataset(root, split="train")
    assert [r.image_id for r in train.records] == ["train_a", "extra_a"]
    val = load_dataset(root / "data.yaml", split="val")
    assert [r.image_id for r in val.records] == ["val_a", "train_a"]  # list order, ./ and root-relative
    both = load_dataset(root, split="train+val")
    assert len(both.records) == 3 and both.problems == []  # train_a once
    with pytest.raises(DataError, match=r"--split test: .* has no 'test' entry \(it has train, val\)"):
        load_dataset(root, split="test")


def test_relative_path_and_roboflow_parent_entries(tmp_path: Path) -> None:
    small_yolo(tmp_path / "ds")
    (tmp_path / "ds" / "cfg").mkdir()
    (tmp_path / "ds" / "cfg" / "data.yaml").write_text("path: ..\ntrain: ../images/train\nnames: [cat, dog]\n")
    dataset = load_dataset(tmp_path / "ds" / "cfg" / "data.yaml")  # path relative to the yaml; ../ fallback
    assert [r.image_id for r in dataset.records] == ["train_a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: images/train\n", r"no 'names' \(the class list\)"),
        ("train: images/train\nnames: [cat, dog]\nnc: 3\n", r"nc is 3 but 'names' lists 2 classes"),
        ("train: images/train\nnames: {0: cat, 2: dog}\n", r"index 1 is missing"),
        ("train: images/train\nnames: [cat, cat]\n", r"more than once in 'names': cat"),
        ("train: images/nowhere\nnames: [cat]\n", r"no images for split 'train' \(train: 'images/nowhere' not found"),
        ("train: [images/train\nnames: [cat]\n", r"malformed YAML at line \d"),
        ("- just\n- a list\n", r"not a YOLO data.yaml"),
        ("path: /no/such/root\ntrain: images\nnames: [a]\n", r"path '/no/such/root' is not a folder"),
    ],
)
def test_bad_yaml_is_a_data_error(tmp_path: Path, text: str, message: str) -> None:
    small_yolo(tmp_path)
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "data.yaml")


def test_missing_folder_among_several_is_an_error_entry(tmp_path: Path) -> None:
    small_yolo(tmp_path)
    (tmp_path / "data.yaml").write_text("train: [images/train, images/gone]\nnames: [cat]\n")
    dataset = load_dataset(tmp_path / "data.yaml")
    assert len(dataset.records) == 1
    assert [(p.severity, p.message) for p in dataset.problems] == [
        ("error", f"train: 'images/gone' not found ({tmp_path / 'images' / 'gone'}); entry skipped")]


def test_yaml_is_read_with_safe_load(tmp_path: Path) -> None:
    small_yolo(tmp_path)
    (tmp_path / "data.yaml").write_text("train: !!python/object/apply:os.system ['echo pwned']\nnames: [cat]\n")
    with pytest.raises(DataError, match="malformed YAML"):
        load_dataset(tmp_path / "data.yaml")


def test_label_path_rule() -> None:
    assert label_path(Path("/d/images/train/a.b.jpg")) == Path("/d/labels/train/a.b.txt")
    assert label_path(Path("/images/x/images/a.png")) == Path("/images/x/labels/a.txt")  # the last images/
    assert label_path(Path("/d/pics/a.jpg")) == Path("/d/pics/a.txt")  # no images/: beside it


# ---------------------------------------------------------------- label lines


def one_image(tmp_path: Path, lines: str, names: str = "cat\ndog\n", size=(100, 50)) -> DetectionDataset:
    write_image(tmp_path / "images" / "a.jpg", *size)
    (tmp_path / "labels").mkdir(exist_ok=True)
    (tmp_path / "labels" / "a.txt").write_text(lines)
    (tmp_path / "classes.txt").write_text(names)
    return load_dataset(tmp_path)


def messages(dataset: DetectionDataset, severity: str | None = None) -> list[str]:
    return [p.message for p in dataset.problems if severity is None or p.severity == severity]


def test_negatives_without_label_file_or_with_an_empty_one(tmp_path: Path) -> None:
    small_yolo(tmp_path, ("train",))
    write_image(tmp_path / "images" / "train" / "no_label.jpg")
    write_image(tmp_path / "images" / "train" / "empty.jpg")
    (tmp_path / "labels" / "train" / "empty.txt").write_text("")
    (tmp_path / "classes.txt").write_text("cat\n")
    dataset = load_dataset(tmp_path, split="train")
    assert sorted((r.image_id, r.num_boxes) for r in dataset.records) == [("empty", 0), ("no_label", 0), ("train_a", 1)]
    assert messages(dataset) == [f"1 images have no label file (e.g. {tmp_path / 'labels/train/no_label.txt'}) and 1 "
                                 "an empty one: read as negatives (background only)"]
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--split", "train"])
    assert result.exit_code == 0 and "2 without boxes: negatives" in result.output


def test_segmentation_polygon_becomes_its_box(tmp_path: Path) -> None:
    dataset = one_image(tmp_path, "0 0.1 0.2 0.5 0.2 0.3 0.9\n1 0.5 0.5 0.2 0.2\n")
    # x 0.1..0.5 of 100, y 0.2..0.9 of 50
    np.testing.assert_allclose(dataset.records[0].boxes_xyxy_px, [[10, 10, 50, 45], [40, 20, 60, 30]], atol=1e-4)
    assert messages(dataset) == ["1 segmentation polygons read as their bounding boxes"]


def test_keypoint_lines_use_the_box(tmp_path: Path) -> None:
    small_yolo(tmp_path, ("train",))
    (tmp_path / "labels/train/train_a.txt").write_text("0 0.5 0.5 0.2 0.4 0.1 0.1 2 0.2 0.2 2\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nkpt_shape: [2, 3]\nnames: [person]\n")
    dataset = load_dataset(tmp_path)
    np.testing.assert_allclose(dataset.records[0].boxes_xyxy_px, [[40, 15, 60, 35]], atol=1e-4)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "line 2: expected 5 numbers (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...), got 4"),
        ("0 0.5 0.5 0.2 0.2 0.3", "line 2: expected 5 numbers"),
        ("2 0.5 0.5 0.2 0.2", "line 2: class index 2 is not one of 0..1 (2 names)"),
        ("-1 0.5 0.5 0.2 0.2", "line 2: class index -1 is not one of 0..1"),
        ("0.5 0.5 0.5 0.2 0.2", "line 2: class index 0.5 is not one of 0..1"),
        ("0 0.5 abc 0.2 0.2", "line 2: 'abc' is not a number"),
        ("0 0.5 nan 0.2 0.2", "line 2: non-finite value in 0 0.5 nan 0.2 0.2"),
        ("1 inf 0.5 0.2 0.2", "line 2: non-finite value"),
    ],
)
def test_bad_line_is_an_error_with_its_line_and_the_rest_is_read(tmp_path: Path, line: str, message: str) -> None:
    dataset = one_image(tmp_path, f"0 0.5 0.5 0.2 0.4\n{line}\n")
    assert dataset.records[0].num_boxes == 1  # the good line
    [problem] = dataset.problems
    assert problem.severity == "error" and problem.file == str(tmp_path / "labels" / "a.txt")
    assert problem.message.startswith(message) and problem.message.endswith("; line skipped")


def test_coordinates_outside_0_1_are_clipped_with_a_warning(tmp_path: Path) -> None:
    dataset = one_image(tmp_path, "0 0.95 0.5 0.2 0.4\n1 1.5 0.5 0.2 0.2\n0 0.5 0.5 1.0000001 0.2\n")
    # line 1: x 0.85..1.05 -> 0.85..1 (85..100 px); line 2 lies right of the image; line 3 within rounding
    np.testing.assert_allclose(dataset.records[0].boxes_xyxy_px, [[85, 15, 100, 35], [0, 20, 100, 30]], atol=1e-3)
    assert messages(dataset, "warning") == [
        "line 1 'cat': coordinates outside [0, 1] (corners 0.85, 0.3, 1.05, 0.7); clipped",
        "line 2 'dog': box lies outside the image (corners 1.4, 0.4, 1.6, 0.6); dropped",
    ]


def test_zero_size_box_is_dropped(tmp_path: Path) -> None:
    dataset = one_image(tmp_path, "0 0.5 0.5 0 0.2\n")
    assert dataset.records[0].num_boxes == 0
    assert messages(dataset) == [
        "line 1 'cat': zero-area or inverted box; box dropped",
        # the dataset-level rule of every reader: nothing left to train on
        "nothing to train on: it has no usable box and the reader dropped the others in 1 image; "
        "training would learn nothing (loss 0)",
    ]


def test_duplicate_lines_are_dropped(tmp_path: Path) -> None:
    dataset = one_image(tmp_path, "0 0.5 0.5 0.2 0.4\n1 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 0.4\n")
    assert dataset.records[0].labels.tolist() == [1, 2]
    assert messages(dataset) == ["line 3: same box as line 1; dropped"]


def test_label_file_with_no_image(tmp_path: Path) -> None:
    dataset = one_image(tmp_path, "0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    dataset = load_dataset(tmp_path)
    assert [(p.file, p.message) for p in dataset.problems] == [
        (str(tmp_path / "labels" / "ghost.txt"), "label file with no image; not read")]


def test_classes_file_overrides_names(tmp_path: Path) -> None:
    one_image(tmp_path, "0 0.5 0.5 0.2 0.4\n1 0.5 0.5 0.2 0.2\n")
    dataset = load_dataset(tmp_path, classes=["dog"])
    assert dataset.classes == ["dog"] and dataset.records[0].labels.tolist() == [1]
    assert messages(dataset) == ["line 1: class 'cat' is not in the class list; box dropped"]


def test_folder_without_names_and_unknown_split(tmp_path: Path) -> None:
    small_yolo(tmp_path)
    with pytest.raises(DataError, match=r"YOLO labels without class names; write them, .*classes.txt"):
        load_dataset(tmp_path)
    (tmp_path / "classes.txt").write_text("cat\n")
    assert len(load_dataset(tmp_path, split="val").records) == 1
    with pytest.raises(DataError, match=r"--split test: .* no data.yaml and no .*images/test/ folder"):
        load_dataset(tmp_path, split="test")


def test_cli_unreadable_yaml_is_one_line_exit_2(tmp_path: Path) -> None:
    small_yolo(tmp_path)
    (tmp_path / "data.yaml").write_text("train: images/train\n")
    result = runner.invoke(app, ["data", "check", str(tmp_path / "data.yaml")])
    assert result.exit_code == 2
    assert "no 'names'" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message (rich may wrap it)


def test_xml_folder_with_a_classes_txt_stays_voc(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text("<annotation><filename>a.jpg</filename><object><name>cat</name><bndbox>"
                                    "<xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    (tmp_path / "classes.txt").write_text("cat\n")
    (tmp_path / "notes.txt").write_text("labelled by hand\n")
    assert load_dataset(tmp_path).format == "voc"
