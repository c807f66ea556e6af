"""OpenVINO: an exported ONNX model -> OpenVINO IR (``.xml`` + ``.bin``) with ssdcli's metadata, and
:class:`OpenVinoDetector`, which runs an IR behind ``ssd detect`` / ``ssd eval``.

The IR is made by ``openvino.convert_model`` from the ONNX file ``ssd export`` writes, so it holds
the same graph; the metadata of the ONNX file (:class:`~ssdcli.export.metadata.ExportMetadata`, as
strings) goes into the model's ``rt_info`` under ``ssdcli``, with one more key, ``precision``
(``fp32``, ``bf16`` or ``int8``): the precision the IR was checked at and runs at by default.
Weights are stored in fp32 (``compress_to_fp16=False``) except in an int8 IR, whose quantized
layers hold int8 weights.

Precision is a property of the compiled model on OpenVINO's CPU plugin
(``INFERENCE_PRECISION_HINT``): ``f32`` for fp32, ``bf16`` for bf16 (OpenVINO's own default on
CPUs with native bf16, which is why fp32 is asked for explicitly), and ``f32`` for the layers an
int8 IR leaves unquantized, so int8 changes only what quantization changed.

``openvino`` is the optional ``[openvino]`` extra, imported only here and only when used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssdcli.errors import UserError
from ssdcli.export.metadata import INPUT_NAME, ExportMetadata
from ssdcli.export.runtime import OnnxDetector
from ssdcli.files import replace_atomically, temp_path_beside

RT_INFO_SECTION = "ssdcli"
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
INFERENCE_PRECISION: dict[str, str] = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""``--precision`` -> OpenVINO CPU ``INFERENCE_PRECISION_HINT`` (int8: of the unquantized layers)."""
MISSING_OPENVINO = "OpenVINO is not installed; install the extra with: pip install 'ssdcli[openvino]'"


def import_openvino() -> Any:
    """The ``openvino`` module.

    Raises:
        UserError: it is not installed (one line saying how to install it).
    """
    try:
        import openvino
    except ImportError as exc:
        raise UserError(MISSING_OPENVINO) from exc
    return openvino


_CORE: list[Any] = []  # the process's one openvino.Core (see shared_core)


def shared_core() -> Any:
    """The process's one ``openvino.Core``, made on first use.

    OpenVINO 2026 can crash (a segmentation fault, no Python error) once a process has made
    several ``Core`` objects and queries one (openvinotoolkit/openvino#35338; ultralytics hit it
    after about 20 model loads, PR #25864): a test run or a long-lived program that loads many
    IRs would die at a random later point. Every detector shares this one, as ultralytics now does.

    Raises:
        UserError: openvino is missing.
    """
    ov = import_openvino()  # every time: an environment without openvino says so
    if not _CORE:
        _CORE.append(ov.Core())
    return _CORE[0]


def convert_onnx(onnx_path: Path) -> Any:
    """``openvino.convert_model`` of an ONNX file -> ``openvino.Model`` (in memory)."""
    ov = import_openvino()
    return ov.convert_model(str(onnx_path))


def set_metadata(model: Any, metadata: ExportMetadata, precision: str) -> None:
    """Store ``metadata`` (as :meth:`ExportMetadata.to_strings`) and ``precision`` in ``model``'s
    ``rt_info`` under :data:`RT_INFO_SECTION`."""
    for key, value in metadata.to_strings().items():
        model.set_rt_info(value, [RT_INFO_SECTION, key])
    model.set_rt_info(precision, [RT_INFO_SECTION, "precision"])


def read_metadata(model: Any, path: Path) -> tuple[ExportMetadata, str]:
    """The metadata and precision :func:`set_metadata` stored.

    Raises:
        UserError: the IR was not written by ``ssd export`` or its metadata is malformed.
    """
    info = model.get_rt_info()
    if RT_INFO_SECTION not in info.keys():
        raise UserError(
            f"{path}: an OpenVINO model without ssdcli metadata (class names, input size, normalisation); "
            "export it with `ssd export --format openvino`"
        )
    values = {key: model.get_rt_info([RT_INFO_SECTION, key]).astype(str) for key in info[RT_INFO_SECTION]}
    precision = values.pop("precision", "fp32")
    if precision not in PRECISIONS:
        raise UserError(f"{path}: its ssdcli metadata names precision {precision!r}, not one of {', '.join(PRECISIONS)}")
    try:
        return ExportMetadata.from_dict(values), precision
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from exc


@contextlib.contextmanager
def temp_ir_for(xml_path: Path) -> Iterator[Path]:
    """A hidden temp ``.xml`` name beside ``xml_path`` (:func:`ssdcli.files.temp_path_beside`, with
    the ``.xml`` extension OpenVINO insists on) for :func:`save_ir`; it and the ``.bin`` OpenVINO
    writes beside it are removed when the block ends unless :func:`keep_ir` moved them."""
    tmp_xml = temp_path_beside(xml_path).with_suffix(".xml")
    try:
        yield tmp_xml
    finally:
        tmp_xml.unlink(missing_ok=True)
        tmp_xml.with_suffix(".bin").unlink(missing_ok=True)


def save_ir(model: Any, xml_path: Path) -> None:
    """Write ``model`` as ``xml_path`` + the ``.bin`` of the same stem, weights kept in fp32."""
    ov = import_openvino()
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def keep_ir(tmp_xml: Path, xml_path: Path) -> None:
    """Move a checked IR from :func:`temp_ir_for`'s names onto ``xml_path`` (the ``.bin`` first,
    so a finished ``.xml`` never comes with a half-written ``.bin``; OpenVINO reads the weights
    from the ``.xml``'s own stem + ``.bin``)."""
    replace_atomically(tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
    replace_atomically(tmp_xml, xml_path)


def resolve_precision(stored: str, requested: str | None, path: Path) -> str:
    """The precision an IR stored as ``stored`` runs at when ``requested`` (``None``: stored).

    An fp32 or bf16 IR holds fp32 weights and runs at either; an int8 IR only as int8.

    Raises:
        UserError: int8 asked of a float IR, or a float precision of an int8 IR.
    """
    if requested is None or requested == stored:
        return stored
    if requested == "int8":
        raise UserError(
            f"{path}: an {stored} model; int8 needs a quantized one: "
            "`ssd export --format openvino --precision int8 --calibration-data DIR`"
        )
    if stored == "int8":
        raise UserError(f"{path}: an int8 (quantized) model runs only as int8; export an fp32 one for --precision {requested}")
    return requested


class OpenVinoDetector(OnnxDetector):
    """An OpenVINO IR written by ``ssd export --format openvino`` (or the export cache), ready for
    batches of pre-processed images: the :class:`ssdcli.inference.Detector` of ``--backend openvino``.

    It holds the same graph and metadata as the ONNX file it was converted from, so it shares
    :class:`~ssdcli.export.runtime.OnnxDetector`'s post-processing (``predict``) and settings
    checks, and replaces only the runtime (``run``).

    Args:
        path: the ``.xml`` file (its ``.bin`` beside it).
        settings: post-processing, as for :class:`OnnxDetector`.
        precision: ``fp32`` / ``bf16`` / ``int8``; ``None`` runs at the precision stored in the IR.

    Raises:
        UserError: openvino is missing; the file is missing, not an IR, not written by ssdcli;
            a precision it cannot run at; settings its embedded post-processing cannot apply.
    """

    backend = "openvino"

    def __init__(self, path: str | os.PathLike[str], settings=None, precision: str | None = None) -> None:
        core = shared_core()  # first: without openvino, say how to install it
        self.path = Path(path)
        if not self.path.is_file() or not self.path.with_suffix(".bin").is_file():
            raise UserError(f"{self.path}: OpenVINO model not found (an .xml with its .bin beside it); check the path")
        self.core = core
        try:
            self.model = self.core.read_model(str(self.path))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{self.path}: not an OpenVINO model OpenVINO can read ({first})") from exc
        self.metadata, stored = read_metadata(self.model, self.path)
        self.precision = resolve_precision(stored, precision, self.path)
        if self.precision == "bf16" and self.metadata.postprocess:
            # OpenVINO 2026.4, CPU, bf16: a segmentation fault when NMS inside the graph keeps nothing.
            raise UserError(f"{self.path}: has decoding and NMS inside, which OpenVINO cannot run at bf16; "
                            "use --precision fp32, or export with --no-postprocess")
        names = [output.get_any_name() for output in self.model.outputs]
        if names != list(self.metadata.outputs) or [i.get_any_name() for i in self.model.inputs] != [INPUT_NAME]:
            raise UserError(f"{self.path}: outputs {names} do not match its ssdcli metadata {list(self.metadata.outputs)}")
        batch_dim = self.model.inputs[0].get_partial_shape()[0]
        self.fixed_batch: int | None = batch_dim.get_length() if batch_dim.is_static else None
        self.settings = self._check_settings(settings)
        self.image_size: int = self.metadata.image_size
        self.mean = list(self.metadata.mean)
        self.std = list(self.metadata.std)
        self.preprocessing = self.metadata.preprocessing
        self.class_names = list(self.metadata.class_names)
        self.category_ids = self.metadata.category_ids
        self.ignored_labels = tuple(self.metadata.ignored_labels)
        # Compiled now, for any batch size (measured as fast as one compiled model per batch
        # size, README "Benchmarks"), so the first batch's time is the network's own.
        config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = self.core.compile_model(self.model, "CPU", config)

    def run(self, images: Tensor) -> tuple[Tensor, ...]:
        """The graph's outputs for ``images`` float Tensor[B, 3, S, S] normalised, as CPU tensors in
        ``metadata.outputs`` order (a fixed-batch IR runs image by image, as :meth:`OnnxDetector.run`)."""
        array = np.ascontiguousarray(images.detach().cpu().float().numpy())
        if self.fixed_batch is not None and self.fixed_batch != array.shape[0]:
            if self.fixed_batch != 1:
                raise UserError(f"{self.path}: takes batches of exactly {self.fixed_batch} images, got {array.shape[0]}")
            return _join([self._infer(array[i : i + 1]) for i in range(array.shape[0])], self.metadata.postprocess)
        return tuple(torch.from_numpy(a) for a in self._infer(array))

    def _infer(self, array: np.ndarray) -> list[np.ndarray]:
        result = self.compiled(array)
        return [np.asarray(result[output]) for output in self.compiled.outputs]


def _join(parts: Sequence[list[np.ndarray]], postprocess: bool) -> tuple[Tensor, ...]:
    """Outputs of single-image runs as one batch's (``batch_index`` renumbered, ``priors`` once)."""
    if not postprocess:
        cls_logits = np.concatenate([p[0] for p in parts])  # (B, P, C + 1)
        box_deltas = np.concatenate([p[1] for p in parts])  # (B, P, 4)
        return torch.from_numpy(cls_logits), torch.from_numpy(box_deltas), torch.from_numpy(parts[0][2])
    boxes, scores, labels = (np.concatenate([p[k] for p in parts]) for k in range(3))
    batch_index = np.concatenate([np.full(len(p[3]), i, dtype=p[3].dtype) for i, p in enumerate(parts)])
    return tuple(torch.from_numpy(a) for a in (boxes, scores, labels, batch_index))

