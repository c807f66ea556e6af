"""Which runtime runs a checkpoint, at which precision: ``--backend`` x ``--precision``.

On the CPU:

=============  =============================  ==============================  ===========================
backend        fp32                           bf16                            int8
=============  =============================  ==============================  ===========================
torch          the network as trained         autocast, channels-last,        -
                                              direct convolutions
onnxruntime    the cached ONNX export         -                               -
openvino       the cached IR, f32 compiled    the same IR, bf16 compiled      the IR quantized by NNCF
                                                                              on ``--calibration-data``
=============  =============================  ==============================  ===========================

On CUDA only torch runs: fp32, or fp16 / bf16 autocast. Every backend runs the same
post-processing (:func:`ssdcli.postprocess.postprocess`, fp32) on the network's raw outputs, with
the checkpoint's classes and pre-processing. Exports come from :mod:`ssdcli.export.cache`.

``auto`` takes the backends that compute at the requested precision and are installed; when
there is more than one, it builds each (exports from the cache), times a batch of the size the run
will use through each, alternately, and uses the fastest (the fastest at one image is not always
the fastest at eight). The decision is cached per checkpoint, precision, batch size and machine
(CPU model, flags, threads, library versions), so the timing happens once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ssdcli.errors import UserError
from ssdcli.postprocess import PostprocessSettings

BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
CPU_SUPPORT: dict[str, tuple[str, ...]] = {"fp32": ("torch", "onnxruntime", "openvino"), "bf16": ("torch", "openvino"),
                                            "int8": ("openvino",)}
"""Precision -> the backends that compute at it on the CPU, in the order ``auto`` prefers on a tie."""
PACKAGES: dict[str, tuple[str, ...]] = {"torch": (), "onnxruntime": ("onnx", "onnxruntime"),
                                        "openvino": ("onnx", "onnxruntime", "openvino")}
"""What each backend imports (an OpenVINO IR is converted from the checked ONNX export)."""
PROBE_WARMUP = 1
"""Untimed calls of each candidate before ``auto`` times them (a first run allocates and compiles)."""
PROBE_ROUNDS = 3
"""Timed calls of each candidate ``auto`` makes at least."""
PROBE_SECONDS = 2.0
"""``auto`` goes on timing (up to :data:`PROBE_MAX_ROUNDS` rounds) until the candidates together took
this long: three calls of a 10 ms model are within the noise of a shared machine."""
PROBE_MAX_ROUNDS = 25
"""Most rounds ``auto`` times to fill :data:`PROBE_SECONDS` (a 10 ms model needs a few dozen calls)."""
CUDA_DEFAULT_NOTE = (
    "on CUDA the default precision is fp16 autocast: scores move by about 1e-3 from fp32 "
    "(--precision fp32 for exact fp32)"
)

Notes = Callable[[str], None]


def _no_notes(message: str) -> None:
    pass


@dataclass(frozen=True)
class RuntimeOptions:
    """``--backend``, ``--precision`` and ``--calibration-data``, checked.

    Attributes:
        backend: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``.
        precision: ``fp32``, ``fp16`` (CUDA), ``bf16`` or ``int8``; ``None``: fp32 on the CPU,
            fp16 autocast on CUDA.
        calibration_data: int8: a dataset or folder of images to calibrate on.
        cache_dir: the export cache; ``None``: :func:`ssdcli.export.cache.cache_root`.
        backend_given: ``False`` when ``backend`` is only a default (``$SSDCLI_BACKEND``): an
            exported model then runs on its own runtime instead of being refused.
        batch_size: images per forward pass of the run; ``auto`` times the candidates at it.
    """

    backend: str = "auto"
    precision: str | None = None
    calibration_data: Path | None = None
    cache_dir: Path | None = None
    backend_given: bool = True
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be >= 1")
        if self.backend not in BACKENDS:
            raise UserError(f"--backend {self.backend}: choose one of {', '.join(BACKENDS)}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision}: choose one of {', '.join(PRECISIONS)}")


def installed(backend: str) -> bool:
    """Whether the packages ``backend`` imports are installed (nothing is imported)."""
    return all(importlib.util.find_spec(name) is not None for name in PACKAGES[backend])


def require(backend: str) -> None:
    """Raises UserError, naming the extra to install, when ``backend``'s packages are missing."""
    missing = [name for name in PACKAGES[backend] if importlib.util.find_spec(name) is None]
    if "openvino" in missing:
        from ssdcli.export.openvino import MISSING_OPENVINO

        raise UserError(MISSING_OPENVINO)
    if missing:
        extra = "openvino" if backend == "openvino" else "export"
        raise UserError(f"--backend {backend} needs {' and '.join(missing)}; install the extra with: "
                        f"pip install 'ssdcli[{extra}]'")


def check_combination(backend: str, precision: str, device: torch.device) -> None:
    """Raises UserError when ``backend`` cannot run at ``precision`` on ``device``."""
    if device.type == "cuda":
        if backend not in ("auto", "torch"):
            raise UserError(f"--backend {backend} runs on the CPU; use --device cpu, or --backend torch on CUDA")
        if precision == "int8":
            raise UserError("--precision int8 runs on the CPU (OpenVINO); on CUDA use fp16, bf16 or fp32")
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16: this GPU has no bf16; use fp16 or fp32")
        return
    if precision == "fp16":
        raise UserError("--precision fp16 is for CUDA; on the CPU use bf16 (native with AVX512-BF16 or AMX) or fp32")
    if backend != "auto" and backend not in CPU_SUPPORT[precision]:
        able = " or ".join(CPU_SUPPORT[precision])
        raise UserError(f"--backend {backend} does not run at {precision} here; use --backend {able} (or auto)")


def resolve_precision(requested: str | None, device: torch.device, notes: Notes = _no_notes) -> str:
    """The precision to run at: ``requested``, else fp32 on the CPU and fp16 on CUDA (said once)."""
    if requested is not None:
        return requested
    if device.type == "cuda":
        notes(CUDA_DEFAULT_NOTE)
        return "fp16"
    return "fp32"


def checkpoint_detector(
    weights: Path,
    device: torch.device,
    settings: PostprocessSettings,
    options: RuntimeOptions,
    notes: Notes = _no_notes,
):
    """The :class:`~ssdcli.inference.Detector` of a checkpoint for ``options`` on ``device``.

    Raises:
        CheckpointError: not a usable checkpoint.
        UserError: an impossible combination, a missing package, unusable calibration data, an
            export that differs from PyTorch.
    """
    from ssdcli.checkpoint import load_checkpoint
    from ssdcli.export.cache import file_sha256
    from ssdcli.postprocess import settings_for_model

    precision = resolve_precision(options.precision, device, notes)
    check_combination(options.backend, precision, device)
    checkpoint = load_checkpoint(weights)
    settings = settings_for_model(checkpoint.get("postprocess"), settings)
    if options.calibration_data is not None and precision != "int8":
        notes(f"--calibration-data is for --precision int8; running at {precision} without it")
    if precision == "bf16" and device.type == "cpu":
        from ssdcli.hardware import bf16_note

        note = bf16_note()
        if note is not None:
            notes(note)
    build = _Builder(weights, checkpoint, file_sha256(weights), device, settings, precision, options, notes)
    if options.backend != "auto":
        return build(options.backend)
    if device.type == "cuda":
        return build("torch")
    candidates = [b for b in CPU_SUPPORT[precision] if installed(b)]
    if not candidates:
        from ssdcli.export.openvino import MISSING_OPENVINO

        raise UserError(f"--precision {precision} runs on OpenVINO here. {MISSING_OPENVINO}")
    if len(candidates) == 1:
        return build(candidates[0])
    return choose_fastest(build, candidates, precision, options, notes)


def exported_detector(weights: Path, device: str, settings: PostprocessSettings, runtime: RuntimeOptions | None):
    """The detector of a file ``ssd export`` wrote: ``.onnx`` on onnxruntime (fp32), ``.xml`` on
    OpenVINO (at its stored precision unless ``runtime`` asks for another it can run at).

    Raises:
        UserError: another backend or a GPU asked for, a precision the file cannot run at.
    """
    own = "onnxruntime" if weights.suffix.lower() == ".onnx" else "openvino"
    if runtime is not None and runtime.backend_given and runtime.backend not in ("auto", own):
        raise UserError(f"--backend {runtime.backend}: {weights} is an exported model; it runs on {own}")
    if device.startswith("cuda"):
        raise UserError(f"--device {device}: {weights} runs on the CPU ({own}); use --device cpu or auto")
    precision = runtime.precision if runtime is not None else None
    if own == "onnxruntime":
        from ssdcli.export.runtime import OnnxDetector

        if precision not in (None, "fp32"):
            raise UserError(f"--precision {precision}: an ONNX model runs at fp32; for bf16 or int8 export an "
                            "OpenVINO model (ssd export --format openvino --precision ...)")
        return OnnxDetector(weights, settings)
    from ssdcli.export.openvino import OpenVinoDetector

    if precision is not None:
        check_combination("openvino", precision, torch.device("cpu"))
    return OpenVinoDetector(weights, settings, precision)


@dataclass
class _Builder:
    """Builds the detector of one checkpoint on any backend (exports from the cache)."""

    weights: Path
    checkpoint: dict
    sha: str
    device: torch.device
    settings: PostprocessSettings
    precision: str
    options: RuntimeOptions
    notes: Notes

    def __call__(self, backend: str):
        arch = str(self.checkpoint.get("arch"))
        root = self.options.cache_dir
        if backend == "torch":
            from ssdcli.inference import TorchDetector
            from ssdcli.models import model_from_checkpoint

            from ssdcli.preprocessing import preprocessing_of

            model = model_from_checkpoint(self.checkpoint, source=self.weights).to(self.device)
            return TorchDetector(model, self.device, self.settings, precision=self.precision,
                                 class_names=self.checkpoint["class_names"],
                                 preprocessing=preprocessing_of(self.checkpoint),
                                 ignored_labels=self.checkpoint.get("ignored_labels", ()),
                                 category_ids=self.checkpoint.get("category_ids"))
        require(backend)
        if backend == "onnxruntime":
            from ssdcli.export.cache import cached_onnx
            from ssdcli.export.runtime import OnnxDetector

            return OnnxDetector(cached_onnx(self.weights, self.sha, arch, root, self.notes), self.settings)
        from ssdcli.export.cache import cached_openvino
        from ssdcli.export.openvino import OpenVinoDetector

        calibration = None
        if self.precision == "int8":
            if self.options.calibration_data is None:
                raise UserError("--precision int8 needs --calibration-data DIR: a few hundred images of your data")
            from ssdcli.export.calibration import calibration_set, import_nncf

            import_nncf()
            calibration = calibration_set(self.options.calibration_data)
        ir_precision = "int8" if self.precision == "int8" else "fp32"
        path = cached_openvino(self.weights, self.sha, arch, ir_precision, calibration, root, self.notes)
        return OpenVinoDetector(path, self.settings, self.precision)


def choose_fastest(build: _Builder, candidates: list[str], precision: str, options: RuntimeOptions, notes: Notes):
    """``auto`` among several ``candidates``: the cached decision, else build and time each."""
    from ssdcli.export.cache import cache_root
    from ssdcli.timing import read_decision, save_decision

    name = f"{build.sha[:16]}-{precision}-b{options.batch_size}-{machine_key()}.json"
    choice_file = (options.cache_dir or cache_root()) / "choices" / name
    cached = read_decision(choice_file, "backend")
    if cached in candidates:
        return build(cached)
    detectors = {}
    for backend in candidates:
        try:
            detectors[backend] = build(backend)
        except Exception as exc:  # noqa: BLE001 - auto falls back to what works, and says why
            if backend == "torch":
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes(f"--backend auto: {backend} left out ({first})")
    times = probe(detectors, options.batch_size)
    best = min(times, key=times.get)
    timed = ", ".join(f"{name} {ms:.1f}" for name, ms in times.items())
    unit = "per image" if options.batch_size == 1 else f"per batch of {options.batch_size}"
    notes(f"--backend auto at {precision}: {timed} ms {unit} here; using {best} (decision cached in {choice_file.parent})")
    save_decision(choice_file, {"backend": best, "ms_per_image": times}, notes, "--backend auto: cannot save the decision")
    return detectors[best]


def probe(detectors: dict, batch_size: int = 1) -> dict[str, float]:
    """The fastest of the timed calls of a batch of ``batch_size`` images through each detector's
    ``predict``, in milliseconds (:func:`ssdcli.timing.fastest_calls`: round-robin after
    :data:`PROBE_WARMUP` untimed calls each, at least :data:`PROBE_ROUNDS` rounds, more until
    :data:`PROBE_SECONDS` are spent)."""
    from ssdcli.export.parity import sample_images
    from ssdcli.timing import fastest_calls

    any_detector = next(iter(detectors.values()))
    image = sample_images(any_detector.image_size, any_detector.mean, any_detector.std)[1:]  # (1, 3, S, S)
    # (synthetic inputs: only the time is measured, the channel order and resize rule do not matter)
    batch = image.expand(batch_size, -1, -1, -1).contiguous()
    sizes = [(any_detector.image_size, any_detector.image_size)] * batch_size
    calls = {name: functools.partial(detector.predict, batch, sizes) for name, detector in detectors.items()}
    return fastest_calls(calls, PROBE_WARMUP, PROBE_ROUNDS, PROBE_SECONDS, PROBE_MAX_ROUNDS)


def machine_key() -> str:
    """10 hex digits naming this machine for ``auto``'s decisions: CPU model and flags, threads,
    and the versions of the runtimes."""
    from ssdcli.export.cache import library_versions
    from ssdcli.hardware import cpu_flags, cpu_model

    text = json.dumps([cpu_model(), sorted(cpu_flags()), torch.get_num_threads(), library_versions()])
    return hashlib.sha256(text.encode()).hexdigest()[:10]
