"""ssdcli.hardware: CPU flags and native bf16 from /proc/cpuinfo text, and the note when bf16
would be emulated."""

from __future__ import annotations

import torch

from ssdcli import hardware

# Shortened /proc/cpuinfo of two real machines: a Sapphire Rapids Xeon (AMX, AVX512-BF16) and a
# Skylake Xeon (AVX-512, no bf16).
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
SKYLAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu avx2 avx512f avx512dq
processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu avx2 avx512f avx512dq
"""


def test_flags_and_model_are_read_from_cpuinfo_text():
    flags = hardware.cpu_flags(SAPPHIRE_RAPIDS)
    assert {"avx512_bf16", "amx_bf16", "amx_int8"} <= flags and "avx512_fp16" not in flags
    assert hardware.cpu_model(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8480+"
    assert hardware.cpu_flags(SKYLAKE) == {"fpu", "avx2", "avx512f", "avx512dq"}  # first processor's line


def test_native_bf16_needs_avx512_bf16_or_amx():
    assert hardware.native_bf16(hardware.cpu_flags(SAPPHIRE_RAPIDS))
    assert hardware.native_bf16(frozenset({"amx_bf16"})) and hardware.native_bf16(frozenset({"avx512_bf16"}))
    assert not hardware.native_bf16(hardware.cpu_flags(SKYLAKE))
    assert hardware.bf16_note(hardware.cpu_flags(SAPPHIRE_RAPIDS)) is None
    note = hardware.bf16_note(hardware.cpu_flags(SKYLAKE))
    assert note is not None and "emulated" in note and "--precision fp32" in note and "\n" not in note


def test_without_cpuinfo_torch_probes_are_asked_when_present(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: True, raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_supported", raising=False)  # a torch without this probe
    assert hardware.cpu_flags("") == {"avx512_bf16", "avx2"}
    assert hardware.native_bf16(hardware.cpu_flags(""))


def test_describe_cpu_names_the_model_threads_and_decisive_flags():
    text = hardware.describe_cpu()
    assert hardware.cpu_model() in text and f"{torch.get_num_threads()} threads" in text and "flags:" in text
