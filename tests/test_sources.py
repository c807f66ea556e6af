"""sources: expanding SOURCE arguments (files, folders, globs, videos) and reading video frames."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ssdcli.data.transforms import normalize, resize_uint8
from ssdcli.errors import UserError
from ssdcli.sources import (
    ImageSource,
    VideoSource,
    _glob_root,
    _match_parts,
    expand_sources,
    plan_outputs,
)
from ssdcli.videos import VideoFrames, probe_video


def touch_image(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((12, 16, 3), value, np.uint8))
    return path


def write_video(path: Path, frames: int = 5, size: tuple[int, int] = (160, 120), fps: float = 10.0) -> list[np.ndarray]:
    """A short mp4v video whose frame k is a grey level 40 k with a white square moving right;
    returns the frames as OpenCV decodes them back (BGR), the reference for reading."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for k in range(frames):
        frame = np.full((height, width, 3), 40 * k, np.uint8)
        frame[40:80, 10 + 20 * k : 50 + 20 * k] = 255
        writer.write(frame)
    writer.release()
    capture = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    capture.release()
    return decoded


@pytest.fixture()
def tree(tmp_path, monkeypatch) -> Path:
    """photos/a.jpg, photos/sub/b.png, photos/sub/deeper/c.JPG, photos/notes.txt, clip.mp4, doc.pdf."""
    monkeypatch.chdir(tmp_path)
    touch_image(tmp_path / "photos" / "a.jpg")
    touch_image(tmp_path / "photos" / "sub" / "b.png")
    touch_image(tmp_path / "photos" / "sub" / "deeper" / "c.JPG")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    write_video(tmp_path / "clip.mp4", frames=2)
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    return tmp_path


def test_a_folder_is_searched_recursively_for_image_extensions_only(tree):
    plan = expand_sources(["photos"])
    # sorted walk: photos/a.jpg, then sub/b.png, then sub/deeper/c.JPG (extension case ignored); notes.txt skipped
    assert plan.images == [
        ImageSource(Path("photos/a.jpg"), Path("a.jpg")),
        ImageSource(Path("photos/sub/b.png"), Path("sub/b.png")),
        ImageSource(Path("photos/sub/deeper/c.JPG"), Path("sub/deeper/c.JPG")),
    ]
    assert plan.videos == [] and plan.missing == [] and plan.unsupported == []


def test_files_videos_unsupported_and_missing_are_told_apart(tree):
    plan = expand_sources(["photos/sub/b.png", "clip.mp4", "doc.pdf", "nope.jpg", "photos/a.jpg"])
    assert plan.images == [
        ImageSource(Path("photos/sub/b.png"), Path("b.png")),
        ImageSource(Path("photos/a.jpg"), Path("a.jpg")),
    ]
    assert plan.videos == [VideoSource(path=Path("clip.mp4"))]
    assert plan.unsupported == ["doc.pdf: not an image or video file by its extension (.pdf)"]
    assert plan.missing == ["nope.jpg: no such file or folder"]


def test_globs_keep_the_path_below_their_fixed_part_and_match_videos(tree):
    plan = expand_sources(["photos/**/*.png", "*.mp4", "photos/*.gif"])
    assert plan.images == [ImageSource(Path("photos/sub/b.png"), Path("sub/b.png"))]
    assert plan.videos == [VideoSource(path=Path("clip.mp4"))]
    assert plan.missing == ["photos/*.gif: the pattern matches no image or video files"]
    assert _glob_root("data/*/img*.jpg") == Path("data")
    assert _glob_root("a/b/**/*.jpg") == Path("a/b")
    assert _glob_root("*.jpg") == Path(".")


def test_an_image_reached_twice_is_kept_once_and_an_empty_folder_is_missing(tree):
    (tree / "empty").mkdir()
    plan = expand_sources(["photos/a.jpg", "photos", "photos/*.jpg", "empty"])
    assert [item.path for item in plan.images] == [
        Path("photos/a.jpg"), Path("photos/sub/b.png"), Path("photos/sub/deeper/c.JPG")
    ]
    assert len(plan.missing) == 1 and plan.missing[0].startswith("empty: folder holds no image files")


def test_video_frames_are_read_in_order_and_preprocessed_like_images(tmp_path):
    decoded = write_video(tmp_path / "v.mp4", frames=5, size=(160, 120), fps=10.0)
    assert len(decoded) == 5
    info = probe_video(VideoSource(path=tmp_path / "v.mp4"))
    assert (info.width, info.height, info.fps, info.frames) == (160, 120, 10.0, 5)

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    items = list(VideoFrames(VideoSource(path=tmp_path / "v.mp4"), 64, mean, std))
    assert [item[2] for item in items] == [0, 1, 2, 3, 4]
    for item, frame_bgr in zip(items, decoded):
        tensor, size, _, error, seconds, original = item
        assert size == (160, 120) and error is None and seconds >= 0
        assert original.dtype == torch.uint8 and original.shape == (120, 160, 3)
        assert torch.equal(original, torch.from_numpy(frame_bgr[:, :, ::-1].copy()))  # RGB
        expected = normalize(resize_uint8(original.permute(2, 0, 1), 64), mean, std)  # (3, 64, 64)
        assert torch.equal(tensor, expected)


def test_unopenable_videos_and_cameras_are_user_errors(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="broken.mp4: cannot open this video"):
        probe_video(VideoSource(path=tmp_path / "broken.mp4"))
    with pytest.raises(UserError, match="--webcam 97: cannot open camera 97"):
        probe_video(VideoSource(camera=97))
    assert VideoSource(camera=3).name == "webcam:3" and VideoSource(camera=3).stem == "webcam3"


def test_plan_outputs_keeps_relative_paths_renames_clashes_and_never_overwrites_inputs(tmp_path):
    out = tmp_path / "out"
    images = [
        ImageSource(tmp_path / "a" / "x.jpg", Path("x.jpg")),
        ImageSource(tmp_path / "b" / "x.jpg", Path("x.jpg")),
        ImageSource(tmp_path / "c" / "x.jpg", Path("x.jpg")),
        ImageSource(tmp_path / "d" / "sub" / "y.gif", Path("sub/y.gif")),  # cv2 cannot write gif: .png
        ImageSource(tmp_path / "e" / "z.PNG", Path("z.PNG")),  # case of a writable suffix kept
    ]
    videos = [VideoSource(path=tmp_path / "clip.avi"), VideoSource(camera=0), VideoSource(path=tmp_path / "v" / "clip.mkv")]
    image_targets, video_targets, warnings = plan_outputs(images, videos, out)
    assert image_targets == [out / "x.jpg", out / "x-2.jpg", out / "x-3.jpg", out / "sub" / "y.png", out / "z.PNG"]
    assert video_targets == [out / "clip.mp4", out / "webcam0.mp4", out / "clip-2.mp4"]
    assert warnings == [
        f"{tmp_path / 'b' / 'x.jpg'}: {out / 'x.jpg'} is taken by another source; writing {out / 'x-2.jpg'}",
        f"{tmp_path / 'c' / 'x.jpg'}: {out / 'x.jpg'} is taken by another source; writing {out / 'x-3.jpg'}",
        f"{tmp_path / 'v' / 'clip.mkv'}: {out / 'clip.mp4'} is taken by another source; writing {out / 'clip-2.mp4'}",
    ]
    assert plan_outputs([], [], out) == ([], [], [])

    inside = [ImageSource(tmp_path / "photos" / "p.jpg", Path("p.jpg"))]
    with pytest.raises(UserError, match=r"--output .*photos: would overwrite the input .*p\.jpg"):
        plan_outputs(inside, [], tmp_path / "photos")


symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="needs POSIX symlinks")


def _finishes(function, *args, seconds: float = 60.0):
    """``function(*args)`` run in a thread; fails instead of hanging when it does not return."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(function(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{function.__name__}{args} did not finish in {seconds} s"
    assert result, f"{function.__name__}{args} raised (see the thread's traceback above)"
    return result[0]


@pytest.fixture()
def looped(tmp_path, monkeypatch) -> Path:
    """loops/a.jpg, loops/sub/b.png and, as symlinks: sub/here -> . and sub/up -> .. (two folder
    loops: os.walk(followlinks=True) would walk 2**40 paths), x.jpg <-> y.jpg (a file loop),
    gone.png -> missing.png (broken), self -> self."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "loops"
    touch_image(root / "a.jpg")
    touch_image(root / "sub" / "b.png")
    os.symlink(".", root / "sub" / "here")
    os.symlink("..", root / "sub" / "up")
    os.symlink("y.jpg", root / "x.jpg")
    os.symlink("x.jpg", root / "y.jpg")
    os.symlink("missing.png", root / "gone.png")
    os.symlink("self", root / "self")
    return root


@symlinks
def test_a_folder_with_symlink_loops_is_searched_once_and_the_loops_reported(looped):
    plan = _finishes(expand_sources, ["loops"])
    assert plan.images == [ImageSource(Path("loops/a.jpg"), Path("a.jpg")),
                           ImageSource(Path("loops/sub/b.png"), Path("sub/b.png"))]
    assert plan.skipped == [
        "loops/gone.png: a broken symlink (No such file or directory); skipped",
        "loops/x.jpg: a symlink loop; skipped",
        "loops/y.jpg: a symlink loop; skipped",
        "loops/sub/here: a symlink loop (it leads back to loops/sub); not searched",
        "loops/sub/up: a symlink loop (it leads back to loops); not searched",
    ]
    assert plan.missing == [] and plan.unsupported == []


@symlinks
def test_a_recursive_glob_over_symlink_loops_matches_each_file_once(looped):
    plan = _finishes(expand_sources, ["loops/**/*.png"])
    assert plan.images == [ImageSource(Path("loops/sub/b.png"), Path("sub/b.png"))]
    # only files the pattern matches are reported (x.jpg / y.jpg are not *.png)
    assert plan.skipped == [
        "loops/gone.png: a broken symlink (No such file or directory); skipped",
        "loops/sub/here: a symlink loop (it leads back to loops/sub); not searched",
        "loops/sub/up: a symlink loop (it leads back to loops); not searched",
    ]
    plan = _finishes(expand_sources, ["**/*.jpg"])
    assert [item.path for item in plan.images] == [Path("loops/a.jpg")]


@symlinks
def test_a_looping_or_broken_symlink_named_as_a_source_is_missing(looped):
    plan = _finishes(expand_sources, ["loops/x.jpg", "loops/self", "loops/gone.png", "loops/a.jpg"])
    assert plan.images == [ImageSource(Path("loops/a.jpg"), Path("a.jpg"))]
    assert plan.missing == [
        "loops/x.jpg: a symlink loop",
        "loops/self: a symlink loop",
        "loops/gone.png: a broken symlink (No such file or directory)",
    ]


def test_recursive_patterns_follow_glob_rules():
    # (path components, pattern components, glob.glob's answer)
    cases = [
        (("a.jpg",), ("**", "*.jpg"), True),  # ** spans zero components
        (("s", "t", "a.jpg"), ("**", "*.jpg"), True),
        (("s", "a.png"), ("**", "*.jpg"), False),
        (("s", "a.jpg"), ("s", "**"), True),
        (("s", "t", "a.jpg"), ("*", "a.jpg"), False),  # * stays inside one component
        ((".hidden", "a.jpg"), ("**", "*.jpg"), False),  # wildcards skip dot names
        (("a", ".b.jpg"), ("**", "*.jpg"), False),
        (("a", ".b.jpg"), ("**", ".*.jpg"), True),
        (("img1.jpg",), ("**", "img[0-9].jpg"), True),
    ]
    for parts, pattern, expected in cases:
        assert _match_parts(parts, pattern) is expected, (parts, pattern)
