"""`ssd train`: flags reach the run, --resume refuses other settings, user errors are one line."""

from __future__ import annotations

import json
import os
import pickle
import re

import pytest
from typer.testing import CliRunner

from ssdcli.checkpoint import load_checkpoint
from ssdcli.cli.app import app
from ssdcli.data.synth import make_synthetic_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    make_synthetic_dataset(root, num_images=12, seed=3)
    return root


@pytest.mark.slow
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
    refused = runner.invoke(app, ["train", "--resume", str(out / "last.pt"), "--lr", "0.1"])
    assert refused.exit_code == 2 and "--lr" in refused.output
    # a finished run resumes to nothing more and says so in one line
    again = runner.invoke(app, ["train", "--resume", str(out / "last.pt"), "--workers", "0"])
    assert again.exit_code == 0, again.output
    assert "is finished" in again.stdout and "summary" not in again.stdout


@pytest.mark.slow
def test_without_a_terminal_progress_is_whole_lines(synth, tmp_path):
    """stderr to a pipe (nohup, CI, Slurm): plain lines, never cut at 80 columns, no escapes."""
    import subprocess
    import sys

    out = tmp_path / "run"
    process = subprocess.run(
        [sys.executable, "-m", "ssdcli", "train", "--data", str(synth), "--split", "train", "--val-data", str(synth),
         "--val-split", "val", "--arch", "ssdlite320", "--batch-size", "2", "--workers", "0", "--device", "cpu",
         "--epochs", "2", "--limit-batches", "3", "--output", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "80"},
    )
    assert process.returncode == 0, process.stderr
    lines = process.stderr.splitlines()
    # --priors auto (ssdlite320's default): the synthetic shapes are not the preset's, so they are fitted
    assert re.fullmatch(r"default boxes: fitted to the training data, covering [\d.]+% of the \d+ training boxes at "
                        r"IoU >= 0.5 \(the ssdlite320 preset: [\d.]+%\); kept in config.json and the checkpoints; "
                        r"--priors preset keeps the preset", lines[0]), lines[0]
    assert lines[1].startswith("training 4 classes on 10 images (validating on 2)")
    progress = [line for line in lines if re.match(r"epoch \d/2 +\d+% ", line)]
    assert len(progress) == 6  # 3 batches an epoch: each passes another 10 %
    for line in progress:
        assert re.fullmatch(r"epoch \d/2 +\d+% \(batch \d/3\): loss [\d.]+ \(loc [\d.]+, conf [\d.]+\), "
                            r"lr [\d.e+-]+, [\d.]+ img/s, epoch eta \d+:\d\d:\d\d, run eta \d+:\d\d:\d\d", line), line
    done = [line for line in lines if " done: " in line]
    assert len(done) == 2 and all(len(line) > 80 and "VOC07 mAP" in line and "validation" in line for line in done)
    assert "run eta" in done[0]
    assert not any("\x1b" in line or "…" in line for line in lines)
    # the defaults that were not given are ssdlite320's recipe, resolved in config.json
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["schedule"], config["warmup_iters"], config["backbone_weights"], config["fit_priors"]) == (
        0.05 * 2 / 16, "cosine", 50, "none", True)
    assert config["prior_spec"]["name"] == "ssdlite320-fit"
    assert (out / "curves.png").stat().st_size > 0


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
    import torch

    import ssdcli.downloads as downloads

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(downloads, "download_file", offline)
    result = runner.invoke(app, ["train", "--data", str(synth), "--epochs", "1", "--arch", "ssd300",
                                 "--device", "cpu", "--output", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "--backbone-weights" in result.stderr and "offline" in result.stderr


def test_cli_unknown_arch_is_refused_with_the_choices(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--epochs", "1", "--arch", "yolo"])
    assert result.exit_code == 2
    assert "--arch" in result.output and "ssdlite320" in result.output and "Traceback" not in result.output


def _spec_file(path):
    """An ssdlite320 spec with 4 boxes per location (ratio 2 only) instead of the preset's 6."""
    import dataclasses

    from ssdcli.prior_file import save_prior_spec
    from ssdcli.priors import preset_spec

    preset = preset_spec("ssdlite320")
    spec = dataclasses.replace(preset, layers=tuple(dataclasses.replace(layer, aspect_ratios=(2.0,))
                                                    for layer in preset.layers))
    save_prior_spec(path, spec, "ssdlite320", budget=None)
    return spec


@pytest.mark.slow
def test_priors_spec_trains_and_eval_and_detect_use_it(synth, tmp_path):
    from ssdcli.models import model_from_checkpoint
    from ssdcli.train.setup import build_run
    from ssdcli.config import TrainConfig
    from ssdcli.train import Callbacks

    spec = _spec_file(tmp_path / "spec.json")
    out = tmp_path / "run"
    args = ["train", "--data", str(synth), "--split", "train", "--epochs", "1", "--arch", "ssdlite320",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--eval-every", "0", "--limit-batches", "1",
            "--output", str(out)]
    both = runner.invoke(app, [*args, "--priors", str(tmp_path / "spec.json"), "--prior-scales", "0.1", "0.9"])
    assert both.exit_code == 2 and "--priors and --prior-scales" in both.stderr
    other = runner.invoke(app, [*args, "--arch", "ssd300", "--priors", str(tmp_path / "spec.json")])
    assert other.exit_code == 2 and "spec.json" in other.stderr and "ssdlite320" in other.stderr
    result = runner.invoke(app, [*args, "--priors", str(tmp_path / "spec.json")])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["prior_spec"] == spec.to_dict() and config["prior_scales"] is None
    checkpoint = load_checkpoint(out / "last.pt")
    model = model_from_checkpoint(checkpoint)
    assert model.prior_spec == spec and model.prior_spec.boxes_per_location == (4,) * 6  # the heads follow it
    # eval and detect rebuild the spec's network (a preset head could not take these weights)
    scored = runner.invoke(app, ["eval", "--weights", str(out / "last.pt"), "--data", str(synth), "--split", "val",
                                 "--device", "cpu", "--workers", "0", "--json", str(tmp_path / "m.json")])
    assert scored.exit_code == 0, scored.output
    image = next((synth / "JPEGImages").glob("*.jpg"))
    found = runner.invoke(app, ["detect", str(image), "--weights", str(out / "last.pt"), "--device", "cpu",
                                "--min-score", "0.0", "--json", str(tmp_path / "d.json")])
    assert found.exit_code == 0, found.output
    from ssdcli.inference import load_detector

    assert load_detector(out / "last.pt", device="cpu").model.prior_spec == spec
    # the run repeats from config.json alone, without the spec file
    (tmp_path / "spec.json").unlink()
    again = TrainConfig.from_dict({**config, "output": str(tmp_path / "again")})
    assert build_run(again, Callbacks()).model.prior_spec == spec
