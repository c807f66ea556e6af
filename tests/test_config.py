"""TrainConfig: its checks, their messages (naming flags that exist), and the one list per choice."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from ssdcli.cli import train as train_cli
from ssdcli.cli.app import app
from ssdcli.cli.common import Device
from ssdcli.config import ARCH_NAMES, AUGMENTATIONS, DEVICES, SCHEDULES, TrainConfig
from ssdcli.errors import UserError

BAD_VALUES = {
    "arch": "yolo",
    "epochs": 0,
    "batch_size": 0,
    "lr": 0.0,
    "momentum": 1.0,
    "weight_decay": -1e-4,
    "warmup_iters": -1,
    "schedule": "linear",
    "augment": "heavy",
    "device": "tpu",
    "workers": -1,
    "eval_every": -1,
    "save_every": -1,
    "limit_batches": -1,
    "neg_pos_ratio": 0.0,
    "iou_threshold": 1.0,
    "max_bad_steps": 0,
    "milestones": (0.0, 0.5),
    "prior_scales": (0.5, 0.2),
    "patience": -1,
}


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


def test_an_unknown_arch_is_one_line_naming_the_flag_and_the_choices():
    with pytest.raises(UserError) as info:
        TrainConfig(data="x", epochs=1, arch="yolo")
    assert str(info.value) == "--arch must be one of ssd300, ssd512, ssdlite320, not 'yolo'"


def _train_flags() -> dict[str, str]:
    """Option name of every `ssd train` flag -> the flag, from the real Typer command."""
    command = typer.main.get_command(app).commands["train"]
    return {param.name: param.opts[0] for param in command.params if param.opts[0].startswith("--")}


@pytest.mark.parametrize("field", sorted(BAD_VALUES))
def test_every_message_names_a_real_flag_or_the_setting(field):
    flags = _train_flags()
    with pytest.raises(UserError) as info:
        TrainConfig(**{"data": "x", "epochs": 1, field: BAD_VALUES[field]})
    message = str(info.value)
    named = re.findall(r"--[a-z][a-z-]*", message)
    assert set(named) <= set(flags.values()), f"{message!r} names a flag `ssd train` does not have"
    if field in flags:
        assert named and named[0] == flags[field], message  # the flag of this very setting
    else:
        assert not named and message.startswith(field), message  # no flag: its field name


def test_cli_choices_come_from_the_config_lists():
    import ssdcli.models

    assert [a.value for a in train_cli.Arch] == list(ARCH_NAMES) == list(ssdcli.models.ARCHS)
    assert [s.value for s in train_cli.Schedule] == list(SCHEDULES)
    assert [a.value for a in train_cli.Augment] == list(AUGMENTATIONS)
    assert [d.value for d in Device] == list(DEVICES)
    from ssdcli.cli import priors as priors_cli
    from ssdcli.config import PRESET_NAMES
    from ssdcli.priors import PRESETS

    assert [a.value for a in priors_cli.Arch] == list(PRESET_NAMES) == list(PRESETS)


def test_to_dict_and_from_dict_are_inverse():
    config = TrainConfig(data="voc", epochs=3, milestones=(0.5, 0.75), prior_scales=(0.1, 0.9), arch="ssd512")
    plain = config.to_dict()
    assert plain["milestones"] == [0.5, 0.75] and plain["prior_scales"] == [0.1, 0.9]
    assert TrainConfig.from_dict(plain) == config
    with pytest.raises(UserError, match=r"unknown training settings \['future'\]"):
        TrainConfig.from_dict({**plain, "future": 1})


# --- per-arch recipes (ssdcli.config.RECIPES): the defaults, resolved into the config


def test_each_arch_gets_its_recipe_and_flags_given_override_it():
    lite = TrainConfig(data="x", epochs=1, arch="ssdlite320")
    # README "Measured accuracy": batch 16, lr 0.05, 50 warm-up iterations, cosine, from scratch
    assert (lite.batch_size, lite.lr, lite.warmup_iters, lite.schedule, lite.weight_decay, lite.backbone_weights) == (
        16, 0.05, 50, "cosine", 5e-4, "none")
    paper = TrainConfig(data="x", epochs=1, arch="ssd512")
    # SSD sec. 3.1: 1e-3 at batch 32, decay 5e-4, step decay; ImageNet VGG16 (None = torchvision's)
    assert (paper.batch_size, paper.lr, paper.warmup_iters, paper.schedule, paper.weight_decay,
            paper.backbone_weights) == (32, 1e-3, 500, "multistep", 5e-4, None)
    # the learning rate scales with the batch size given (0.05 x 8 / 16), unless it is given too
    assert TrainConfig(data="x", epochs=1, arch="ssdlite320", batch_size=8).lr == pytest.approx(0.025)
    assert TrainConfig(data="x", epochs=1, arch="ssd300", batch_size=8).lr == pytest.approx(2.5e-4)
    given = TrainConfig(data="x", epochs=1, arch="ssdlite320", lr=0.01, schedule="multistep", warmup_iters=0,
                        weight_decay=4e-5, backbone_weights="w.pth")
    assert (given.lr, given.schedule, given.warmup_iters, given.weight_decay, given.backbone_weights) == (
        0.01, "multistep", 0, 4e-5, "w.pth")
    # config.json holds the resolved values, and reads back to the same config
    plain = lite.to_dict()
    assert plain["lr"] == 0.05 and plain["batch_size"] == 16 and plain["schedule"] == "cosine"
    assert TrainConfig.from_dict(plain) == lite


def test_a_config_json_from_before_the_recipes_keeps_its_learning_rate():
    old = TrainConfig(data="x", epochs=1, arch="ssdlite320", batch_size=8).to_dict()
    old.update(lr=None, weight_decay=5e-4, warmup_iters=500, schedule="multistep")
    # lr null meant 1e-3 x batch / 32 then: a resumed run must not jump to the new recipe's rate
    assert TrainConfig.from_dict(old).lr == pytest.approx(2.5e-4)


def test_help_names_each_arch_default():
    from ssdcli.config import recipe_default_text

    assert recipe_default_text("lr") == "0.001 x batch-size/32 for ssd300/ssd512, 0.05 x batch-size/16 for ssdlite320"
    assert recipe_default_text("batch_size") == "32 for ssd300/ssd512, 16 for ssdlite320"
    assert recipe_default_text("weight_decay") == "0.0005 for every arch"
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    assert "Base learning rate (default: 0.001 x batch-size/32 for ssd300/ssd512, 0.05 x batch-size/16 for " \
           "ssdlite320)." in flat
    assert "cosine for ssdlite320" in flat and "none for ssdlite320" in flat


def test_patience_needs_validation_and_priors_exclude_prior_scales():
    with pytest.raises(UserError, match="--patience counts validations"):
        TrainConfig(data="x", epochs=1, patience=3)
    with pytest.raises(UserError, match="--patience counts validations"):
        TrainConfig(data="x", epochs=1, patience=3, val_data="v", eval_every=0)
    assert TrainConfig(data="x", epochs=1, patience=3, val_data="v").patience == 3
    with pytest.raises(UserError, match="--priors and --prior-scales"):
        TrainConfig(data="x", epochs=1, prior_spec={"layers": []}, prior_scales=(0.1, 0.9))
