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
