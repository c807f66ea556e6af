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
