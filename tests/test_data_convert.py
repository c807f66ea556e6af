"""`ssd data convert`: lossless round trips between VOC, YOLO and COCO, a COCO json pycocotools
loads, links or copies, and never overwriting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ssdcli.cli.app import app
from ssdcli.data.convert import convert_dataset
from ssdcli.data.reader import load_dataset
from ssdcli.data.records import DetectionDataset
from ssdcli.errors import DataError

runner = CliRunner()


def assert_same_records(a: DetectionDataset, b: DetectionDataset, tol: float = 1e-3) -> None:
    """Same image files, sizes, classes in order, labels, difficult flags, boxes within ``tol`` px."""
    assert a.classes == b.classes
    assert [r.image_path.resolve() for r in a.records] == [r.image_path.resolve() for r in b.records]
    for ra, rb in zip(a.records, b.records):
        assert (ra.width, ra.height) == (rb.width, rb.height)
        assert ra.labels.tolist() == rb.labels.tolist()
        assert ra.difficult.tolist() == rb.difficult.tolist()
        np.testing.assert_allclose(ra.boxes_xyxy_px, rb.boxes_xyxy_px, atol=tol, rtol=0)


@pytest.fixture(scope="module")
def voc_sample(shared_data: Path) -> DetectionDataset:
    return load_dataset(shared_data / "voc2007_sample", verify_pixels=False)


def test_voc_to_yolo_to_coco_to_voc(voc_sample: DetectionDataset, tmp_path: Path) -> None:
    assert int(sum(r.difficult.sum() for r in voc_sample.records)) == 6  # the sample's difficult boxes
    convert_dataset(voc_sample, "yolo", tmp_path / "yolo")
    yolo = load_dataset(tmp_path / "yolo", verify_pixels=False)
    assert yolo.format == "yolo" and yolo.problems == []
    assert_same_records(voc_sample, yolo)
    convert_dataset(yolo, "coco", tmp_path / "coco")
    coco = load_dataset(tmp_path / "coco", verify_pixels=False)
    assert coco.format == "coco" and coco.problems == []
    assert_same_records(voc_sample, coco)
    convert_dataset(coco, "voc", tmp_path / "voc")
    back = load_dataset(tmp_path / "voc", verify_pixels=False)
    assert back.format == "voc" and back.problems == []
    assert_same_records(voc_sample, back)
    assert [r.image_id for r in back.records] == [r.image_id for r in voc_sample.records]
    # the sample's corners are integers: VOC -> YOLO -> COCO -> VOC writes them back exactly
    original = (Path(voc_sample.records[0].image_path).parents[1] / "Annotations" / "000001.xml").read_text()
    assert "<xmin>48</xmin>" in original and "<xmin>48</xmin>" in (tmp_path / "voc" / "Annotations" / "000001.xml").read_text()


def test_coco_output_loads_in_pycocotools(voc_sample: DetectionDataset, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    convert_dataset(voc_sample, "coco", tmp_path / "out", split="val")
    path = tmp_path / "out" / "annotations" / "instances_val.json"
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 13 and len(coco.getAnnIds()) == 41
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == voc_sample.classes
    # 000001: dog, VOC (48, 240, 195, 371) -> COCO [47, 239, 148, 132]
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    assert first["bbox"] == [47.0, 239.0, 148.0, 132.0] and first["category_id"] == 12
    assert len(load_dataset(tmp_path / "out", split="val", verify_pixels=False).records) == 13


def test_class_order_survives_voc(tmp_path: Path) -> None:
    from tests.test_data_yolo import write_image

    write_image(tmp_path / "y" / "images" / "a.jpg")
    (tmp_path / "y" / "labels").mkdir()
    (tmp_path / "y" / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.1\n")
    (tmp_path / "y" / "data.yaml").write_text("train: images\nnames: [zebra, apple]\n")  # not sorted
    source = load_dataset(tmp_path / "y")
    convert_dataset(source, "voc", tmp_path / "voc")
    back = load_dataset(tmp_path / "voc")
    assert back.classes == ["zebra", "apple"]  # from the classes.txt convert writes
    assert_same_records(source, back)


def test_links_copies_and_split_names(voc_sample: DetectionDataset, tmp_path: Path) -> None:
    linked = convert_dataset(voc_sample, "yolo", tmp_path / "linked", split="train")
    image = tmp_path / "linked" / "images" / "train" / "000001.jpg"
    assert linked.link == "symlink" and image.is_symlink() and image.resolve() == voc_sample.records[0].image_path.resolve()
    assert len(load_dataset(tmp_path / "linked", split="train", verify_pixels=False).records) == 13
    copied = convert_dataset(voc_sample, "voc", tmp_path / "copied", split="trainval", copy=True)
    image = tmp_path / "copied" / "JPEGImages" / "000001.jpg"
    assert copied.link == "copy" and not image.is_symlink() and image.read_bytes() == voc_sample.records[0].image_path.read_bytes()
    assert len(load_dataset(tmp_path / "copied", split="trainval", verify_pixels=False).records) == 13
    joined = convert_dataset(voc_sample, "yolo", tmp_path / "joined", split="07+12")
    assert joined.split == "07_12" and len(load_dataset(tmp_path / "joined", split="07_12").records) == 13


def test_never_overwrites(voc_sample: DetectionDataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "000005.txt").write_text("mine\n")
    with pytest.raises(DataError, match=r"000005.txt exists \(1 of the files to write do\); ssd data convert never overwrites"):
        convert_dataset(voc_sample, "yolo", out)
    assert (out / "labels" / "000005.txt").read_text() == "mine\n"
    assert sorted(p.name for p in out.rglob("*")) == ["000005.txt", "labels"]  # nothing else written


def test_crowd_regions_become_difficult_boxes(shared_data: Path, tmp_path: Path) -> None:
    coco = load_dataset(shared_data / "coco128", verify_pixels=False)
    crowd = int(sum(r.iscrowd.sum() for r in coco.records))
    result = convert_dataset(coco, "yolo", tmp_path / "y")
    assert result.notes == [f"{crowd} COCO crowd regions written as difficult boxes (YOLO has no crowd flag)"]
    back = load_dataset(tmp_path / "y", verify_pixels=False)
    assert back.classes == coco.classes
    assert int(sum(r.difficult.sum() for r in back.records)) == crowd == 10
    for a, b in zip(coco.records, back.records):
        np.testing.assert_allclose(a.boxes_xyxy_px, b.boxes_xyxy_px, atol=1e-3 * max(a.width, a.height) / 500)


def test_cli_convert(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bccd-yolo"
    result = runner.invoke(app, ["data", "convert", str(shared_data / "bccd" / "test.csv"), str(out), "--to", "yolo"])
    assert result.exit_code == 0, result.output
    assert "wrote 364 images (symlinked) and 4888 boxes of 3 classes as YOLO" in result.stdout
    assert "2 problems reading" in result.output  # BCCD's two 1-px boxes, kept with a warning
    again = runner.invoke(app, ["data", "convert", str(shared_data / "bccd" / "test.csv"), str(out), "--to", "yolo"])
    assert again.exit_code == 2 and "never overwrites" in again.output
    bad = runner.invoke(app, ["data", "convert", str(shared_data / "bccd"), str(tmp_path / "x"), "--to", "tfrecord"])
    assert bad.exit_code == 2
    assert json.loads(runner.invoke(app, ["data", "check", str(out), "--json", "-", "--no-decode"]).stdout)["num_boxes"] == 4888


def test_images_sharing_a_name_are_refused(tmp_path: Path) -> None:
    from tests.test_data_yolo import write_image

    for sub in ("a", "b"):
        write_image(tmp_path / "c" / "images" / sub / "same.jpg")
    images = [{"id": i, "file_name": f"{sub}/same.jpg", "width": 100, "height": 50} for i, sub in ((1, "a"), (2, "b"))]
    (tmp_path / "c" / "instances.json").write_text(json.dumps({"images": images, "annotations": [],
                                                                "categories": [{"id": 1, "name": "cat"}]}))
    source = load_dataset(tmp_path / "c" / "instances.json")
    assert len(source.records) == 2
    with pytest.raises(DataError, match=r"b/same.jpg and .*a/same.jpg would both be same.jpg in the output; rename one"):
        convert_dataset(source, "voc", tmp_path / "out")
    assert not (tmp_path / "out").exists()
