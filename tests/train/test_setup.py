"""build_run: the arch table decides the ImageNet weights, the loader's epoch length, the
optimizer's decay groups, and what a resumed run refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssdcli.errors import UserError
from ssdcli.train import Callbacks
from ssdcli.train.checkpoints import save_last
from ssdcli.train.setup import build_run, parameter_groups, run_build_options


def test_weight_decay_skips_biases_and_scales():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3, 3, 3]), torch.Size([2, 4])]
    # conv bias, BatchNorm weight and bias, linear bias
    assert [p.shape for p in no_decay["params"]] == [torch.Size([4])] * 3 + [torch.Size([2])]


def test_backbone_weights_are_asked_of_archs_that_have_them(synth, tmp_path, tiny_config):
    missing = str(tmp_path / "vgg16.pth")
    # ssd300 takes ImageNet VGG16 weights: the file is looked for, and its absence is a user error
    with pytest.raises(UserError, match=r"--backbone-weights .*vgg16.pth: no such file"):
        build_run(tiny_config(synth, tmp_path / "a", arch="ssd300", backbone_weights=missing), Callbacks())
    # ssdlite320 takes ImageNet MobileNetV3-Large, built with the full tail those weights have
    with pytest.raises(UserError, match=r"--backbone-weights .*vgg16.pth: no such file"):
        build_run(tiny_config(synth, tmp_path / "b", backbone_weights=missing), Callbacks())
    config = tiny_config(synth, tmp_path / "c", backbone_weights=missing)
    assert run_build_options(config) == {"reduced_tail": 0.0}
    assert run_build_options(config.replace(backbone_weights="none")) == {}
    run = build_run(config.replace(backbone_weights="none"), Callbacks())
    assert run.model.arch == "ssdlite320" and run.model.backbone.reduced_tail


@pytest.mark.parametrize(
    ("batch_size", "limit", "expected"),
    # 10 training images: 10 // 2; 10 // 3 (the last, short batch dropped); one short batch; the limit
    [(2, 0, 5), (3, 0, 3), (16, 0, 1), (2, 3, 3)],
)
def test_batches_per_epoch(synth, tmp_path, tiny_config, batch_size, limit, expected):
    run = build_run(tiny_config(synth, tmp_path / "run", batch_size=batch_size, limit_batches=limit), Callbacks())
    assert len(run.train_data.records) == 10
    assert run.batches_per_epoch == expected and run.total_iters == expected
    assert run.lr_at(0) == pytest.approx(run.config.effective_lr / 3)  # warm-up starts at a third


def test_resume_refuses_data_whose_classes_changed(synth, tmp_path, tiny_config):
    run = build_run(tiny_config(synth, tmp_path / "run"), Callbacks())
    save_last(run, {})  # a last.pt before the first step
    classes = tmp_path / "classes.txt"
    classes.write_text("circle\nsquare\nstar\ntriangle\nhexagon\n")
    with pytest.raises(UserError, match="its classes differ from those of"):
        # the run's own config, pointed at a class list that is not the checkpoint's
        build_run(None, Callbacks(), resume=run.last_path, overrides={"classes_file": str(classes)})


def test_a_run_folder_taken_after_its_name_was_chosen_is_not_shared(synth, tmp_path, tiny_config, monkeypatch):
    import ssdcli.train.setup as setup

    base = tmp_path / "runs" / "train"
    real = setup.next_run_dir

    def racing(candidate):
        chosen = real(candidate)
        base.mkdir(parents=True)  # a second `ssd train` with the same --output starts meanwhile
        (base / "config.json").write_text("theirs")
        return chosen

    monkeypatch.setattr(setup, "next_run_dir", racing)
    run = build_run(tiny_config(synth, base), Callbacks())
    assert run.output == tmp_path / "runs" / "train2" and run.metrics_log.path.parent == run.output
    assert (base / "config.json").read_text() == "theirs"  # the other run's files are left alone
    assert (run.output / "config.json").is_file()


def _broken_copy(source, target, change):
    """A copy of checkpoint ``source`` at ``target`` with ``change(checkpoint)`` applied."""
    from ssdcli.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source, for_resume=True)
    change(checkpoint)
    save_checkpoint(target, checkpoint)
    return target


@pytest.mark.slow
def test_resume_of_a_checkpoint_that_does_not_fit_is_one_line_naming_it(synth, tmp_path, tiny_config):
    from typer.testing import CliRunner

    from ssdcli.cli.app import app
    from ssdcli.errors import CheckpointError

    run = build_run(tiny_config(synth, tmp_path / "run"), Callbacks())
    save_last(run, {})
    name = next(k for k, v in run.model.state_dict().items() if v.ndim == 4)

    def wrong_shape(checkpoint):
        checkpoint["model"][name] = torch.zeros(3, 3, 3, 3)

    def bad_config(checkpoint):
        del checkpoint["config"]["epochs"]

    def bad_momentum(checkpoint):
        first = next(iter(checkpoint["optimizer"]["state"]), None)
        checkpoint["optimizer"]["state"][0 if first is None else first] = {"momentum_buffer": torch.zeros(2)}

    cases = {"shape.pt": (wrong_shape, f"its weights do not fit the ssdlite320 network .*size mismatch for {name}"),
             "config.pt": (bad_config, "its training settings are not usable"),
             "momentum.pt": (bad_momentum, "its optimizer state does not fit the network")}
    for file_name, (change, message) in cases.items():
        broken = _broken_copy(run.last_path, tmp_path / "run" / file_name, change)
        with pytest.raises(CheckpointError, match=message) as info:
            build_run(None, Callbacks(), resume=broken)
        assert str(info.value).startswith(str(broken)) and "\n" not in str(info.value)
        result = CliRunner().invoke(app, ["train", "--resume", str(broken)])
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and file_name in result.stderr and "Traceback" not in result.output
