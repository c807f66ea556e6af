"""TrainConfig: its checks, their messages (naming flags that exist), and the one list per choice."""

from __future__ import annotations

import re

import pytest
import typer

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


def test_to_dict_and_from_dict_are_inverse():
    config = TrainConfig(data="voc", epochs=3, milestones=(0.5, 0.75), prior_scales=(0.1, 0.9), arch="ssd512")
    plain = config.to_dict()
    assert plain["milestones"] == [0.5, 0.75] and plain["prior_scales"] == [0.1, 0.9]
    assert TrainConfig.from_dict(plain) == config
    with pytest.raises(UserError, match=r"unknown training settings \['future'\]"):
        TrainConfig.from_dict({**plain, "future": 1})
