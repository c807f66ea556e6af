"""Run folders: ``runs/train``, ``runs/train2``, ...; ``metrics.csv``, ``config.json``, manifest."""

from __future__ import annotations

import csv
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

from ssdcli.files import atomic_write_json

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_loc", "train_conf", "val_loss", "val_map", "lr", "images_per_s", "seconds",
    "skipped_steps",
)


def next_run_dir(base: Path) -> Path:
    """``base`` if it does not exist yet, else ``base2``, ``base3``, ...: never an existing folder."""
    if not base.exists():
        return base
    n = 2
    while (candidate := base.with_name(f"{base.name}{n}")).exists():
        n += 1
    return candidate


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

    def truncate_after(self, epochs_done: int) -> None:
        """Drop rows of epochs after ``epochs_done`` (written before a crash, redone on resume)."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= epochs_done]
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
