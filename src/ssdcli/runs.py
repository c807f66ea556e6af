"""Run folders: ``runs/train``, ``runs/train2``, ...; ``metrics.csv``, ``config.json``, manifest."""

from __future__ import annotations

import csv
import io
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

from ssdcli.files import atomic_write_json, atomic_write_text

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_loc", "train_conf", "val_loss", "val_map", "lr", "images_per_s", "seconds",
    "skipped_steps", "bn_seconds", "val_seconds", "save_seconds", "epoch_seconds",
)
"""``seconds`` is the training part of an epoch (``images_per_s`` is its rate); the columns after
``skipped_steps`` time the rest of it: precise BatchNorm statistics, validation, writing the
checkpoints, and ``epoch_seconds`` the sum of all four."""


def next_run_dir(base: Path) -> Path:
    """``base`` if it does not exist yet, else ``base2``, ``base3``, ...: never an existing folder
    (but another process may take it before this one does; :func:`claim_run_dir` is atomic)."""
    if not base.exists():
        return base
    n = 2
    while (candidate := base.with_name(f"{base.name}{n}")).exists():
        n += 1
    return candidate


def claim_run_dir(base: Path) -> Path:
    """Create and return the first of ``base``, ``base2``, ``base3``, ... that did not exist.

    Each candidate is created with an exclusive ``mkdir``, so of two runs started together with
    the same ``--output`` exactly one gets each folder (the other goes on to the next number).

    Raises:
        OSError: the parent cannot be created or written to.
    """
    base.parent.mkdir(parents=True, exist_ok=True)
    candidate = next_run_dir(base)
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = next_run_dir(base)


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def git_commit() -> str | None:
    """The commit of the source tree ssdcli runs from, when it is a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def write_manifest(path: Path, seed: int, device: torch.device, world_size: int) -> None:
    """Versions, seed, device and commit: what it takes to repeat the run."""
    import torchvision

    from ssdcli import __version__

    write_json(
        path,
        {
            "ssdcli": __version__,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "platform": platform.platform(),
            "host": socket.gethostname(),
            "device": str(device),
            "cuda": torch.version.cuda,
            "world_size": world_size,
            "seed": seed,
            "git_commit": git_commit(),
            "command": sys.argv,
        },
    )


class MetricsLog:
    """``metrics.csv``: one row per epoch with fixed columns (empty where not measured)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def last_epoch(self) -> int:
        """The highest epoch with a row (0 when there is none or no file)."""
        if not self.path.exists():
            return 0
        with self.path.open(newline="") as handle:
            return max((int(row["epoch"]) for row in csv.DictReader(handle)), default=0)

    def truncate_after(self, epochs_done: int) -> None:
        """Drop rows of epochs after ``epochs_done`` (written before a crash, redone on resume)."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= epochs_done]
        # rows of an older ssdcli lack the newer columns: written empty (not measured)
        atomic_write_text(self.path, _csv_text(rows))


def _csv_text(rows: list[dict]) -> str:
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return handle.getvalue()


def find_default_weights(root: Path) -> Path | None:
    """The weights ``ssd detect`` uses without ``--weights``: the newest ``best.pt`` anywhere below
    ``root/runs`` (by modification time), else the newest ``last.pt``, else ``None``.

    Runs nest (``make demo`` writes ``runs/demo/train/best.pt``), so the search is recursive.
    Hidden files and folders (the ``.best.pt.<pid>.<random>.tmp`` files of a checkpoint being
    written, ``.git``) are skipped, and symbolic links to folders are not followed.
    """
    runs = Path(root) / "runs"
    found: dict[str, list[Path]] = {"best.pt": [], "last.pt": []}
    for folder, subfolders, files in os.walk(runs):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in found:
            if name in files and (Path(folder) / name).is_file():
                found[name].append(Path(folder) / name)
    for name in ("best.pt", "last.pt"):
        if found[name]:
            return max(found[name], key=lambda p: p.stat().st_mtime)
    return None
