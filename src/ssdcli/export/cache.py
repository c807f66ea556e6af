"""The export cache behind ``--backend onnxruntime|openvino``: a checkpoint is exported once for
its content and the settings, then reused by every later run.

Where: ``$SSDCLI_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/ssdcli``, else ``~/.cache/ssdcli``;
exports go to its ``exports/`` folder. Each entry is a folder
``<arch>-<checkpoint sha256, 16 hex>-<kind>-<key hash, 10 hex>`` holding the model (``model.onnx``,
or ``model.xml`` + ``model.bin``) and ``key.json``, the whole key, written last: an entry without
it (a run killed while exporting) is unfinished and is exported again. Deleting the folder (or
any entry) is always safe.

The key is everything the exported file depends on: the checkpoint's bytes (sha256), the graph
(:data:`CACHED_GRAPH`: raw outputs, any batch size, opset 17; the post-processing runs outside, so
``--min-score`` / ``--nms-iou`` / ``--top-k`` need no new export), the kind (``onnx``,
``openvino-fp32``, ``openvino-int8``), for int8 the calibration images' digest and count, and
the versions of ssdcli and of the libraries that wrote the file.

An ONNX entry is written by :func:`ssdcli.export.export_checkpoint`, so it passed the same parity
check against PyTorch as ``ssd export``; an OpenVINO fp32 entry is converted from it and checked
once more against PyTorch (:func:`ssdcli.export.ir.check_ir_parity`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ssdcli.errors import UserError
from ssdcli.files import atomic_write_json

CACHE_ENV = "SSDCLI_CACHE_DIR"
"""Environment variable naming the cache folder (tests point it at a temporary one)."""
KEY_FILE = "key.json"
CACHED_GRAPH: dict[str, object] = {"postprocess": False, "dynamic_batch": True, "opset": 17}
"""The ONNX export every cached model is made from: raw outputs (decode + NMS run in ssdcli's own
post-processing, in fp32, whatever precision the network ran at), any batch size."""
_VERSIONED = ("ssdcli", "torch", "onnx", "onnxruntime", "openvino", "nncf")


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The cache folder: ``$SSDCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/ssdcli``, else ``~/.cache/ssdcli``."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]).expanduser()
    base = Path(environ["XDG_CACHE_HOME"]).expanduser() if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "ssdcli"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions(names: tuple[str, ...] = _VERSIONED) -> dict[str, str]:
    """Installed versions of ``names`` (``""`` for one not installed)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = ""
    return found


@dataclass(frozen=True)
class CacheEntry:
    """One cached export: its folder, its key and the model file in it.

    Attributes:
        folder: ``<root>/exports/<arch>-<sha16>-<kind>-<hash10>``.
        key: everything the export depends on (json-able).
        model_file: ``model.onnx`` or ``model.xml`` inside ``folder``.
    """

    folder: Path
    key: dict
    model_file: Path

    @property
    def complete(self) -> bool:
        """The model file is there and ``key.json`` holds exactly :attr:`key`."""
        files = [self.model_file] + ([self.model_file.with_suffix(".bin")] if self.model_file.suffix == ".xml" else [])
        if not all(f.is_file() for f in files):
            return False
        try:
            return json.loads((self.folder / KEY_FILE).read_text(encoding="utf-8")) == self.key
        except (OSError, ValueError):
            return False

    def prepare(self) -> None:
        """Create the folder (a previous unfinished attempt's files are overwritten).

        Raises:
            UserError: the cache folder cannot be created.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the export cache {self.folder} ({exc.strerror}); set {CACHE_ENV} to a writable folder"
            ) from exc
        (self.folder / KEY_FILE).unlink(missing_ok=True)

    def finish(self) -> None:
        """Mark the entry complete (``key.json``, written atomically, last)."""
        atomic_write_json(self.folder / KEY_FILE, self.key)


def cache_entry(
    checkpoint_sha: str,
    arch: str,
    kind: str,
    extra: Mapping[str, object] | None = None,
    root: Path | None = None,
) -> CacheEntry:
    """The entry of one export of a checkpoint.

    Args:
        checkpoint_sha: :func:`file_sha256` of the checkpoint.
        arch: its architecture (only for a readable folder name).
        kind: ``onnx``, ``openvino-fp32`` or ``openvino-int8``.
        extra: more of the key (the calibration digest and count for int8).
        root: the cache folder; :func:`cache_root` when ``None``.
    """
    key = {
        "checkpoint_sha256": checkpoint_sha,
        "kind": kind,
        "graph": CACHED_GRAPH,
        "versions": library_versions(),
        **dict(extra or {}),
    }
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    folder = (cache_root() if root is None else root) / "exports" / f"{arch}-{checkpoint_sha[:16]}-{kind}-{key_hash}"
    name = "model.onnx" if kind == "onnx" else "model.xml"
    return CacheEntry(folder, key, folder / name)


Notes = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def _failed(weights: Path, checks) -> str:
    worst = [c for c in checks if not c.passed]
    named = ", ".join(f"{c.name} {c.max_diff:.3g} > {c.tolerance:.3g}" for c in worst)
    return f"{weights}: its exported model differs from PyTorch beyond tolerance ({named}); use --backend torch"


def cached_onnx(weights: Path, checkpoint_sha: str, arch: str, root: Path | None = None, notes: Notes = _quiet) -> Path:
    """The cached ONNX export (:data:`CACHED_GRAPH`) of a checkpoint, made now if missing.

    Raises:
        UserError: the export differs from PyTorch, or the cache cannot be written.
    """
    from ssdcli.export.pipeline import ExportOptions, export_checkpoint

    entry = cache_entry(checkpoint_sha, arch, "onnx", root=root)
    if entry.complete:
        return entry.model_file
    entry.prepare()
    notes(f"exporting {weights} to ONNX for onnxruntime (once for this checkpoint; cached in {entry.folder})")
    options = ExportOptions(format="onnx", postprocess=False, dynamic_batch=True, opset=int(CACHED_GRAPH["opset"]))
    report = export_checkpoint(weights, entry.model_file, options)
    if not report.passed:
        raise UserError(_failed(weights, report.checks))
    entry.finish()
    return entry.model_file


def cached_openvino(
    weights: Path,
    checkpoint_sha: str,
    arch: str,
    precision: str,
    calibration=None,
    root: Path | None = None,
    notes: Notes = _quiet,
) -> Path:
    """The cached OpenVINO IR of a checkpoint: ``fp32`` (also what bf16 runs: it is compiled at
    bf16) or ``int8`` (quantized on ``calibration``, a
    :class:`~ssdcli.export.calibration.CalibrationSet`, which is part of the key); made now, from
    the cached ONNX export, if missing. The int8 entry is not mAP-checked here (``ssd export
    --format openvino --precision int8`` does that; ``ssd eval --precision int8`` shows it).

    Raises:
        UserError: openvino / nncf missing, the fp32 IR differs from PyTorch, the cache cannot
            be written.
    """
    from ssdcli.export.ir import OpenVinoOptions, export_openvino

    extra = {}
    if precision == "int8":
        extra = {"calibration_sha256": calibration.digest, "calibration_images": len(calibration.images)}
    entry = cache_entry(checkpoint_sha, arch, f"openvino-{precision}", extra, root=root)
    if entry.complete:
        return entry.model_file
    onnx_path = cached_onnx(weights, checkpoint_sha, arch, root, notes)
    entry.prepare()
    what = f"int8, calibrated on {len(calibration.images)} images of {calibration.source}" if precision == "int8" else "fp32"
    notes(f"converting {weights} to OpenVINO ({what}; once; cached in {entry.folder})")
    options = OpenVinoOptions(
        precision=precision, postprocess=False, check_accuracy=False,
        calibration_data=calibration.source if calibration is not None else None,
    )
    report = export_openvino(weights, entry.model_file, options, calibration=calibration, from_onnx=onnx_path)
    if not report.passed:
        raise UserError(_failed(weights, report.checks))
    entry.finish()
    return entry.model_file
