"""Dataset readers: real datasets in ../shared/data with their known counts and quirks, and one
small generated bad input per case of issue 3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssdcli.data.images import read_image_rgb, read_image_size, verify_image
from ssdcli.data.reader import load_classes_file, load_dataset
from ssdcli.data.records import DetectionDataset
from ssdcli.data.voc import VOC_CLASSES, parse_voc_xml
from ssdcli.errors import DataError, UserError


def assert_boxes_valid(dataset: DetectionDataset) -> None:
    """Every record box satisfies 0 <= x1 < x2 <= W, 0 <= y1 < y2 <= H (never degenerate)."""
    for r in dataset.records:
        b = r.boxes_xyxy_px
        assert b.dtype == np.float32 and b.shape == (r.num_boxes, 4)
        assert r.labels.shape == r.difficult.shape == r.iscrowd.shape == (r.num_boxes,)
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 1] >= 0)
        assert np.all(b[:, 0] < b[:, 2]) and np.all(b[:, 1] < b[:, 3])
        assert np.all(b[:, 2] <= r.width) and np.all(b[:, 3] <= r.height)
        assert np.all(r.labels >= 1) and np.all(r.labels <= dataset.num_classes)


def problems_text(dataset: DetectionDataset, severity: str) -> list[str]:
    return [f"{p.file}: {p.message}" for p in dataset.problems if p.severity == severity]


# ---------------------------------------------------------------- writing small VOC datasets


def write_image(path: Path, width: int = 64, height: int = 48, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def voc_xml(filename: str, size: tuple[int, int], objects: list[tuple]) -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult])."""
    parts = [f"<annotation><filename>{filename}</filename>",
             f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax, *flag in objects:
        difficult = flag[0] if flag else 0
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
                     f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def voc_folder(root: Path, entries: dict[str, tuple[tuple[int, int], list[tuple]]]) -> Path:
    """Annotations/ + JPEGImages/ with one 64x48 image per entry."""
    for stem, (size, objects) in entries.items():
        write_image(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", size, objects))
    return root


# ---------------------------------------------------------------- images


def test_read_image_rgb_converts_modes(tmp_path: Path) -> None:
    for mode in ("L", "RGBA", "P", "CMYK", "1"):
        path = write_image(tmp_path / f"{mode}.png" if mode != "CMYK" else tmp_path / "cmyk.jpg", mode=mode)
        pixels = read_image_rgb(path)
        assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8, mode
        assert read_image_size(path) == (64, 48)


def test_read_image_rgb_scales_16_bit(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((4, 5), 0x8040, dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    # 0x8040 >> 8 = 0x80 = 128 (not clipped to 255)
    assert np.all(read_image_rgb(path) == 128)


def test_unreadable_images_raise_naming_file(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.png")
    data = good.read_bytes()
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes(data[: len(data) // 2])
    not_image = tmp_path / "text.jpg"
    not_image.write_text("not an image")
    assert read_image_size(truncated_png) == (64, 48)  # the header survives truncation
    for path in (truncated_png, not_image, tmp_path / "missing.jpg"):
        with pytest.raises(DataError, match=path.name):
            read_image_rgb(path)
        with pytest.raises(DataError, match=path.name):
            verify_image(path)
    assert verify_image(good) is False


@pytest.mark.parametrize("missing", [20, 2, "half"])
def test_truncated_jpeg_decodes_as_opencv_does(tmp_path: Path, missing) -> None:
    """A JPEG a few bytes short (kangaroo-style) or cut in half: OpenCV decodes it, rows past the
    end mid grey; read_image_rgb gives the same pixels and verify_image says it is truncated."""
    import cv2

    rng = np.random.default_rng(0)
    good = tmp_path / "good.jpg"
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(good, quality=90)
    data = good.read_bytes()
    cut = len(data) // 2 if missing == "half" else missing
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) - cut])
    with pytest.raises(OSError, match="truncated"):  # what Pillow alone says
        Image.open(truncated).load()
    assert verify_image(truncated) is True and verify_image(good) is False
    expected = cv2.imread(str(truncated), cv2.IMREAD_COLOR)[..., ::-1]  # BGR -> RGB
    pixels = read_image_rgb(truncated)
    assert pixels.shape == (120, 160, 3)
    np.testing.assert_array_equal(pixels, expected)
    if missing == "half":
        assert (pixels[-1] == 128).all()  # the rows never reached are grey, as in OpenCV


def test_greyscale_raccoon_images_read_as_rgb(shared_data: Path) -> None:
    for name in ("raccoon-150.jpg", "raccoon-152.jpg", "raccoon-161.jpg"):  # SOURCES.md: 3 are L
        path = shared_data / "raccoon" / "images" / name
        assert Image.open(path).mode == "L"
        pixels = read_image_rgb(path)
        assert pixels.ndim == 3 and pixels.shape[2] == 3
        assert np.array_equal(pixels[..., 0], pixels[..., 2])


# ---------------------------------------------------------------- real datasets


def test_raccoon(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "raccoon")
    assert dataset.format == "voc" and dataset.classes == ["raccoon"]
    assert len(dataset.records) == 200
    assert sum(r.num_boxes for r in dataset.records) == 217
    assert dataset.problems == []
    first = next(r for r in dataset.records if r.image_id == "raccoon-1")
    # raccoon-1.xml: xmin 81, ymin 88, xmax 522, ymax 408 (1-based) -> (80, 87, 522, 408)
    np.testing.assert_array_equal(first.boxes_xyxy_px, [[80, 87, 522, 408]])
    assert (first.width, first.height) == (650, 417)
    assert_boxes_valid(dataset)


def test_bccd_keeps_its_two_1px_boxes_with_a_warning(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "bccd")  # the parent of the single BCCD/ child
    assert dataset.classes == ["Platelets", "RBC", "WBC"]  # not VOC names: sorted
    assert len(dataset.records) == 364
    warnings = problems_text(dataset, "warning")
    assert len(warnings) == 2 and not dataset.has_errors
    assert "BloodImage_00338" in warnings[0] and "xmin=504, ymin=337, xmax=504, ymax=337" in warnings[0]
    assert "BloodImage_00343" in warnings[1] and "1-pixel" in warnings[1] and "kept" in warnings[1]
    counts = np.bincount(np.concatenate([r.labels for r in dataset.records]), minlength=4)
    assert counts[1:].tolist() == [361, 4155, 372]  # SOURCES.md counts: the devkit counts every box
    record = next(r for r in dataset.records if r.image_id == "BloodImage_00338")
    assert [503, 336, 504, 337] in record.boxes_xyxy_px.tolist()  # (xmin - 1, ymin - 1, xmax, ymax): 1x1
    assert_boxes_valid(dataset)


def test_bccd_splits(shared_data: Path) -> None:
    trainval = load_dataset(shared_data / "bccd", split="trainval", check_images=False)
    test = load_dataset(shared_data / "bccd" / "BCCD", split="test", check_images=False)
    assert (len(trainval.records), len(test.records)) == (292, 72)  # lines in ImageSets/Main/*.txt
    assert not {r.image_id for r in trainval.records} & {r.image_id for r in test.records}
    with pytest.raises(DataError, match="available: test, train, trainval, val"):
        load_dataset(shared_data / "bccd", split="minival")
    with pytest.raises(UserError, match="not VOC2007"):
        load_dataset(shared_data / "bccd", split="07+12")


def test_coco128(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "coco128")
    assert dataset.format == "coco"
    assert len(dataset.classes) == 80 and dataset.classes[:3] == ["person", "bicycle", "car"]
    assert dataset.category_ids[:3] == [1, 2, 3] and dataset.category_ids[-1] == 90  # ids in order, gaps kept
    assert len(dataset.records) == 128
    assert sum(r.num_boxes for r in dataset.records) == 939
    assert sum(int(r.iscrowd.sum()) for r in dataset.records) == 10
    assert dataset.problems == []
    image = next(r for r in dataset.records if r.image_id == 74)
    assert image.image_path.parent.name == "train2017"
    # annotation 0 of the json: bbox xywh [61.87, 276.25, 296.42, 103.18], category 18 (dog)
    row = np.flatnonzero(np.isclose(image.boxes_xyxy_px[:, 0], 61.87))[0]
    np.testing.assert_allclose(image.boxes_xyxy_px[row], [61.87, 276.25, 61.87 + 296.42, 276.25 + 103.18], rtol=1e-6)
    assert dataset.classes[image.labels[row] - 1] == "dog"
    assert_boxes_valid(dataset)


def test_coco128_split_and_json_file(shared_data: Path) -> None:
    val = load_dataset(shared_data / "coco128", split="val", check_images=False)
    assert val.root == shared_data / "coco128"
    assert {r.image_path.parent.name for r in val.records} == {"val2017"}
    direct = load_dataset(shared_data / "coco128" / "annotations" / "instances_val2017.json", check_images=False)
    assert len(direct.records) == 128


def test_voc2007_sample(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "voc2007_sample")
    assert dataset.classes == list(VOC_CLASSES)  # every name is a VOC class: the 20, devkit order
    assert len(dataset.records) == 13
    assert sum(r.num_boxes for r in dataset.records) == 41
    assert sum(int(r.difficult.sum()) for r in dataset.records) == 6
    present = [dataset.classes[k - 1] for k in sorted({int(k) for r in dataset.records for k in r.labels})]
    assert present == ["aeroplane", "car", "chair", "diningtable", "dog", "horse", "person", "pottedplant",
                       "sofa", "train", "tvmonitor"]  # 11 classes, VOC order
    first = next(r for r in dataset.records if r.image_id == "000001")
    # 000001.xml: dog (48, 240, 195, 371), person (8, 12, 352, 498), 1-based inclusive
    np.testing.assert_array_equal(first.boxes_xyxy_px, [[47, 239, 195, 371], [7, 11, 352, 498]])
    assert first.labels.tolist() == [12, 15]  # dog, person in VOC order
    assert dataset.problems == []


def test_owner_name_is_not_a_class(shared_data: Path) -> None:
    annotation = parse_voc_xml(shared_data / "voc2007_sample" / "VOC2007" / "Annotations" / "000005.xml")
    names = {obj.name for obj in annotation.objects}
    assert "?" not in names and names == {"chair"}


def test_cartucho_sample_is_not_a_format_we_read(shared_data: Path) -> None:
    with pytest.raises(DataError, match=r"\.txt annotation files.*not read"):
        load_dataset(shared_data / "cartucho_map_sample")


# ---------------------------------------------------------------- layouts


def test_devkit_years_and_splits(tmp_path: Path) -> None:
    devkit = tmp_path / "VOCdevkit"
    voc_folder(devkit / "VOC2007", {"000001": ((64, 48), [("dog", 1, 1, 10, 10)]),
                                    "000002": ((64, 48), [("cat", 1, 1, 10, 10)])})
    voc_folder(devkit / "VOC2012", {"2008_000001": ((64, 48), [("person", 5, 5, 20, 20)])})
    for year, splits in (("2007", {"trainval": "000001", "test": "000002"}), ("2012", {"trainval": "2008_000001"})):
        main = devkit / f"VOC{year}" / "ImageSets" / "Main"
        main.mkdir(parents=True)
        for name, ids in splits.items():
            (main / f"{name}.txt").write_text(ids + "\n")

    def ids(split: str | None, root: Path = tmp_path) -> list[str]:
        return [r.image_id for r in load_dataset(root, split=split).records]

    assert ids(None) == ["000001", "000002", "2008_000001"]  # parent of VOCdevkit/ also accepted
    assert ids("07+12") == ids("2007+2012") == ids("trainval") == ["000001", "2008_000001"]
    assert ids("2007-test") == ids("VOC2007/test") == ["000002"]
    assert ids("test", devkit / "VOC2007") == ["000002"]
    with pytest.raises(DataError, match="no VOC2010"):
        load_dataset(devkit, split="10")


def test_plain_folder_pairs_xml_with_image_by_filename_then_stem(tmp_path: Path) -> None:
    root = tmp_path / "raccoonish"
    write_image(root / "images" / "photo-a.png")
    write_image(root / "images" / "b.jpg")
    (root / "annotations").mkdir()
    # a.xml names its image photo-a.png; b.xml names a file that does not exist -> its stem
    (root / "annotations" / "a.xml").write_text(voc_xml("photo-a.png", (64, 48), [("fox", 1, 1, 8, 8)]))
    (root / "annotations" / "b.xml").write_text(voc_xml("renamed.jpg", (64, 48), []))
    dataset = load_dataset(root)
    assert [r.image_path.name for r in dataset.records] == ["photo-a.png", "b.jpg"]
    assert [r.image_id for r in dataset.records] == ["photo-a", "b"]
    assert dataset.records[1].num_boxes == 0  # no objects: a valid negative
    with pytest.raises(UserError, match="no ImageSets"):
        load_dataset(root, split="train")


def test_images_and_xml_side_by_side(tmp_path: Path) -> None:
    write_image(tmp_path / "x.jpg")
    (tmp_path / "x.xml").write_text(voc_xml("x.jpg", (64, 48), [("b", 1, 1, 8, 8), ("a", 2, 2, 9, 9)]))
    dataset = load_dataset(tmp_path)
    assert dataset.classes == ["a", "b"] and dataset.records[0].labels.tolist() == [2, 1]


def test_load_classes_file(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("cat\n\n dog \n")
    assert load_classes_file(path) == ["cat", "dog"]
    for text, message in (("", "empty"), ("cat\ncat\n", "more than once"), ("__background__\ncat\n", "background")):
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            load_classes_file(path)
    with pytest.raises(DataError, match="not found"):
        load_classes_file(tmp_path / "nope.txt")


# ---------------------------------------------------------------- bad input, one per case


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    entities = ['<!ENTITY lol "lol">'] + [f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)]
    entities[1] = '<!ENTITY lol1 "' + "&lol;" * 10 + '">'
    xml = (f'<?xml version="1.0"?><!DOCTYPE annotation [{"".join(entities)}]>'
           "<annotation><filename>x.jpg</filename><object><name>&lol9;</name></object></annotation>")
    voc_folder(tmp_path, {"ok": ((64, 48), [("cat", 1, 1, 9, 9)])})
    (tmp_path / "Annotations" / "x.xml").write_text(xml)  # 10^9 "lol"s if it were expanded
    write_image(tmp_path / "JPEGImages" / "x.jpg")
    dataset = load_dataset(tmp_path)
    assert [r.image_id for r in dataset.records] == ["ok"]
    errors = problems_text(dataset, "error")
    assert len(errors) == 1 and "x.xml" in errors[0] and "entities" in errors[0]


def test_truncated_jpeg_is_kept_with_a_warning_and_trains(tmp_path: Path) -> None:
    from ssdcli.data.loader import DetectionTrainDataset
    from ssdcli.data.transforms import EvalTransform

    entries = {stem: ((64, 48), [("cat", 1, 1, 9, 9)]) for stem in ("a", "b", "c")}
    voc_folder(tmp_path, entries)
    data = (tmp_path / "JPEGImages" / "b.jpg").read_bytes()
    (tmp_path / "JPEGImages" / "b.jpg").write_bytes(data[:-20])  # 20 bytes short: OpenCV decodes it
    (tmp_path / "JPEGImages" / "c.jpg").write_bytes(data[:100])  # cut inside the header: unreadable
    dataset = load_dataset(tmp_path)  # decodes every image by default
    assert [r.image_id for r in dataset.records] == ["a", "b"]
    assert not dataset.has_errors
    warnings = problems_text(dataset, "warning")
    assert any("b.jpg" in w and "truncated" in w and "OpenCV" in w for w in warnings)
    assert any("c.jpg" in w and "skipped" in w for w in warnings)
    train = DetectionTrainDataset(dataset.records, EvalTransform(32, [0.5] * 3, [0.25] * 3))
    image, target = train[1]  # the truncated one reads for training too
    assert image.shape == (3, 32, 32) and target["labels"].tolist() == [8]  # cat: VOC class 8


def test_rgba_and_palette_pngs_are_fine(tmp_path: Path) -> None:
    for stem, mode in (("rgba", "RGBA"), ("palette", "P")):
        write_image(tmp_path / f"{stem}.png", mode=mode)
        (tmp_path / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", (64, 48), [("cat", 1, 1, 9, 9)]))
    dataset = load_dataset(tmp_path, verify_pixels=True)
    assert len(dataset.records) == 2 and dataset.problems == []
    assert all(read_image_rgb(r.image_path).shape == (48, 64, 3) for r in dataset.records)


def test_size_zero_or_wrong_in_xml_uses_the_image(tmp_path: Path) -> None:
    voc_folder(tmp_path, {"zero": ((0, 0), [("cat", 1, 1, 60, 40)]), "wrong": ((640, 480), [("cat", 1, 1, 600, 40)])})
    dataset = load_dataset(tmp_path)
    assert all((r.width, r.height) == (64, 48) for r in dataset.records)
    warnings = problems_text(dataset, "warning")
    assert any("wrong.xml" in w and "640x480" in w and "64x48" in w for w in warnings)
    assert any("zero.xml" in w and "0x0" in w for w in warnings)
    wrong = next(r for r in dataset.records if r.image_id == "wrong")
    np.testing.assert_array_equal(wrong.boxes_xyxy_px, [[0, 0, 64, 40]])  # xmax 600 clipped to 64
    # when told not to read images, a 0x0 <size> still makes the reader look at the image
    assert {(r.width, r.height) for r in load_dataset(tmp_path, check_images=False).records} == {(64, 48), (640, 480)}


def test_out_of_image_inverted_and_zero_area_boxes(tmp_path: Path) -> None:
    voc_folder(tmp_path, {"a": ((64, 48), [
        ("cat", 1, 1, 10, 10),      # fine -> (0, 0, 10, 10)
        ("cat", -20, 5, 30, 60),    # pokes out left and bottom -> clipped to (0, 4, 30, 48)
        ("cat", 100, 100, 120, 120),  # entirely outside a 64x48 image -> dropped
        ("cat", 30, 30, 20, 40),    # inverted x -> dropped
        ("cat", 5, 5, 5, 5),        # xmin == xmax, ymin == ymax: the devkit's 1-px box -> (4, 4, 5, 5)
        ("cat", 0, 1, 10, 10),      # xmin 0: 1 px outside (1-based) -> clipped silently
        ("cat", 7, 3, 7, 9),        # xmin == xmax only: 1 px wide, 7 high -> (6, 2, 7, 9)
    ])})
    dataset = load_dataset(tmp_path)
    np.testing.assert_array_equal(dataset.records[0].boxes_xyxy_px,
                                  [[0, 0, 10, 10], [0, 4, 30, 48], [4, 4, 5, 5], [0, 0, 10, 10], [6, 2, 7, 9]])
    warnings = problems_text(dataset, "warning")
    assert len(warnings) == 5 and not dataset.has_errors
    assert "object 2" in warnings[3] and "clipped to [0, 4, 30, 48]" in warnings[3]
    assert "object 3" in warnings[4] and "outside" in warnings[4]
    assert "object 4" in warnings[0] and "inverted" in warnings[0] and "dropped" in warnings[0]
    assert "object 5" in warnings[1] and "1-pixel" in warnings[1] and "kept" in warnings[1]
    assert "object 7" in warnings[2] and "1-pixel" in warnings[2]
    assert_boxes_valid(dataset)


def test_unknown_classes_with_and_without_a_classes_list(tmp_path: Path) -> None:
    voc_folder(tmp_path, {"a": ((64, 48), [("cat", 1, 1, 9, 9), ("dgo", 2, 2, 9, 9)])})
    kept = load_dataset(tmp_path, classes=["cat", "dog"])
    assert kept.classes == ["cat", "dog"] and kept.records[0].labels.tolist() == [1]
    assert not kept.has_errors and "'dgo' is not in the class list" in problems_text(kept, "warning")[0]
    strict = load_dataset(tmp_path, classes=["cat", "dog"], unknown_classes="error")
    assert strict.has_errors and "a.xml" in problems_text(strict, "error")[0]
    assert load_dataset(tmp_path).classes == ["cat", "dgo"]  # no list given: the names found, sorted


def test_malformed_xml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    voc_folder(tmp_path, {"a": ((64, 48), [("cat", 1, 1, 9, 9)]), "b": ((64, 48), [])})
    (tmp_path / "Annotations" / "b.xml").write_text("<annotation><object>")
    (tmp_path / "Annotations" / "c.xml").write_text("<html/>")
    dataset = load_dataset(tmp_path)
    assert [r.image_id for r in dataset.records] == ["a"]
    errors = problems_text(dataset, "error")
    assert "b.xml" in errors[0] and "malformed XML" in errors[0]
    assert "c.xml" in errors[1] and "not a Pascal VOC annotation" in errors[1]


def test_object_without_coordinates_is_an_error(tmp_path: Path) -> None:
    voc_folder(tmp_path, {"a": ((64, 48), [("cat", 1, 1, 9, 9), ("cat", "x", 1, 9, 9)])})
    dataset = load_dataset(tmp_path)
    assert dataset.records[0].num_boxes == 1
    assert "object 2 'cat'" in problems_text(dataset, "error")[0]


def test_missing_image_is_skipped_with_a_warning(tmp_path: Path) -> None:
    voc_folder(tmp_path, {"a": ((64, 48), []), "b": ((64, 48), [])})
    (tmp_path / "JPEGImages" / "b.jpg").unlink()
    dataset = load_dataset(tmp_path)
    assert [r.image_id for r in dataset.records] == ["a"]
    assert "'b.jpg' not found" in problems_text(dataset, "warning")[0]


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images/annotations found in .*expected a VOCdevkit"):
        load_dataset(tmp_path)
    write_image(tmp_path / "only.jpg")
    with pytest.raises(DataError, match="1 images but no annotations"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "absent")
    with pytest.raises(DataError, match="not a dataset"):
        load_dataset(tmp_path / "only.jpg")


# ---------------------------------------------------------------- COCO bad input


def write_coco(root: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    write_image(root / "images" / "a.jpg")
    data = {
        "images": images if images is not None else [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": annotations,
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
    }
    path = root / "annotations" / "instances_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_coco_categories_in_id_order_and_bad_annotations(tmp_path: Path) -> None:
    write_coco(tmp_path, [
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 10, 20, 5], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0, 0, 64, 48], "iscrowd": 1},
        {"id": 3, "image_id": 7, "category_id": 2, "bbox": [10, 10, 0, 5], "iscrowd": 0},   # zero width
        {"id": 4, "image_id": 7, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},   # undefined
        {"id": 5, "image_id": 7, "category_id": 2, "bbox": [50, 40, 30, 30], "iscrowd": 0},  # clipped
    ])
    dataset = load_dataset(tmp_path)
    assert dataset.classes == ["cat", "dog"] and dataset.category_ids == [2, 5]
    record = dataset.records[0]
    assert record.image_id == 7
    np.testing.assert_array_equal(record.boxes_xyxy_px, [[10, 10, 30, 15], [0, 0, 64, 48], [50, 40, 64, 48]])
    assert record.labels.tolist() == [2, 1, 1] and record.iscrowd.tolist() == [False, True, False]
    assert "category_id 99" in problems_text(dataset, "error")[0]
    warnings = problems_text(dataset, "warning")
    assert "annotation 3" in warnings[0] and "zero-area" in warnings[0]
    assert "annotation 5" in warnings[1] and "clipped" in warnings[1]


def test_coco_missing_image_and_classes_subset(tmp_path: Path) -> None:
    write_coco(tmp_path, [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 1, 5, 5]},
                          {"id": 2, "image_id": 7, "category_id": 2, "bbox": [1, 1, 5, 5]}],
               images=[{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
                       {"id": 8, "file_name": "gone.jpg", "width": 64, "height": 48}])
    dataset = load_dataset(tmp_path, classes=["dog"])
    assert [r.image_id for r in dataset.records] == [7]
    assert dataset.category_ids == [5] and dataset.records[0].labels.tolist() == [1]
    warnings = problems_text(dataset, "warning")
    assert any("gone.jpg" in w for w in warnings) and any("'cat' is not in the class list" in w for w in warnings)


def test_malformed_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "instances_x.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="instances_x.json: malformed JSON"):
        load_dataset(path)
    path.write_text('{"foo": 1}')
    with pytest.raises(DataError, match="not a COCO instances file"):
        load_dataset(tmp_path)
