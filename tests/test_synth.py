"""`ssd data synth`: deterministic, VOC layout, tight 1-based boxes, readable by our reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssdcli.data.reader import load_dataset
from ssdcli.data.synth import CLASSES, MIN_SIZE_PX, make_synthetic_dataset, synth_image
from ssdcli.errors import UserError


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path / "a", num_images=6, seed=3)
    make_synthetic_dataset(tmp_path / "b", num_images=6, seed=3)
    make_synthetic_dataset(tmp_path / "c", num_images=6, seed=4)
    a, b, c = (tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["JPEGImages/000001.jpg"] != c["JPEGImages/000001.jpg"]


def test_layout_splits_and_reader_agree(tmp_path: Path) -> None:
    summary = make_synthetic_dataset(tmp_path, num_images=10, seed=0)
    main = tmp_path / "ImageSets" / "Main"
    train = main.joinpath("train.txt").read_text().split()
    val = main.joinpath("val.txt").read_text().split()
    assert val == ["000005", "000010"] and len(train) == 8  # every 5th image is val
    assert sorted(train + val) == main.joinpath("trainval.txt").read_text().split()
    dataset = load_dataset(tmp_path, verify_pixels=True)
    assert dataset.problems == [] and dataset.classes == list(CLASSES) == sorted(CLASSES)
    assert [r.image_id for r in load_dataset(tmp_path, split="val").records] == val
    for index, rec in enumerate(dataset.records):
        image, objects = synth_image(0, index)
        assert (rec.width, rec.height) == (image.shape[1], image.shape[0])
        assert 240 <= rec.width <= 400 and 240 <= rec.height <= 360
        # the reader's (xmin - 1, ymin - 1, xmax, ymax) gives back the drawn 0-based boxes exactly
        expected = np.array([box for _, box in objects], np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(rec.boxes_xyxy_px, expected)
        assert [dataset.classes[k - 1] for k in rec.labels] == [name for name, _ in objects]
    assert sum(summary.boxes_per_class.values()) == sum(r.num_boxes for r in dataset.records)


def test_boxes_are_tight_and_not_tiny() -> None:
    sizes, empty = [], 0
    for index in range(40):
        image, objects = synth_image(7, index)
        empty += not objects
        for _, (x1, y1, x2, y2) in objects:
            sizes.append(min(x2 - x1, y2 - y1))
            assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
    assert min(sizes) >= MIN_SIZE_PX and max(sizes) > 100  # small and large objects
    assert 0 < empty < 10  # some images have no objects (about 8 %)


def test_box_edges_touch_the_painted_shape() -> None:
    image, objects = synth_image(0, 1)
    assert objects
    for _, (x1, y1, x2, y2) in objects:
        crop = image[y1:y2, x1:x2].astype(int)
        # a painted shape is saturated: max - min channel well above the muted background's
        saturation = crop.max(axis=2) - crop.min(axis=2)
        assert saturation[0].max() > 60 and saturation[-1].max() > 60  # top and bottom rows
        assert saturation[:, 0].max() > 60 and saturation[:, -1].max() > 60  # left and right columns


def test_refuses_non_empty_folder_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        make_synthetic_dataset(tmp_path, num_images=3)
    make_synthetic_dataset(tmp_path, num_images=4, overwrite=True)
    make_synthetic_dataset(tmp_path, num_images=3, overwrite=True)  # fewer: old files removed
    assert len(list((tmp_path / "Annotations").glob("*.xml"))) == 3
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="at least 2"):
        make_synthetic_dataset(tmp_path / "new", num_images=1)
