"""Bad-input corpus of issue 19 through the CLI: each dataset is built in tmp, run through
`ssd data check` / `ssd eval --detections` (and `ssd train`'s data reading), and must give its
one-line message and exit code, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ssdcli.cli.app import app

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def write_jpeg(path: Path, width: int = 100, height: int = 80, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def write_voc(root: Path, objects: dict[str, list[tuple]], size: tuple[int, int] | None = (100, 80)) -> Path:
    """Annotations/ + JPEGImages/, one 100x80 image per stem; objects ``(name, xmin, ymin, xmax,
    ymax)`` 1-based inclusive; ``size`` None leaves ``<size>`` out of the XML."""
    (root / "Annotations").mkdir(parents=True)
    for stem, boxes in objects.items():
        xml = "".join(
            f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for n, x1, y1, x2, y2 in boxes
        )
        size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename>{size_xml}{xml}</annotation>"
        )
        write_jpeg(root / "JPEGImages" / f"{stem}.jpg")
    return root


def exact_detections(objects: dict[str, list[tuple]], classes: list[str]) -> list[dict]:
    """One detection exactly on every box (1-based inclusive -> continuous xywh)."""
    return [
        {"image_id": stem, "category_id": classes.index(n) + 1,
         "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], "score": 0.9 - 0.01 * i}
        for stem, boxes in objects.items() for i, (n, x1, y1, x2, y2) in enumerate(boxes)
    ]


# ---------------------------------------------------------------------------------------------
# item 2: scoring saved detections needs no pixels


OBJECTS = {
    "a": [("apple", 1, 1, 40, 40)],
    "kangaroo": [("apple", 11, 11, 60, 60)],  # its JPEG is 20 bytes short
    "broken": [("apple", 21, 21, 70, 70), ("pear", 5, 5, 30, 30)],  # not an image at all
}


def bad_image_dataset(root: Path) -> Path:
    write_voc(root, OBJECTS)
    kangaroo = root / "JPEGImages" / "kangaroo.jpg"
    kangaroo.write_bytes(kangaroo.read_bytes()[:-20])
    (root / "JPEGImages" / "broken.jpg").write_bytes(b"\x00" * 50)
    return root


def test_eval_detections_keeps_images_that_cannot_be_decoded(tmp_path: Path) -> None:
    root = bad_image_dataset(tmp_path / "voc")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(exact_detections(OBJECTS, ["apple", "pear"])))
    result = run("eval", "--detections", dets, "--data", root, "--metric", "voc07", "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_images"] == 3 and metrics["voc07_map"] == pytest.approx(1.0)

    # Nothing detected on the broken image: its two objects are missed, not left out of recall.
    # apple: 3 gt, 2 found at precision 1 -> 11-point AP = 7/11 (recall 0, 0.1, ..., 0.6 reached);
    # pear: 1 gt, none found -> 0.
    dets.write_text(json.dumps([d for d in exact_detections(OBJECTS, ["apple", "pear"]) if d["image_id"] != "broken"]))
    result = run("eval", "--detections", dets, "--data", root, "--metric", "voc07", "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    per_class = json.loads((tmp_path / "m.json").read_text())["per_class"]
    assert per_class["apple"]["voc07_ap"] == pytest.approx(7 / 11) and per_class["pear"]["voc07_ap"] == 0.0


def test_data_check_warns_about_a_truncated_jpeg_and_keeps_it(tmp_path: Path) -> None:
    root = bad_image_dataset(tmp_path / "voc")
    result = run("data", "check", root, "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_images"] == 2  # a + kangaroo; broken cannot be trained on
    by_file = {Path(p["file"]).name: p for p in report["problems"]}
    assert by_file["kangaroo.jpg"]["severity"] == "warning" and "truncated" in by_file["kangaroo.jpg"]["message"]
    assert by_file["broken.jpg"]["severity"] == "warning" and "skipped" in by_file["broken.jpg"]["message"]


# ---------------------------------------------------------------------------------------------
# COCO json from elsewhere: items 7, 9, 10, 11


def coco_dataset(root: Path, data: dict | str, images: tuple[str, ...] = ("a.jpg",)) -> Path:
    """``root/annotations/instances_train.json`` (a dict, or raw json text) and ``root/images/``."""
    for name in images:
        write_jpeg(root / "images" / name)
    path = root / "annotations" / "instances_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return root


def coco_data(**changes) -> dict:
    """One 100x80 image (id 1) with one box of category 1 ('dog'); ``changes`` replace whole lists."""
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
    }
    return {**data, **changes}


def with_annotation(**fields) -> dict:
    return coco_data(annotations=[{**coco_data()["annotations"][0], **fields}])


def check_json(root: Path) -> tuple[int, dict | None, str]:
    result = run("data", "check", root, "--json", "-")
    try:
        return result.exit_code, json.loads(result.stdout), result.output
    except json.JSONDecodeError:
        return result.exit_code, None, result.output


DEEP = 200_000

MALFORMED = {
    # case: (json, the message's words after the file name)
    "400-digit id": (coco_data(images=[{"id": 10**400, "file_name": "a.jpg", "width": 100, "height": 80}]),
                     "images[0] 'id' must be an integer, got an integer of 401 digits"),
    "string and int category ids": (coco_data(categories=[{"id": 1, "name": "dog"}, {"id": "2", "name": "cat"}]),
                                    "categories[1] 'id' must be an integer, got '2'"),
    "image_id a list": (with_annotation(image_id=[1]), "annotations[0] 'image_id' must be an integer"),
    "file_name a number": (coco_data(images=[{"id": 1, "file_name": 12345, "width": 100, "height": 80}]),
                           "images[0] 'file_name' must be a string"),
    "200000-deep nesting": ('{"images": ' + "[" * DEEP + "]" * DEEP + ', "categories": []}', "JSON nested too deeply"),
    "category_id an object": (with_annotation(category_id={}), "annotations[0] 'category_id' must be an integer"),
    "width a string": (coco_data(images=[{"id": 1, "file_name": "a.jpg", "width": "100", "height": 80}]),
                       "images[0] 'width' must be a non-negative integer"),
    "iscrowd 2": (with_annotation(iscrowd=2), "annotations[0] 'iscrowd' must be 0 or 1, got 2"),
    "annotation not an object": (coco_data(annotations=["oops"]), "annotations[0] is a json str, not an object"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_coco_json_is_one_line_naming_file_entry_and_field(tmp_path: Path, case: str) -> None:
    data, expected = MALFORMED[case]
    root = coco_dataset(tmp_path / "coco", data)
    json_file = root / "annotations" / "instances_train.json"
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    for args in (("data", "check", root), ("eval", "--detections", dets, "--data", json_file)):
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "internal error" not in result.output, result.output
        assert f"{json_file}: {expected}" in " ".join(result.output.split()), result.output


def test_missing_area_is_an_error_for_coco_metrics_only(tmp_path: Path) -> None:
    annotation = {k: v for k, v in coco_data()["annotations"][0].items() if k != "area"}
    root = coco_dataset(tmp_path / "coco", coco_data(annotations=[annotation]))
    json_file = root / "annotations" / "instances_train.json"
    assert check_json(root)[0] == 0  # training does not need it
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "score": 0.9}]))
    assert run("eval", "--detections", dets, "--data", json_file, "--metric", "voc07").exit_code == 0
    result = run("eval", "--detections", dets, "--data", json_file, "--metric", "coco")
    assert result.exit_code == 2 and "internal error" not in result.output
    assert f"{json_file}: annotations[0] has no 'area'" in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[" * DEEP + "]" * DEEP, "nested too deeply"),
        (json.dumps([{"image_id": 1, "category_id": 1, "bbox": [10**400, 0, 5, 5], "score": 0.5}]),
         "detection 0: bbox"),
        (json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 10**400}]),
         "detection 0: score"),
    ],
)
def test_malformed_detections_file_is_one_line(tmp_path: Path, content: str, expected: str) -> None:
    root = coco_dataset(tmp_path / "coco", coco_data())
    dets = tmp_path / "dets.json"
    dets.write_text(content)
    result = run("eval", "--detections", dets, "--data", root)
    assert result.exit_code == 2 and "internal error" not in result.output, result.output
    assert f"{dets}: " in result.output and expected in result.output
    assert len(result.output) < 1000  # the 400-digit number is not printed in full


def test_coco_file_names_outside_the_image_folder_are_refused(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "secret.jpg", seed=1)  # a real image just outside the dataset
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "../../secret.jpg", "width": 100, "height": 80},
        {"id": 3, "file_name": str(tmp_path / "secret.jpg"), "width": 100, "height": 80},
        {"id": 4, "file_name": "/etc/passwd", "width": 100, "height": 80},
        {"id": 5, "file_name": "sub/../../secret.jpg", "width": 100, "height": 80},
        {"id": 6, "file_name": "sub/b.jpg", "width": 100, "height": 80},  # a subfolder is fine
    ]
    root = coco_dataset(tmp_path / "coco", coco_data(images=images), images=("a.jpg", "sub/b.jpg"))
    code, report, output = check_json(root)
    assert code == 1, output
    assert report["num_images"] == 2
    errors = [p["message"] for p in report["problems"] if p["severity"] == "error"]
    assert len(errors) == 4 and all("points outside the image folder" in m for m in errors)
    assert [m.split(":")[0] for m in errors] == ["image 2", "image 3", "image 4", "image 5"]
    assert not any("passwd" in p["file"] for p in report["problems"])  # never opened


def test_duplicate_image_ids_are_an_error(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
              {"id": 1, "file_name": "b.jpg", "width": 100, "height": 80}]
    root = coco_dataset(tmp_path / "coco", coco_data(images=images), images=("a.jpg", "b.jpg"))
    code, report, output = check_json(root)
    assert code == 1 and report["num_images"] == 1, output
    (error,) = [p["message"] for p in report["problems"] if p["severity"] == "error"]
    assert "image id 1 is used by 'a.jpg' and 'b.jpg'" in error


def test_annotations_on_missing_images_are_counted_in_a_warning(tmp_path: Path) -> None:
    annotation = coco_data()["annotations"][0]
    annotations = [annotation, {**annotation, "id": 2, "image_id": 9}, {**annotation, "id": 3, "image_id": 9},
                   {**annotation, "id": 4, "image_id": 12}]
    root = coco_dataset(tmp_path / "coco", coco_data(annotations=annotations))
    code, report, output = check_json(root)
    assert code == 0 and report["num_boxes"] == 1, output
    (warning,) = [p["message"] for p in report["problems"]]
    assert "3 annotations refer to image ids that are not in 'images' (e.g. 9, 12); dropped" in warning


def test_duplicate_category_names_are_an_error_unless_classes_says(tmp_path: Path) -> None:
    categories = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "circle"}]
    annotation = coco_data()["annotations"][0]
    annotations = [annotation, {**annotation, "id": 2, "category_id": 3}, {**annotation, "id": 3, "category_id": 2}]
    root = coco_dataset(tmp_path / "coco", coco_data(categories=categories, annotations=annotations))
    code, report, output = check_json(root)
    assert code == 1, output
    (error,) = [p["message"] for p in report["problems"] if p["severity"] == "error"]
    assert "categories 1, 3 are all named 'circle'" in error and "--classes" in error

    classes = tmp_path / "classes.txt"
    classes.write_text("circle\nsquare\n")
    result = run("data", "check", root, "--classes", classes, "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["classes"] == ["circle", "square"] and report["boxes_per_class"] == {"circle": 2, "square": 1}
    (warning,) = [p["message"] for p in report["problems"]]
    assert "read as the one class 'circle'" in warning and "id 1" in warning


def train_refuses(root: Path, tmp_path: Path) -> str:
    result = run("train", "--data", root, "--epochs", "1", "--arch", "ssdlite320", "--device", "cpu",
                 "--output", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "run").exists()
    return " ".join(result.output.split())


def test_a_dataset_without_a_usable_box_cannot_train(tmp_path: Path) -> None:
    # VOC: every box inverted, so every box is dropped
    voc = write_voc(tmp_path / "voc", {"a": [("apple", 40, 40, 10, 10)], "b": [("apple", 30, 5, 20, 50)]})
    code, report, output = check_json(voc)
    assert code == 1, output
    (error,) = [p["message"] for p in report["problems"] if p["severity"] == "error"]
    assert "nothing to train on" in error and "dropped" in error
    assert "nothing to train on" in train_refuses(voc, tmp_path)

    # COCO: only crowd boxes
    crowd = coco_dataset(tmp_path / "coco", with_annotation(iscrowd=1))
    code, report, output = check_json(crowd)
    assert code == 1, output
    (error,) = [p["message"] for p in report["problems"] if p["severity"] == "error"]
    assert "its 1 boxes are all iscrowd" in error
    assert "nothing to train on" in train_refuses(crowd, tmp_path)

    # one usable box among them is enough
    crowd_and_box = coco_dataset(tmp_path / "coco2", coco_data(annotations=[
        {**coco_data()["annotations"][0], "iscrowd": 1}, {**coco_data()["annotations"][0], "id": 2}]))
    assert check_json(crowd_and_box)[0] == 0
