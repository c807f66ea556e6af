"""Training: a few steps per arch, exact resume, NaN guard, safe checkpoints, CLI flags."""

from __future__ import annotations

import csv
import json
import math
import pickle

import pytest
import torch
from typer.testing import CliRunner

from ssdcli.checkpoint import load_checkpoint
from ssdcli.cli.app import app
from ssdcli.config import TrainConfig
from ssdcli.data.synth import make_synthetic_dataset
from ssdcli.engine import Callbacks, TrainingInterrupted, fit
from ssdcli.errors import UserError
from ssdcli.runs import next_run_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    make_synthetic_dataset(root, num_images=12, seed=3)
    return root


def tiny_config(data, output, **changes) -> TrainConfig:
    values = dict(
        data=str(data), split="train", epochs=1, arch="ssdlite320", batch_size=2, workers=0, device="cpu",
        backbone_weights="none", eval_every=0, warmup_iters=2, limit_batches=2, output=str(output), seed=1,
    )
    values.update(changes)
    return TrainConfig(**values)


def read_metrics(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("arch", ["ssd300", "ssd512", "ssdlite320"])
def test_a_few_steps_of_each_arch_write_a_run_folder(synth, tmp_path, arch):
    result = fit(tiny_config(synth, tmp_path / "run", arch=arch, limit_batches=1))
    assert result.output == tmp_path / "run"
    ckpt = load_checkpoint(result.last, for_resume=True)
    assert ckpt["arch"] == arch and ckpt["class_names"] == ["circle", "square", "star", "triangle"]
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 1
    rows = read_metrics(result.output / "metrics.csv")
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    config = json.loads((result.output / "config.json").read_text())
    assert TrainConfig.from_dict(config) == tiny_config(synth, tmp_path / "run", arch=arch, limit_batches=1)
    manifest = json.loads((result.output / "manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["torch"] == torch.__version__
    # weights_only loading works without ssdcli at all
    assert "model" in torch.load(result.last, weights_only=True)


def test_validation_writes_best_and_map(synth, tmp_path):
    config = tiny_config(synth, tmp_path / "run", val_data=str(synth), val_split="val", eval_every=1)
    result = fit(config)
    assert result.best is not None and result.best.exists()
    row = read_metrics(result.output / "metrics.csv")[0]
    assert 0.0 <= float(row["val_map"]) <= 1.0 and float(row["val_loss"]) > 0
    best = load_checkpoint(result.best)
    assert "optimizer" not in best  # best.pt holds the model only


class StopAfter(Callbacks):
    """Simulates Ctrl-C after a given number of batches."""

    def __init__(self, batches: int) -> None:
        self.left = batches

    def on_batch_end(self, epoch, batch, stats):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop_after", [1, 2, 3])  # mid-epoch, at the epoch boundary, mid-epoch 2
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(synth, tmp_path, stop_after):
    straight = fit(tiny_config(synth, tmp_path / "straight", epochs=2))
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(tiny_config(synth, tmp_path / "resumed", epochs=2), StopAfter(stop_after))
    resumed = fit(None, resume=stopped.value.checkpoint)
    assert resumed.output == tmp_path / "resumed"
    a = load_checkpoint(straight.last)["model"]
    b = load_checkpoint(resumed.last)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(read_metrics(resumed.output / "metrics.csv")) == 2
    first = read_metrics(straight.output / "metrics.csv")
    second = read_metrics(resumed.output / "metrics.csv")
    if stop_after != 2:
        return
    # resumed at an epoch boundary, the second epoch's loss is the same number
    assert first[1]["train_loss"] == second[1]["train_loss"]


class Warnings(Callbacks):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_warning(self, message):
        self.messages.append(message)


def test_non_finite_loss_skips_steps_rolls_back_and_lowers_lr(synth, tmp_path, monkeypatch):
    from ssdcli import loss as loss_module

    real_forward = loss_module.MultiBoxLoss.forward
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] <= 3:  # the first three steps blow up
            return out._replace(total=out.total * float("nan"))
        return out

    monkeypatch.setattr(loss_module.MultiBoxLoss, "forward", sometimes_nan)
    warnings = Warnings()
    result = fit(tiny_config(synth, tmp_path / "run", epochs=2, limit_batches=3, max_bad_steps=3), warnings)
    skipped = [m for m in warnings.messages if m.startswith("non-finite loss at")]
    assert len(skipped) == 3 and ".jpg" in skipped[0]  # names the batch's images
    assert any("rolled back" in m for m in warnings.messages)
    ckpt = load_checkpoint(result.last, for_resume=True)
    assert ckpt["train_state"]["lr_scale"] == pytest.approx(0.1)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    rows = read_metrics(result.output / "metrics.csv")
    assert rows[0]["skipped_steps"] == "3" and math.isfinite(float(rows[1]["train_loss"]))


def test_run_folders_never_overwrite(tmp_path):
    base = tmp_path / "train"
    assert next_run_dir(base) == base
    base.mkdir()
    assert next_run_dir(base) == tmp_path / "train2"
    (tmp_path / "train2").mkdir()
    assert next_run_dir(base) == tmp_path / "train3"


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="--epochs"):
        TrainConfig(data="x", epochs=0)
    with pytest.raises(UserError, match="--schedule"):
        TrainConfig(data="x", epochs=1, schedule="linear")
    with pytest.raises(UserError, match="--augment"):
        TrainConfig(data="x", epochs=1, augment="heavy")
    with pytest.raises(UserError, match="--prior-scales"):
        TrainConfig(data="x", epochs=1, prior_scales=(0.5, 0.2))
    assert TrainConfig(data="x", epochs=1, batch_size=8).effective_lr == pytest.approx(2.5e-4)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_trains_and_resume_refuses_other_flags(synth, tmp_path):
    out = tmp_path / "cli"
    args = ["train", "--data", str(synth), "--split", "train", "--epochs", "1", "--arch", "ssdlite320",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--eval-every", "0", "--limit-batches", "1",
            "--output", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "training summary" in result.stdout and (out / "last.pt").exists()
    # --prior-scales reaches the model: its default boxes travel in the checkpoint and config.json
    scaled = runner.invoke(app, [*args[:-1], str(tmp_path / "scaled"), "--prior-scales", "0.1", "0.95"])
    assert scaled.exit_code == 0, scaled.output
    spec = load_checkpoint(tmp_path / "scaled" / "last.pt")["priors"]
    assert [layer["min_size"] for layer in spec["layers"]][:2] == pytest.approx([32.0, 86.4])  # 320 x 0.1, x 0.27
    assert json.loads((tmp_path / "scaled" / "config.json").read_text())["prior_scales"] == [0.1, 0.95]
    refused = runner.invoke(app, ["train", "--resume", str(out / "last.pt"), "--epochs", "5"])
    assert refused.exit_code == 2 and "--epochs" in refused.output
    # a finished run resumes to nothing more and says so through the summary
    again = runner.invoke(app, ["train", "--resume", str(out / "last.pt"), "--workers", "0"])
    assert again.exit_code == 0, again.output


def test_cli_needs_data_and_epochs():
    result = runner.invoke(app, ["train", "--epochs", "1"])
    assert result.exit_code == 2 and "--data" in result.output


def test_cli_missing_dataset_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nope"), "--epochs", "1", "--device", "cpu"])
    assert result.exit_code == 2
    assert "nope" in result.stderr and "Traceback" not in result.output


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as handle:
        pickle.dump({"format": "ssdcli-checkpoint", "payload": Payload(marker)}, handle)
    result = runner.invoke(app, ["train", "--resume", str(evil)])
    assert result.exit_code == 2
    assert not marker.exists()
    assert "evil.pt" in result.stderr


def test_offline_without_backbone_weights_is_a_clear_error(synth, tmp_path, monkeypatch):
    import ssdcli.models.vgg_weights as vgg_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(vgg_weights.torch.hub, "download_url_to_file", offline)
    result = runner.invoke(app, ["train", "--data", str(synth), "--epochs", "1", "--arch", "ssd300",
                                 "--device", "cpu", "--output", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "--backbone-weights" in result.stderr and "offline" in result.stderr


# ---------------------------------------------------------------------------------------------
# Separate processes: SIGKILL mid-epoch, and DistributedDataParallel under torchrun


def _train_args(data, output, *extra):
    return ["train", "--data", str(data), "--split", "train", "--arch", "ssdlite320", "--batch-size", "2",
            "--workers", "0", "--device", "cpu", "--eval-every", "0", "--backbone-weights", "none",
            "--warmup-iters", "2", "--output", str(output), *extra]


def test_sigkill_mid_epoch_leaves_a_loadable_last_pt_that_resumes(synth, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "ssdcli", *_train_args(synth, out, "--epochs", "3", "--limit-batches", "2", "--save-every", "1")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # wait for the first checkpoint, written after iteration 1 of 6 (mid-epoch), then kill hard
        while time.monotonic() < deadline:
            if (out / "last.pt").exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared within 120 s")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(out / "last.pt", for_resume=True)  # loadable, never partial
    result = fit(None, resume=out / "last.pt")
    final = load_checkpoint(result.last, for_resume=True)
    assert final["epoch"] == 3 and final["iteration"] > killed_at["iteration"]
    assert [int(r["epoch"]) for r in read_metrics(out / "metrics.csv")] == [1, 2, 3]


def test_two_processes_with_gloo_train_and_only_rank0_writes(synth, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A session of its own so that, on a hang, torchrun's worker processes die with it.
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ssdcli", *_train_args(synth, out, "--epochs", "1", "--limit-batches", "2")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("torchrun with 2 processes did not finish within 300 s")
    completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt", for_resume=True)
    assert ckpt["iteration"] == 2
    assert len(read_metrics(out / "metrics.csv")) == 1
    # rank 1 wrote nothing of its own: no second run folder next to ours
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    assert completed.stdout.count("training summary") == 1


def test_overfitting_four_images_drives_the_loss_down_and_finds_their_boxes(tmp_path):
    from ssdcli.checkpoint import load_checkpoint
    from ssdcli.data.reader import load_dataset
    from ssdcli.evaluation import evaluate
    from ssdcli.inference import predict_dataset
    from ssdcli.models import model_from_checkpoint

    data = tmp_path / "four"
    make_synthetic_dataset(data, num_images=5, seed=11)  # 4 train images, 1 val
    config = tiny_config(
        data, tmp_path / "run", epochs=60, batch_size=4, limit_batches=0, lr=0.05, warmup_iters=10,
        augment="none", milestones=(1.0, 1.0), seed=0,
    )
    result = fit(config)
    losses = [float(r["train_loss"]) for r in read_metrics(result.output / "metrics.csv")]
    assert losses[0] > 5.0 and min(losses[-5:]) < 0.3, losses  # from ~17 to close to zero

    model = model_from_checkpoint(load_checkpoint(result.last))
    train = load_dataset(data, split="train")
    detections = predict_dataset(model, train, torch.device("cpu"), workers=0)
    # every object is found: a detection of its class with IoU >= 0.5 at detect's default --min-score 0.3
    from ssdcli.boxes import box_iou_xyxy, xywh_to_xyxy

    for record in train.records:
        mine = [d for d in detections if d["image_id"] == record.image_id and d["score"] >= 0.3]
        boxes = xywh_to_xyxy(torch.tensor([d["bbox"] for d in mine]).reshape(-1, 4))
        labels = torch.tensor([d["category_id"] for d in mine])
        iou = box_iou_xyxy(torch.from_numpy(record.boxes_xyxy_px), boxes)  # (G, D)
        for g, label in enumerate(record.labels.tolist()):
            assert ((iou[g] >= 0.5) & (labels == label)).any(), f"{record.image_id}: object {g} not found"
    assert evaluate(train, detections, metrics=("voc07",)).voc07_map > 0.6


def test_eval_scores_a_model_from_a_tiny_training_run_end_to_end(synth, tmp_path):
    result = fit(tiny_config(synth, tmp_path / "run", limit_batches=1))
    target = tmp_path / "metrics.json"
    scored = runner.invoke(app, ["eval", "--weights", str(result.last), "--data", str(synth), "--split", "val",
                                 "--device", "cpu", "--workers", "0", "--json", str(target)])
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(target.read_text())
    assert {"voc07_map", "voc12_map", "coco_ap", "per_class", "num_images", "num_detections"} <= set(metrics)
    val_images = (synth / "ImageSets" / "Main" / "val.txt").read_text().split()
    assert metrics["num_images"] == len(val_images) == 2 and metrics["num_detections"] > 0  # images 5 and 10
    assert set(metrics["per_class"]) <= {"circle", "square", "star", "triangle"}


def test_micro_batches_give_the_loss_and_gradients_of_the_whole_batch():
    """CPU training of a BatchNorm-free network goes image by image (engine.CPU_MICRO_BATCH); the
    slices' losses, divided by the batch's number of positives, must add up to the batch's."""
    from ssdcli.engine import forward_backward
    from ssdcli.loss import MultiBoxLoss
    from ssdcli.matching import assign_targets
    from ssdcli.models import build_model, micro_batch_size, priors_for_model

    torch.manual_seed(0)
    model = build_model("ssd300", num_classes=3)
    images = torch.randn(2, 3, 300, 300)
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.6], [0.6, 0.2, 0.9, 0.5]], [[0.3, 0.3, 0.7, 0.9], [0, 0, 0, 0]]])
    labels = torch.tensor([[1, 3], [2, 0]])  # image 2 has one box (the second row is padding)
    target_labels, target_deltas = assign_targets(boxes, labels, priors_for_model(model), variances=model.prior_spec.variances)
    loss_fn = MultiBoxLoss()

    whole = forward_backward(model, images, target_labels, target_deltas, loss_fn)
    whole_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    sliced = forward_backward(model, images, target_labels, target_deltas, loss_fn, micro_batch=1)
    for a, b in zip(sliced[:3], whole[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert sliced.num_positives == whole.num_positives == (target_labels > 0).sum()
    for p, expected in zip(model.parameters(), whole_grads):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)

    assert micro_batch_size(model, torch.device("cpu")) == 1
    assert micro_batch_size(build_model("ssdlite320", num_classes=3), torch.device("cpu")) is None  # BatchNorm
    assert micro_batch_size(model, torch.device("cuda")) is None  # GPUs take whole batches
