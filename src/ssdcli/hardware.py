"""What this CPU offers inference: its model name, its instruction-set flags, native bf16.

bf16 arithmetic is native on x86 CPUs with AVX512-BF16 (Cooper Lake, Zen 4 and later) or AMX
(Sapphire Rapids and later); elsewhere oneDNN and OpenVINO emulate it with fp32 instructions plus
conversions, which is slower than plain fp32. The flags come from ``/proc/cpuinfo`` on Linux; on
other systems from torch's own CPU-capability probes where this torch has them (feature-detected,
they are private).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

BF16_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")
"""``/proc/cpuinfo`` flags of native bf16 arithmetic (either is enough)."""
REPORTED_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""The flags the benchmark table names (those that decide which fast paths a CPU has)."""
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(name: str, text: str) -> str | None:
    """The value of the first ``name : value`` line of ``/proc/cpuinfo`` text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


@functools.cache
def _cpuinfo() -> str:
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux, or /proc not mounted
        return ""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``avx512_bf16``, ``amx_bf16`` ...); empty where unknown.

    Args:
        cpuinfo: ``/proc/cpuinfo`` text; this machine's when ``None``.
    """
    flags = _cpuinfo_field("flags", _cpuinfo() if cpuinfo is None else cpuinfo)
    if flags is not None:
        return frozenset(flags.split())
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported",
              "avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported"}
    found = set()
    for flag, probe in probes.items():
        check = getattr(torch.cpu, probe, None)  # private: present in torch >= 2.2, may go
        if callable(check) and check():
            found.add(flag)
    return frozenset(found)


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``Intel(R) Xeon(R) Platinum 8480+``), else the platform's word."""
    name = _cpuinfo_field("model name", _cpuinfo() if cpuinfo is None else cpuinfo)
    return name or platform.processor() or platform.machine() or "unknown CPU"


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_FLAGS)


EMULATED_BF16 = (
    "--precision bf16: this CPU ({model}) has neither AVX512-BF16 nor AMX, so bf16 is emulated and "
    "usually slower than fp32; use --precision fp32 (or int8) here"
)
"""The one-line note when bf16 is asked for on a CPU without native bf16."""


def bf16_note(flags: frozenset[str] | None = None) -> str | None:
    """:data:`EMULATED_BF16` for this CPU when it lacks native bf16, else ``None``."""
    return None if native_bf16(flags) else EMULATED_BF16.format(model=cpu_model())


def describe_cpu() -> str:
    """``<model>, N threads, flags: avx2 avx512f ...`` (the flags of :data:`REPORTED_FLAGS` it has)."""
    flags = cpu_flags()
    shown = " ".join(flag for flag in REPORTED_FLAGS if flag in flags) or "none of " + " ".join(REPORTED_FLAGS)
    return f"{cpu_model()}, {torch.get_num_threads()} threads, flags: {shown}"
