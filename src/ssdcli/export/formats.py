"""Writing and reading the exported files: ONNX and TorchScript, each with its metadata.

Both formats are made from a traced graph (:func:`ssdcli.export.graphs.trace_graph`). ONNX uses
torch.onnx's TorchScript-based exporter: the torch.export-based one (the default from torch 2.9)
needs ``onnxscript``, which ssdcli does not depend on, while the TorchScript path maps
``torchvision.ops.nms`` to ONNX ``NonMaxSuppression`` through the symbolic torchvision registers.
Whether ``torch.onnx.export`` has a ``dynamo`` switch to choose it is read from its signature
(:func:`onnx_export_kwargs`), not from the torch version. Everything the model needs to be used
is stored in the file: ONNX ``metadata_props`` / TorchScript ``_extra_files["ssdcli.json"]``.

``onnx`` is imported inside :func:`write_onnx` only (the ``[export]`` extra).
"""

from __future__ import annotations

import inspect
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ssdcli.errors import UserError
from ssdcli.export.graphs import quiet_export
from ssdcli.export.metadata import INPUT_NAME, ExportMetadata

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
TORCHSCRIPT_METADATA_FILE = "ssdcli.json"
MIN_OPSET = 17
MAX_OPSET = 20  # the newest opset torch.onnx's TorchScript-based exporter writes
DEFAULT_OPSET = 17


def onnx_export_kwargs(export: Callable | None = None) -> dict[str, bool]:
    """The keyword that selects the TorchScript-based exporter of ``export`` (``torch.onnx.export``
    by default): ``{"dynamo": False}`` when its signature has a ``dynamo`` parameter, else ``{}``
    (a torch without that parameter has only the TorchScript-based exporter).

    Feature-detected as timm's ``timm/utils/onnx.py`` does, not inferred from ``torch.__version__``.
    """
    export = torch.onnx.export if export is None else export
    try:
        parameters = inspect.signature(export).parameters
    except (TypeError, ValueError):  # a builtin without a readable signature: pass nothing extra
        return {}
    return {"dynamo": False} if "dynamo" in parameters else {}


def write_onnx(
    traced: torch.jit.ScriptModule,
    sample: torch.Tensor,
    path: Path,
    metadata: ExportMetadata,
    opset: int,
    dynamic_batch: bool,
) -> None:
    """Export a traced graph to ONNX at ``path``, add ``metadata`` and check the model.

    Args:
        traced: a traced :class:`~ssdcli.export.graphs.RawGraph` / ``DetectionGraph``.
        sample: Tensor[N, 3, S, S], the input it was traced on.
        opset: ``MIN_OPSET`` .. ``MAX_OPSET``.
        dynamic_batch: make the batch dimension of the input (and raw outputs) symbolic.

    Raises:
        onnx.checker.ValidationError: the written graph is not valid ONNX.
    """
    import onnx

    names = list(metadata.outputs)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {INPUT_NAME: {0: "batch"}}
        if not metadata.postprocess:
            dynamic_axes.update({"cls_logits": {0: "batch"}, "box_deltas": {0: "batch"}})
    with quiet_export(), torch.no_grad():
        torch.onnx.export(
            traced,
            (sample,),
            str(path),
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=dynamic_axes,
            **onnx_export_kwargs(),
        )
    model = onnx.load(str(path))
    model.producer_name = "ssdcli"
    model.producer_version = metadata.ssdcli_version
    model.doc_string = f"ssdcli {metadata.arch} export ({'detections' if metadata.postprocess else 'raw outputs'})"
    del model.metadata_props[:]
    for key, value in metadata.to_strings().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_torchscript(traced: torch.jit.ScriptModule, path: Path, metadata: ExportMetadata) -> None:
    """Save a traced graph with ``metadata`` as the extra file ``ssdcli.json``."""
    extra = {TORCHSCRIPT_METADATA_FILE: json.dumps(metadata.to_dict(), indent=2)}
    # Into memory first: torch.jit.save to a path aborts the whole process (std::terminate in
    # its writer's destructor) when the disk fills up; Python's write raises OSError instead.
    buffer = io.BytesIO()
    with quiet_export():
        torch.jit.save(traced, buffer, _extra_files=extra)
    Path(path).write_bytes(buffer.getbuffer())


def load_torchscript(
    path: str | os.PathLike[str],
) -> tuple[torch.jit.ScriptModule, ExportMetadata]:
    """An exported TorchScript file and its metadata (on CPU).

    Raises:
        UserError: not a TorchScript file, or one ``ssd export`` did not write.
    """
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    try:
        with quiet_export():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0]})") from exc
    if not extra[TORCHSCRIPT_METADATA_FILE]:
        raise UserError(f"{path}: a TorchScript file without ssdcli metadata; export it with `ssd export`")
    try:
        metadata = ExportMetadata.from_dict(json.loads(extra[TORCHSCRIPT_METADATA_FILE]))
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from exc
    return module, metadata
