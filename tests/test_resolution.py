"""Large JPEGs decoded at reduced scale and brought down to what the network needs: the rules'
numbers, boxes that stay on their objects, and images of the shared datasets' sizes unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssdcli.data.images import jpeg_scale, read_image_rgb, read_image_rgb_at_least
from ssdcli.data.loader import DetectionTrainDataset
from ssdcli.data.records import ImageRecord
from ssdcli.data.resolution import inference_side, shrink_to_side, training_side
from ssdcli.data.transforms import EvalTransform, TrainTransform, normalize, resize_uint8
from ssdcli.image_files import ImageFiles

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _photo(path: Path, width: int, height: int, box: tuple[int, int, int, int] | None = None, **save) -> Path:
    """A textured image (gradients + noise, every channel under 150) with a red (220, 20, 20)
    rectangle at ``box`` (xyxy pixels)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 127 // width, yy * 127 // height, (xx + yy) * 63 // (width + height)], axis=-1)  # <= 127
    pixels = np.clip(base + rng.integers(-20, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)
    if box is not None:
        x1, y1, x2, y2 = box
        pixels[y1:y2, x1:x2] = (220, 20, 20)
    Image.fromarray(pixels).save(path, **save)
    return path


def _record(path: Path, width: int, height: int, box: tuple[int, int, int, int]) -> ImageRecord:
    return ImageRecord(
        image_path=path, image_id=path.stem, width=width, height=height,
        boxes_xyxy_px=np.array([box], dtype=np.float32), labels=np.array([1]),
        difficult=np.array([False]), iscrowd=np.array([False]),
    )


@pytest.mark.parametrize(
    ("size", "need", "scale"),
    [
        ((4605, 2569), (600, 600), 4),  # 2569 // 600 = 4
        ((4605, 2569), (1000, 1000), 2),
        ((1199, 5000), (600, 600), 1),  # one side short of 2 x 600
        ((1200, 1200), (600, 600), 2),
        ((10000, 9000), (600, 600), 8),  # libjpeg goes no further than 1/8
        ((640, 480), (600, 600), 1),
        ((640, 640), (1, 1), 8),
    ],
)
def test_jpeg_scale_keeps_at_least_the_need(size, need, scale) -> None:
    assert jpeg_scale(*size, *need) == scale
    assert -(-size[0] // scale) >= need[0] or scale == 1  # libjpeg rounds the reduced size up


def test_the_sides_each_consumer_needs() -> None:
    assert inference_side(300) == 600 and inference_side(320) == 640
    assert training_side(300) == 1000  # the smallest crop, 0.3 of a side, keeps 300 pixels
    assert training_side(320) == 1067  # ceil(320 / 0.3) = ceil(1066.67)
    assert training_side(512) == 1707
    assert training_side(300, crop=False) == 600


def test_a_large_jpeg_decodes_reduced_and_close_to_the_full_image(tmp_path) -> None:
    path = _photo(tmp_path / "big.jpg", 2410, 1300, quality=92)
    decoded = read_image_rgb_at_least(path, 600, 600)
    assert (decoded.scale, decoded.width, decoded.height) == (2, 2410, 1300)
    assert decoded.rgb.shape == (650, 1205, 3) and decoded.rgb.dtype == np.uint8
    full = read_image_rgb(path).astype(np.float64)
    box_average = full.reshape(650, 2, 1205, 2, 3).mean(axis=(1, 3))  # (650, 1205, 3)
    assert np.abs(decoded.rgb - box_average).mean() < 4  # of 255: the same picture


def test_odd_sizes_round_up_and_keep_the_need(tmp_path) -> None:
    path = _photo(tmp_path / "odd.jpg", 2501, 1203, quality=90)
    decoded = read_image_rgb_at_least(path, 600, 600)
    assert decoded.scale == 2 and decoded.rgb.shape == (602, 1251, 3)  # ceil(1203 / 2), ceil(2501 / 2)


@pytest.mark.parametrize(
    ("name", "size", "save"),
    [("small.jpg", (640, 480), {"quality": 90}), ("big.png", (2400, 1300), {}), ("tall.jpg", (1199, 3000), {})],
)
def test_what_cannot_be_reduced_decodes_exactly_as_before(tmp_path, name, size, save) -> None:
    path = _photo(tmp_path / name, *size, **save)
    decoded = read_image_rgb_at_least(path, 600, 600)
    assert decoded.scale == 1 and (decoded.width, decoded.height) == size
    assert np.array_equal(decoded.rgb, read_image_rgb(path))


def test_a_truncated_large_jpeg_still_decodes_reduced(tmp_path) -> None:
    path = _photo(tmp_path / "cut.jpg", 2400, 1300, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    decoded = read_image_rgb_at_least(path, 600, 600)
    assert decoded.scale == 2 and decoded.rgb.shape == (650, 1200, 3)


def test_shrink_to_side_scales_image_and_boxes_together() -> None:
    image = torch.zeros(3, 2000, 3000, dtype=torch.uint8)
    image[:, 500:1000, 600:1200] = 255
    boxes = torch.tensor([[600.0, 500.0, 1200.0, 1000.0]])
    small, small_boxes = shrink_to_side(image, boxes, 1000)
    assert small.shape == (3, 1000, 1500)
    torch.testing.assert_close(small_boxes, torch.tensor([[300.0, 250.0, 600.0, 500.0]]))
    assert small[:, 260:490, 310:590].min() == 255 and small[:, :240].max() == 0  # the box stays on its pixels


def test_shrink_to_side_leaves_images_within_the_margin_alone() -> None:
    image = torch.zeros(3, 1250, 4000, dtype=torch.uint8)  # shorter side exactly 1.25 x 1000
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    out, out_boxes = shrink_to_side(image, boxes, 1000)
    assert out is image and out_boxes is boxes


@pytest.mark.parametrize("arch_size", [300, 320])
def test_images_of_the_shared_datasets_sizes_are_unaffected(tmp_path, arch_size) -> None:
    """<= 640 px (VOC, COCO, BCCD): the training sample, validation input and detect input are
    bit for bit those of the full decode, for SSD300 and ssdlite320."""
    box = (100, 80, 300, 260)
    path = _photo(tmp_path / "voc_sized.jpg", 640, 480, box, quality=90)
    record = _record(path, 640, 480, box)
    pixels = read_image_rgb(path)
    boxes = torch.tensor([box], dtype=torch.float32)
    for transform in (TrainTransform(arch_size, MEAN, STD), EvalTransform(arch_size, MEAN, STD)):
        torch.manual_seed(7)
        image, target = DetectionTrainDataset([record], transform)[0]
        torch.manual_seed(7)
        expected_image, expected_boxes, _ = transform(pixels, boxes, torch.tensor([1]))
        assert torch.equal(image, expected_image) and torch.equal(target["boxes_xyxy_norm"], expected_boxes)
    tensor, size, *_ = ImageFiles([path], arch_size, MEAN, STD)[0]
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    assert size == (640, 480) and torch.equal(tensor, normalize(resize_uint8(chw, arch_size), MEAN, STD))


def test_validation_boxes_of_a_reduced_jpeg_stay_on_the_object(tmp_path) -> None:
    width, height, box = 4000, 2600, (1000, 650, 2000, 1300)
    path = _photo(tmp_path / "photo.jpg", width, height, box, quality=90)
    image, target = DetectionTrainDataset([_record(path, width, height, box)], EvalTransform(300, MEAN, STD))[0]
    expected = torch.tensor([[0.25, 0.25, 0.5, 0.5]])  # the box over the file's size
    torch.testing.assert_close(target["boxes_xyxy_norm"], expected, atol=4 / 2600, rtol=0)  # scale 4: < 4 px
    red = image[0] * STD[0] + MEAN[0] > 190 / 255  # the red rectangle (220; the background stays under 150)
    rows, cols = torch.nonzero(red, as_tuple=True)
    assert abs(rows.min().item() - 75) <= 2 and abs(rows.max().item() - 149) <= 2  # 0.25 and 0.5 of 300
    assert abs(cols.min().item() - 75) <= 2 and abs(cols.max().item() - 149) <= 2


class _Spy:
    """A transform that records what the dataset hands it, then runs the real one."""

    def __init__(self, transform) -> None:
        self.transform = transform
        self.source_side = transform.source_side
        self.seen: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def __call__(self, image, boxes, labels):
        self.seen.append((image.shape, boxes.clone()))
        return self.transform(image, boxes, labels)


def test_training_decodes_a_phone_photo_reduced_with_its_boxes(tmp_path) -> None:
    width, height, box = 4605, 2569, (1152, 640, 2304, 1284)
    path = _photo(tmp_path / "phone.jpg", width, height, box, quality=90)
    spy = _Spy(TrainTransform(300, MEAN, STD))  # needs 1000 pixels: 2569 // 1000 = 2, so 1/2
    DetectionTrainDataset([_record(path, width, height, box)], spy)[0]
    (shape, boxes), = spy.seen
    assert shape == (1285, 2303, 3)
    torch.testing.assert_close(boxes, torch.tensor([[576.0, 320.0, 1152.0, 642.0]]))  # the file's pixels / 2


def test_training_resizes_a_large_image_to_what_it_needs_before_augmenting() -> None:
    transform = TrainTransform(300, MEAN, STD, photometric=False, zoom_out_p=0.0, crop=False, flip_p=0.0)
    assert transform.source_side == 600
    image = np.zeros((1300, 2600, 3), dtype=np.uint8)  # e.g. a PNG: nothing reduced it on decoding
    image[325:650, 650:1300] = 255
    chw, boxes, labels = transform.augment(image, torch.tensor([[650.0, 325.0, 1300.0, 650.0]]), torch.tensor([3]))
    assert chw.shape == (3, 600, 1200) and labels.tolist() == [3]
    torch.testing.assert_close(boxes, torch.tensor([[300.0, 150.0, 600.0, 300.0]]))
    assert chw[:, 155:295, 305:595].min() == 255 and chw[:, :140].max() == 0


def test_the_smallest_crop_of_a_reduced_photo_keeps_the_network_resolution() -> None:
    transform = TrainTransform(300, MEAN, STD, photometric=False)
    image = np.full((2569, 4605, 3), 128, dtype=np.uint8)
    boxes = torch.tensor([[1000.0, 600.0, 2000.0, 1200.0], [3000.0, 1500.0, 4000.0, 2400.0]])
    for seed in range(20):
        torch.manual_seed(seed)
        chw, _, _ = transform.augment(image, boxes, torch.tensor([1, 2]))
        assert min(chw.shape[1:]) >= 300  # a crop is >= 0.3 of a side of >= 1000 pixels


def test_detect_reads_a_large_jpeg_reduced_but_reports_and_keeps_the_full_image(tmp_path) -> None:
    path = _photo(tmp_path / "photo.jpg", 2600, 1300, (650, 325, 1300, 650), quality=90)
    tensor, size, _, error, _, original = ImageFiles([path], 300, MEAN, STD, keep_original=True)[0]
    assert error is None and size == (2600, 1300)  # detections are scaled back to the file's pixels
    assert original.shape == (1300, 2600, 3) and torch.equal(original, torch.from_numpy(read_image_rgb(path)))
    reduced, *_ = ImageFiles([path], 300, MEAN, STD, keep_original=False)[0]
    assert torch.equal(tensor, reduced)  # rendering or not, the network sees the same input
    full = normalize(resize_uint8(original.permute(2, 0, 1), 300), MEAN, STD)
    assert (tensor - full).abs().mean() < 0.1  # the same picture (normalised units, ~0.02 of the range)
