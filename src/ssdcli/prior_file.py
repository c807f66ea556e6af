"""Prior spec files: default boxes as JSON, for ``ssd priors --fit --output``, ``ssd priors
--spec`` and ``ssd train --priors`` (:func:`load_prior_spec` is the entry point training uses).

Layout (``format_version`` 1)::

    {
      "format": "ssdcli-priors",
      "format_version": 1,
      "arch": "ssd300",          the network (a key of ssdcli.models.ARCHS)
      "budget": "same",          boxes per location allowed on each layer: "same" = the arch
                                 preset's (the head the preset builds), or a number N for every
                                 layer (written by ``--fit --budget N``)
      "prior_spec": {...},       PriorSpec.to_dict(): name, image_size, offset, clip, variances,
                                 layers [{feature_map, step, min_size, max_size, aspect_ratios}]
      "fit": {...}               optional, informative only: how the spec was made
    }

Loading checks the spec against the arch's preset: same input size, layer count, feature maps
and steps (the network fixes them), finite positive sizes with ``max_size > min_size``, ratios
above 1 without repeats, positive variances, and no layer with more boxes per location than the
budget allows. The heads are built from the spec, so a spec with more boxes gives a larger head:
the file has to say so in ``budget``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ssdcli.errors import UserError
from ssdcli.files import atomic_write_json
from ssdcli.priors import CLIP_MODES, PRESETS, PriorSpec

FORMAT = "ssdcli-priors"
FORMAT_VERSION = 1

ARCH_OF_PRESET: dict[str, str] = {"ssd300": "ssd300", "ssd300_coco": "ssd300", "ssd512": "ssd512", "ssdlite320": "ssdlite320"}
"""Prior preset -> the network it belongs to; the network's own preset has its name."""


@dataclass(frozen=True)
class PriorSpecFile:
    """A read spec file: the network, the budget (None = ``same``), the spec and the fit notes."""

    arch: str
    budget: int | None
    spec: PriorSpec
    fit: dict = field(default_factory=dict)


def allowed_boxes_per_location(preset: PriorSpec, budget: int | None) -> tuple[int, ...]:
    """Per layer the most boxes per location: the preset's (``budget`` None, "same"), or
    ``budget`` on every layer.

    Raises:
        ValueError: a budget below 2 (the two squares every layer has).
    """
    if budget is None:
        return preset.boxes_per_location
    if budget < 2:
        raise ValueError(f"budget {budget}: every layer has at least its 2 squares, give 2 or more")
    return (budget,) * len(preset.layers)


def spec_problem(spec: PriorSpec, arch: str, budget: int | None = None) -> str | None:
    """What makes ``spec`` unusable for network ``arch`` under ``budget`` (None when it is usable)."""
    preset = PRESETS[arch]()
    if spec.image_size != preset.image_size:
        return f"image_size {spec.image_size}, but {arch} takes {preset.image_size}"
    if len(spec.layers) != len(preset.layers):
        return f"{len(spec.layers)} layers, but {arch} has {len(preset.layers)} source layers"
    if not (math.isfinite(spec.offset) and 0.0 <= spec.offset <= 1.0):
        return f"offset {spec.offset}: need 0 <= offset <= 1 (cells)"
    if not all(math.isfinite(v) and v > 0 for v in spec.variances):
        return f"variances {list(spec.variances)}: need two positive numbers"
    allowed = allowed_boxes_per_location(preset, budget)
    for index, (layer, want, most) in enumerate(zip(spec.layers, preset.layers, allowed)):
        where = f"layer {index}"
        if layer.feature_map != want.feature_map or not math.isclose(layer.step, want.step, rel_tol=1e-6):
            return (f"{where}: feature map {layer.feature_map}, step {layer.step:g}, but {arch} has "
                    f"{want.feature_map}, step {want.step:g} (the network fixes them)")
        if not (math.isfinite(layer.min_size) and math.isfinite(layer.max_size) and 0 < layer.min_size < layer.max_size):
            return f"{where}: min_size {layer.min_size}, max_size {layer.max_size}: need 0 < min_size < max_size"
        ratios = layer.aspect_ratios
        if not all(math.isfinite(r) and r > 1 for r in ratios) or len(set(ratios)) != len(ratios):
            return f"{where}: aspect_ratios {list(ratios)}: need distinct numbers above 1 (each adds r and 1/r)"
        if layer.boxes_per_location > most:
            told = "the budget" if budget is not None else f"{arch}'s head"
            return (f"{where} has {layer.boxes_per_location} boxes per location, more than {told} allows "
                    f"({most}); fit it with --budget {layer.boxes_per_location} or more, which records it in the file")
    return None


def spec_file_payload(spec: PriorSpec, arch: str, budget: int | None, fit: dict | None = None) -> dict:
    """The JSON object of a spec file (module docstring); ``arch`` may be a preset name."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": ARCH_OF_PRESET[arch],
        "budget": "same" if budget is None else budget,
        "prior_spec": spec.to_dict(),
        "fit": dict(fit or {}),
    }


def save_prior_spec(path: str | os.PathLike[str], spec: PriorSpec, arch: str, budget: int | None,
                    fit: dict | None = None) -> None:
    """Write a spec file atomically; never replaces an existing file.

    Raises:
        UserError: ``path`` exists, or the spec is not usable for ``arch`` under ``budget``.
    """
    path = Path(path)
    if path.exists():
        raise UserError(f"{path}: exists; give another --output (spec files are never overwritten)")
    problem = spec_problem(spec, ARCH_OF_PRESET[arch], budget)
    if problem is not None:
        raise UserError(f"{path}: not written: {problem}")
    atomic_write_json(path, spec_file_payload(spec, arch, budget, fit))


def read_prior_spec_file(path: str | os.PathLike[str], arch: str | None = None) -> PriorSpecFile:
    """Read and check a spec file; with ``arch`` (network or preset name) it must be that network's.

    Raises:
        UserError: missing or unreadable file, not a spec file, a newer format version, another
            arch's spec, or a spec that fails :func:`spec_problem`; one line naming the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such prior spec file (write one with ssd priors --fit DATA --output FILE)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON prior spec file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: not a prior spec file (no \"format\": \"{FORMAT}\"); write one with ssd priors --fit")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise UserError(f"{path}: format_version {version!r}; this ssdcli reads version {FORMAT_VERSION} (upgrade ssdcli?)")
    file_arch = data.get("arch")
    if not isinstance(file_arch, str) or file_arch not in ARCH_OF_PRESET.values():
        raise UserError(f"{path}: arch {file_arch!r} is not one of {', '.join(sorted(set(ARCH_OF_PRESET.values())))}")
    if arch is not None and ARCH_OF_PRESET.get(arch, arch) != file_arch:
        raise UserError(f"{path}: a spec for {file_arch}, not {ARCH_OF_PRESET.get(arch, arch)}; "
                        f"use --arch {file_arch} or fit one with ssd priors --arch {arch} --fit DATA")
    budget = data.get("budget", "same")
    if budget != "same" and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 2):
        raise UserError(f"{path}: budget {budget!r}: need \"same\" or a number of boxes per location >= 2")
    budget = None if budget == "same" else budget
    raw = data.get("prior_spec")
    clip = raw.get("clip", False) if isinstance(raw, dict) else None
    if not (isinstance(clip, bool) or (isinstance(clip, str) and clip in CLIP_MODES)):
        modes = ", ".join(json.dumps(mode) for mode in CLIP_MODES)
        raise UserError(f"{path}: prior_spec must be an object whose clip is one of {modes}")
    try:
        spec = PriorSpec.from_dict(raw)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    problem = spec_problem(spec, file_arch, budget)
    if problem is not None:
        raise UserError(f"{path}: {problem}")
    fit = data.get("fit", {})
    return PriorSpecFile(file_arch, budget, spec, fit if isinstance(fit, dict) else {})


def load_prior_spec(path: str | os.PathLike[str], arch: str) -> PriorSpec:
    """The checked default boxes of a spec file for network ``arch``, for ``ssd train --priors``.

    Raises:
        UserError: see :func:`read_prior_spec_file`.
    """
    return read_prior_spec_file(path, arch).spec
