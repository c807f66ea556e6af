"""``ssd export``: a checkpoint to ONNX or TorchScript, proved to compute what PyTorch does.

- :mod:`~ssdcli.export.graphs`: the traced graphs (raw outputs + priors, or detections with the
  post-processing inside) and the trace;
- :mod:`~ssdcli.export.formats`: ONNX / TorchScript writers and the TorchScript loader;
- :mod:`~ssdcli.export.metadata`: what an exported file says about itself;
- :mod:`~ssdcli.export.parity`: sample inputs and the comparison with PyTorch;
- :mod:`~ssdcli.export.runtime`: :class:`OnnxDetector`, an exported ONNX model behind ``ssd detect``;
- :mod:`~ssdcli.export.pipeline`: :func:`export_checkpoint`, the whole export;
- :mod:`~ssdcli.export.openvino`: the OpenVINO IR (metadata in ``rt_info``) and ``OpenVinoDetector``;
- :mod:`~ssdcli.export.ir`: ``export_openvino``, ``ssd export --format openvino`` with its checks;
- :mod:`~ssdcli.export.calibration`: int8 calibration images and NNCF quantization;
- :mod:`~ssdcli.export.accuracy`: the VOC07 mAP change of bf16 / int8 against fp32;
- :mod:`~ssdcli.export.cache`: the export cache behind ``--backend onnxruntime|openvino``.

``onnx`` and ``onnxruntime`` (the ``[export]`` extra), ``openvino`` and ``nncf`` (the
``[openvino]`` extra) are imported only by the functions that need them, so this package imports
without them.
"""

from ssdcli.export.formats import FORMATS, load_torchscript
from ssdcli.export.metadata import ExportMetadata
from ssdcli.export.pipeline import ExportOptions, ExportReport, default_output, export_checkpoint
from ssdcli.export.runtime import OnnxDetector

__all__ = [
    "FORMATS",
    "ExportMetadata",
    "ExportOptions",
    "ExportReport",
    "OnnxDetector",
    "default_output",
    "export_checkpoint",
    "load_torchscript",
]
