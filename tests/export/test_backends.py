"""ssdcli.backends and load_detector's runtime choice: which combinations run, the messages of
those that do not, ``auto``'s decision and its cache, missing optional packages."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

from ssdcli import backends
from ssdcli.backends import RuntimeOptions, check_combination, resolve_precision
from ssdcli.errors import UserError
from ssdcli.export.cache import file_sha256
from ssdcli.export.openvino import MISSING_OPENVINO
from ssdcli.inference import TorchDetector, load_detector

CPU = torch.device("cpu")


def test_unknown_backend_or_precision_is_refused():
    with pytest.raises(UserError, match="--backend tensorrt: choose one of auto, torch, onnxruntime, openvino"):
        RuntimeOptions(backend="tensorrt")
    with pytest.raises(UserError, match="--precision int4: choose one of fp32, fp16, bf16, int8"):
        RuntimeOptions(precision="int4")


@pytest.mark.parametrize(
    ("backend", "precision", "device", "message"),
    [
        ("torch", "int8", "cpu", "--backend torch does not run at int8 here; use --backend openvino"),
        ("onnxruntime", "bf16", "cpu", "--backend onnxruntime does not run at bf16 here; use --backend torch or openvino"),
        ("auto", "fp16", "cpu", "--precision fp16 is for CUDA"),
        ("openvino", "fp32", "cuda", "--backend openvino runs on the CPU"),
        ("auto", "int8", "cuda", "--precision int8 runs on the CPU"),
    ],
)
def test_impossible_combinations_name_what_would_work(backend, precision, device, message):
    # torch.device("cuda") is only a name here: no GPU is touched
    with pytest.raises(UserError, match=message):
        check_combination(backend, precision, torch.device(device))


def test_possible_combinations_pass():
    for precision, able in backends.CPU_SUPPORT.items():
        for backend in ("auto", *able):
            check_combination(backend, precision, CPU)


def test_default_precision_is_fp32_on_the_cpu_and_fp16_on_cuda_said_once():
    notes = []
    assert resolve_precision(None, CPU, notes.append) == "fp32" and notes == []
    assert resolve_precision("bf16", torch.device("cuda"), notes.append) == "bf16" and notes == []
    assert resolve_precision(None, torch.device("cuda"), notes.append) == "fp16"
    assert notes == [backends.CUDA_DEFAULT_NOTE]


def test_without_runtime_options_a_checkpoint_runs_on_torch_fp32(lite):
    detector = load_detector(lite, "cpu")
    assert isinstance(detector, TorchDetector) and detector.precision == "fp32" and not detector.amp


def test_missing_openvino_is_one_line_saying_how_to_install(lite, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(UserError) as caught:
        load_detector(lite, "cpu", runtime=RuntimeOptions(backend="openvino"))
    assert str(caught.value) == MISSING_OPENVINO and "pip install 'ssdcli[openvino]'" in MISSING_OPENVINO
    with pytest.raises(UserError, match="pip install 'ssdcli\\[openvino\\]'"):
        load_detector(lite.with_suffix(".xml"), "cpu")


def test_missing_onnxruntime_names_the_export_extra(lite, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(UserError, match=r"--backend onnxruntime needs onnxruntime; install the extra with: "
                                        r"pip install 'ssdcli\[export\]'"):
        load_detector(lite, "cpu", runtime=RuntimeOptions(backend="onnxruntime"))
    assert not backends.installed("onnxruntime") and backends.installed("torch")  # auto leaves it out


def test_missing_nncf_is_one_line_for_int8(lite, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(UserError, match="int8 quantization needs NNCF; install the OpenVINO extra"):
        load_detector(lite, "cpu", runtime=RuntimeOptions("openvino", "int8", calibration_data=tmp_path))


def test_int8_without_calibration_data_says_what_to_give(lite):
    pytest.importorskip("openvino")
    with pytest.raises(UserError, match="--precision int8 needs --calibration-data DIR"):
        load_detector(lite, "cpu", runtime=RuntimeOptions("openvino", "int8"))


class Recorder:
    """Stands in for the builder: records which backends were built, builds fake detectors."""

    def __init__(self, failing=()):
        self.built = []
        self.failing = set(failing)

    def __call__(self, builder, backend):
        self.built.append(backend)
        if backend in self.failing:
            raise RuntimeError(f"{backend} broke\nsecond line")
        return backend  # a stand-in detector: its name


def test_auto_times_the_candidates_once_and_reuses_the_decision(lite, tmp_path, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(backends._Builder, "__call__", lambda self, backend: recorder(self, backend))
    monkeypatch.setattr(backends, "installed", lambda backend: True)
    monkeypatch.setattr(backends, "probe", lambda detectors, batch: {"torch": 30.0, "onnxruntime": 10.0, "openvino": 20.0})
    notes = []
    options = RuntimeOptions(backend="auto", cache_dir=tmp_path)
    assert backends.checkpoint_detector(lite, CPU, None, options, notes.append) == "onnxruntime"
    assert recorder.built == ["torch", "onnxruntime", "openvino"]
    assert len(notes) == 1 and "torch 30.0, onnxruntime 10.0, openvino 20.0 ms per image here; using onnxruntime" in notes[0]
    [choice] = (tmp_path / "choices").iterdir()
    assert choice.name.startswith(file_sha256(lite)[:16] + "-fp32-b1-")
    assert json.loads(choice.read_text())["backend"] == "onnxruntime"

    def no_probe(detectors, batch):
        raise AssertionError("the cached decision must be used")

    monkeypatch.setattr(backends, "probe", no_probe)
    recorder.built.clear()
    notes.clear()
    assert backends.checkpoint_detector(lite, CPU, None, options, notes.append) == "onnxruntime"
    assert recorder.built == ["onnxruntime"] and notes == []  # only the chosen one is built, silently


def test_auto_decides_per_batch_size(lite, tmp_path, monkeypatch):
    """The fastest backend at one image is not always the fastest at eight (SSD300 on an AMD EPYC:
    onnxruntime at batch 1, OpenVINO at batch 8), so a decision holds for its batch size only."""
    recorder = Recorder()
    monkeypatch.setattr(backends._Builder, "__call__", lambda self, backend: recorder(self, backend))
    monkeypatch.setattr(backends, "installed", lambda backend: True)
    by_batch = {1: {"torch": 30.0, "onnxruntime": 10.0, "openvino": 20.0},
                8: {"torch": 240.0, "onnxruntime": 160.0, "openvino": 120.0}}
    probed = []
    monkeypatch.setattr(backends, "probe", lambda detectors, batch: probed.append(batch) or by_batch[batch])
    notes = []
    one = backends.checkpoint_detector(lite, CPU, None, RuntimeOptions(cache_dir=tmp_path), notes.append)
    eight = backends.checkpoint_detector(lite, CPU, None, RuntimeOptions(cache_dir=tmp_path, batch_size=8), notes.append)
    assert (one, eight, probed) == ("onnxruntime", "openvino", [1, 8])
    assert "ms per batch of 8 here; using openvino" in notes[-1]
    assert sorted(p.name.split("-")[2] for p in (tmp_path / "choices").iterdir()) == ["b1", "b8"]
    assert backends.checkpoint_detector(lite, CPU, None, RuntimeOptions(cache_dir=tmp_path, batch_size=8)) == "openvino"
    assert probed == [1, 8]  # cached
    with pytest.raises(UserError, match="--batch-size 0: must be >= 1"):
        RuntimeOptions(batch_size=0)


class FakeDetector:
    """Sleeps ``ms`` per call and records the batch shapes it was given."""

    image_size, mean, std = 32, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]

    def __init__(self, ms):
        self.ms, self.shapes = ms, []

    def predict(self, images, sizes):
        assert len(sizes) == images.shape[0]
        self.shapes.append(tuple(images.shape))
        time.sleep(self.ms / 1000.0)


def test_probe_times_batches_of_the_run_round_robin_after_a_warm_up(monkeypatch):
    monkeypatch.setattr(backends, "PROBE_SECONDS", 0.0)
    slow, fast = FakeDetector(6.0), FakeDetector(1.0)
    times = backends.probe({"slow": slow, "fast": fast}, 4)
    assert slow.shapes == fast.shapes == [(4, 3, 32, 32)] * (backends.PROBE_WARMUP + backends.PROBE_ROUNDS)
    assert times["fast"] < times["slow"] and times["slow"] >= 6.0
    order = []
    slow.predict = lambda images, sizes: order.append("slow")
    fast.predict = lambda images, sizes: order.append("fast")
    backends.probe({"slow": slow, "fast": fast}, 1)
    assert order[2:] == ["slow", "fast", "fast", "slow", "slow", "fast"]  # after the warm-up, rotating
    del slow.predict, fast.predict
    monkeypatch.setattr(backends, "PROBE_SECONDS", 0.05)  # more rounds until the time is spent, within a cap
    monkeypatch.setattr(backends, "PROBE_MAX_ROUNDS", 6)
    slow.shapes.clear()
    backends.probe({"slow": slow}, 1)
    assert len(slow.shapes) == backends.PROBE_WARMUP + 6


class BurstyDetector(FakeDetector):
    """Sleeps ``ms`` per call, plus ``burst_ms`` on the calls numbered in ``bursts`` (foreign load)."""

    def __init__(self, ms, burst_ms=0.0, bursts=()):
        super().__init__(ms)
        self.burst_ms, self.bursts = burst_ms, set(bursts)

    def predict(self, images, sizes):
        extra = self.burst_ms if len(self.shapes) in self.bursts else 0.0
        super().predict(images, sizes)
        time.sleep(extra / 1000.0)


def test_probe_keeps_each_candidates_fastest_call_so_a_burst_of_load_does_not_decide(monkeypatch):
    monkeypatch.setattr(backends, "PROBE_SECONDS", 0.0)
    # the quicker backend had two of its three timed calls (calls 1 and 2, after the warm-up 0) hit
    hit = BurstyDetector(4.0, burst_ms=30.0, bursts={1, 2})
    steady = BurstyDetector(12.0)
    times = backends.probe({"hit": hit, "steady": steady}, 1)
    assert 4.0 <= times["hit"] < 12.0 <= times["steady"]  # a median would have read 34 ms and chosen "steady"


def test_auto_leaves_out_a_backend_that_fails_and_says_why(lite, tmp_path, monkeypatch):
    recorder = Recorder(failing={"openvino"})
    monkeypatch.setattr(backends._Builder, "__call__", lambda self, backend: recorder(self, backend))
    monkeypatch.setattr(backends, "installed", lambda backend: True)
    monkeypatch.setattr(backends, "probe", lambda detectors, batch: {name: 1.0 + i for i, name in enumerate(detectors)})
    notes = []
    chosen = backends.checkpoint_detector(lite, CPU, None, RuntimeOptions(cache_dir=tmp_path), notes.append)
    assert chosen == "torch"  # ties broken in CPU_SUPPORT order: torch first
    assert notes[0] == "--backend auto: openvino left out (openvino broke)"


def test_auto_with_only_torch_installed_builds_torch_without_timing(lite, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "installed", lambda backend: backend == "torch")
    detector = load_detector(lite, "cpu", runtime=RuntimeOptions(backend="auto", cache_dir=tmp_path))
    assert isinstance(detector, TorchDetector) and not (tmp_path / "choices").exists()
    with pytest.raises(UserError, match="--precision int8 runs on OpenVINO here. OpenVINO is not installed"):
        load_detector(lite, "cpu", runtime=RuntimeOptions(backend="auto", precision="int8", cache_dir=tmp_path))


def test_exported_files_run_on_their_own_runtime_only(lite_onnx, tmp_path):
    with pytest.raises(UserError, match=r"--backend torch: .*lite.onnx is an exported model; it runs on onnxruntime"):
        load_detector(lite_onnx, "cpu", runtime=RuntimeOptions(backend="torch"))
    with pytest.raises(UserError, match="--precision bf16: an ONNX model runs at fp32"):
        load_detector(lite_onnx, "cpu", runtime=RuntimeOptions(precision="bf16"))
    with pytest.raises(UserError, match="--device cuda: .* runs on the CPU"):
        load_detector(lite_onnx, "cuda")
    assert load_detector(lite_onnx, "cpu", runtime=RuntimeOptions(backend="auto")).backend == "onnxruntime"


@pytest.mark.slow
def test_bf16_on_the_cpu_runs_the_direct_convolutions_in_bf16(monkeypatch):
    """NNPACK's Winograd path is fp32-only: under bf16 autocast it would silently run fp32."""
    from ssdcli.models import build_model
    from ssdcli.models.winograd import nnpack_ready

    torch.manual_seed(0)
    model = build_model("ssd300", 2).eval()
    calls = []
    real = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: calls.append(1) or real(*a))
    image = torch.randn(1, 3, 300, 300)
    detector = TorchDetector(model, CPU, precision="bf16")
    captured = {}
    hook = model.conf_heads[0].register_forward_hook(lambda m, i, o: captured.update(dtype=o.dtype))
    detector.predict(image, [(300, 300)])
    hook.remove()
    assert calls == [] and captured["dtype"] == torch.bfloat16 and detector.micro_batch is None
    assert model.backbone.vgg[0].weight.is_contiguous(memory_format=torch.channels_last)
    if nnpack_ready():
        from ssdcli.models.winograd import winograd_convolutions

        with winograd_convolutions():
            TorchDetector(model, CPU, precision="fp32").predict(image, [(300, 300)])
        assert calls  # the check above can fail: fp32 asked for Winograd does take that path here


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("precision", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_cuda_autocast_precisions(lite, precision, dtype):
    detector = load_detector(lite, "cuda", runtime=RuntimeOptions(backend="auto", precision=precision))
    captured = {}
    detector.model.conf_heads[0].register_forward_hook(lambda m, i, o: captured.update(dtype=o.dtype))
    detector.predict(torch.randn(2, 3, 320, 320), [(320, 320)] * 2)
    assert detector.precision == precision and captured["dtype"] == dtype


def test_ssdcli_backend_is_only_the_default_of_the_flag(monkeypatch):
    from ssdcli.cli.runtime import BACKEND_ENV, Backend, runtime_options

    monkeypatch.setenv(BACKEND_ENV, "openvino")
    assert (runtime_options(None, None, None).backend, runtime_options(None, None, None).backend_given) == ("openvino", False)
    assert runtime_options(Backend.torch, None, None).backend == "torch" and runtime_options(Backend.torch, None, None).backend_given
    monkeypatch.delenv(BACKEND_ENV)
    assert runtime_options(None, None, None).backend == "auto"
    monkeypatch.setenv(BACKEND_ENV, "tensorrt")
    with pytest.raises(UserError, match=r"^\$SSDCLI_BACKEND: --backend tensorrt: choose one of auto, torch"):
        runtime_options(None, None, None)
