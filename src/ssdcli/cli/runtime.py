"""The runtime flags ``ssd detect`` and ``ssd eval`` share: ``--backend``, ``--precision``,
``--calibration-data`` (:mod:`ssdcli.backends`), and the notes the library sends back."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ssdcli.cli.common import err
from ssdcli.errors import UserError


BACKEND_ENV = "SSDCLI_BACKEND"
"""Environment variable holding the default of ``--backend`` (the flag wins)."""


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


BackendOption = Annotated[
    Optional[Backend],
    typer.Option(
        "--backend",
        help="auto = the fastest installed runtime that computes at --precision here (timed once per "
        "checkpoint, batch size and machine); torch; onnxruntime / openvino run a cached export of the checkpoint. "
        f"Default: auto, or ${BACKEND_ENV} when set (an exported model always runs on its own runtime).",
        show_default=False,
    ),
]
PrecisionOption = Annotated[
    Optional[Precision],
    typer.Option(
        "--precision",
        help="fp32; bf16 (torch or OpenVINO; fast on CPUs with AVX512-BF16 / AMX); int8 (OpenVINO, needs "
        "--calibration-data); fp16 (CUDA). Default: fp32 on the CPU, fp16 autocast on CUDA.",
        show_default=False,
    ),
]
CalibrationOption = Annotated[
    Optional[Path],
    typer.Option(
        "--calibration-data",
        help="int8: a few hundred images of your data to calibrate on (a dataset or a folder of images).",
    ),
]

RUNTIME_EPILOG = """\
[bold]Backends and precision[/]: --backend onnxruntime / openvino export the checkpoint once (raw outputs, \
checked against PyTorch) into the export cache ($SSDCLI_CACHE_DIR, else $XDG_CACHE_HOME/ssdcli, else \
~/.cache/ssdcli) and run it there with ssdcli's own post-processing, classes and pre-processing. \
--backend auto (the default unless $SSDCLI_BACKEND says otherwise) times the installed runtimes that compute at --precision once per checkpoint, batch \
size and machine, and uses the fastest; what it chose is said on stderr. bf16 and int8 change scores slightly \
(int8 needs --calibration-data; ssd export --format openvino --precision int8 also checks the mAP change). \
OpenVINO is an extra: pip install 'ssdcli\\[openvino]'.
"""


def runtime_options(backend: Optional[Backend], precision: Optional[Precision], calibration_data: Optional[Path],
                    batch_size: int = 1):
    """The flags as :class:`ssdcli.backends.RuntimeOptions` (checked there); without ``--backend``,
    ``$SSDCLI_BACKEND`` or ``auto``. ``batch_size``: images per forward pass of the run."""
    from ssdcli.backends import RuntimeOptions

    if backend is not None:
        chosen, given = backend.value, True
    else:
        chosen, given = os.environ.get(BACKEND_ENV, "").strip() or "auto", False
    try:
        return RuntimeOptions(
            backend=chosen,
            precision=precision.value if precision is not None else None,
            calibration_data=calibration_data,
            backend_given=given,
            batch_size=batch_size,
        )
    except UserError as exc:
        if given:
            raise
        raise UserError(f"${BACKEND_ENV}: {exc}") from None


def print_note(message: str) -> None:
    """One note of the library (what auto chose, an export, emulated bf16) on stderr."""
    err.print(f"[cyan]note:[/] {escape(message)}", highlight=False)
