"""ssdcli's defaults against the peer at equal budget, measured in one run (issue 20):
``python benchmarks/peer_bccd.py [--epochs 20] [--only ours|peer] [--output runs/peer_bccd]``.

- **ours**: ``ssd train --data BCCD --split train --val-data BCCD --val-split test --arch
  ssdlite320 --epochs E --device cpu`` with no other flag (the defaults a new user gets), then
  ``ssd eval`` of ``best.pt`` (the epoch validation picked, on the test split as that command
  asks) and of ``last.pt`` (the last epoch, as the peer is scored).
- **peer**: torchvision's own ``ssdlite320_mobilenet_v3_large`` from scratch (no ImageNet
  weights, as ours), ``num_classes`` = 3 + background, trained with the shape of torchvision's
  SSDLite reference recipe (``references/detection``: ``--data-augmentation ssdlite`` =
  ``RandomIoUCrop`` + horizontal flip, SGD momentum 0.9, weight decay 4e-5 on every parameter,
  a linear warm-up over the first epoch from 0.001x, cosine over the epochs). Batch and learning
  rate are ours (16, 0.05): the reference's 0.15 is for a batch of 8 x 24 GPUs' images, and equal
  budget means equal steps. Its detections (its own defaults: score > 0.001, 300 per image, NMS
  0.55) are scored by ``ssd eval --detections`` on the same test images.

Both read the same images and boxes (ssdcli's reader; ``difficult`` boxes left out of training
targets, as ssdcli does). The table gives VOC07 / VOC12 / COCO AP and per-class VOC07 AP, with
wall-clock times. One seed per side: another seed moves these numbers by an amount this script
does not measure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd"


def _ssd(*args: str) -> None:
    command = [sys.executable, "-m", "ssdcli", *args]
    print("+ ssd " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def _score(json_path: Path, *source: str, data: Path, split: str) -> dict:
    _ssd("eval", *source, "--data", str(data), "--split", split, "--json", str(json_path))
    return json.loads(json_path.read_text())


def run_ours(data: Path, epochs: int, out: Path) -> dict[str, dict]:
    run = out / "ours"
    start = time.perf_counter()
    _ssd("train", "--data", str(data), "--split", "train", "--val-data", str(data), "--val-split", "test",
         "--arch", "ssdlite320", "--epochs", str(epochs), "--device", "cpu", "--output", str(run))
    seconds = time.perf_counter() - start
    results = {}
    for name in ("best", "last"):
        scores = _score(out / f"ours_{name}.json", "--weights", str(run / f"{name}.pt"), data=data, split="test")
        results[f"ours ({name}.pt)"] = {**scores, "train_seconds": seconds}
    return results


def _peer_dataset(records, train: bool):
    import cv2
    import numpy as np
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2 as T

    augment = T.Compose([T.RandomIoUCrop(), T.RandomHorizontalFlip(0.5), T.SanitizeBoundingBoxes()])

    class Records(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(records)

        def __getitem__(self, index: int):
            record = records[index]
            bgr = cv2.imread(str(record.image_path), cv2.IMREAD_COLOR)
            image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1))
            if not train:
                return image.float() / 255, record
            keep = ~record.difficult & ~record.iscrowd
            target = {
                "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(record.boxes_xyxy_px[keep]), format="XYXY",
                                                  canvas_size=(record.height, record.width)),
                "labels": torch.from_numpy(record.labels[keep]),
            }
            image, target = augment(image, target)
            return image.float() / 255, {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}

    return Records()


def run_peer(data: Path, epochs: int, out: Path, batch_size: int, lr: float, seed: int) -> dict[str, dict]:
    import torch
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from ssdcli.data.reader import load_dataset

    torch.manual_seed(seed)
    train_set = load_dataset(data, "train")
    test_set = load_dataset(data, "test")
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                          num_classes=len(train_set.classes) + 1)
    loader = torch.utils.data.DataLoader(
        _peer_dataset(train_set.records, train=True), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=1, collate_fn=lambda batch: tuple(zip(*batch)),
        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5)
    warmup_iters = min(1000, len(loader) - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        warmup = (torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.001, total_iters=warmup_iters)
                  if epoch == 0 else None)
        losses = []
        for images, targets in loader:
            loss = sum(model(list(images), list(targets)).values())
            if not math.isfinite(loss.item()):
                raise SystemExit(f"peer: loss {loss.item()} at epoch {epoch + 1}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if warmup is not None:
                warmup.step()
            losses.append(loss.item())
        cosine.step()
        print(f"peer epoch {epoch + 1}/{epochs} loss {sum(losses) / len(losses):.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start

    model.eval()
    detections = []
    with torch.inference_mode():
        for image, record in _peer_dataset(test_set.records, train=False):
            result = model([image])[0]
            for box, label, score in zip(result["boxes"].tolist(), result["labels"].tolist(), result["scores"].tolist()):
                x1, y1, x2, y2 = box
                detections.append({"image_id": record.image_id, "category_id": int(label),
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    det_path = out / "peer_detections.json"
    det_path.write_text(json.dumps(detections))
    scores = _score(out / "peer.json", "--detections", str(det_path), data=data, split="test")
    return {"torchvision ssdlite320 (last epoch)": {**scores, "train_seconds": seconds}}


def _cpu() -> str:
    model, flags = platform.processor() or "?", ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and model in ("?", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                flags = " ".join(flag for flag in line.split(":", 1)[1].split() if flag in wanted)
    return f"{model} ({flags or 'no avx2'}), {os.cpu_count()} cores"


def table(results: dict[str, dict], classes: list[str]) -> str:
    head = ["model", "VOC07", "VOC12", "COCO AP", *(f"{name} VOC07" for name in classes), "train"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, scores in results.items():
        per_class = [f"{100 * scores['per_class'][c]['voc07_ap']:.1f} %" for c in classes]
        lines.append("| " + " | ".join([
            name, f"{100 * scores['voc07_map']:.1f} %", f"{100 * scores['voc12_map']:.1f} %",
            f"{100 * scores['coco_ap']:.1f} %", *per_class, f"{scores['train_seconds'] / 60:.1f} min"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=BCCD)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--only", choices=("ours", "peer"))
    parser.add_argument("--batch-size", type=int, default=16, help="the peer's batch (ours: its default)")
    parser.add_argument("--lr", type=float, default=0.05, help="the peer's learning rate")
    parser.add_argument("--seed", type=int, default=0, help="the peer's seed (ours: its default)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "peer_bccd")
    args = parser.parse_args()
    if args.output.exists() and any(args.output.iterdir()):
        raise SystemExit(f"{args.output} is not empty: give another --output (nothing is overwritten)")
    args.output.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    if args.only in (None, "ours"):
        results.update(run_ours(args.data, args.epochs, args.output))
    if args.only in (None, "peer"):
        results.update(run_peer(args.data, args.epochs, args.output, args.batch_size, args.lr, args.seed))
    from ssdcli.data.reader import load_dataset

    classes = list(load_dataset(args.data, "test", check_images=False).classes)
    report = f"{_cpu()}, torch {__import__('torch').__version__}, {args.epochs} epochs\n\n{table(results, classes)}"
    (args.output / "results.json").write_text(json.dumps(results, indent=2))
    (args.output / "table.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
