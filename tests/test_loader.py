"""Training dataset, collate / padding and seeded loaders, on small images written by the tests
and on two real VOC2007 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssdcli.data.loader import (
    DetectionTrainDataset,
    collate,
    iterate_loader,
    make_loader,
    pad_targets,
)
from ssdcli.data.records import ImageRecord
from ssdcli.data.transforms import EvalTransform, TrainTransform
from ssdcli.errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_record(
    path: Path,
    width: int,
    height: int,
    boxes: list[list[float]],
    labels: list[int],
    difficult: list[bool] | None = None,
    iscrowd: list[bool] | None = None,
) -> ImageRecord:
    n = len(labels)
    return ImageRecord(
        image_path=path,
        image_id=path.stem,
        width=width,
        height=height,
        boxes_xyxy_px=np.asarray(boxes, dtype=np.float32).reshape(n, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult if difficult is not None else [False] * n, dtype=bool),
        iscrowd=np.asarray(iscrowd if iscrowd is not None else [False] * n, dtype=bool),
    )


@pytest.fixture()
def synthetic_records(tmp_path: Path) -> list[ImageRecord]:
    """Six PNG images: 0-3 boxes each, one difficult and one crowd box among them."""
    rng = np.random.default_rng(0)
    specs = [
        ([[2, 3, 30, 20]], [1], None, None),
        ([], [], None, None),
        ([[0, 0, 40, 30], [10, 5, 20, 25], [30, 10, 38, 28]], [2, 1, 3], [False, True, False], None),
        ([[5, 5, 25, 25], [1, 1, 9, 9]], [3, 3], None, [False, True]),
        ([], [], None, None),
        ([[12, 8, 36, 27]], [2], None, None),
    ]
    records = []
    for i, (boxes, labels, difficult, iscrowd) in enumerate(specs):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)).save(path)
        records.append(make_record(path, 40, 30, boxes, labels, difficult, iscrowd))
    return records


def test_dataset_item_drops_difficult_and_crowd_boxes(synthetic_records: list[ImageRecord]) -> None:
    dataset = DetectionTrainDataset(synthetic_records, EvalTransform(20, MEAN, STD))
    assert len(dataset) == 6
    image, target = dataset[2]
    assert image.shape == (3, 20, 20) and image.dtype == torch.float32
    assert target["index"] == 2
    # difficult box (10, 5, 20, 25) left out; others divided by (W, H) = (40, 30)
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.75, 1 / 3, 0.95, 28 / 30]])
    torch.testing.assert_close(target["boxes_xyxy_norm"], expected)
    assert target["labels"].tolist() == [2, 3] and target["labels"].dtype == torch.int64
    _, crowd_target = dataset[3]
    assert crowd_target["labels"].tolist() == [3], "iscrowd boxes are never targets"
    _, with_difficult = DetectionTrainDataset(synthetic_records, EvalTransform(20, MEAN, STD), use_difficult=True)[2]
    assert with_difficult["labels"].tolist() == [2, 1, 3]
    _, negative = dataset[1]
    assert negative["boxes_xyxy_norm"].shape == (0, 4) and negative["labels"].shape == (0,)


def test_dataset_raises_data_error_naming_a_file_that_went_bad(synthetic_records: list[ImageRecord]) -> None:
    path = synthetic_records[0].image_path
    path.write_bytes(path.read_bytes()[:60])  # truncated after the header
    dataset = DetectionTrainDataset(synthetic_records, EvalTransform(20, MEAN, STD))
    with pytest.raises(DataError, match=r"img0\.png.*--resume"):
        dataset[0]
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(synthetic_records[1].image_path)
    with pytest.raises(DataError, match=r"img1\.png: image is now 10x10 pixels but was 40x30"):
        dataset[1]


def test_worker_data_error_reaches_the_main_process_as_one_line(synthetic_records: list[ImageRecord]) -> None:
    synthetic_records[3].image_path.unlink()
    dataset = DetectionTrainDataset(synthetic_records, EvalTransform(20, MEAN, STD))
    loader = make_loader(dataset, batch_size=2, shuffle=False, workers=1, seed=0)
    with pytest.raises(DataError) as caught:
        list(iterate_loader(loader))
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{synthetic_records[3].image_path}: image file not found; it was readable")


def test_collate_and_pad_targets_shapes_and_values() -> None:
    def target(boxes: list[list[float]], labels: list[int], index: int) -> dict:
        boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return {"boxes_xyxy_norm": boxes_t, "labels": torch.tensor(labels, dtype=torch.int64), "index": index}

    batch = [
        (torch.zeros(3, 8, 8), target([[0.1, 0.2, 0.3, 0.4]], [4], 0)),
        (torch.ones(3, 8, 8), target([], [], 1)),
        (torch.full((3, 8, 8), 2.0), target([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0.2, 0.2, 0.4, 0.9]], [1, 2, 3], 2)),
    ]
    images, targets = collate(batch)
    assert images.shape == (3, 3, 8, 8) and torch.equal(images[2], batch[2][0])
    assert [t["index"] for t in targets] == [0, 1, 2]
    boxes, labels = pad_targets(targets)
    assert boxes.shape == (3, 3, 4) and labels.shape == (3, 3) and labels.dtype == torch.int64
    assert labels.tolist() == [[4, 0, 0], [0, 0, 0], [1, 2, 3]]
    torch.testing.assert_close(boxes[0], torch.tensor([[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], [0, 0, 0, 0]]))
    assert torch.equal(boxes[1], torch.zeros(3, 4))
    assert torch.equal(boxes[2], batch[2][1]["boxes_xyxy_norm"])


def test_pad_targets_of_an_all_negative_batch_has_one_padding_slot() -> None:
    empty = {"boxes_xyxy_norm": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "index": 0}
    boxes, labels = pad_targets([empty, dict(empty, index=1)])
    assert boxes.shape == (2, 1, 4) and labels.shape == (2, 1)
    assert not boxes.any() and not labels.any()


def batches(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, list[int], torch.Tensor]]:
    return [(images, [t["index"] for t in targets], pad_targets(targets)[0]) for images, targets in loader]


def assert_same(run_a: list, run_b: list) -> None:
    assert len(run_a) == len(run_b)
    for (img_a, idx_a, box_a), (img_b, idx_b, box_b) in zip(run_a, run_b):
        assert idx_a == idx_b and torch.equal(img_a, img_b) and torch.equal(box_a, box_b)


def test_an_epoch_is_the_same_with_any_number_of_workers(synthetic_records: list[ImageRecord]) -> None:
    """What training uses: SeededSamples + EpochSampler through make_loader."""
    from ssdcli.train.sampling import EpochSampler, SeededSamples

    dataset = SeededSamples(DetectionTrainDataset(synthetic_records, TrainTransform(24, MEAN, STD)), seed=5)

    def epoch(number: int, workers: int) -> list:
        sampler = EpochSampler(len(dataset), shuffle=True, seed=5)
        sampler.set_epoch(number)
        dataset.epoch = number
        return batches(make_loader(dataset, batch_size=4, shuffle=False, workers=workers, seed=5, sampler=sampler))

    first = epoch(1, workers=2)
    assert [len(idx) for _, idx, _ in first] == [4, 2]
    assert sorted(i for _, idx, _ in first for i in idx) == list(range(6))
    assert_same(first, epoch(1, workers=0))  # a resumed run with other --workers: the same epoch 1
    assert_same(first, epoch(1, workers=2))
    assert [idx for _, idx, _ in first] != [idx for _, idx, _ in epoch(2, workers=2)], "new epoch, new order"


def test_sampler_replaces_shuffle() -> None:
    dataset = list(range(5))
    loader = make_loader(dataset, 2, shuffle=True, workers=0, seed=0, sampler=[4, 3, 2, 1, 0])
    assert list(loader.batch_sampler) == [[4, 3], [2, 1], [0]]


def test_real_voc_images_through_training_pipeline(shared_data: Path) -> None:
    images = shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages"
    # Boxes from the VOC2007 XML files, 1-based (xmin, ymin, xmax, ymax) -> (xmin-1, ymin-1, xmax, ymax).
    records = [
        make_record(images / "000001.jpg", 353, 500, [[47, 239, 195, 371], [7, 11, 352, 498]], [12, 15]),
        make_record(
            images / "000005.jpg",
            500,
            375,
            [[262, 210, 324, 339], [164, 263, 253, 372], [4, 243, 67, 374], [240, 193, 295, 299], [276, 185, 312, 220]],
            [9, 9, 9, 9, 9],
            difficult=[False, False, True, False, True],
        ),
    ]
    eval_set = DetectionTrainDataset(records, EvalTransform(300, MEAN, STD))
    _, target = eval_set[0]
    # dog (47, 239, 195, 371) / (353, 500)
    torch.testing.assert_close(target["boxes_xyxy_norm"][0], torch.tensor([47 / 353, 239 / 500, 195 / 353, 371 / 500]))
    assert eval_set[1][1]["labels"].tolist() == [9, 9, 9]
    torch.manual_seed(0)
    train_set = DetectionTrainDataset(records, TrainTransform(300, MEAN, STD))
    loader = make_loader(train_set, batch_size=2, shuffle=False, workers=0, seed=0)
    for _ in range(3):
        images_batch, targets = next(iter(loader))
        assert images_batch.shape == (2, 3, 300, 300) and torch.isfinite(images_batch).all()
        boxes, labels = pad_targets(targets)
        assert boxes.shape[:2] == labels.shape and boxes.shape[1] >= 1
        real = labels > 0
        assert (boxes[real][:, 2:] > boxes[real][:, :2]).all() and (boxes >= 0).all() and (boxes <= 1).all()
        assert set(labels[real].tolist()) <= {9, 12, 15}
