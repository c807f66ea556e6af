"""ssdcli against torchvision's SSD300 on the same weights: ``python benchmarks/run.py``.

Usage::

    python benchmarks/run.py [--json FILE] [--device cpu|cuda] [--repeats N] [--quick]

Prints a table (name, ours_ms, reference_ms, ratio = ours / reference, target, met?) and the
forward pass as a share of the machine's fp32 GEMM peak; ``--json FILE`` writes a list of
``{"name", "ours_ms", "reference_ms", "ratio"}``. ``--device cuda`` adds images/s at batch 1, 8
and 64, fp32 and AMP, forward-only and end to end, and training images/s (as rows in ms per batch).
``--quick`` is the smoke-test size: 1 repeat, no warm-up, batch 2 instead of 8, a 1-step training;
``--only a,b`` runs the named rows only; the runtime rows (:mod:`benchmarks.runtimes`) are named
by group: ``runtimes_ssd300``, ``runtimes_ssdlite320``, ``map_change`` (``runtimes``: all three).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ssdcli.cli.process import limit_openmp_spin

limit_openmp_spin()  # this script owns its process: the OpenMP spin limit `ssd` runs under, before torch loads
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` importable as a script

from benchmarks import cases, runtimes, workloads  # noqa: E402
from benchmarks.timing import compare, conv_gflops, conv_peak_gflops, gemm_peak_gflops  # noqa: E402
from ssdcli.data.transforms import to_model_input  # noqa: E402
from ssdcli.loss import MultiBoxLoss  # noqa: E402
from ssdcli.models import priors_for_model  # noqa: E402
from ssdcli.models.packed import packed_ready  # noqa: E402
from ssdcli.models.winograd import nnpack_ready, winograd_requested  # noqa: E402
from ssdcli.train.micro_batch import run_micro_batch  # noqa: E402

RUNTIME_GROUPS = ("runtimes_ssd300", "runtimes_ssdlite320", "map_change")
"""``--only`` names of the runtime rows' groups (CPU only)."""
CPU_REPEATS = 5
MIN_SECONDS = 2.0
"""Each row times at least CPU_REPEATS calls per side and, for fast rows, more: 2 s in all."""
RUNTIME_REPEATS = 7
RUNTIME_MIN_SECONDS = 6.0
"""The runtime rows compare ten configurations a few percent apart (ours against the same graph
in the external runtime): at least 7 rounds and 6 s in all, so one slow call moves no median."""


@dataclass
class Row:
    name: str
    ours_ms: float
    reference_ms: float | None
    note: str = ""  # what ran ours, where a row says (``= onnxruntime_fp32``)

    @property
    def ratio(self) -> float | None:
        return None if self.reference_ms is None else self.ours_ms / self.reference_ms

    def to_json(self) -> dict:
        return {"name": self.name, "ours_ms": self.ours_ms, "reference_ms": self.reference_ms, "ratio": self.ratio,
                "note": self.note}


@dataclass
class Report:
    rows: list[Row]
    device: str
    gemm_gflops: float
    conv_peak_gflops: float
    forward_gflop_per_image: float
    forward_batch: int
    notes: list[str]
    runtime_rows: list = field(default_factory=list)

    @property
    def peak_gflops(self) -> float:
        """The machine's fp32 peak as measured: the better of the matmul and the convolution."""
        return max(self.gemm_gflops, self.conv_peak_gflops)

    def forward_share_of_peak(self) -> float | None:
        """Our forward pass's achieved GFLOP/s over :attr:`peak_gflops`."""
        forward = next((r for r in self.rows if r.name == "forward_ssd300"), None)
        if forward is None:
            return None
        achieved = self.forward_gflop_per_image * self.forward_batch / (forward.ours_ms / 1000.0)
        return achieved / self.peak_gflops


def run_suite(
    device: torch.device,
    repeats: int,
    quick: bool = False,
    progress: Callable[[str], None] = lambda message: None,
    only: frozenset[str] | None = None,
) -> Report:
    """Build the workloads, time every case (or those named in ``only``), measure the GEMM peak;
    no printing."""
    warmup = 0 if quick else 1
    batch = 2 if quick else 8
    rows: list[Row] = []

    def wanted(name: str) -> bool:
        return only is None or name in only or (name in RUNTIME_GROUPS and "runtimes" in only)

    def measure(name: str, case: Callable[[], cases.Case], case_device: torch.device = device,
                note: Callable[[], str] = str) -> None:
        if not wanted(name):
            return
        progress(name)
        case = case()
        ours, reference = compare(
            *case, repeats=repeats, device=case_device, warmup=warmup, min_seconds=0.0 if quick else MIN_SECONDS
        )
        rows.append(Row(name, ours, reference, note()))

    progress("workloads")
    model = workloads.ssd300()
    dataset, ground_truth = workloads.coco128_dataset()
    images = workloads.decoded_images(dataset, batch)
    boxes_norm, labels = workloads.batch_targets(dataset, batch)

    cpu = torch.device("cpu")
    defaults = ("detect_ssd300_b1", f"detect_ssd300_b{batch}", "runtimes_ssd300", "runtimes_ssdlite320",
                "train_step_ssd300")
    if device.type == "cpu" and any(wanted(name) for name in defaults):
        # `default` rows, here and in the runtime rows, are what auto picks in this run, and the
        # training step's images per pass what `ssd train` times in it
        shutil.rmtree(workloads.CACHE / "choices", ignore_errors=True)
    for count in (1, batch):
        detect_rows(measure, model, images[:count], device, progress)
    inputs = to_model_input(images[:1], model.image_size, model.mean, model.std, device=device)
    measure("forward_ssd300", lambda: cases.forward_case(model.to(device), inputs))
    if device.type == "cpu" and packed_ready():  # what the packed weights give on this machine
        measure("forward_ssd300_unpacked", lambda: cases.forward_case(model, inputs, unpacked=True))
    if device.type == "cpu" and nnpack_ready():  # is SSDCLI_WINOGRAD=1 worth it on this machine?
        measure("forward_ssd300_winograd", lambda: cases.forward_case(model, inputs, winograd=True))
    model = model.cpu()

    notes = []
    setup = workloads.QUICK_TRAINING if quick else workloads.TrainingSetup()
    if wanted("postprocess_score0.01") or wanted("postprocess_score0.3"):
        trained = workloads.trained_outputs(setup, batch, progress)
        for score in (0.01, 0.3):
            measure(
                f"postprocess_score{score}",
                lambda: cases.postprocess_case(
                    model, trained.cls_logits, trained.box_deltas, trained.priors_cxcywh, trained.image_size, score
                ),
                cpu,
            )
        notes.append(
            f"postprocess rows: {setup.arch} (20 classes) after {setup.epochs} epoch(s) of ssdcli.train.fit "
            f"on synth shapes (held-out VOC07 mAP {trained.voc07_map:.3f}), batch {batch}, "
            f"{trained.cls_logits.shape[1]} default boxes"
        )

    inputs_01 = to_model_input(images, model.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), device=device)
    passes = {}

    def train_case() -> cases.Case:
        # the images per pass `ssd train` times on this machine (cleared with the other decisions above)
        passes["images"] = run_micro_batch(model.to(device), device, len(images), MultiBoxLoss(),
                                           priors_for_model(model).to(device), notes=progress, cache_dir=workloads.CACHE)
        return cases.train_step_case(model, inputs_01, boxes_norm, labels, passes["images"])

    measure("train_step_ssd300", train_case, note=lambda: f"{passes['images']} img/pass")
    model = model.cpu()
    measure("target_assignment", lambda: cases.target_assignment_case(model, boxes_norm, labels), cpu)

    eval_dataset = dataset
    if quick:
        eval_dataset = _first_images(dataset, 8)
        ground_truth = _json_subset(ground_truth, {r.image_id for r in eval_dataset.records})
    detections = workloads.coco_detections(eval_dataset)
    measure("eval_metrics", lambda: cases.eval_metrics_case(eval_dataset, ground_truth, detections), cpu)
    notes.append(f"eval_metrics: {len(eval_dataset.records)} coco128 images, {len(detections)} detections")
    if device.type == "cuda" and only is None:
        rows += cuda_throughput(model, dataset, repeats, quick, progress)
    runtime_rows = []
    if device.type == "cpu" and any(wanted(group) for group in RUNTIME_GROUPS):  # benchmarks/runtimes.py
        timing = runtimes.Timing(repeats if quick else max(repeats, RUNTIME_REPEATS), warmup,
                                 0.0 if quick else RUNTIME_MIN_SECONDS)
        runtime_rows, runtime_notes = runtimes.runtime_suite(images, quick, timing, wanted, progress)
        notes += runtime_notes

    progress("gemm peak")
    return Report(
        rows=rows,
        device=_device_name(device),
        gemm_gflops=gemm_peak_gflops(device),  # the sizes render() names; under a second even with --quick
        conv_peak_gflops=conv_peak_gflops(device),
        forward_gflop_per_image=conv_gflops(model, model.image_size),
        forward_batch=1,
        notes=notes,
        runtime_rows=runtime_rows,
    )


def detect_rows(measure: Callable, model, images: list, device: torch.device, progress) -> None:
    """``detect_ssd300_bN``: ``ssd detect`` as it runs by default, against torchvision. On the CPU
    that is ``--backend auto`` at fp32 (the fastest of torch / onnxruntime / OpenVINO as timed on
    this machine, the runtime rows' ``default``), with ``detect_ssd300_bN_torch``, the torch
    backend alone, beside it; on CUDA, the torch backend at fp32."""
    name = f"detect_ssd300_b{len(images)}"
    if device.type != "cpu":
        measure(name, lambda: cases.detect_case(model, images, device))
        return
    chosen = {}

    def default_case() -> cases.Case:
        detector = runtimes.default_detector(runtimes.ssd300_checkpoint(), workloads.CACHE, len(images), progress)
        chosen["note"] = f"= {detector.backend}_{detector.precision}"
        return cases.detect_case(model, images, device, detector)

    measure(name, default_case, note=lambda: chosen["note"])
    measure(f"{name}_torch", lambda: cases.detect_case(model, images, device))


def cuda_throughput(model, dataset, repeats: int, quick: bool, progress) -> list[Row]:
    """Rows ``cuda_{forward|detect}_{fp32|amp}_b{N}`` and ``cuda_train_{fp32|amp}_b{N}``, ms per batch
    (images/s = N * 1000 / ms), ours against torchvision at batch 1, 8 and 64."""
    device = torch.device("cuda")
    rows: list[Row] = []
    batches = (1, 2) if quick else (1, 8, 64)
    images = workloads.decoded_images(dataset, max(batches))
    images = (images * max(batches))[: max(batches)]
    boxes_norm, labels = workloads.batch_targets(dataset, max(batches))
    for amp in (False, True):
        precision = "amp" if amp else "fp32"
        for batch in batches:
            for kind, build in (
                ("forward", lambda b: cases.forward_case(
                    model.to(device), to_model_input(images[:b], model.image_size, model.mean, model.std, device=device))),
                ("detect", lambda b: cases.detect_case(model, images[:b], device)),
            ):
                progress(f"cuda {kind} {precision} b{batch}")
                ours, reference = build(batch)
                ours, reference = _autocast(ours, amp), _autocast(reference, amp)
                ours_ms, reference_ms = compare(ours, reference, repeats=repeats, device=device, warmup=2)
                rows.append(Row(f"cuda_{kind}_{precision}_b{batch}", ours_ms, reference_ms))
        train_batch = batches[-1] if quick else 32
        progress(f"cuda train {precision} b{train_batch}")
        inputs_01 = to_model_input(images[:train_batch], model.image_size, (0.0,) * 3, (1.0,) * 3, device=device)
        boxes = boxes_norm[:train_batch].to(device)
        ours, reference = cases.train_step_case(model, inputs_01, boxes, labels[:train_batch].to(device))
        ours, reference = _autocast(ours, amp), _autocast(reference, amp)
        ours_ms, reference_ms = compare(ours, reference, repeats=repeats, device=device, warmup=2)
        rows.append(Row(f"cuda_train_{precision}_b{train_batch}", ours_ms, reference_ms))
    model.cpu()
    return rows


def _autocast(fn: Callable[[], object], enabled: bool) -> Callable[[], object]:
    def wrapped():
        with torch.autocast("cuda", dtype=torch.float16, enabled=enabled):
            return fn()

    return wrapped


def _first_images(dataset, count: int):
    from dataclasses import replace

    return replace(dataset, records=dataset.records[:count])


def _json_subset(ground_truth: dict, image_ids: set) -> dict:
    return {
        **ground_truth,
        "images": [i for i in ground_truth["images"] if i["id"] in image_ids],
        "annotations": [a for a in ground_truth["annotations"] if a["image_id"] in image_ids],
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def render(report: Report, console) -> None:
    """The results as a rich table plus the GEMM-peak lines."""
    from rich.table import Table

    table = Table(title=f"ssdcli vs torchvision SSD300 ({report.device})")
    for column in ("name", "runs", "ours_ms", "reference_ms", "ratio", "target", "met?"):
        table.add_column(column, justify="left" if column in ("name", "runs") else "right")
    for row in report.rows:
        target = cases.TARGETS.get(row.name)
        met = target.met(row.ratio) if target else None
        table.add_row(
            row.name,
            row.note,
            f"{row.ours_ms:.2f}",
            "-" if row.reference_ms is None else f"{row.reference_ms:.2f}",
            "-" if row.ratio is None else f"{row.ratio:.3f}",
            f"<= {target.limit}" if target else "",
            "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"),
        )
    runtimes.wide_console(console, 110).print(table)
    runtimes.render(report.runtime_rows, console)
    for row in report.rows:
        if row.name.startswith("cuda_"):
            batch = int(row.name.rsplit("_b", 1)[1])
            theirs = "" if row.reference_ms is None else f", torchvision {batch * 1000 / row.reference_ms:.1f}"
            console.print(f"{row.name}: ours {batch * 1000 / row.ours_ms:.1f} images/s{theirs}")
    share = report.forward_share_of_peak()
    console.print(
        f"fp32 peak {report.peak_gflops:.1f} GFLOP/s (the better of a 2048 x 2048 matmul, "
        f"{report.gemm_gflops:.1f}, and a 3x3 convolution 256 -> 256 at 75 x 75, {report.conv_peak_gflops:.1f}); "
        f"SSD300 forward {report.forward_gflop_per_image:.1f} GFLOP/image (direct convolution); floor "
        f"{report.forward_gflop_per_image / report.peak_gflops * 1000:.0f} ms/image"
        + ("" if share is None else f"; our forward_ssd300 (batch {report.forward_batch}) runs at {share:.0%} of it")
    )
    if share is not None and share > 1:
        console.print(
            "[dim]above 100 %: the large 3x3 convolutions ran as Winograd (NNPACK, SSDCLI_WINOGRAD=1), which needs "
            "fewer multiplications than the direct count above (ssdcli.models.winograd)[/]"
            if winograd_requested()
            else "[dim]above 100 %: both peak measurements fell short of what the forward's convolutions reached "
            "(a busy moment during them?)[/]"
        )
    for note in report.notes:
        console.print(f"[dim]{note}[/]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list to this file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, help=f"timed runs per side (default {CPU_REPEATS}; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke-test size: 1 repeat, batch 2, 1 training step")
    parser.add_argument("--only", help="comma-separated row names to run (default: all)")
    args = parser.parse_args(argv)
    only = frozenset(name.strip() for name in args.only.split(",")) if args.only else None

    from rich.console import Console

    console = Console(stderr=False)
    progress_console = Console(stderr=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        progress_console.print("--device cuda: no CUDA device is available here; use --device cpu")
        return 2
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else CPU_REPEATS)
    if repeats < 1:
        progress_console.print("--repeats must be at least 1")
        return 2
    report = run_suite(
        torch.device(args.device),
        repeats,
        quick=args.quick,
        progress=lambda m: progress_console.print(f"[dim]{m}[/]"),
        only=only,
    )
    render(report, console)
    if args.json is not None:
        rows = [row.to_json() for row in report.rows + report.runtime_rows]
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
