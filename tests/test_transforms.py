"""SSD augmentation and model-input transform: invariants over many seeded draws, hand-computed
resize + normalise, and the min-IoU crop's guarantee checked with an independent IoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssdcli.data.transforms import (
    CROP_MODES,
    CropWindow,
    EvalTransform,
    TrainTransform,
    crop,
    resize_uint8,
    sample_iou_crop,
    to_model_input,
)

MEAN = (0.485, 0.456, 0.406)  # ImageNet, as the VGG backbone uses
STD = (0.229, 0.224, 0.225)
FILL = (124, 116, 104)  # round(255 * MEAN)


def random_sample(rng: np.random.Generator, max_boxes: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random RGB image (20-120 px a side) with 0..max_boxes random valid boxes and labels 1..N."""
    height, width = (int(v) for v in rng.integers(20, 121, size=2))
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    n = int(rng.integers(0, max_boxes + 1))
    x = np.sort(rng.uniform(0, width, size=(n, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, size=(n, 2)), axis=1)
    x[:, 1] = np.maximum(x[:, 1], np.minimum(x[:, 0] + 2, width))  # at least ~2 px wide
    y[:, 1] = np.maximum(y[:, 1], np.minimum(y[:, 0] + 2, height))
    x[:, 0] = np.minimum(x[:, 0], x[:, 1] - 2)
    y[:, 0] = np.minimum(y[:, 0], y[:, 1] - 2)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).clip(0, [width, height, width, height])
    return image, boxes.astype(np.float32), np.arange(1, n + 1, dtype=np.int64)


def iou_np(window: tuple[int, int, int, int], boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy window with each xyxy box, float64 (independent of ssdcli.boxes)."""
    boxes = boxes.astype(np.float64)
    iw = np.clip(np.minimum(window[2], boxes[:, 2]) - np.maximum(window[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(window[3], boxes[:, 3]) - np.maximum(window[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area_w = (window[2] - window[0]) * (window[3] - window[1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area_w + area_b - inter)


def assert_boxes_inside(boxes: torch.Tensor, width: float, height: float) -> None:
    assert boxes.dtype == torch.float32 and boxes.shape[1:] == (4,)
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


# --- min-IoU crop ---------------------------------------------------------------------------


def test_iou_crop_window_meets_drawn_constraint_over_many_draws() -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    seen = set()
    for _ in range(400):
        _, boxes, _ = random_sample(rng)
        height, width = int(rng.integers(20, 121)), int(rng.integers(20, 121))
        boxes = np.minimum(boxes, [width, height, width, height]).astype(np.float32)
        boxes = boxes[(boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)]
        window = sample_iou_crop(torch.from_numpy(boxes), height, width)
        seen.add(window.min_iou)
        assert 0 <= window.left < window.right <= width and 0 <= window.top < window.bottom <= height
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (window.left < cx) & (cx < window.right) & (window.top < cy) & (cy < window.bottom)
        np.testing.assert_array_equal(window.keep.numpy(), inside)
        if window.min_iou is None:
            assert (window.left, window.top, window.right, window.bottom) == (0, 0, width, height)
            continue
        crop_w, crop_h = window.right - window.left, window.bottom - window.top
        # side uniform in [0.3, 1] of the image's, floored to whole pixels; aspect w / h in [0.5, 2]
        assert int(0.3 * width) <= crop_w <= width and int(0.3 * height) <= crop_h <= height
        assert 0.5 <= crop_w / crop_h <= 2.0
        if len(boxes):
            assert inside.any(), "a crop of an image with boxes keeps at least one"
            best = iou_np((window.left, window.top, window.right, window.bottom), boxes[inside]).max()
            assert best >= window.min_iou - 1e-6
    assert seen >= {None, 0.0, 0.1, 0.3}, f"common modes should occur, saw {seen}"


def test_iou_crop_draws_every_mode_when_all_can_be_met() -> None:
    # One box covering most of a 100x80 image: even IoU 0.9 crops exist (the box itself).
    torch.manual_seed(12)
    box = np.array([[4.0, 3.0, 96.0, 78.0]], dtype=np.float32)
    windows = [sample_iou_crop(torch.from_numpy(box), 80, 100) for _ in range(300)]
    assert {w.min_iou for w in windows} == set(CROP_MODES)
    for w in windows:
        if w.min_iou is not None:
            assert iou_np((w.left, w.top, w.right, w.bottom), box)[0] >= w.min_iou - 1e-6


def test_iou_crop_of_image_without_boxes_is_whole_or_unconstrained() -> None:
    torch.manual_seed(1)
    windows = [sample_iou_crop(torch.zeros(0, 4), 80, 100) for _ in range(200)]
    assert {w.min_iou for w in windows} == {None, 0.0}
    cropped = [w for w in windows if w.min_iou == 0.0]
    assert all(w.keep.shape == (0,) for w in windows)
    assert any((w.right - w.left, w.bottom - w.top) != (100, 80) for w in cropped), "negatives get real crops"


def test_iou_crop_falls_back_to_whole_image_when_constraint_cannot_be_met() -> None:
    # A 2x2 box in a 500x500 image: a crop is at least 150x150, so IoU <= 4 / 22500 < 0.9.
    torch.manual_seed(2)
    boxes = torch.tensor([[10.0, 10.0, 12.0, 12.0]])
    window = sample_iou_crop(boxes, 500, 500, modes=(0.9,))
    assert (window.left, window.top, window.right, window.bottom, window.min_iou) == (0, 0, 500, 500, None)
    assert window.keep.tolist() == [True]


def test_crop_shifts_and_clips_kept_boxes() -> None:
    image = torch.arange(3 * 10 * 20, dtype=torch.int32).reshape(3, 10, 20)  # (C, H, W)
    boxes = torch.tensor([[2.0, 1.0, 8.0, 9.0], [12.0, 2.0, 19.0, 4.0], [0.0, 0.0, 3.0, 3.0]])
    labels = torch.tensor([5, 6, 7])
    window = CropWindow(4, 2, 14, 8, 0.0, torch.tensor([True, True, False]))  # box 2's centre is outside
    out_image, out_boxes, out_labels = crop(image, boxes, labels, window)
    assert torch.equal(out_image, image[:, 2:8, 4:14])
    # box 0: (2-4, 1-2, 8-4, 9-2) = (-2, -1, 4, 7) clipped to the 10x6 crop -> (0, 0, 4, 6)
    # box 1: (8, 0, 15, 2) -> (8, 0, 10, 2)
    torch.testing.assert_close(out_boxes, torch.tensor([[0.0, 0.0, 4.0, 6.0], [8.0, 0.0, 10.0, 2.0]]))
    assert out_labels.tolist() == [5, 6]


# --- the full training pipeline ----------------------------------------------------------------


def test_train_transform_invariants_over_many_draws() -> None:
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    transform = TrainTransform(64, MEAN, STD)
    for _ in range(150):
        image, boxes, labels = random_sample(rng)
        aug_image, aug_boxes, aug_labels = transform.augment(image, boxes, labels)
        assert aug_image.dtype == torch.uint8 and aug_image.shape[0] == 3
        assert_boxes_inside(aug_boxes, aug_image.shape[2], aug_image.shape[1])
        assert aug_labels.shape == (aug_boxes.shape[0],) and aug_labels.dtype == torch.int64
        assert set(aug_labels.tolist()) <= set(labels.tolist())
        assert len(set(aug_labels.tolist())) == len(aug_labels), "a box is never duplicated"
        out_image, boxes_norm, out_labels = transform(image, boxes, labels)
        assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
        assert torch.isfinite(out_image).all()
        assert_boxes_inside(boxes_norm, 1.0, 1.0)
        assert out_labels.shape == (boxes_norm.shape[0],)


def test_labels_stay_with_their_boxes() -> None:
    # Paint each box a colour that encodes its label; after zoom-out, crop and flip (no colour
    # change) the pixel at every output box's centre must still have its label's colour.
    torch.manual_seed(4)
    colours = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0)}
    image = np.zeros((90, 120, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 40, 30], [60, 10, 110, 40], [10, 50, 50, 85], [70, 55, 100, 80]], dtype=np.float32)
    for (x1, y1, x2, y2), label in zip(boxes.astype(int), colours):
        image[y1:y2, x1:x2] = colours[label]
    transform = TrainTransform(32, MEAN, STD, photometric=False)
    for _ in range(100):
        out, out_boxes, out_labels = transform.augment(image, boxes, np.array([1, 2, 3, 4]))
        for (x1, y1, x2, y2), label in zip(out_boxes.tolist(), out_labels.tolist()):
            cx, cy = int((x1 + x2) // 2), int((y1 + y2) // 2)
            assert tuple(out[:, cy, cx].tolist()) == colours[label]


def test_horizontal_flip_twice_is_identity_and_mirrors_boxes() -> None:
    flip = TrainTransform(32, MEAN, STD, photometric=False, zoom_out_p=0.0, crop=False, flip_p=1.0)
    image = np.random.default_rng(5).integers(0, 256, size=(40, 100, 3), dtype=np.uint8)
    boxes = np.array([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.5]], dtype=np.float32)
    once_image, once_boxes, once_labels = flip.augment(image, boxes, np.array([3, 1]))
    # x1' = W - x2, x2' = W - x1 with W = 100 (continuous pixel edges)
    torch.testing.assert_close(once_boxes, torch.tensor([[70.0, 20.0, 90.0, 40.0], [0.0, 0.0, 100.0, 5.5]]))
    assert torch.equal(once_image, torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1))
    twice_image, twice_boxes, twice_labels = flip.augment(once_image.permute(1, 2, 0), once_boxes, once_labels)
    assert torch.equal(twice_image, torch.from_numpy(image).permute(2, 0, 1))
    assert torch.equal(twice_boxes, torch.from_numpy(boxes))
    assert twice_labels.tolist() == [3, 1]


def test_zoom_out_pastes_image_and_boxes_on_mean_canvas() -> None:
    torch.manual_seed(6)
    zoom = TrainTransform(32, MEAN, STD, photometric=False, zoom_out_p=1.0, crop=False, flip_p=0.0)
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    boxes = np.array([[5.0, 3.0, 20.0, 25.0], [30.0, 10.0, 50.0, 30.0]], dtype=np.float32)
    for _ in range(20):
        out, out_boxes, out_labels = zoom.augment(image, boxes, np.array([1, 2]))
        canvas_h, canvas_w = out.shape[1:]
        assert 30 <= canvas_h <= 4 * 30 and 50 <= canvas_w <= 4 * 50
        dx, dy = (out_boxes[0, :2] - torch.from_numpy(boxes[0, :2])).tolist()
        assert dx == int(dx) and dy == int(dy)
        dx, dy = int(dx), int(dy)
        torch.testing.assert_close(out_boxes, torch.from_numpy(boxes) + torch.tensor([dx, dy, dx, dy]))
        pasted = out[:, dy : dy + 30, dx : dx + 50]
        assert torch.equal(pasted, torch.from_numpy(image).permute(2, 0, 1)), "boxes sit on the same pixels"
        mask = torch.ones(canvas_h, canvas_w, dtype=torch.bool)
        mask[dy : dy + 30, dx : dx + 50] = False
        assert torch.equal(out[:, mask], torch.tensor(FILL, dtype=torch.uint8)[:, None].expand(3, int(mask.sum())))
        assert out_labels.tolist() == [1, 2]


def test_images_without_boxes_pass_every_step() -> None:
    torch.manual_seed(7)
    transform = TrainTransform(48, MEAN, STD, zoom_out_p=1.0)
    image = np.full((40, 60, 3), 90, dtype=np.uint8)
    for _ in range(50):
        out, boxes_norm, labels = transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        assert out.shape == (3, 48, 48) and boxes_norm.shape == (0, 4) and labels.shape == (0,)


def test_degenerate_and_outside_boxes_are_clipped_or_dropped_with_labels() -> None:
    identity = TrainTransform(32, MEAN, STD, photometric=False, zoom_out_p=0.0, crop=False, flip_p=0.0)
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    boxes = np.array(
        [
            [-5.0, 2.0, 10.0, 25.0],  # partly outside -> clipped to (0, 2, 10, 20)
            [5.0, 5.0, 5.0, 9.0],  # zero width -> dropped
            [12.0, 8.0, 6.0, 12.0],  # inverted -> dropped
            [31.0, 0.0, 40.0, 10.0],  # wholly outside -> zero width after clipping -> dropped
            [10.0, 10.0, 10.5, 12.0],  # 0.5 px wide, under min_box_size=1 -> dropped
            [3.0, 4.0, 7.0, 8.0],
        ],
        dtype=np.float32,
    )
    _, out_boxes, out_labels = identity.augment(image, boxes, np.arange(1, 7))
    torch.testing.assert_close(out_boxes, torch.tensor([[0.0, 2.0, 10.0, 20.0], [3.0, 4.0, 7.0, 8.0]]))
    assert out_labels.tolist() == [1, 6]
    _, norm_boxes, norm_labels = EvalTransform(32, MEAN, STD)(image, boxes, np.arange(1, 7))
    torch.testing.assert_close(norm_boxes, torch.tensor([[0.0, 0.1, 1 / 3, 1.0], [0.1, 0.2, 7 / 30, 0.4]]))
    assert norm_labels.tolist() == [1, 6]


def test_train_transform_is_reproducible_under_torch_seed() -> None:
    rng = np.random.default_rng(8)
    samples = [random_sample(rng) for _ in range(10)]
    transform = TrainTransform(40, MEAN, STD)

    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        torch.manual_seed(seed)
        return [transform(*sample) for sample in samples]

    first, again, other = run(11), run(11), run(12)
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


# --- model input: resize + normalise --------------------------------------------------------


def test_eval_transform_is_exactly_resize_then_normalise() -> None:
    # A 1x2 image resized to 4x4, bilinear with half-pixel centres (align_corners=False):
    # source x = (x_out + 0.5) * 2 / 4 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped to [0, 1], so
    # the weights of the right pixel are 0, 0.25, 0.75, 1 on every row.
    image = np.array([[[0, 40, 200], [100, 80, 0]]], dtype=np.uint8)  # (1, 2, 3): H=1, W=2
    resized = np.array([[0, 25, 75, 100], [40, 50, 70, 80], [200, 150, 50, 0]], dtype=np.float64)  # (C, W)
    mean, std = (0.5, 0.25, 0.75), (0.5, 0.25, 0.125)
    expected = (resized / 255 - np.array(mean)[:, None]) / np.array(std)[:, None]  # (3, 4)
    expected = np.repeat(expected[:, None, :], 4, axis=1)  # (3, 4, 4): every row the same
    out, boxes_norm, labels = EvalTransform(4, mean, std)(image, np.array([[0.5, 0.0, 1.5, 1.0]]), np.array([2]))
    torch.testing.assert_close(out, torch.from_numpy(expected).float(), rtol=0, atol=1e-6)
    # x / W, y / H with W=2, H=1
    torch.testing.assert_close(boxes_norm, torch.tensor([[0.25, 0.0, 0.75, 1.0]]))
    assert labels.tolist() == [2]


def test_to_model_input_matches_eval_transform_for_lists_and_batches() -> None:
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in ((37, 51), (300, 300), (12, 90))]
    evaluate = EvalTransform(50, MEAN, STD)
    batch = to_model_input(images, 50, MEAN, STD)
    assert batch.shape == (3, 3, 50, 50) and batch.dtype == torch.float32
    no_boxes = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    for i, image in enumerate(images):
        assert torch.equal(batch[i], evaluate(image, *no_boxes)[0])
    same_size = np.stack([images[0], images[0][::-1]])  # (2, 37, 51, 3)
    torch.testing.assert_close(to_model_input(same_size, 50, MEAN, STD)[0], batch[0], rtol=0, atol=0)
    assert to_model_input(torch.from_numpy(same_size), 50, MEAN, STD).shape == (2, 3, 50, 50)
    assert to_model_input([], 50, MEAN, STD).shape == (0, 3, 50, 50)


def test_the_resize_gives_the_same_pixels_on_a_channels_last_view_as_on_a_copy() -> None:
    """Pre-processing resizes the (H, W, 3) image as a (3, H, W) view (3x faster, no copy): the
    values must be those of the contiguous copy, down- and up-sampled, and the result contiguous."""
    rng = np.random.default_rng(11)
    for height, width in ((37, 1001), (300, 300), (100, 50), (1999, 2001), (321, 319)):
        hwc = torch.from_numpy(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        view = hwc.permute(2, 0, 1)
        for size in (300, 320, 512):
            resized = resize_uint8(view, size)
            assert torch.equal(resized, resize_uint8(view.contiguous(), size)) and resized.is_contiguous()


def test_train_resize_is_the_model_input_resize() -> None:
    # With every augmentation off, training input == eval input == detect input.
    rng = np.random.default_rng(10)
    image = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    plain = TrainTransform(30, MEAN, STD, photometric=False, zoom_out_p=0.0, crop=False, flip_p=0.0)
    assert torch.equal(plain(image, np.zeros((0, 4)), np.zeros(0))[0], to_model_input([image], 30, MEAN, STD)[0])


def test_bad_image_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_model_input([np.zeros((3, 10, 10), dtype=np.uint8)], 8, MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        EvalTransform(8, MEAN, STD)(np.zeros((10, 10, 3), dtype=np.float32), np.zeros((0, 4)), np.zeros(0))
