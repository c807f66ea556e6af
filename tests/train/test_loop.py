"""fit: a few steps per arch, validation and best.pt, the NaN guard end to end, learning for real."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from ssdcli.checkpoint import load_checkpoint
from ssdcli.cli.app import app
from ssdcli.config import TrainConfig
from ssdcli.data.synth import make_synthetic_dataset
from ssdcli.train import Callbacks, fit

runner = CliRunner()

MODEL_KEYS = {
    "format", "format_version", "model", "arch", "num_classes", "options", "class_names", "image_size", "mean",
    "std", "priors", "postprocess", "config", "metrics", "category_ids", "ignored_labels", "channel_order", "resize",
    "imported_from",
}
RESUME_KEYS = {"optimizer", "scheduler", "scaler", "rng", "epoch", "iteration", "train_state"}


@pytest.mark.parametrize("arch", ["ssd300", pytest.param("ssd512", marks=pytest.mark.slow), "ssdlite320"])
def test_a_few_steps_of_each_arch_write_a_run_folder(synth, tmp_path, arch, tiny_config, read_metrics):
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


def test_validation_writes_best_and_map(synth, tmp_path, tiny_config, read_metrics):
    config = tiny_config(synth, tmp_path / "run", val_data=str(synth), val_split="val", eval_every=1)
    result = fit(config)
    assert result.best is not None and result.best.exists()
    row = read_metrics(result.output / "metrics.csv")[0]
    assert 0.0 <= float(row["val_map"]) <= 1.0 and float(row["val_loss"]) > 0
    best = load_checkpoint(result.best)
    assert "optimizer" not in best  # best.pt holds the model only
    # the checkpoint layout, key for key (ssdcli.checkpoint's docstring)
    assert set(best) == MODEL_KEYS
    last = load_checkpoint(result.last, for_resume=True)
    assert set(last) == MODEL_KEYS | RESUME_KEYS
    assert last["metrics"]["epochs_done"] == 1
    assert last["metrics"]["val_map"] == pytest.approx(float(row["val_map"]), rel=1e-5)  # the csv keeps 6 digits
    assert set(last["train_state"]) == {"batch_in_epoch", "lr_scale", "best_metric", "best_epoch",
                                        "stale_validations", "epoch_sums", "micro_batch"}
    assert last["train_state"]["micro_batch"] == 2  # ssdlite320 (BatchNorm): its whole batch in one pass
    assert last["train_state"]["best_epoch"] == 1 and last["train_state"]["epoch_sums"] == [0.0] * 6  # next epoch
    # ssdlite320's recipe schedule; the plan of a fresh 2-step run with 2 warm-up steps
    assert last["scheduler"] == {"kind": "cosine", "iteration": 2, "lr_scale": 1.0, "plan": {
        "total_iters": 2, "start_iter": 0, "start_progress": 0.0, "warmup_start": 0, "warmup_iters": 2,
        "passed_milestones": 0, "milestone_iters": [1, 2]}}
    # every part of the epoch is timed, and the parts add up
    seconds = [float(row[c]) for c in ("seconds", "bn_seconds", "val_seconds", "save_seconds")]
    assert all(s > 0 for s in seconds) and float(row["epoch_seconds"]) == pytest.approx(sum(seconds), rel=1e-4)
    assert (result.output / "curves.png").stat().st_size > 0


class Warnings(Callbacks):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_warning(self, message):
        self.messages.append(message)


def test_non_finite_loss_skips_steps_rolls_back_and_lowers_lr(synth, tmp_path, monkeypatch, tiny_config, read_metrics):
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


def test_a_training_curves_failure_is_a_warning_not_a_failure(synth, tmp_path, tiny_config, monkeypatch):
    import ssdcli.plotting

    def broken(path, output=None):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(ssdcli.plotting, "write_training_curves", broken)
    warnings = Warnings()
    result = fit(tiny_config(synth, tmp_path / "run", limit_batches=1), warnings)
    assert warnings.messages == ["curves.png not drawn: RuntimeError: no fonts"]
    assert result.last.exists() and not (result.output / "curves.png").exists()


def test_fit_needs_a_config_or_a_checkpoint():
    with pytest.raises(ValueError, match="needs a config or a checkpoint"):
        fit(None)


@pytest.mark.slow
def test_overfitting_four_images_drives_the_loss_down_and_finds_their_boxes(tmp_path, tiny_config, read_metrics):
    from ssdcli.boxes import box_iou_xyxy, xywh_to_xyxy
    from ssdcli.data.reader import load_dataset
    from ssdcli.evaluation import evaluate
    from ssdcli.inference import predict_dataset
    from ssdcli.models import model_from_checkpoint

    data = tmp_path / "four"
    make_synthetic_dataset(data, num_images=5, seed=11)  # 4 train images, 1 val
    config = tiny_config(
        data, tmp_path / "run", epochs=60, batch_size=4, limit_batches=0, lr=0.05, warmup_iters=10,
        augment="none", schedule="multistep", milestones=(1.0, 1.0), seed=0,
    )
    result = fit(config)
    losses = [float(r["train_loss"]) for r in read_metrics(result.output / "metrics.csv")]
    assert losses[0] > 5.0 and min(losses[-5:]) < 0.3, losses  # from ~17 to close to zero

    model = model_from_checkpoint(load_checkpoint(result.last))
    train = load_dataset(data, split="train")
    detections = predict_dataset(model, train, torch.device("cpu"), workers=0)
    # every object is found: a detection of its class with IoU >= 0.5 at detect's default --min-score 0.3
    for record in train.records:
        mine = [d for d in detections if d["image_id"] == record.image_id and d["score"] >= 0.3]
        boxes = xywh_to_xyxy(torch.tensor([d["bbox"] for d in mine]).reshape(-1, 4))
        labels = torch.tensor([d["category_id"] for d in mine])
        iou = box_iou_xyxy(torch.from_numpy(record.boxes_xyxy_px), boxes)  # (G, D)
        for g, label in enumerate(record.labels.tolist()):
            assert ((iou[g] >= 0.5) & (labels == label)).any(), f"{record.image_id}: object {g} not found"
    assert evaluate(train, detections, metrics=("voc07",)).voc07_map > 0.6


def test_eval_scores_a_model_from_a_tiny_training_run_end_to_end(synth, tmp_path, tiny_config):
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
