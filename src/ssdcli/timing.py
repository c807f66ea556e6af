"""Timing alternatives on this machine to pick the fastest: :func:`fastest_calls`.

Used where a fast path is chosen by measurement on the machine that runs it: ``--backend auto``
(:func:`ssdcli.backends.probe`) and the images per pass of a CPU training step
(:mod:`ssdcli.train.micro_batch`); and their decisions, cached per machine as small JSON files
(:func:`read_decision`, :func:`save_decision`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


def fastest_calls(
    calls: Mapping[Key, Callable[[], object]], warmup: int, min_rounds: int, min_seconds: float, max_rounds: int
) -> dict[Key, float]:
    """The fastest timed call of each of ``calls``, in milliseconds.

    Each is called ``warmup`` times untimed first (a first run allocates and compiles), then all
    are timed round-robin, each round starting one further along (no one always runs right after
    the same other): at least ``min_rounds`` rounds, more until the timed calls together took
    ``min_seconds``, at most ``max_rounds``.

    The fastest call, not the median: other load on the machine (another guest on the host, its
    hyperthread sibling) only ever adds time, so an alternative's quickest call is the closest to
    its own cost. A median of three calls flips between alternatives 15 % apart when two of one's
    calls land in a burst (README, CPU speed notes).
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[Key, list[float]] = {name: [] for name in calls}
    names = list(calls)
    spent, rounds = 0.0, 0
    while rounds < min_rounds or (spent < min_seconds and rounds < max_rounds):
        shift = rounds % len(names)
        rounds += 1
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            calls[name]()
            elapsed = time.perf_counter() - start
            times[name].append(1000.0 * elapsed)
            spent += elapsed
    return {name: min(values) for name, values in times.items()}


def read_decision(path: Path, key: str) -> object | None:
    """``key`` of the decision cached in ``path``; ``None`` when there is none readable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_decision(path: Path, decision: dict, notes: Callable[[str], None], what: str) -> None:
    """Write ``decision`` (with this machine's description added) to ``path``; failing to is
    only said, as ``what`` the decision is (it is timed again next run)."""
    from ssdcli.files import atomic_write_json
    from ssdcli.hardware import describe_cpu

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**decision, "machine": describe_cpu()})
    except OSError as exc:
        notes(f"{what} in {path.parent} ({exc.strerror}); it is timed again next run")
