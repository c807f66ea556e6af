"""render: detection drawing and the video writer."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ssdcli.errors import UserError
from ssdcli import render
from ssdcli.render import check_display, class_colour, draw_detections, open_video_writer

NAMES = ["cat", "dog"]


def test_no_detections_leave_a_copy_of_the_image():
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    drawn = draw_detections(image, np.zeros((0, 4)), [], [], NAMES)
    assert np.array_equal(drawn, image) and drawn is not image


def test_box_in_class_colour_with_a_filled_label_and_the_input_untouched():
    image = np.zeros((200, 300, 3), np.uint8)
    before = image.copy()
    drawn = draw_detections(image, [[50.0, 80.0, 150.0, 180.0]], [2], [0.87], NAMES)
    assert np.array_equal(image, before)
    dog = np.array(class_colour(2), np.uint8)
    # thickness max(1, round(0.003 * (300 + 200) / 2)) = 1: the left edge is x = 50, y in 80..180
    assert (drawn[120, 50] == dog).all() and (drawn[170, 150] == dog).all()
    assert not drawn[130, 100].any()  # inside the box stays untouched
    # the label sits on a filled background just above the box (y < 80) starting at x = 50
    label_rows = drawn[60:80, 50:100]
    assert (label_rows == dog).all(axis=2).mean() > 0.5
    # a box at the top edge gets its label inside it instead of off the image
    top = draw_detections(image, [[10.0, 0.0, 100.0, 60.0]], [1], [0.5], NAMES)
    assert (top[5:12, 12:40] == np.array(class_colour(1), np.uint8)).all(axis=2).mean() > 0.3


def test_line_width_grows_with_the_image():
    small = draw_detections(np.zeros((100, 100, 3), np.uint8), [[20, 40, 80, 90]], [1], [0.9], NAMES)
    large = draw_detections(np.zeros((1000, 1000, 3), np.uint8), [[200, 400, 800, 900]], [1], [0.9], NAMES)
    # thickness 1 at 100 px, round(0.003 * 1000) = 3 at 1000 px: count coloured pixels across the left edge
    colour = np.array(class_colour(1), np.uint8)
    assert (small[70, 15:25] == colour).all(axis=1).sum() == 1
    # (OpenCV draws a thickness-t line with round caps as a polygon: 5 px wide for t = 3)
    assert 3 <= (large[700, 190:210] == colour).all(axis=1).sum() <= 6


def test_unknown_label_is_drawn_with_its_number():
    drawn = draw_detections(np.zeros((100, 100, 3), np.uint8), [[20, 40, 80, 90]], [7], [0.9], NAMES)
    assert (drawn[60, 20] == np.array(class_colour(7), np.uint8)).all()


def test_video_writer_round_trip_and_unwritable_path(tmp_path):
    writer = open_video_writer(tmp_path / "sub" / "v.mp4", 12.0, (64, 48))
    for k in range(3):
        writer.write(np.full((48, 64, 3), 60 * k, np.uint8))
    writer.release()
    capture = cv2.VideoCapture(str(tmp_path / "sub" / "v.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write a video there"):
        open_video_writer(tmp_path / "file" / "v.mp4", 12.0, (64, 48))


def test_show_needs_a_display_on_linux(monkeypatch):
    monkeypatch.setattr(render.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(UserError, match=r"^--show needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set"):
        check_display()
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.setenv(name, ":0")
        check_display()  # either one is enough
        monkeypatch.delenv(name)
    monkeypatch.setattr(render.sys, "platform", "darwin")
    check_display()  # elsewhere OpenCV opens its own window system


def _label_boxes(corners: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([corners, corners + sizes], axis=1).astype(np.float64)  # (K, 4) xyxy, end exclusive


def _pairwise_overlap(boxes: np.ndarray) -> np.ndarray:
    ox = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    oy = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    area = np.clip(ox, 0, None) * np.clip(oy, 0, None)
    np.fill_diagonal(area, 0)
    return area  # (K, K)


def test_labels_of_30_overlapping_detections_do_not_overlap_and_stay_in_the_image():
    rng = np.random.default_rng(0)
    width, height = 640, 480
    # 30 boxes piled around one spot: their "above the box" places all collide
    x1 = rng.uniform(200, 260, 30)
    y1 = rng.uniform(180, 220, 30)
    boxes = np.stack([x1, y1, x1 + rng.uniform(80, 140, 30), y1 + rng.uniform(80, 140, 30)], axis=1)
    thickness, scale, text_thickness = render.line_style(width, height)
    sizes = []
    for k in range(30):
        (w, h), baseline = cv2.getTextSize(f"class{k % 5} 0.{k:02d}", cv2.FONT_HERSHEY_SIMPLEX, scale, text_thickness)
        sizes.append((w + 2 * thickness, h + baseline + 2 * thickness))
    sizes = np.array(sizes)
    corners = render.place_labels(boxes, sizes, width, height)
    labels = _label_boxes(corners, sizes)
    assert (_pairwise_overlap(labels) == 0).all()
    assert (labels[:, :2] >= 0).all() and (labels[:, 2] <= width).all() and (labels[:, 3] <= height).all()
    # the first (best) label keeps its preferred place: just above its box, left-aligned
    assert tuple(corners[0]) == (round(boxes[0, 0]), round(boxes[0, 1]) - sizes[0, 1])


def test_a_label_goes_above_its_box_else_inside_it_else_beside_the_others():
    sizes = np.array([[50, 20], [50, 20], [50, 20]])
    corners = render.place_labels([[100, 100, 210, 200], [10, 0, 120, 90], [100, 100, 210, 200]], sizes, 300, 300)
    assert tuple(corners[0]) == (100, 80)  # above
    assert tuple(corners[1]) == (10, 0)  # at the top edge: inside, at the top
    assert tuple(corners[2]) == (160, 80)  # same box: above, right-aligned, free of the first label
    # a 100 px wide box: right-aligned above, or inside at the top, would touch the first label
    # (no background between them), so the second goes below the box
    corners = render.place_labels([[100, 100, 200, 200], [100, 100, 200, 200]], sizes[:2], 300, 300)
    assert tuple(corners[1]) == (100, 200)
    # at the right and bottom edges labels are shifted into the image
    corner = render.place_labels([[280, 290, 300, 300]], [[50, 20]], 300, 300)
    assert tuple(corner[0]) == (250, 270)
    assert render.place_labels(np.zeros((0, 4)), np.zeros((0, 2)), 10, 10).shape == (0, 2)


def test_200_detections_are_placed_inside_the_image_with_few_overlaps():
    rng = np.random.default_rng(1)
    x1, y1 = rng.uniform(0, 1200, 200), rng.uniform(0, 900, 200)
    boxes = np.stack([x1, y1, x1 + rng.uniform(20, 200, 200), y1 + rng.uniform(20, 200, 200)], axis=1).clip(0, [1280, 960] * 2)
    sizes = np.column_stack([rng.integers(60, 140, 200), np.full(200, 24)])
    corners = render.place_labels(boxes, sizes, 1280, 960)
    labels = _label_boxes(corners, sizes)
    assert (labels[:, :2] >= 0).all() and (labels[:, 2] <= 1280).all() and (labels[:, 3] <= 960).all()
    # greedy placement keeps nearly all of them free: far fewer overlapping pairs than drawing at the box
    naive = _label_boxes(np.column_stack([boxes[:, 0], boxes[:, 1] - 24]).round(), sizes)
    assert (_pairwise_overlap(labels) > 0).sum() * 10 <= (_pairwise_overlap(naive) > 0).sum()


def test_text_size_and_line_width_follow_the_image_size():
    styles = [render.line_style(w, h) for w, h in ((300, 300), (640, 480), (1300, 975), (4000, 3000))]
    assert [s[0] for s in styles] == sorted(s[0] for s in styles) and styles[0][0] < styles[-1][0]
    assert [s[1] for s in styles] == sorted(s[1] for s in styles) and styles[0][1] < styles[2][1] < styles[3][1]
    assert styles[1][1] == pytest.approx(0.0011 * 560)  # 0.6 on 640x480
    # the drawn label's filled background grows with the image: measure its height in pixels
    heights = []
    for side in (400, 1300):
        image = np.zeros((side, side, 3), np.uint8)
        box = [side * 0.3, side * 0.5, side * 0.6, side * 0.8]
        drawn = draw_detections(image, [box], [1], [0.9], NAMES)
        column = (drawn[: int(box[1]), int(box[0]) + 2] == np.array(class_colour(1), np.uint8)).all(axis=1)
        heights.append(int(column.sum()))
    assert heights[1] > 2.5 * heights[0] > 0


def test_the_onnx_example_draws_the_same_picture_pixel_for_pixel():
    # examples/onnx_inference.py copies the drawing to stay free of ssdcli: the copy must not drift
    import importlib.util
    from pathlib import Path

    pytest.importorskip("onnxruntime")
    path = Path(__file__).resolve().parents[1] / "examples" / "onnx_inference.py"
    spec = importlib.util.spec_from_file_location("onnx_inference_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rng = np.random.default_rng(4)
    names = ["cat", "dog", "person"]
    for width, height, n in ((640, 480, 30), (1300, 900, 12), (200, 150, 0)):
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        x1, y1 = rng.uniform(0, width * 0.8, n), rng.uniform(0, height * 0.8, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(10, width / 3, n), y1 + rng.uniform(10, height / 3, n)], 1)
        boxes = boxes.clip(0, [width, height] * 2).round(1)
        labels, scores = rng.integers(1, 4, n), rng.uniform(0.3, 1, n).round(4)
        ours = draw_detections(image, boxes, labels, scores, names)
        dets = [{"label": names[l - 1], "class_id": int(l), "score": float(s), "box": b.tolist()}
                for b, l, s in zip(boxes, labels, scores)]
        assert np.array_equal(example.draw(image, dets), ours)
        assert example.class_colour(3) == class_colour(3)
