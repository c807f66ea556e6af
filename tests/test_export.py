"""Export to ONNX / TorchScript: parity with PyTorch, metadata, dynamic batch, empty outputs, the
CLI, the onnxruntime detector and the standalone example script."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import onnx
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from ssdcli.checkpoint import load_checkpoint, save_checkpoint
from ssdcli.cli import export as export_cmd
from ssdcli.data.transforms import to_model_input
from ssdcli.errors import UserError
from ssdcli.export import (
    DetectionGraph,
    ExportOptions,
    RawGraph,
    export_checkpoint,
    load_torchscript,
    trace_graph,
)
from ssdcli.export_metadata import ExportMetadata, metadata_for
from ssdcli.export_parity import compare_detections, sample_images
from ssdcli.models import build_model, model_from_checkpoint, model_settings, priors_for_model
from ssdcli.onnx_model import OnnxDetector
from ssdcli.postprocess import FlatDetections, PostprocessSettings, postprocess, postprocess_flat

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "onnx_inference.py"
CLASSES = ["circle", "square", "star"]

runner = CliRunner()
app = typer.Typer()
app.command("export", help=export_cmd.HELP, epilog=export_cmd.EPILOG)(export_cmd.export)


@app.callback()
def _root() -> None:
    """A local app so the test does not depend on cli/app.py's registration."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two shared cores: OpenMP's second thread mostly waits on a busy machine (measured 25x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small_checkpoint(path: Path, arch: str, **options: float) -> Path:
    """A random network whose scores spread like a trained one's: BatchNorm statistics measured on
    the sample images (with torchvision's init every MobileNet feature map collapses to a constant,
    which ties all scores) and heads with N(0, 0.05) weights."""
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES), **options)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(sample_images(model.image_size, model.mean, model.std))
        generator = torch.Generator().manual_seed(1)
        for head in [*model.conf_heads, *model.loc_heads]:
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    for norm in norms:
        norm.momentum = 0.1
    settings = model_settings(model)
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "arch": arch,
            "num_classes": len(CLASSES),
            "options": settings["options"],
            "class_names": CLASSES,
            "image_size": settings["image_size"],
            "mean": settings["mean"],
            "std": settings["std"],
            "priors": settings["prior_spec"],
            "postprocess": PostprocessSettings().to_dict(),
        },
    )
    return path


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> Path:
    return _small_checkpoint(tmp_path_factory.mktemp("ckpt") / "lite.pt", "ssdlite320", width_mult=0.25)


@pytest.fixture(scope="module")
def lite_onnx(lite, tmp_path_factory) -> Path:
    """ssdlite320 with post-processing, fixed batch 1 (the default export)."""
    output = tmp_path_factory.mktemp("onnx") / "lite.onnx"
    report = export_checkpoint(lite, output, ExportOptions())
    assert report.passed, report.checks
    return output


def _network(checkpoint: Path) -> nn.Module:
    return model_from_checkpoint(load_checkpoint(checkpoint)).eval()


def _flat(outputs) -> FlatDetections:
    boxes, scores, labels, batch_index = outputs
    return FlatDetections(batch_index.long(), boxes, scores, labels.long())


def _assert_same_detections(expected: FlatDetections, got: FlatDetections) -> None:
    """Same labels and images; boxes within 1e-3 and scores within 1e-4 (normalised), by content."""
    assert got.scores.numel() == expected.scores.numel() > 0
    assert sorted(zip(got.batch_index.tolist(), got.labels.tolist())) == sorted(
        zip(expected.batch_index.tolist(), expected.labels.tolist())
    )
    checks = {c.name: c for c in compare_detections(expected, got)}
    assert checks["detections"].max_diff == 0
    assert checks["boxes"].max_diff <= 1e-3 and checks["scores"].max_diff <= 1e-4


def test_ssd300_onnx_with_postprocess_matches_pytorch_at_batch_1(tmp_path):
    checkpoint = _small_checkpoint(tmp_path / "ssd300.pt", "ssd300")
    report = export_checkpoint(checkpoint, tmp_path / "ssd300.onnx", ExportOptions(postprocess=True))
    assert report.passed and report.batch_sizes == [1, 1]
    onnx.checker.check_model(str(tmp_path / "ssd300.onnx"))

    network = _network(checkpoint)
    detector = OnnxDetector(tmp_path / "ssd300.onnx")
    images = sample_images(300, network.mean, network.std)[1:]  # the synthetic shapes image
    with torch.no_grad():
        expected = postprocess_flat(*network(images), priors_for_model(network))
    _assert_same_detections(expected, _flat(detector.run(images)))


def test_parity_reference_computes_convolutions_directly(lite, tmp_path, monkeypatch):
    """The exported graph has direct convolutions; so must the PyTorch side of the check, or a
    trained SSD300's Winograd differences (~1e-5 of the largest logit) would eat the tolerance."""
    from ssdcli import export
    from ssdcli.models import winograd

    seen = []
    original = export.check_parity

    def spy(*args, **kwargs):
        seen.append(winograd._DIRECT.get())
        return original(*args, **kwargs)

    monkeypatch.setattr(export, "check_parity", spy)
    report = export_checkpoint(lite, tmp_path / "lite.onnx", ExportOptions(postprocess=False))
    assert report.passed and seen == [True]
    assert not winograd._DIRECT.get()


def test_ssdlite_onnx_detections_match_and_metadata_round_trips(lite, lite_onnx):
    onnx.checker.check_model(str(lite_onnx))
    checkpoint = load_checkpoint(lite)
    detector = OnnxDetector(lite_onnx)
    assert detector.metadata == metadata_for(checkpoint, True, PostprocessSettings())
    assert (detector.class_names, detector.image_size) == (CLASSES, 320)
    assert detector.mean == pytest.approx([0.485, 0.456, 0.406]) and detector.fixed_batch == 1

    props = {p.key: p.value for p in onnx.load(str(lite_onnx)).metadata_props}
    assert json.loads(props["class_names"]) == CLASSES and props["image_size"] == "320"
    assert props["ssdcli_export"] == "detections" and "xyxy normalised" in props["coordinates"]
    assert "RGB, /255, then (x-mean)/std, resized to 320x320 without keeping aspect" in props["input_format"]
    assert json.loads(props["postprocess_settings"])["nms_iou"] == 0.45
    assert ExportMetadata.from_dict(props) == detector.metadata

    network = _network(lite)
    images = sample_images(320, network.mean, network.std)  # a fixed-batch model runs them one by one
    with torch.no_grad():
        expected = postprocess_flat(*network(images), priors_for_model(network))
    got = _flat(detector.run(images))
    assert set(got.batch_index.tolist()) == {0, 1}
    _assert_same_detections(expected, got)


def test_raw_onnx_with_dynamic_batch_matches_pytorch_for_1_and_3_images(lite, tmp_path):
    path = tmp_path / "raw.onnx"
    assert export_checkpoint(lite, path, ExportOptions(postprocess=False, dynamic_batch=True)).passed
    onnx.checker.check_model(str(path))
    detector = OnnxDetector(path)
    assert detector.fixed_batch is None and not detector.metadata.postprocess
    network = _network(lite)
    for batch in (1, 3):
        images = torch.randn(batch, 3, 320, 320, generator=torch.Generator().manual_seed(batch))
        cls_logits, box_deltas, priors = detector.run(images)
        with torch.no_grad():
            expected_logits, expected_deltas = network(images)
        assert cls_logits.shape == (batch, 3234, 4) and box_deltas.shape == (batch, 3234, 4)
        assert (cls_logits - expected_logits).abs().max() < 1e-4
        assert (box_deltas - expected_deltas).abs().max() < 1e-4
        assert torch.equal(priors, priors_for_model(network))  # (3234, 4) cxcywh, a constant output

        # predict() runs the very post-processing of eval/detect on the onnxruntime outputs
        sizes = [(500, 375)] * batch
        got = detector.predict(images, sizes)
        want = postprocess(expected_logits, expected_deltas, priors_for_model(network), image_sizes=sizes)
        for g, w in zip(got, want):
            assert torch.equal(g.labels, w.labels)
            assert torch.allclose(g.boxes_xyxy, w.boxes_xyxy, atol=1e-3 * 500)


def test_detections_export_predict_applies_a_higher_threshold_and_refuses_other_nms(lite_onnx):
    images = sample_images(320, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    sizes = [(320, 320), (640, 480)]
    full = OnnxDetector(lite_onnx).predict(images, sizes)
    cut = OnnxDetector(lite_onnx, PostprocessSettings(score_threshold=0.26, max_detections=5)).predict(images, sizes)
    for f, c in zip(full, cut):
        keep = min(int((f.scores > 0.26).sum()), 5)
        assert torch.equal(c.scores, f.scores[:keep]) and torch.equal(c.boxes_xyxy, f.boxes_xyxy[:keep])
    # boxes in pixels: x scales by the width, y by the height
    assert full[1].boxes_xyxy[:, 0::2].max() <= 640 and full[1].boxes_xyxy[:, 1::2].max() <= 480
    with pytest.raises(UserError, match="nms-iou 0.5"):
        OnnxDetector(lite_onnx, PostprocessSettings(nms_iou=0.5))
    with pytest.raises(UserError, match="lower --min-score"):
        OnnxDetector(lite_onnx, PostprocessSettings(score_threshold=0.001))


def test_trace_records_nms_even_when_the_threshold_leaves_nothing(lite):
    network = _network(lite)
    priors = priors_for_model(network)
    images = sample_images(320, network.mean, network.std)
    graph = DetectionGraph(network, priors, PostprocessSettings(score_threshold=0.99))
    traced = trace_graph(graph, images)
    boxes, scores, labels, batch_index = traced(images)
    assert boxes.shape == (0, 4) and scores.shape == labels.shape == batch_index.shape == (0,)
    # The same traced graph with a lower threshold finds what eager PyTorch finds: NMS was traced.
    traced.score_threshold.fill_(0.2)
    with torch.no_grad():
        expected = postprocess_flat(*network(images), priors, score_threshold=0.2)
    _assert_same_detections(expected, _flat(traced(images)))


@pytest.mark.parametrize("postprocess_on", [True, False])
def test_torchscript_round_trip(lite, tmp_path, postprocess_on):
    path = tmp_path / "model.pt"
    report = export_checkpoint(lite, path, ExportOptions(format="torchscript", postprocess=postprocess_on))
    assert report.passed and report.batch_sizes == [2, 1]
    module, metadata = load_torchscript(path)
    assert metadata == metadata_for(load_checkpoint(lite), postprocess_on, PostprocessSettings())
    network = _network(lite)
    images = torch.randn(3, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    graph = (DetectionGraph if postprocess_on else RawGraph)(
        network, priors_for_model(network), *([PostprocessSettings()] if postprocess_on else [])
    )
    with torch.no_grad():
        expected, got = graph(images), module(images)
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


def test_not_an_onnx_file_or_not_an_ssdcli_export_is_a_user_error(tmp_path):
    text = tmp_path / "model.onnx"
    text.write_text("hello")
    with pytest.raises(UserError, match="not an ONNX model"):
        OnnxDetector(text)
    with pytest.raises(UserError, match="not found"):
        OnnxDetector(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        torch.onnx.export(nn.Linear(2, 2), (torch.zeros(1, 2),), str(plain), dynamo=False, input_names=["images"])
    with pytest.raises(UserError, match="without ssdcli metadata"):
        OnnxDetector(plain)
    with pytest.raises(UserError, match="opset 16"):
        ExportOptions(opset=16)


def test_cli_exports_prints_the_parity_table_and_exits_0(lite, tmp_path):
    output = tmp_path / "out" / "lite.onnx"
    result = runner.invoke(app, ["export", "--weights", str(lite), "--output", str(output), "--min-score", "0.05"])
    assert result.exit_code == 0, result.output
    assert output.is_file() and "boxes" in result.stdout and "pass" in result.stdout
    assert OnnxDetector(output).metadata.settings.score_threshold == 0.05


def test_cli_exits_1_and_keeps_nothing_when_parity_fails(lite, tmp_path, monkeypatch):
    import ssdcli.export as export_module

    real = export_module._onnx_runner

    def drifting(path):
        run = real(path)
        return lambda images: tuple(o + 1e-3 if o.is_floating_point() else o for o in run(images))

    monkeypatch.setattr(export_module, "_onnx_runner", drifting)
    output = tmp_path / "raw.onnx"
    result = runner.invoke(app, ["export", "--weights", str(lite), "--output", str(output), "--no-postprocess"])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "1.00e-03" in result.stdout  # the injected difference, printed
    assert not output.exists() and list(tmp_path.iterdir()) == []  # no file, no temp file left


def test_cli_bad_checkpoint_or_flag_exits_2(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    result = runner.invoke(app, ["export", "--weights", str(bad)])
    assert result.exit_code == 2 and "not an ssdcli checkpoint" in result.stderr
    result = runner.invoke(app, ["export", "--weights", str(bad), "--opset", "11"])
    assert result.exit_code == 2 and "--opset 11" in result.stderr


def _load_example():
    spec = importlib.util.spec_from_file_location("onnx_inference", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_runs_on_a_real_image(lite_onnx, shared_data, tmp_path):
    image = shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages" / "000001.jpg"
    drawn = tmp_path / "drawn.jpg"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), str(lite_onnx), str(image), "--output", str(drawn), "--min-score", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all(d["label"] in CLASSES and d["score"] > 0.2 for d in lines)
    original = cv2.imread(str(image))
    assert cv2.imread(str(drawn)).shape == original.shape

    # Its OpenCV pre-processing follows the metadata as ssdcli's own does (to 1-2 grey levels of
    # rounding between cv2 and torchvision bilinear resizing: 2 / 255 / 0.225 ~ 0.035).
    example = _load_example()
    import onnxruntime as ort

    meta = example.read_metadata(ort.InferenceSession(str(lite_onnx), providers=["CPUExecutionProvider"]))
    theirs = torch.from_numpy(example.preprocess(original, meta))
    ours = to_model_input([cv2.cvtColor(original, cv2.COLOR_BGR2RGB)], 320, meta["mean"], meta["std"])
    assert theirs.shape == ours.shape == (1, 3, 320, 320)
    assert (theirs - ours).abs().max() < 0.05


@pytest.mark.parametrize("postprocess_on", [False, True])
def test_detect_pipeline_through_onnx_equals_the_checkpoint_on_real_images(
    lite, lite_onnx, shared_data, tmp_path, postprocess_on
):
    """What `ssd detect --weights model.onnx` runs (image_loader + predict_batches with an
    OnnxDetector) gives the checkpoint's detections (TorchDetector) on real VOC images."""
    from ssdcli.inference import TorchDetector, image_loader, predict_batches

    if postprocess_on:
        path = lite_onnx
    else:
        path = tmp_path / "raw.onnx"
        assert export_checkpoint(lite, path, ExportOptions(postprocess=False, dynamic_batch=True)).passed
    paths = sorted((shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages").glob("*.jpg"))[:4]
    settings = PostprocessSettings(score_threshold=0.2)
    torch_detector = TorchDetector(_network(lite), torch.device("cpu"), settings, class_names=CLASSES)
    onnx_detector = OnnxDetector(path, settings)

    def run(detector):
        loader = image_loader(paths, detector, batch_size=2, workers=0)
        return [(size, d) for b in predict_batches(detector, loader) for size, d in zip(b.sizes, b.detections)]

    expected, got = run(torch_detector), run(onnx_detector)
    assert len(got) == len(expected) == 4 and sum(len(d.scores) for _, d in expected) > 0
    for (size, e), (_, g) in zip(expected, got):
        # Equal scores (one prior, two classes at exactly the same probability) may come in either
        # order: compare in a canonical order, score (to 1e-5) then label.
        e, g = _canonical(e), _canonical(g)
        assert torch.equal(g.labels, e.labels)
        assert torch.allclose(g.boxes_xyxy, e.boxes_xyxy, atol=1e-3 * max(size))  # 1e-3 normalised
        assert torch.allclose(g.scores, e.scores, atol=1e-4)


def _canonical(detections):
    """Detections sorted by score rounded to 1e-5 (descending), then label."""
    key = torch.round(detections.scores * 1e5).long() * 1000 - detections.labels  # (K,)
    order = torch.argsort(key, descending=True, stable=True)
    return type(detections)(detections.boxes_xyxy[order], detections.scores[order], detections.labels[order])


def test_ssd_detect_cli_with_the_onnx_file_gives_the_checkpoints_detections(lite, lite_onnx, shared_data, tmp_path):
    """`ssd detect --weights model.onnx` through the real app (cli/app.py) equals `--weights CKPT`."""
    from ssdcli.cli.app import app as ssd_app

    images = shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages"
    sources = [str(images / name) for name in ("000001.jpg", "000004.jpg")]
    outputs = {}
    for kind, weights in (("ckpt", lite), ("onnx", lite_onnx)):
        target = tmp_path / f"{kind}.json"
        result = runner.invoke(ssd_app, ["detect", *sources, "--weights", str(weights), "--min-score", "0.2",
                                         "--workers", "0", "--json", str(target)])
        assert result.exit_code == 0, result.output
        outputs[kind] = json.loads(target.read_text())
    assert sum(len(entry["detections"]) for entry in outputs["ckpt"]) > 0
    for expected, got in zip(outputs["ckpt"], outputs["onnx"], strict=True):
        assert [d["label"] for d in got["detections"]] == [d["label"] for d in expected["detections"]]
        for e, g in zip(expected["detections"], got["detections"]):
            assert g["box"] == pytest.approx(e["box"], abs=1e-3 * max(expected["width"], expected["height"]))
            assert g["score"] == pytest.approx(e["score"], abs=1e-4)
