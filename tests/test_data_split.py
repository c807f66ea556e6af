"""`ssd data split`: reproducible, stratified by the rarest class, written in each format's own
convention so that --split reads it back, and never replacing a split without --force."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ssdcli.cli.app import app
from ssdcli.data.reader import load_dataset
from ssdcli.data.records import ImageRecord
from ssdcli.data.split import assign_splits, write_split
from ssdcli.errors import DataError, UserError

runner = CliRunner()


def record(image_id: str, labels: list[int]) -> ImageRecord:
    n = len(labels)
    return ImageRecord(Path(f"{image_id}.jpg"), image_id, 10, 10, np.zeros((n, 4), np.float32),
                       np.array(labels, np.int64), np.zeros(n, bool), np.zeros(n, bool))


def many_records() -> list[ImageRecord]:
    """200 images: class 3 in 3 of them (rare), class 2 in 20, class 1 in the others, 10 negatives."""
    records = []
    for i in range(200):
        labels = [3, 1] if i < 3 else [1, 2] if i % 10 == 0 else [] if i >= 190 else [1, 1]
        records.append(record(f"im{i:03d}", labels))
    return records


def images_with(records, assigned, cls: int) -> list[int]:
    return [sum(1 for r, a in zip(records, assigned) if a == k and cls in r.labels) for k in range(3)]


def test_assignment_is_stratified_and_follows_the_fractions() -> None:
    records = many_records()
    assigned = assign_splits(records, 3, val=0.2, test=0.1, seed=0)
    assert np.bincount(assigned).tolist() == [140, 40, 20]  # 0.7 / 0.2 / 0.1 of 200
    assert images_with(records, assigned, 3) == [1, 1, 1]  # the rare class in every split
    train, val, test = images_with(records, assigned, 2)  # 19 images have class 2 as rarest
    assert min(train, val, test) >= 1 and train + val + test == 19
    negatives = [a for r, a in zip(records, assigned) if r.num_boxes == 0]
    assert sorted(set(negatives)) == [0, 1, 2]  # background-only images are shared out too


def test_assignment_is_reproducible_and_order_independent() -> None:
    records = many_records()
    first = assign_splits(records, 3, 0.2, 0.1, seed=0)
    np.testing.assert_array_equal(first, assign_splits(records, 3, 0.2, 0.1, seed=0))
    np.testing.assert_array_equal(first, assign_splits(records[::-1], 3, 0.2, 0.1, seed=0)[::-1])
    assert not np.array_equal(first, assign_splits(records, 3, 0.2, 0.1, seed=1))


def test_tiny_groups() -> None:
    # one image: train; two images of a class: one train, one val; no test asked: no test
    assert assign_splits([record("a", [1])], 1, 0.2).tolist() == [0]
    assert sorted(assign_splits([record("a", [1]), record("b", [1])], 1, 0.2).tolist()) == [0, 1]
    assert sorted(assign_splits([record(c, [1]) for c in "abc"], 1, 0.2, 0.1).tolist()) == [0, 1, 2]


@pytest.mark.parametrize(("val", "test"), [(1.0, 0.0), (-0.1, 0.0), (0.0, 0.0), (0.6, 0.4), (0.2, 1.2)])
def test_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(UserError, match="each must be in"):
        assign_splits([record("a", [1])], 1, val, test)


# ---------------------------------------------------------------- each format's lists


def linked_voc(shared_data: Path, root: Path) -> Path:
    """A VOC folder in tmp whose files are links to the shared sample (which is read-only)."""
    sample = shared_data / "voc2007_sample" / "VOC2007"
    for sub in ("Annotations", "JPEGImages"):
        (root / sub).mkdir(parents=True)
        for f in (sample / sub).iterdir():
            os.symlink(f, root / sub / f.name)
    return root


def ids(dataset) -> set:
    return {r.image_id for r in dataset.records}


def test_voc_split_reads_back_and_refuses_to_clobber(shared_data: Path, tmp_path: Path) -> None:
    root = linked_voc(shared_data, tmp_path / "VOC2007")
    result = write_split(root, val=0.3, seed=0)
    main = root / "ImageSets" / "Main"
    assert sorted(p.name for p in main.iterdir()) == ["train.txt", "trainval.txt", "val.txt"]
    train, val = load_dataset(root, split="train"), load_dataset(root, split="val")
    everything = ids(load_dataset(root))
    assert ids(train) | ids(val) == everything and not ids(train) & ids(val)
    assert ids(load_dataset(root, split="trainval")) == everything
    assert (len(train.records), len(val.records)) == (result.num_images["train"], result.num_images["val"]) == (9, 4)
    boxes = {name: sum(counts) for name, counts in result.boxes_per_class.items()}
    assert boxes["train"] + boxes["val"] == 41 and boxes["test"] == 0
    before = (main / "val.txt").read_text()
    with pytest.raises(DataError, match=r"train.txt exists: the dataset has a split already; give --force"):
        write_split(root, val=0.3, seed=5)
    assert (main / "val.txt").read_text() == before
    write_split(root, val=0.3, test=0.2, seed=5, force=True)
    assert (main / "test.txt").is_file() and (main / "val.txt").read_text() != before


def test_plain_xml_folder_split(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "raccoon"
    (root / "annotations").mkdir(parents=True)
    for f in sorted((shared_data / "raccoon" / "annotations").iterdir())[:20]:
        os.symlink(f, root / "annotations" / f.name)
    os.symlink(shared_data / "raccoon" / "images", root / "images")
    write_split(root, val=0.25)
    assert len(load_dataset(root, split="val", verify_pixels=False).records) == 5
    assert len(load_dataset(root, split="train", verify_pixels=False).records) == 15


def test_yolo_folder_gets_a_data_yaml(tmp_path: Path) -> None:
    from tests.test_data_yolo import write_image

    for i in range(10):
        write_image(tmp_path / "images" / f"{i}.jpg")
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.2 0.2\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    write_split(tmp_path, val=0.2, test=0.2)
    assert (tmp_path / "val.txt").read_text().splitlines()[0].startswith("./images/")
    train, val, test = (load_dataset(tmp_path, split=s) for s in ("train", "val", "test"))
    assert (len(train.records), len(val.records), len(test.records)) == (6, 2, 2)
    assert train.problems == [] and train.classes == ["cat", "dog"]
    assert load_dataset(tmp_path).format == "yolo"  # the new data.yaml; default split: train
    with pytest.raises(DataError, match=r"data.yaml has a 'val' split already; give --force"):
        write_split(tmp_path, val=0.2)
    write_split(tmp_path, val=0.3, force=True)  # pools train + val + test again, no test this time
    assert not (tmp_path / "test.txt").exists()
    assert len(load_dataset(tmp_path, split="val").records) == 3


def test_csv_split_lists(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(shared_data / "raccoon" / "data" / "raccoon_labels.csv", tmp_path / "data")
    os.symlink(shared_data / "raccoon" / "images", tmp_path / "images")
    csv_file = tmp_path / "data" / "raccoon_labels.csv"
    result = write_split(csv_file, val=0.2, seed=3)
    assert result.num_images == {"train": 160, "val": 40, "test": 0}
    val = load_dataset(csv_file, split="val", verify_pixels=False)
    train = load_dataset(tmp_path / "data", split="train", verify_pixels=False)
    assert len(val.records) == 40 and len(train.records) == 160 and not ids(train) & ids(val)
    assert val.problems == []
    with pytest.raises(DataError, match=r"splits/train.txt exists: the dataset has a split already"):
        write_split(csv_file, val=0.3)


def test_coco_split_lists(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    os.symlink(shared_data / "coco128" / "annotations" / "instances_train2017.json",
               tmp_path / "annotations" / "instances_train2017.json")
    os.symlink(shared_data / "coco128" / "train2017", tmp_path / "train2017")
    write_split(tmp_path, val=0.25)
    assert (tmp_path / "splits" / "val.txt").read_text().splitlines()[0].endswith(".jpg")
    val = load_dataset(tmp_path, split="val", verify_pixels=False)
    train = load_dataset(tmp_path, split="train", verify_pixels=False)
    assert len(train.records) + len(val.records) == 128 and not ids(train) & ids(val)
    assert all(isinstance(r.image_id, int) for r in val.records)  # COCO keeps the json's ids
    # 71 classes in 128 images: every class that is the rarest class of 2 or more images is in
    # both splits, which takes val above the 32 images asked (rare classes come first)
    everything = load_dataset(tmp_path, verify_pixels=False)
    images_of = {k: sum(k in r.labels for r in everything.records) for k in range(1, everything.num_classes + 1)}
    rarest = [min(set(r.labels.tolist()), key=lambda k: (images_of[k], k)) for r in everything.records if r.num_boxes]
    groups = {k: rarest.count(k) for k in set(rarest)}
    in_val = {k for r in val.records for k in r.labels.tolist()}
    in_train = {k for r in train.records for k in r.labels.tolist()}
    assert {k for k, n in groups.items() if n >= 2} <= in_val & in_train
    assert set(groups) <= in_train
    assert 32 <= len(val.records) <= 40


def test_cli_prints_counts_and_refuses_twice(shared_data: Path, tmp_path: Path) -> None:
    root = linked_voc(shared_data, tmp_path / "voc")
    result = runner.invoke(app, ["data", "split", str(root), "--val", "0.3"])
    assert result.exit_code == 0, result.output
    assert "images" in result.stdout and "person" in result.stdout and "train" in result.stdout
    again = runner.invoke(app, ["data", "split", str(root), "--val", "0.3"])
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output
    devkit = tmp_path / "VOCdevkit"
    for year in ("VOC2007", "VOC2012"):
        linked_voc(shared_data, devkit / year)
    several = runner.invoke(app, ["data", "split", str(devkit)])
    assert several.exit_code == 2 and "split one year folder" in several.output
