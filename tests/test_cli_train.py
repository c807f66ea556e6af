"""`ssd train`: flags reach the run, --resume refuses other settings, user errors are one line."""

from __future__ import annotations

import json
import pickle

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


def test_cli_unknown_arch_is_refused_with_the_choices(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--epochs", "1", "--arch", "yolo"])
    assert result.exit_code == 2
    assert "--arch" in result.output and "ssdlite320" in result.output and "Traceback" not in result.output
