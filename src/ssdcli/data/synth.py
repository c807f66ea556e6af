"""A small synthetic VOC-layout dataset of coloured shapes: the default data behind `make demo`.

Made to be learnable by a small SSD in minutes on a CPU: four shapes (circle, square, triangle,
star), each filled in its own hue (jittered) with shading, on smooth-noise textured backgrounds;
objects from 20 px to most of the image, up to five per image with little overlap, some images
with none. Each image is drawn from its own generator seeded by ``(seed, index)``, so the same
seed gives the same bytes, and image k does not depend on how many images are made.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from ssdcli.errors import UserError

CLASSES = ("circle", "square", "star", "triangle")  # sorted: the order the VOC reader gives them
# Hue per class on OpenCV's 0..179 scale (red, green, blue, yellow): shape and colour agree, so
# a few epochs suffice for the demo; jittered by +-8 so colour alone is not the whole story.
_HUES = {"circle": 0, "square": 60, "triangle": 115, "star": 28}
MIN_SIZE_PX = 20
MAX_OBJECTS = 5
# At most this share of the smaller of two boxes may be covered by the other: IoU alone would let
# a small shape sit (hidden) inside a big one.
MAX_OVERLAP = 0.15
VAL_EVERY = 5  # every 5th image goes to val: an 80 / 20 split


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`make_synthetic_dataset` wrote."""

    root: Path
    classes: tuple[str, ...]
    num_images: int
    num_train: int
    num_val: int
    boxes_per_class: dict[str, int]


@dataclass(frozen=True)
class _Shape:
    name: str
    mask: np.ndarray  # bool[H, W]
    box_xyxy_px: tuple[int, int, int, int]  # continuous 0-based, tight around the mask


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """uint8[H, W, 3]: a muted base colour, smooth low-frequency blotches and pixel noise."""
    base = rng.uniform(70, 190, size=3)
    cells = int(rng.integers(3, 9))
    # Mostly brightness, a little colour: busy enough to need learning, muted next to the shapes.
    brightness = rng.normal(0.0, 30.0, size=(cells, cells, 1))
    blotches = (brightness + rng.normal(0.0, 10.0, size=(cells, cells, 3))).astype(np.float32)
    smooth = cv2.resize(blotches, (width, height), interpolation=cv2.INTER_CUBIC)  # (H, W, 3)
    stripes = 10.0 * np.sin(np.arange(width) * rng.uniform(0.05, 0.3) + rng.uniform(0, 6.3))  # (W,)
    noise = rng.normal(0.0, 9.0, size=(height, width, 3))
    image = base + smooth + stripes[None, :, None] * rng.uniform(0, 1) + noise
    return image.clip(0, 255).astype(np.uint8)


def _polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-size outline of a shape, float[K, 2] around (0, 0), randomly rotated."""
    if name == "circle":
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (64, 2)
    if name == "square":
        angles = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi + rng.uniform(-0.3, 0.3)
    elif name == "triangle":
        angles = np.array([0.5, 0.5 + 2 / 3, 0.5 + 4 / 3]) * math.pi + rng.uniform(-0.4, 0.4)
    else:  # star: five points, inner radius 0.45
        angles = np.arange(10) * math.pi / 5 + math.pi / 2 + rng.uniform(-0.3, 0.3)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)  # (10, 2)
    return np.stack([np.cos(angles), -np.sin(angles)], axis=1)  # (K, 2)


def _draw_shape(rng: np.random.Generator, name: str, width: int, height: int) -> _Shape | None:
    """A shape's mask at a random place, size (log-uniform) and aspect; None if it came out tiny."""
    size = math.exp(rng.uniform(math.log(MIN_SIZE_PX * 1.2), math.log(0.6 * min(width, height))))
    aspect = math.exp(rng.uniform(-0.3, 0.3))  # width / height stretch within about 0.74..1.35
    outline = _polygon(name, rng)
    outline = outline / np.abs(outline).max(axis=0)  # (K, 2), spans [-1, 1] in x and y
    half = np.array([size * math.sqrt(aspect), size / math.sqrt(aspect)]) / 2
    centre = rng.uniform(half, [width - half[0], height - half[1]])
    points = np.round(centre + outline * half).astype(np.int32)  # (K, 2) pixel corners
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [points], 1)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    if min(box[2] - box[0], box[3] - box[1]) < MIN_SIZE_PX:
        return None
    return _Shape(name, mask.astype(bool), box)


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection over the smaller box's area, for two xyxy boxes."""
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter_w * inter_h / smaller


def _paint(image: np.ndarray, shape: _Shape, rng: np.random.Generator) -> None:
    """Fill the shape in its class hue with a soft linear shading across it."""
    hue = (_HUES[shape.name] + rng.integers(-8, 9)) % 180
    hsv = np.uint8([[[hue, rng.integers(170, 256), rng.integers(170, 256)]]])
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)  # (3,)
    rows, cols = np.nonzero(shape.mask)
    x1, y1, x2, y2 = shape.box_xyxy_px
    direction = rng.normal(size=2)
    ramp = ((cols - x1) / (x2 - x1) - 0.5) * direction[0] + ((rows - y1) / (y2 - y1) - 0.5) * direction[1]
    shade = 1.0 + 0.25 * np.tanh(ramp)[:, None]  # (P, 1), brighter on one side
    image[rows, cols] = (colour * shade + rng.normal(0, 6, size=(rows.size, 3))).clip(0, 255).astype(np.uint8)


def synth_image(seed: int, index: int) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """Image ``index`` of the dataset made with ``seed``.

    Returns:
        ``(image, objects)``: image uint8[H, W, 3] RGB with W in [240, 400], H in [240, 360];
        objects as ``(class name, box)``, box xyxy continuous 0-based pixels, tight around the
        painted shape (its full extent; another shape covers at most 15 % of the smaller box).
    """
    rng = np.random.default_rng([seed, index])
    width, height = int(rng.integers(240, 401)), int(rng.integers(240, 361))
    image = _background(rng, width, height)
    # ~8 % of images have no objects: negatives the detector must learn to leave empty.
    count = 0 if rng.uniform() < 0.08 else int(rng.integers(1, MAX_OBJECTS + 1))
    shapes: list[_Shape] = []
    for _ in range(count * 10):  # placement attempts
        if len(shapes) == count:
            break
        shape = _draw_shape(rng, CLASSES[int(rng.integers(len(CLASSES)))], width, height)
        if shape is not None and all(_overlap(shape.box_xyxy_px, s.box_xyxy_px) <= MAX_OVERLAP for s in shapes):
            shapes.append(shape)
    for shape in shapes:
        _paint(image, shape, rng)
    return image, [(s.name, s.box_xyxy_px) for s in shapes]


def voc_annotation_xml(filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, ...]]]) -> str:
    """A VOC annotation; boxes given as continuous 0-based xyxy, written 1-based inclusive
    ``(x1 + 1, y1 + 1, x2, y2)`` (SPEC.md)."""
    lines = [
        "<annotation>",
        "\t<folder>JPEGImages</folder>",
        f"\t<filename>{escape(filename)}</filename>",
        "\t<source><database>ssd data synth</database></source>",
        f"\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "\t<segmented>0</segmented>",
    ]
    for name, (x1, y1, x2, y2) in objects:
        lines += [
            "\t<object>",
            f"\t\t<name>{escape(name)}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            "\t\t<difficult>0</difficult>",
            f"\t\t<bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
            "\t</object>",
        ]
    return "\n".join(lines + ["</annotation>"]) + "\n"


def make_synthetic_dataset(
    out: Path,
    num_images: int = 240,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write ``out/{Annotations, JPEGImages, ImageSets/Main/{train,val,trainval}.txt}``.

    Args:
        out: the dataset folder; must be new or empty unless ``overwrite``.
        num_images: how many images (>= 2, so train and val both get some).
        seed: same seed, same files, byte for byte.
        overwrite: replace the Annotations/, JPEGImages/ and ImageSets/ folders of an existing
            dataset in ``out`` (nothing else there is touched).
        progress: called as ``progress(done, total)``.

    Raises:
        UserError: ``num_images`` < 2, or ``out`` is not empty and ``overwrite`` is False.
    """
    out = Path(out)
    if num_images < 2:
        raise UserError(f"--images {num_images}: need at least 2 (one for train, one for val)")
    if out.is_file():
        raise UserError(f"{out}: is a file; give a folder for the dataset")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: folder is not empty; choose a new folder or pass --force to replace it")
        for sub in ("Annotations", "JPEGImages", "ImageSets"):
            shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    counts = dict.fromkeys(CLASSES, 0)
    train_ids, val_ids = [], []
    for index in range(num_images):
        image_id = f"{index + 1:06d}"
        image, objects = synth_image(seed, index)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise OSError(f"OpenCV could not encode {image_id}.jpg")
        (out / "JPEGImages" / f"{image_id}.jpg").write_bytes(encoded.tobytes())
        xml = voc_annotation_xml(f"{image_id}.jpg", image.shape[1], image.shape[0], objects)
        (out / "Annotations" / f"{image_id}.xml").write_text(xml)
        for name, _ in objects:
            counts[name] += 1
        (val_ids if index % VAL_EVERY == VAL_EVERY - 1 else train_ids).append(image_id)
        if progress is not None:
            progress(index + 1, num_images)

    main = out / "ImageSets" / "Main"
    for name, ids in (("train", train_ids), ("val", val_ids), ("trainval", sorted(train_ids + val_ids))):
        (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return SynthSummary(out, CLASSES, num_images, len(train_ids), len(val_ids), counts)
