"""Reading image files: pixels as RGB uint8, or only the size from the header.

Pillow, not OpenCV, because of how each reports a damaged file:

- a truncated JPEG: ``cv2.imread`` prints "Premature end of JPEG file" on stderr and returns an
  image whose missing rows are grey, so the damage goes unnoticed; Pillow's ``load()`` raises
  ``OSError("image file is truncated ...")`` (as long as ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
  off, which we check), so :func:`verify_image` can report it. Such a file is then decoded as
  OpenCV decodes it (:func:`_load_truncated_jpeg`): many real datasets hold JPEGs a few bytes
  short whose pixels are all there.
- ``cv2.imread`` returns ``None`` with no reason for every other failure; Pillow says why.
- ``cv2.imread`` rotates by the EXIF orientation tag, but VOC / COCO boxes are drawn on the
  stored pixel grid; Pillow leaves the pixels as stored (as does ``torchvision.io.decode_image``
  by default).
- Pillow's ``Image.open`` parses only the header, so :func:`read_image_size` checks thousands of
  files quickly without decoding them.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ssdcli.errors import DataError

TRUNCATED_JPEG = "JPEG data ends early (truncated file); read as OpenCV reads it, rows past the end grey"
"""The readers' warning for a file :func:`verify_image` finds truncated."""

# Modes holding one 16- or 32-bit integer channel; Pillow's convert("RGB") would clip them at 255
# instead of scaling, turning most 16-bit images white.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _require_truncation_errors() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone switched Pillow to pad truncated files silently; we would miss damaged images.
        raise DataError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set, so truncated images cannot be detected; unset it"
        )


def _open(path: Path) -> Image.Image:
    """Open ``path`` (header only) or raise :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            # A huge image is reported as an error below, not as a warning on stderr.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file Pillow can read (unknown or damaged format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: image too large to read safely ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open image ({exc})") from None


def read_image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` in pixels, from the file header only (no decoding).

    Raises:
        DataError: the file is missing or not a readable image. A file truncated after its
            header passes here; :func:`read_image_rgb` finds that.
    """
    with _open(path) as image:
        width, height = image.size
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: image header says {width}x{height} pixels")
    return int(width), int(height)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8[H, W, 3] RGB."""
    mode = image.mode
    if mode in _WIDE_INTEGER_MODES:
        grey = np.asarray(image).astype(np.int64)  # (H, W)
        if mode == "I" and grey.max(initial=0) <= 255:
            grey8 = grey.clip(0, 255).astype(np.uint8)  # a 32-bit container of 8-bit values
        else:
            grey8 = (grey.clip(0, 65535) >> 8).astype(np.uint8)  # 16-bit range -> 8-bit
        return np.repeat(grey8[:, :, None], 3, axis=2)  # (H, W, 3)
    if mode == "F":
        grey8 = np.asarray(image).clip(0, 255).astype(np.uint8)  # (H, W)
        return np.repeat(grey8[:, :, None], 3, axis=2)  # (H, W, 3)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # Transparent pixels are composited on white, in training and detection alike: their stored
        # colour is arbitrary (often black, which dropping alpha as cv2.imread does would show).
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)  # (H, W, 4)
        alpha = rgba[:, :, 3:] / 255.0  # (H, W, 1)
        return np.rint(rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)  # (H, W, 3)
    if image.mode != "RGB":
        # L, 1, P, CMYK, YCbCr: converted.
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()  # (H, W, 3), writable


def _is_truncated_jpeg(image: Image.Image, exc: Exception) -> bool:
    # Pillow's ImageFile.load: OSError("image file is truncated (N bytes not processed)").
    return image.format == "JPEG" and isinstance(exc, OSError) and "truncated" in str(exc)


def _load_truncated_jpeg(path: Path, draft_size: tuple[int, int] | None) -> Image.Image:
    """Decode a JPEG whose data stops early as libjpeg's own reader does (and so OpenCV's
    ``imread``): at the end of the file it supplies an end-of-image marker, and the rows not
    reached are filled from zero coefficients (mid grey). Appending that marker to the bytes
    gives Pillow the same input, without touching ``ImageFile.LOAD_TRUNCATED_IMAGES`` (a
    process-wide switch). ``draft_size``: decode at reduced scale (``Image.draft``)."""
    image = Image.open(io.BytesIO(Path(path).read_bytes() + b"\xff\xd9"))  # EOI marker
    if draft_size is not None:
        image.draft(None, draft_size)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image is truncated and cannot be decoded ({exc})") from None
    return image


def read_image_rgb(path: Path) -> np.ndarray:
    """Decode an image file to ``uint8[H, W, 3]`` RGB.

    Greyscale, RGBA, palette, CMYK and 16-bit images are converted; transparent pixels are
    composited on white; EXIF orientation is not applied (annotations refer to the stored pixels).
    A JPEG truncated after its header is decoded as OpenCV decodes it, the missing rows grey
    (:func:`verify_image` tells which files are; the dataset readers warn about them).

    Raises:
        DataError: naming the file, when it is missing, not an image, or corrupt (or a truncated
            file of another format).
    """
    return _decode(path, None).rgb


JPEG_SCALES = (8, 4, 2)
"""The reductions libjpeg decodes at directly (scaled inverse DCT): 1/8, 1/4, 1/2."""


class DecodedImage(NamedTuple):
    """An image decoded at full size or, for a JPEG, at a reduced scale.

    Attributes:
        rgb: uint8[h, w, 3] RGB pixels.
        scale: 1, 2, 4 or 8: the point ``(x, y)`` of the file (pixels) is ``(x / scale, y / scale)``
            in ``rgb``; ``h = ceil(height / scale)``, ``w = ceil(width / scale)``.
        width, height: the file's full size in pixels.
    """

    rgb: np.ndarray
    scale: int
    width: int
    height: int


def jpeg_scale(width: int, height: int, min_width: int, min_height: int) -> int:
    """The largest of :data:`JPEG_SCALES` that keeps a ``width x height`` image at least
    ``min_width x min_height`` (libjpeg rounds the reduced size up), else 1 (full size)."""
    room = min(width // max(1, min_width), height // max(1, min_height))
    return next((scale for scale in JPEG_SCALES if room >= scale), 1)


def read_image_rgb_at_least(path: Path, min_width: int, min_height: int) -> DecodedImage:
    """Decode like :func:`read_image_rgb`, but a JPEG with room to spare at 1/2, 1/4 or 1/8 scale.

    libjpeg then skips most of the inverse DCT and the colour conversion of the pixels not
    kept: a 12 MP photo decodes several times faster, and what follows (resize, augmentation)
    handles a fraction of the pixels. The reduced image is still at least ``min_width x
    min_height`` (:func:`jpeg_scale`); other formats, and JPEGs without that much room, are
    decoded at full size exactly as :func:`read_image_rgb` decodes them.

    Raises:
        DataError: as :func:`read_image_rgb`.
    """
    return _decode(path, (min_width, min_height))


def _decode(path: Path, at_least: tuple[int, int] | None) -> DecodedImage:
    """The decode step of :func:`read_image_rgb` and :func:`read_image_rgb_at_least`."""
    _require_truncation_errors()
    draft_size, scale = None, 1
    with _open(path) as image:
        width, height = image.size
        if at_least is not None and image.format == "JPEG" and jpeg_scale(width, height, *at_least) > 1:
            draft_size = at_least
            configured = image.draft(None, draft_size)  # (mode, (0, 0, width / s, height / s)) or None
            scale = 1 if configured is None else round(width / configured[1][2])
        try:
            image.load()
            return DecodedImage(_to_rgb(image), scale, width, height)
        except (OSError, SyntaxError, ValueError) as exc:
            # Pillow raises OSError for truncated data, SyntaxError / ValueError for broken chunks.
            if not _is_truncated_jpeg(image, exc):
                raise DataError(f"{path}: image is truncated or corrupt ({exc})") from None
    with _load_truncated_jpeg(path, draft_size if scale > 1 else None) as image:
        return DecodedImage(_to_rgb(image), scale, width, height)


def verify_image(path: Path) -> bool:
    """Decode the whole file to find truncation or corruption, without keeping the pixels.

    JPEGs are decoded in Pillow's draft mode at 1/8 scale: libjpeg still reads every
    entropy-coded byte (so a truncated file is still found) but skips most of the inverse DCT,
    several times faster than a full decode.

    Returns:
        True for a JPEG truncated after its header that decodes the way OpenCV reads it (the
        caller warns: :func:`read_image_rgb` will read it so), False for an intact file.

    Raises:
        DataError: naming the file, as :func:`read_image_rgb` does.
    """
    _require_truncation_errors()
    with _open(path) as image:
        eighth = (max(1, image.width // 8), max(1, image.height // 8))
        try:
            if image.format == "JPEG":
                image.draft("RGB", eighth)
            image.load()
            return False
        except (OSError, SyntaxError, ValueError) as exc:
            if not _is_truncated_jpeg(image, exc):
                raise DataError(f"{path}: image is truncated or corrupt ({exc})") from None
    with _load_truncated_jpeg(path, eighth):
        return True
