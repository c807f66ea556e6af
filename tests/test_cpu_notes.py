"""benchmarks/cpu_notes.py, the scripts behind README "CPU speed notes": they run and report what
they say (no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cpu_notes  # noqa: E402


def test_medians_alternate_the_calls_after_warming_up() -> None:
    order: list[str] = []
    medians = cpu_notes._medians_ms({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, warmup=1)
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())


def test_jpeg_mode_times_a_training_sample_and_a_detect_read(tmp_path) -> None:
    threads = torch.get_num_threads()
    result = cpu_notes.jpeg(tmp_path, sizes=((700, 500),), repeats=1)
    assert torch.get_num_threads() == threads  # one thread while timing, then as before
    assert set(result["700x500"]) == {"train_sample_ms", "detect_read_ms", "file_mb"}
    assert (tmp_path / "photo_700x500.jpg").is_file()
