"""The benchmark suite: torchvision's SSD300 really carries our weights, the suite runs and writes
its JSON rows. No timing is asserted (the machine is shared); only that what is timed is the same
work on both sides."""

from __future__ import annotations

import json
import time
import sys
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_convert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cases, run, workloads  # noqa: E402
from benchmarks.reference import (  # noqa: E402
    anchors_xyxy_px,
    build_reference,
    raw_outputs,
    reference_target_assignment,
    torchvision_key,
    uses_same_weights,
)
from benchmarks.timing import conv_gflops  # noqa: E402
from ssdcli.data.transforms import to_model_input  # noqa: E402
from ssdcli.matching import assign_targets  # noqa: E402
from ssdcli.models import build_model, priors_for_model  # noqa: E402


@pytest.fixture(scope="module")
def models():
    model = workloads.ssd300(seed=0)
    return model, build_reference(model).eval()


@pytest.fixture(scope="module")
def coco128(shared_data):
    return workloads.coco128_dataset()


def test_key_mapping_examples():
    # torchvision splits VGG16 at pool4 (features index 23) and nests fc6/fc7 after pool5.
    assert torchvision_key("backbone.vgg.21.weight") == "backbone.features.21.weight"  # conv4_3
    assert torchvision_key("backbone.vgg.24.bias") == "backbone.extra.0.1.bias"  # conv5_1
    assert torchvision_key("backbone.vgg.31.weight") == "backbone.extra.0.7.1.weight"  # fc6
    assert torchvision_key("backbone.vgg.33.weight") == "backbone.extra.0.7.3.weight"  # fc7
    assert torchvision_key("backbone.conv4_3_norm.weight") == "backbone.scale_weight"
    assert torchvision_key("backbone.extras.3.2.weight") == "backbone.extra.4.2.weight"  # conv11_2
    assert torchvision_key("loc_heads.5.weight") == "head.regression_head.module_list.5.weight"
    assert torchvision_key("conf_heads.0.bias") == "head.classification_head.module_list.0.bias"
    with pytest.raises(KeyError):
        torchvision_key("backbone.stage16.0.weight")  # an SSDLite key has no SSD300 counterpart


def test_reference_holds_the_same_weights(models):
    model, reference = models
    assert uses_same_weights(model, reference)
    # strict loading also means torchvision has no tensor we did not fill
    assert len(reference.state_dict()) == len(model.state_dict())
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in model.parameters())


def test_raw_outputs_identical_on_a_real_image(models, coco128):
    model, reference = models
    dataset, _ = coco128
    images = workloads.decoded_images(dataset, 1)
    inputs = to_model_input(images, 300, model.mean, model.std)
    with torch.inference_mode():
        ours = model(inputs)
        theirs = raw_outputs(reference, inputs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape  # (1, 8732, 21) and (1, 8732, 4): identity permutation of rows
        # Only the L2 norm's epsilon placement differs (1e-10 under the sqrt vs a 1e-12 clamp).
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_default_box_order_per_location_agrees(models):
    """torchvision's DefaultBoxGenerator lists each location's boxes in our order: the aspect
    ratio w/h of every row matches (the scales differ: 0.07, 0.15, ... vs Caffe's 30/300, ...).
    torchvision clips its boxes to the image, which changes the ratio of the last layer's widest
    boxes, so rows it clipped are left out."""
    model, reference = models
    from torchvision.models.detection.image_list import ImageList

    features = [torch.empty(1, 1, f, f) for f in model.prior_spec.feature_maps]
    anchors = reference.anchor_generator(ImageList(torch.empty(1, 3, 300, 300), [(300, 300)]), features)[0]
    theirs = box_convert(anchors, "xyxy", "cxcywh")
    ours = priors_for_model(model)
    assert theirs.shape == ours.shape == (8732, 4)
    inside = ((anchors > 0) & (anchors < 300)).all(dim=1)
    assert inside.sum() == 6509  # every layer keeps its inner rows: ratios checked on all six
    ratio_theirs = theirs[inside, 2] / theirs[inside, 3]
    torch.testing.assert_close(ratio_theirs, ours[inside, 2] / ours[inside, 3], rtol=1e-4, atol=0)
    torch.testing.assert_close(theirs[inside, :2] / 300, ours[inside, :2], rtol=0, atol=1e-5)  # same centres


def test_target_assignment_agrees_with_torchvision(models, coco128):
    model, reference = models
    dataset, _ = coco128
    boxes, labels = workloads.batch_targets(dataset, 4)
    priors = priors_for_model(model)
    our_labels, our_deltas = assign_targets(boxes, labels, priors, variances=model.prior_spec.variances)
    anchors = anchors_xyxy_px(priors, 300)
    theirs = reference_target_assignment(reference, workloads.torchvision_targets(boxes, labels, 300), anchors)
    for image, (classes, regression) in enumerate(theirs):
        assert torch.equal(our_labels[image], classes)
        positive = our_labels[image] > 0
        # torchvision's weights (10, 10, 5, 5) are our variances' inverses
        torch.testing.assert_close(our_deltas[image][positive], regression, rtol=1e-4, atol=1e-4)


def test_ssd300_forward_flops_match_the_issue():
    # Issue 9: "the SSD300 forward pass is 62.7 GFLOP" (21 classes, convolutions, 2 FLOP per MAC)
    assert conv_gflops(build_model("ssd300", 20), 300) == pytest.approx(62.7, abs=0.05)


def test_quick_suite_writes_the_json_rows(shared_data, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = run.main(["--quick", "--only", "target_assignment,eval_metrics", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [row["name"] for row in rows] == ["target_assignment", "eval_metrics"]
    for row in rows:
        assert set(row) == {"name", "ours_ms", "reference_ms", "ratio", "note"}
        assert row["ours_ms"] > 0 and row["reference_ms"] > 0
        assert row["ratio"] == pytest.approx(row["ours_ms"] / row["reference_ms"])
    printed = capsys.readouterr().out
    assert "eval_metrics" in printed and "fp32 peak" in printed


@pytest.mark.slow
def test_detect_rows_time_what_ssd_detect_runs_by_default_and_the_torch_backend_beside_it(
        shared_data, tmp_path, monkeypatch, capsys):
    from benchmarks import runtimes
    from ssdcli.inference import TorchDetector

    monkeypatch.setattr(workloads, "CACHE", tmp_path / "bench")
    stale = tmp_path / "bench" / "choices" / "old.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    made = []

    class Chosen(TorchDetector):  # stands in for the exported model auto would pick (no export here)
        backend = "onnxruntime"

        def predict(self, images, sizes, timings=None):
            self.calls += 1
            return super().predict(images, sizes, timings)

    def default_detector(weights, cache, batch, progress):
        assert cache == tmp_path / "bench" and weights.is_file() and not stale.exists()  # decided afresh
        detector = Chosen(workloads.ssd300(), torch.device("cpu"))
        detector.calls = 0
        made.append((batch, detector))
        return detector

    monkeypatch.setattr(runtimes, "default_detector", default_detector)
    out = tmp_path / "bench.json"
    names = "detect_ssd300_b1,detect_ssd300_b1_torch,detect_ssd300_b2,detect_ssd300_b2_torch"
    assert run.main(["--quick", "--only", names, "--json", str(out)]) == 0
    rows = {row["name"]: row for row in json.loads(out.read_text())}
    assert list(rows) == names.split(",")
    assert [batch for batch, _ in made] == [1, 2] and all(d.calls >= 1 for _, d in made)
    assert rows["detect_ssd300_b1"]["note"] == rows["detect_ssd300_b2"]["note"] == "= onnxruntime_fp32"
    assert rows["detect_ssd300_b1_torch"]["note"] == ""
    for row in rows.values():
        assert row["ours_ms"] > 0 and row["ratio"] == pytest.approx(row["ours_ms"] / row["reference_ms"])
    assert "= onnxruntime_fp32" in capsys.readouterr().out  # the table says what ran ours


@pytest.mark.slow
def test_the_training_row_runs_the_images_per_pass_ssd_train_times_on_this_machine(shared_data, tmp_path, monkeypatch):
    from ssdcli.train import micro_batch

    monkeypatch.setattr(workloads, "CACHE", tmp_path / "bench")
    monkeypatch.delenv(micro_batch.MICRO_BATCH_ENV, raising=False)
    timed = []

    def probe(model, sizes, loss_fn, priors):
        timed.append(list(sizes))
        return {1: 5.0, 2: 7.0}  # image by image is the faster here

    monkeypatch.setattr(micro_batch, "probe", probe)
    given = []
    real_case = cases.train_step_case
    monkeypatch.setattr(cases, "train_step_case", lambda *args: given.append(args[-1]) or real_case(*args))
    out = tmp_path / "bench.json"
    assert run.main(["--quick", "--only", "train_step_ssd300", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert timed == [[1, 2]] and given == [1] and row["note"] == "1 img/pass"
    assert json.loads(next((tmp_path / "bench" / "choices").glob("train-*.json")).read_text())["images_per_pass"] == 1


@pytest.mark.parametrize("winograd", ["", "1"])
def test_share_of_peak_uses_the_better_of_matmul_and_convolution(monkeypatch, winograd):
    # 62.7 GFLOP in 200 ms is 313.5 GFLOP/s: over the matmul's 150 but under the convolution's 400
    from rich.console import Console

    monkeypatch.setenv("SSDCLI_WINOGRAD", winograd)
    report = run.Report(
        rows=[run.Row("forward_ssd300", 200.0, 300.0)], device="cpu", gemm_gflops=150.0,
        conv_peak_gflops=400.0, forward_gflop_per_image=62.7, forward_batch=1, notes=[],
    )
    assert report.peak_gflops == 400.0
    assert report.forward_share_of_peak() == pytest.approx(62.7 / 0.2 / 400.0)
    console = Console(record=True, width=200)
    run.render(report, console)
    printed = console.export_text()
    assert "fp32 peak 400.0 GFLOP/s" in printed and "matmul, 150.0" in printed and "runs at 78% of it" in printed
    assert "Winograd" not in printed  # 78 %: no note, whichever path was asked for
    slow_matmul_only = run.Report(
        rows=[run.Row("forward_ssd300", 100.0, 300.0)], device="cpu", gemm_gflops=150.0,
        conv_peak_gflops=150.0, forward_gflop_per_image=62.7, forward_batch=1, notes=[],
    )
    console = Console(record=True, width=200)
    run.render(slow_matmul_only, console)
    # above 100 % the note blames Winograd only when Winograd was on
    printed = console.export_text()
    assert ("ran as Winograd" in printed) == bool(winograd)
    assert ("both peak measurements fell short" in printed) == (not winograd)


def test_eval_case_scores_like_pycocotools(coco128):
    from benchmarks.cases import eval_metrics_case

    dataset, ground_truth = coco128
    subset = run._first_images(dataset, 8)
    truth = run._json_subset(ground_truth, {r.image_id for r in subset.records})
    ours, theirs = eval_metrics_case(subset, truth, workloads.coco_detections(subset))
    stats = ours()
    reference = theirs()
    assert [stats[name] if stats[name] is not None else -1.0 for name in stats] == pytest.approx(list(reference))


def test_compare_times_fast_cases_for_min_seconds_and_slow_ones_repeats_times():
    from benchmarks import timing

    calls = {"ours": 0, "reference": 0}

    def sleeper(side: str, seconds: float):
        def run():
            calls[side] += 1
            time.sleep(seconds)

        return run

    timing.compare(sleeper("ours", 0.001), sleeper("reference", 0.001), 5, torch.device("cpu"), 0, 0.1)
    assert calls["ours"] == calls["reference"] > 5  # ~2 ms per pair: on past 5 pairs to fill 0.1 s
    calls.update(ours=0, reference=0)
    timing.compare(sleeper("ours", 0.03), sleeper("reference", 0.03), 5, torch.device("cpu"), 0, 0.1)
    assert calls["ours"] == calls["reference"] == 5  # 5 pairs already take 0.3 s
    calls.update(ours=0, reference=0)
    timing.compare(sleeper("ours", 0.0), None, 5, torch.device("cpu"), 0, 1e9)
    assert calls["ours"] == timing.MAX_REPEATS


def test_compare_many_shuffles_each_round_so_no_side_mostly_follows_the_same_one():
    from collections import Counter

    from benchmarks import timing

    order = []
    names = "abcdefghij"  # ten configurations, as the runtime rows time
    calls = {name: (lambda n=name: order.append(n)) for name in names}
    times = timing.compare_many(calls, 40, torch.device("cpu"), warmup=0)
    assert sorted(times) == list(names)
    rounds = [order[i:i + len(names)] for i in range(0, len(order), len(names))]
    assert len(rounds) == 40 and all(sorted(r) == list(names) for r in rounds)  # each once per round
    assert len({"".join(r) for r in rounds}) > 30  # the order changes from round to round
    for name in names:
        before = Counter(r[r.index(name) - 1] for r in rounds if r.index(name) > 0)
        assert before.most_common(1)[0][1] <= 0.4 * sum(before.values())  # a rotation gives 1.0
    order.clear()
    timing.compare_many(calls, 5, torch.device("cpu"), warmup=0)
    again = list(order)
    order.clear()
    timing.compare_many(calls, 5, torch.device("cpu"), warmup=0)
    assert order == again  # seeded: the same orders every run


@pytest.mark.slow
def test_quick_runtime_rows_time_every_backend_and_score_the_precisions(shared_data, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from ssdcli.hardware import native_bf16

    monkeypatch.setattr(workloads, "CACHE", tmp_path / "bench")  # exports, the SSDLite, decisions: all fresh
    out = tmp_path / "bench.json"
    assert run.main(["--quick", "--only", "runtimes_ssdlite320,map_change", "--json", str(out)]) == 0
    rows = {row["name"]: row for row in json.loads(out.read_text())}
    combos = ["torch_fp32", "torch_bf16", "onnxruntime_fp32", "openvino_fp32", "openvino_bf16", "openvino_int8"]
    for batch in (1, 2):
        prefix = f"detect_ssdlite320_b{batch}"
        for combo in combos:
            row = rows[f"{prefix}_{combo}"]
            if "bf16" in combo and not native_bf16():
                assert row["ours_ms"] is None and row["note"].startswith("n/a")
                continue
            assert row["ours_ms"] > 0 and row["ratio"] == pytest.approx(row["ours_ms"] / row["reference_ms"])
            assert row["ratio_to_fastest"] == pytest.approx(row["ours_ms"] / row["fastest_external_ms"])
        externals = [r for name, r in rows.items() if name.startswith(f"{prefix}_external_")]
        assert {r["name"].rsplit("external_", 1)[1] for r in externals} >= {"onnxruntime_fp32", "openvino_fp32", "openvino_int8"}
        fastest = min(r["ours_ms"] for r in externals)
        assert all(r["fastest_external_ms"] == fastest for r in externals)
        default = rows[f"{prefix}_default"]
        assert default["note"].removeprefix("= ") in combos and default["ours_ms"] == rows[
            f"{prefix}_{default['note'][2:]}"]["ours_ms"]
        assert rows[f"{prefix}_fastest"]["ours_ms"] == min(
            rows[f"{prefix}_{c}"]["ours_ms"] for c in combos if rows[f"{prefix}_{c}"]["ours_ms"] is not None)
    for combo in ("onnxruntime_fp32", "openvino_fp32", "torch_bf16", "openvino_bf16", "openvino_int8"):
        row = rows[f"map_change_ssdlite320_{combo}"]
        if row["map"] is not None:
            assert row["change_points"] == pytest.approx(100 * (row["map"] - row["map_fp32"]))
