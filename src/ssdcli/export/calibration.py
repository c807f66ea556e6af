"""int8: the calibration images (``--calibration-data DIR``) and NNCF's post-training quantization
of an OpenVINO model on them.

Post-training quantization runs the fp32 model over a few hundred representative images, records
the range of every activation it will quantize, and turns weights and activations of the
convolutions into int8 with those ranges (NNCF's ``nncf.quantize``, its default algorithm:
min-max ranges plus fast bias correction). The images should be the user's own: ranges measured on
other pictures clip what matters. Any dataset ``ssd data check`` reads, or a folder of images, is
accepted; at most :data:`CALIBRATION_IMAGES` are used, spread evenly over the sorted list.

``nncf`` is part of the ``[openvino]`` extra, imported only by :func:`quantize_openvino`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssdcli.errors import DataError, UserError

CALIBRATION_IMAGES = 300
"""Most images quantization is calibrated on (NNCF's own default subset size)."""
MISSING_NNCF = "int8 quantization needs NNCF; install the OpenVINO extra with: pip install 'ssdcli[openvino]'"


@dataclass(frozen=True)
class CalibrationSet:
    """The images int8 quantization is calibrated on.

    Attributes:
        source: the ``--calibration-data`` path as given.
        images: the image files used, in order.
        digest: sha256 over each image's name (relative to ``source``) and bytes: the export
            cache's key, so other images (or the same images edited) quantize anew.
    """

    source: Path
    images: tuple[Path, ...]
    digest: str


def calibration_set(path: str | os.PathLike[str], limit: int = CALIBRATION_IMAGES) -> CalibrationSet:
    """The calibration images of a dataset (any layout ``ssd data check`` reads) or of a folder of
    images (searched recursively): at most ``limit``, evenly spaced over the sorted list.

    Raises:
        UserError: the path is missing or holds no image.
    """
    source = Path(path)
    if not source.exists():
        raise UserError(f"--calibration-data {source}: no such file or folder")
    images = _dataset_images(source)
    if images is None:
        from ssdcli.sources import expand_sources

        images = [item.path for item in expand_sources([str(source)]).images] if source.is_dir() else []
    if not images:
        raise UserError(
            f"--calibration-data {source}: no images found; give a dataset `ssd data check` reads or a folder of images"
        )
    images = sorted(images)
    if len(images) > limit:
        step = len(images) / limit
        images = [images[int(i * step)] for i in range(limit)]
    return CalibrationSet(source, tuple(images), _digest(source, images))


def _dataset_images(source: Path) -> list[Path] | None:
    """The images of the dataset at ``source``, or ``None`` when it is not one the readers know."""
    from ssdcli.data.reader import load_dataset

    try:
        dataset = load_dataset(source, check_images=False, verify_pixels=False)
    except (DataError, UserError):
        return None
    return [record.image_path for record in dataset.records] or None


def _digest(source: Path, images: list[Path]) -> str:
    digest = hashlib.sha256()
    root = source if source.is_dir() else source.parent
    for image in images:
        try:
            name = image.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:  # a dataset json may point outside its folder
            name = image.name
        digest.update(name.encode() + b"\0")
        try:
            digest.update(image.read_bytes())
        except OSError as exc:
            raise UserError(f"--calibration-data: cannot read {image} ({exc.strerror})") from exc
    return digest.hexdigest()


def calibration_inputs(
    calibration: CalibrationSet, image_size: int, mean, std
) -> Iterator[np.ndarray]:
    """Each calibration image as the network's input: float32 [1, 3, S, S], pre-processed exactly as
    ``ssd detect`` does it (:class:`ssdcli.image_files.ImageFiles`). Unreadable images are skipped."""
    from ssdcli.image_files import ImageFiles

    files = ImageFiles(calibration.images, image_size, mean, std)
    for index in range(len(files)):
        tensor, _, _, error, _, _ = files[index]
        if error is None:
            yield tensor.unsqueeze(0).numpy()  # (1, 3, S, S)


def quantize_openvino(
    model: Any,
    calibration: CalibrationSet,
    image_size: int,
    mean,
    std,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """An int8 copy of an ``openvino.Model`` (raw outputs), calibrated on ``calibration``.

    NNCF's ``MIXED`` preset (symmetric weights, asymmetric activations: MobileNet's hard-swish
    outputs are not centred on zero) and its default range estimation and fast bias correction.
    NNCF's own progress bars and log lines are kept off the terminal; ``progress`` gets one line.

    Raises:
        UserError: nncf is missing, or no calibration image could be read.
    """
    inputs = list(calibration_inputs(calibration, image_size, mean, std))
    if not inputs:
        raise UserError(f"--calibration-data {calibration.source}: none of its images could be read")
    if progress is not None:
        progress(f"calibrating int8 on {len(inputs)} images of {calibration.source}")
    nncf = import_nncf()
    with _quiet():
        return nncf.quantize(
            model,
            nncf.Dataset(inputs),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(inputs),
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's progress bars (rich, on stdout) and log lines, and the line torch's C++-extension
    loader logs when NNCF imports it, kept off the terminal."""
    loggers = [logging.getLogger(name) for name in ("nncf", "torch.utils.cpp_extension")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def import_nncf() -> Any:
    """The ``nncf`` module, imported quietly.

    Raises:
        UserError: it is not installed.
    """
    try:
        with _quiet():
            import nncf
    except ImportError as exc:
        raise UserError(MISSING_NNCF) from exc
    return nncf
