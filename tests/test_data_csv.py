"""CSV reader: raccoon's and BCCD's files as they are (box counts counted here with the csv
module), the same records as the VOC reader, and one test per bad input of issue 15."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ssdcli.cli.app import app
from ssdcli.data.reader import load_dataset
from ssdcli.data.records import DetectionDataset
from ssdcli.errors import DataError, UserError

runner = CliRunner()


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_records(a: DetectionDataset, b: DetectionDataset, tol: float = 1e-3) -> None:
    assert a.classes == b.classes
    by_id = {r.image_id: r for r in b.records}
    assert sorted(by_id) == sorted(r.image_id for r in a.records)
    for ra in a.records:
        rb = by_id[ra.image_id]
        assert (ra.image_path.resolve(), ra.width, ra.height) == (rb.image_path.resolve(), rb.width, rb.height)
        order_a, order_b = np.lexsort(ra.boxes_xyxy_px.T), np.lexsort(rb.boxes_xyxy_px.T)  # rows may be in any order
        assert ra.labels[order_a].tolist() == rb.labels[order_b].tolist()
        np.testing.assert_allclose(ra.boxes_xyxy_px[order_a], rb.boxes_xyxy_px[order_b], atol=tol, rtol=0)


# ---------------------------------------------------------------- the real files


@pytest.mark.parametrize(("name", "split"), [("raccoon_labels.csv", None), ("train_labels.csv", "train"),
                                             ("test_labels.csv", "test")])
def test_raccoon_csvs_read_as_they_are(shared_data: Path, name: str, split: str | None) -> None:
    path = shared_data / "raccoon" / "data" / name
    rows = csv_rows(path)
    for source in (path, path.parent):  # the file, or the folder and --split
        dataset = load_dataset(source, split=split if source.is_dir() else None, verify_pixels=False)
        assert dataset.format == "csv" and dataset.classes == ["raccoon"]
        assert sum(r.num_boxes for r in dataset.records) == len(rows)  # 217 / 173 / 44
        assert len(dataset.records) == len({row["filename"] for row in rows})
        assert all(p.severity == "warning" for p in dataset.problems)


def test_raccoon_csv_gives_the_xml_records(shared_data: Path) -> None:
    from_csv = load_dataset(shared_data / "raccoon" / "data" / "raccoon_labels.csv", verify_pixels=False)
    from_xml = load_dataset(shared_data / "raccoon", verify_pixels=False)
    assert from_csv.problems == [] and len(from_csv.records) == 200
    assert_same_records(from_xml, from_csv)


def test_bccd_test_csv_reads_as_it_is(shared_data: Path) -> None:
    path = shared_data / "bccd" / "test.csv"
    rows = csv_rows(path)  # its columns: filename,cell_type,xmin,xmax,ymin,ymax
    corners = [(int(r["xmin"]), int(r["ymin"]), int(r["xmax"]), int(r["ymax"])) for r in rows]
    inverted = sum(x2 < x1 or y2 < y1 for x1, y1, x2, y2 in corners)
    one_pixel = sum(x2 == x1 or y2 == y1 for x1, y1, x2, y2 in corners)
    dataset = load_dataset(path, verify_pixels=False)
    assert dataset.classes == ["Platelets", "RBC", "WBC"]
    assert len(dataset.records) == len({r["filename"] for r in rows}) == 364
    # BCCD's two xmin == xmax boxes are 1-px boxes in VOC's inclusive corners (kept, warned)
    assert (inverted, one_pixel) == (0, 2)
    assert sum(r.num_boxes for r in dataset.records) == len(rows) == 4888
    per_class = {name: sum(int((r.labels == k).sum()) for r in dataset.records) for k, name in enumerate(dataset.classes, 1)}
    assert per_class == {name: sum(r["cell_type"] == name for r in rows) for name in dataset.classes}
    assert [p.severity for p in dataset.problems] == ["warning", "warning"]
    assert "a 1-pixel box" in dataset.problems[0].message


def test_bccd_csv_gives_the_xml_boxes(shared_data: Path) -> None:
    from_csv = load_dataset(shared_data / "bccd" / "test.csv", verify_pixels=False)
    from_xml = load_dataset(shared_data / "bccd", verify_pixels=False)
    # images where the VOC reader dropped nothing (it may treat BCCD's two 1-px boxes differently)
    dropped = {Path(p.file).stem for p in from_xml.problems}
    keep = lambda d: DetectionDataset(d.format, d.root, d.classes, [r for r in d.records if r.image_id not in dropped])  # noqa: E731
    assert len(dropped) == 2
    assert_same_records(keep(from_xml), keep(from_csv))


# ---------------------------------------------------------------- small files


def write_image(path: Path, width: int = 100, height: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (10, 20, 30)).save(path)
    return path


def small_csv(tmp_path: Path, body: str, header: str = "filename,class,xmin,ymin,xmax,ymax", images=("a.jpg", "b.jpg")) -> Path:
    for name in images:
        write_image(tmp_path / "images" / name)
    path = tmp_path / "boxes.csv"
    path.write_text(header + "\n" + body)
    return path


def messages(dataset: DetectionDataset) -> list[str]:
    return [p.message for p in dataset.problems]


def test_voc_and_pixel_corners(tmp_path: Path) -> None:
    path = small_csv(tmp_path, "a.jpg,cat,1,1,40,20\n", images=("a.jpg",))
    np.testing.assert_array_equal(load_dataset(path).records[0].boxes_xyxy_px, [[0, 0, 40, 20]])  # VOC: (xmin - 1, ...)
    np.testing.assert_array_equal(load_dataset(path, csv_coords="pixels").records[0].boxes_xyxy_px, [[1, 1, 40, 20]])


def test_columns_any_order_any_case_and_sizes(tmp_path: Path) -> None:
    path = small_csv(tmp_path, "10,5,30,20,cat,a.jpg,99,50\n", header="XMin,YMin,xmax,Ymax,Label,Image,width,height")
    dataset = load_dataset(path)
    np.testing.assert_array_equal(dataset.records[0].boxes_xyxy_px, [[9, 4, 30, 20]])
    assert messages(dataset) == [
        "a.jpg: the annotation says 99x50 but the image is 100x50; using the image's size",
        f"1 images (e.g. {tmp_path / 'images' / 'b.jpg'}) appear in no row of the CSV: not part of the dataset",
    ]
    assert load_dataset(path, check_images=False).records[0].width == 99  # trusted without reading headers


def test_missing_columns_lists_found_and_accepted(tmp_path: Path) -> None:
    path = small_csv(tmp_path, "a.jpg,cat,1,1\n", header="file,kind,x,y")
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert str(info.value) == (
        f"{path}: no column for class, xmin, ymin, xmax, ymax (columns found: file, kind, x, y; names accepted: "
        "class: class / label / cell_type / class_name / category / name; xmin: xmin / x_min / x1 / left; "
        "ymin: ymin / y_min / y1 / top; xmax: xmax / x_max / x2 / right; ymax: ymax / y_max / y2 / bottom)")
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 2 and "no column for class" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.jpg,cat,1,1,40", "line 3: 5 fields, the header has 6; row skipped"),
        ("a.jpg,cat,1,1,40,20,7", "line 3: 7 fields, the header has 6; row skipped"),
        ("a.jpg,cat,1,one,40,20", "line 3: corners must be finite numbers, got xmin='1', ymin='one', xmax='40', ymax='20'; row skipped"),
        ("a.jpg,cat,1,1,inf,20", "line 3: corners must be finite numbers, got xmin='1', ymin='1', xmax='inf', ymax='20'; row skipped"),
        ("a.jpg,,1,1,40,20", "line 3: no class name; row skipped"),
        (",cat,1,1,40,20", "line 3: no image file name; row skipped"),
    ],
)
def test_bad_row_is_an_error_with_its_line(tmp_path: Path, row: str, message: str) -> None:
    path = small_csv(tmp_path, f"b.jpg,cat,1,1,10,10\n{row}\n")
    dataset = load_dataset(path)
    errors = [p for p in dataset.problems if p.severity == "error"]
    assert [(p.file, p.message) for p in errors] == [(str(path), message)]
    assert sum(r.num_boxes for r in dataset.records) == 1  # the good row


def test_duplicate_rows_negative_rows_and_unlisted_images(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "c.jpg")
    path = small_csv(tmp_path, "a.jpg,cat,1,1,10,10\na.jpg,cat,1,1,10,10\nb.jpg,,,,,\n")
    dataset = load_dataset(path)
    assert [(r.image_id, r.num_boxes) for r in dataset.records] == [("a", 1), ("b", 0)]  # b: a negative
    assert messages(dataset) == [
        "line 3: same row as line 2; dropped",
        f"1 images (e.g. {tmp_path / 'images' / 'c.jpg'}) appear in no row of the CSV: not part of the dataset",
    ]


def test_box_outside_the_image_and_missing_image(tmp_path: Path) -> None:
    path = small_csv(tmp_path, "a.jpg,cat,150,1,160,10\na.jpg,dog,90,1,130,10\nz.jpg,cat,1,1,5,5\n")
    dataset = load_dataset(path, image_dir=tmp_path / "images")
    np.testing.assert_array_equal(dataset.records[0].boxes_xyxy_px, [[89, 0, 100, 10]])
    assert messages(dataset) == [
        "line 2 'cat' (xmin=150, ymin=1, xmax=160, ymax=10): box lies outside the 100x50 image; box dropped",
        "line 3 'dog' (xmin=90, ymin=1, xmax=130, ymax=10): box extends outside the 100x50 image; clipped to [89, 0, 100, 10]",
        f"image 'z.jpg' not found (looked in {tmp_path / 'images'}); skipped",
        f"1 images (e.g. {tmp_path / 'images' / 'b.jpg'}) appear in no row of the CSV: not part of the dataset",
    ]


def test_images_search_and_path_escapes(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_image(tmp_path / "images" / "a.jpg")  # beside the CSV's folder (raccoon)
    write_image(tmp_path / "data" / "sub" / "JPEGImages" / "b.jpg")  # below it (BCCD)
    write_image(tmp_path / "outside.jpg")
    path = tmp_path / "data" / "x.csv"
    path.write_text("filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,1,1,5,5\nb.jpg,cat,1,1,5,5\n../outside.jpg,cat,1,1,5,5\n")
    dataset = load_dataset(path)
    assert [r.image_path for r in dataset.records] == [tmp_path / "images" / "a.jpg", tmp_path / "data/sub/JPEGImages/b.jpg"]
    assert messages(dataset)[0].startswith("image '../outside.jpg' not found")  # never read from outside


def test_several_csvs_in_a_folder(tmp_path: Path) -> None:
    small_csv(tmp_path, "a.jpg,cat,1,1,5,5\n")
    (tmp_path / "more.csv").write_text("filename,class,xmin,ymin,xmax,ymax\nb.jpg,cat,1,1,5,5\n")
    with pytest.raises(UserError, match=r"several CSV files \(boxes.csv, more.csv\); give the one to read"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match=r"--split val: no .*splits/val.txt; run `ssd data split"):
        load_dataset(tmp_path / "more.csv", split="val")


def test_images_folder_must_exist(tmp_path: Path) -> None:
    path = small_csv(tmp_path, "a.jpg,cat,1,1,5,5\n")
    with pytest.raises(DataError, match=r"--images .*nowhere: no such folder"):
        load_dataset(path, image_dir=tmp_path / "nowhere")
    result = runner.invoke(app, ["data", "check", str(path), "--images", str(tmp_path / "images"), "--csv-coords", "pixels",
                                 "--json", "-"])
    assert result.exit_code == 0 and '"format": "csv"' in result.stdout


def test_csv_written_from_the_voc_sample_gives_its_records(shared_data: Path, tmp_path: Path) -> None:
    from ssdcli.data.voc import parse_voc_xml
    from tests.test_data_yolo import without_difficult

    sample = shared_data / "voc2007_sample" / "VOC2007"
    voc = load_dataset(sample.parent, verify_pixels=False)
    path = tmp_path / "boxes.csv"
    with open(path, "w", newline="") as handle:  # the XML's own corners, columns in another order
        writer = csv.writer(handle)
        writer.writerow(["ymin", "xmin", "ymax", "xmax", "label", "image"])
        for xml in sorted((sample / "Annotations").glob("*.xml")):
            for obj in parse_voc_xml(xml).objects:
                if not obj.difficult:
                    xmin, ymin, xmax, ymax = obj.box_voc
                    writer.writerow([ymin, xmin, ymax, xmax, obj.name, f"{xml.stem}.jpg"])
    from_csv = load_dataset(path, image_dir=sample / "JPEGImages", verify_pixels=False)
    assert from_csv.problems == []
    assert_same_records(without_difficult(voc), from_csv)


def test_data_help_shows_examples() -> None:
    for command in ("check", "split", "convert"):
        result = runner.invoke(app, ["data", command, "--help"])
        assert result.exit_code == 0 and "Examples" in result.output and f"ssd data {command}" in result.output
