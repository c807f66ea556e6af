"""The measurements behind README "CPU speed notes": ``python benchmarks/cpu_notes.py MODE``.

Modes (each prints one JSON line per measurement, with the load average at the time):

- ``rounds [N]``: SSD300 batch-1 forward in a fresh process per setting, the four settings
  (Winograd or direct x libgomp's default spin or ``GOMP_SPINCOUNT=10000``) interleaved, N rounds.
- ``forward``: one such measurement under this process's own environment (what ``rounds`` runs).
- ``probe``: a one-layer probe (ReLU + a 256-channel 3x3 convolution at 75 px) and the whole
  forward, each timed both ways, alternating: does the layer predict the network?
- ``layers``: every layer's time in the forward, direct against Winograd.
- ``jpeg``: one augmented training sample and one ``ssd detect`` read + pre-process of synthetic
  JPEGs (4605x2569, 1333x750, 450x338), one thread as in a loader worker. For a before/after
  comparison run it once per checkout (``PYTHONPATH=that/src``), interleaved.

Every mode but ``rounds`` runs under the environment it is given (``GOMP_SPINCOUNT``,
``SSDCLI_WINOGRAD``). Timings are of this machine at this moment: on a shared machine compare only
numbers of one round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def _medians_ms(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Each call ``warmup`` times, then ``repeats`` timed calls of each, alternating; medians in ms."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(warmup):
            call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: round(statistics.median(values), 1) for name, values in times.items()}


def _ssd300():
    import torch

    from ssdcli.models import build_model

    torch.manual_seed(0)
    return build_model("ssd300", num_classes=20).eval(), torch.randn(1, 3, 300, 300)


def _paths():
    import contextlib

    from ssdcli.models import winograd

    return {"direct": winograd.direct_convolutions, "winograd": winograd.winograd_convolutions, "default": contextlib.nullcontext}


def forward(mode: str = "default", repeats: int = 7) -> dict:
    import torch

    model, x = _ssd300()
    switch = _paths()[mode]
    with torch.inference_mode(), switch():
        ms = _medians_ms({mode: lambda: model(x)}, repeats, warmup=2)[mode]
    return {"mode": mode, "spin": os.environ.get("GOMP_SPINCOUNT"), "forward_ms": ms, "load": _load()}


def rounds(count: int) -> list[dict]:
    results = []
    for index in range(count):
        for mode in ("winograd", "direct"):
            for spin in (None, "10000"):
                env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
                if spin:
                    env["GOMP_SPINCOUNT"] = spin
                out = subprocess.run(
                    [sys.executable, __file__, "forward", "--mode", mode], env=env, capture_output=True, text=True,
                    check=True,
                )
                results.append({"round": index + 1, **json.loads(out.stdout.splitlines()[-1])})
                print(json.dumps(results[-1]), flush=True)
    return results


def probe(repeats: int = 5, channels: int = 256, side: int = 75) -> dict:
    import torch
    import torch.nn.functional as F

    from ssdcli.models import winograd

    if not winograd.nnpack_ready():
        return {"error": "NNPACK does not run here"}
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, side, side, generator=generator)
    weight = torch.randn(channels, channels, 3, 3, generator=generator) * (2.0 / (9 * channels)) ** 0.5
    bias = torch.zeros(channels)
    x_cl, weight_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
    with torch.no_grad():
        layer = _medians_ms(
            {
                "direct": lambda: F.conv2d(torch.relu(x_cl), weight_cl, bias, padding=1),
                "winograd": lambda: torch._nnpack_spatial_convolution(torch.relu(x), weight, bias, [1, 1], [1, 1]),
            },
            repeats,
        )
    model, images = _ssd300()
    paths = _paths()

    def run(mode: str) -> Callable[[], object]:
        def call():
            with paths[mode]():
                return model(images)

        return call

    with torch.inference_mode():
        whole = _medians_ms({"direct": run("direct"), "winograd": run("winograd")}, repeats)
    return {
        "spin": os.environ.get("GOMP_SPINCOUNT"),
        "probe_speedup": round(layer["direct"] / layer["winograd"], 3),
        "model_direct_ms": whole["direct"],
        "model_winograd_ms": whole["winograd"],
        "model_speedup": round(whole["direct"] / whole["winograd"], 3),
        "load": _load(),
    }


def layers(repeats: int = 7) -> dict:
    import torch

    model, images = _ssd300()
    paths = _paths()
    times: dict[str, dict[str, list[float]]] = {"direct": {}, "winograd": {}}
    started: dict[str, float] = {}
    mode = ["direct"]
    for name, module in model.named_modules():
        if not list(module.children()):
            module.register_forward_pre_hook(lambda m, i, name=name: started.__setitem__(name, time.perf_counter()))
            module.register_forward_hook(
                lambda m, i, o, name=name: times[mode[0]].setdefault(name, []).append(
                    (time.perf_counter() - started[name]) * 1e3
                )
            )
    totals: dict[str, list[float]] = {"direct": [], "winograd": []}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            for mode[0] in ("direct", "winograd"):
                with paths[mode[0]]():
                    start = time.perf_counter()
                    model(images)
                    totals[mode[0]].append((time.perf_counter() - start) * 1e3)
    per_layer = {
        name: [round(statistics.median(times[m][name][1:]), 2) for m in ("direct", "winograd")]
        for name in times["direct"]
    }
    total = {m: round(statistics.median(values[1:]), 1) for m, values in totals.items()}
    return {"layers_direct_winograd_ms": per_layer, "total_ms": total, "load": _load()}


def _photo(path: Path, width: int, height: int) -> Path:
    import numpy as np
    from PIL import Image

    if not path.exists():
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], axis=-1)
        pixels = np.clip(base + rng.integers(-20, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)
        pixels[height // 4 : height // 2, width // 4 : width // 2] = (200, 30, 30)
        Image.fromarray(pixels).save(path, quality=90)
    return path


def jpeg(folder: Path, sizes=((4605, 2569), (1333, 750), (450, 338)), repeats: int = 12) -> dict:
    import numpy as np
    import torch

    from ssdcli.data.loader import DetectionTrainDataset
    from ssdcli.data.records import ImageRecord
    from ssdcli.data.transforms import TrainTransform
    from ssdcli.inference import ImageFiles

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    result: dict = {"load": _load()}
    try:
        for width, height in sizes:
            path = _photo(folder / f"photo_{width}x{height}.jpg", width, height)
            box = np.array([[width / 4, height / 4, width / 2, height / 2]], dtype=np.float32)
            record = ImageRecord(path, path.stem, width, height, box, np.array([1]), np.array([False]), np.array([False]))
            dataset = DetectionTrainDataset([record], TrainTransform(300, MEAN, STD))
            files = ImageFiles([path], 300, MEAN, STD)
            seeds = iter(range(10**6))

            def sample():
                torch.manual_seed(next(seeds))
                return dataset[0]

            ms = _medians_ms({"train_sample_ms": sample, "detect_read_ms": lambda: files[0]}, repeats, warmup=1)
            result[f"{width}x{height}"] = {**ms, "file_mb": round(path.stat().st_size / 1e6, 2)}
    finally:
        torch.set_num_threads(threads)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["rounds", "forward", "probe", "layers", "jpeg"])
    parser.add_argument("count", nargs="?", type=int, default=4, help="rounds: how many")
    parser.add_argument("--mode", dest="path", default="default", choices=["default", "direct", "winograd"])
    parser.add_argument("--images", type=Path, default=None, help="jpeg: where the synthetic JPEGs are kept")
    args = parser.parse_args(argv)
    if args.mode == "rounds":
        rounds(args.count)
    elif args.mode == "forward":
        print(json.dumps(forward(args.path)))
    elif args.mode == "probe":
        print(json.dumps(probe()))
    elif args.mode == "layers":
        print(json.dumps(layers()))
    else:
        folder = args.images or Path(tempfile.gettempdir()) / "ssdcli_cpu_notes"
        folder.mkdir(parents=True, exist_ok=True)
        print(json.dumps(jpeg(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
