"""Checkpoints: the schema, weights_only round trips, refusal of unsafe or foreign files, atomic
writes under injected failures and SIGKILL. (The RNG states they carry: tests/train/test_rng.py.)"""

from __future__ import annotations

import builtins
import os
import pickle
import shlex
import signal
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssdcli import checkpoint
from ssdcli.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    RESUME_KEYS,
    CheckpointNotFoundError,
    checkpoint_payload,
    load_checkpoint,
    save_checkpoint,
    to_plain,
)
from ssdcli.errors import CheckpointError
from ssdcli.postprocess import PostprocessSettings
from ssdcli.priors import PriorSpec, ssd300_spec
from ssdcli.train.rng import capture_rng_state, restore_rng_state

CLASSES = ["cat", "dog"]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


SETTINGS = {
    "arch": "ssd300",
    "num_classes": len(CLASSES),
    "options": {},
    "prior_spec": ssd300_spec().to_dict(),
    "image_size": 300,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
"""What ssdcli.models.model_settings returns for an SSD300 of two classes."""


def model_payload(model: nn.Module, training: dict | None = None) -> dict:
    """A best.pt (weights only), or with ``training`` a last.pt."""
    return checkpoint_payload(
        model.state_dict(), SETTINGS, CLASSES, postprocess=PostprocessSettings().to_dict(),
        config={"epochs": 3, "lr": 1e-3, "data": "voc/", "val_data": None},
        metrics={"val_loss": 1.5, "voc07_map": 0.25}, training=training,
    )


class Trainer:
    """Model + SGD momentum + warm-up (LambdaLR) then MultiStepLR + AMP GradScaler, as train uses."""

    def __init__(self) -> None:
        self.model = tiny_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        warm_up = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: min(1.0, (it + 1) / 3))
        decay = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=[2, 4], gamma=0.1)
        self.scheduler = torch.optim.lr_scheduler.SequentialLR(self.optimizer, [warm_up, decay], milestones=[3])
        # growth_interval=2 so the scale changes during the test and its tracker must be restored.
        self.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)

    def step(self, seed: int) -> float:
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(2, 3, 8, 8, generator=g)
        loss = self.model(images).square().mean()
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return self.optimizer.param_groups[0]["lr"]

    def payload(self, epoch: int, iteration: int) -> dict:
        return model_payload(self.model, training={
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "iteration": iteration,
            "rng": capture_rng_state(),
            "train_state": {"batch_in_epoch": 0, "lr_scale": 1.0, "best_metric": None},
        })

    def load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])


# ------------------------------------------------------------------------------- round trips


def test_training_state_round_trip_continues_identically(tmp_path):
    run = Trainer()
    for seed in range(3):
        run.step(seed)
    path = tmp_path / "last.pt"
    save_checkpoint(path, run.payload(epoch=1, iteration=3))

    # Independently of load_checkpoint: torch's own weights_only loader reads every part.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert isinstance(raw["model"], OrderedDict) and "1.running_var" in raw["model"]

    ckpt = load_checkpoint(path, for_resume=True)
    assert ckpt["optimizer"]["state"][0]["momentum_buffer"].abs().sum() > 0  # a step was taken
    assert ckpt["scaler"]["_growth_tracker"] == 1  # 3 finite steps, growth every 2: 1 since growth
    assert ckpt["scaler"]["scale"] == 2048.0  # 1024 doubled once
    assert ckpt["class_names"] == CLASSES and ckpt["epoch"] == 1 and ckpt["iteration"] == 3
    assert PriorSpec.from_dict(ckpt["priors"]) == ssd300_spec()
    assert ckpt["metrics"] == {"val_loss": 1.5, "voc07_map": 0.25}

    resumed = Trainer()
    resumed.step(99)  # different state before loading: everything must come from the checkpoint
    resumed.load(ckpt)
    assert resumed.scaler.get_scale() == run.scaler.get_scale()
    # Warm-up ends at iteration 3, then MultiStepLR decays at its steps 2 and 4: the lr sequence and
    # the weights (momentum buffers included) must continue exactly as in the uninterrupted run.
    for seed in range(3, 8):
        assert resumed.step(seed) == run.step(seed)
    for a, b in zip(run.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 * 0.1)


def test_the_schema_has_exactly_the_documented_keys():
    model = tiny_model()
    best = model_payload(model)
    assert list(best) == [
        "model", "arch", "num_classes", "options", "class_names", "category_ids", "ignored_labels", "image_size",
        "channel_order", "mean", "std", "resize", "priors", "postprocess", "imported_from", "config", "metrics",
    ]
    assert FORMAT_VERSION == 2
    assert (best["category_ids"], best["ignored_labels"], best["channel_order"], best["resize"]) == (None, [], "rgb", "uint8")
    assert best["imported_from"] is None and best["postprocess"]["rule"] == "caffe"
    # each key of the layout in the module docstring, and only those
    documented = checkpoint.__doc__.split("Layout")[1].split("Keys marked")[0]
    for key in [*best, "format", "format_version", *RESUME_KEYS]:
        assert f"\n    {key} " in documented or f", {key}" in documented or f"\n    {key}," in documented, key
    assert best["priors"] == SETTINGS["prior_spec"] and best["postprocess"] == PostprocessSettings().to_dict()
    # the weights are a detached CPU copy of the state dict, in its order
    assert list(best["model"]) == list(model.state_dict()) and not best["model"]["0.weight"].requires_grad
    training = Trainer().payload(epoch=2, iteration=7)
    assert set(training) - set(best) == set(RESUME_KEYS) == {
        "optimizer", "scheduler", "scaler", "rng", "epoch", "iteration", "train_state"
    }
    assert (training["epoch"], training["iteration"]) == (2, 7)


def test_the_schema_refuses_an_incomplete_training_state():
    training = {key: {} for key in RESUME_KEYS if key != "rng"}
    with pytest.raises(ValueError, match=r"missing \['rng'\], unknown \[\]"):
        model_payload(tiny_model(), training=training)
    with pytest.raises(ValueError, match=r"unknown \['lr'\]"):
        model_payload(tiny_model(), training={**training, "rng": {}, "lr": 0.1})
    with pytest.raises(KeyError, match="prior_spec"):
        checkpoint_payload({}, {k: v for k, v in SETTINGS.items() if k != "prior_spec"}, CLASSES,
                           postprocess={}, config={}, metrics={})


def test_weights_only_payload_has_no_training_state(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, model_payload(tiny_model()))
    ckpt = load_checkpoint(path)
    assert not any(key in ckpt for key in checkpoint.TRAINING_KEYS)
    with pytest.raises(CheckpointError, match="resume from the run's last.pt"):
        load_checkpoint(path, for_resume=True)


def test_to_plain_converts_numpy_and_tuples():
    value = {"ap": np.float32(0.5), "n": np.int64(3), "arr": np.arange(3, dtype=np.int32), "t": (1, (2.0, "x"))}
    plain = to_plain(value)
    assert plain == {"ap": 0.5, "n": 3, "arr": plain["arr"], "t": [1, [2.0, "x"]]}
    assert type(plain["ap"]) is float and type(plain["n"]) is int
    assert torch.equal(plain["arr"], torch.tensor([0, 1, 2], dtype=torch.int32))
    checkpoint.check_plain(plain)


# ------------------------------------------------------------------------------- refusals


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class OpensFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _write_torch(path: Path, obj: object) -> None:
    torch.save(obj, path)


def _write_pickle2(path: Path, obj: object) -> None:
    with path.open("wb") as file:
        pickle.dump(obj, file, protocol=2)


def _write_pickle_default(path: Path, obj: object) -> None:
    with path.open("wb") as file:
        pickle.dump(obj, file)


def test_the_malicious_payload_is_live(tmp_path):
    """Control for the refusal test below: an unrestricted pickle load DOES run the payload."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(OpensFile(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("evil", [RunsShell, OpensFile])
@pytest.mark.parametrize("write", [_write_torch, _write_pickle2, _write_pickle_default])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, evil, write):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    # Disguised as a real checkpoint: the bad object sits in an otherwise valid payload.
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **model_payload(tiny_model())}
    payload["metrics"] = {"voc07_map": evil(marker)}
    write(path, payload)
    with pytest.raises(CheckpointError, match="nothing in it was executed") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="checkpoint not found") as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, CheckpointError)
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)


def test_text_empty_and_truncated_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(text)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="file is empty"):
        load_checkpoint(empty)

    good = tmp_path / "good.pt"
    save_checkpoint(good, model_payload(tiny_model()))
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 10):
        truncated = tmp_path / f"cut{cut}.pt"
        truncated.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            load_checkpoint(truncated)

    # A legacy-format pickle stream cut short.
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"format": FORMAT}, protocol=2)[:8])
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(legacy)


def test_bare_state_dict_and_foreign_dicts_are_refused(tmp_path):
    bare = tmp_path / "vgg16.pth"
    torch.save(tiny_model().state_dict(), bare)  # what torchvision's weight files look like
    # conv weight + bias, BN weight, bias, running_mean, running_var, num_batches_tracked,
    # linear weight + bias = 9 tensors
    with pytest.raises(CheckpointError, match=r"looks like a bare state dict \(9 tensors, e.g. '0.weight'\)"):
        load_checkpoint(bare)

    other = tmp_path / "other.pt"
    torch.save({"state_dict": tiny_model().state_dict(), "epoch": 3}, other)
    with pytest.raises(CheckpointError, match="no 'format' key; it has 'state_dict', 'epoch'"):
        load_checkpoint(other)

    torch.save([torch.zeros(1)], other)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(other)

    torch.save({"format": "yolo", "model": {}}, other)
    with pytest.raises(CheckpointError, match="format 'yolo'"):
        load_checkpoint(other)

    payload = {"format": FORMAT, "format_version": FORMAT_VERSION + 1, **model_payload(tiny_model())}
    torch.save(payload, other)
    with pytest.raises(CheckpointError, match="newer ssdcli"):
        load_checkpoint(other)

    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **model_payload(tiny_model())}
    del payload["class_names"], payload["priors"]
    torch.save(payload, other)
    with pytest.raises(CheckpointError, match="missing class_names, priors"):
        load_checkpoint(other)


# ------------------------------------------------------------------------------- format versions


def test_a_version_1_checkpoint_loads_with_its_meaning(tmp_path):
    payload = model_payload(tiny_model())
    for key in ("category_ids", "ignored_labels", "channel_order", "resize", "imported_from"):
        del payload[key]
    payload["postprocess"] = {k: v for k, v in payload["postprocess"].items() if k != "rule"}
    path = tmp_path / "v1.pt"
    torch.save({"format": FORMAT, "format_version": 1, **payload}, path)
    loaded = load_checkpoint(path)
    assert (loaded["channel_order"], loaded["resize"], loaded["category_ids"]) == ("rgb", "uint8", None)
    assert (loaded["ignored_labels"], loaded["imported_from"]) == ([], None)
    # version 1 clipped every box before NMS: its files keep that rule
    assert loaded["postprocess"] == {**PostprocessSettings().to_dict(), "rule": "torchvision"}
    # the same keys missing from a version-2 file get the same defaults, but the default rule
    torch.save({"format": FORMAT, "format_version": 2, **payload}, path)
    loaded = load_checkpoint(path)
    assert loaded["channel_order"] == "rgb" and PostprocessSettings(**loaded["postprocess"]).rule == "caffe"


def test_import_fields_round_trip(tmp_path):
    payload = model_payload(tiny_model())
    payload.update(channel_order="bgr", resize="cv2", category_ids=[1, 3], ignored_labels=[2],
                   imported_from={"source": "x.pth", "format": "ssd.pytorch"})
    payload["postprocess"]["rule"] = "torchvision"
    save_checkpoint(tmp_path / "m.pt", payload)
    loaded = load_checkpoint(tmp_path / "m.pt")
    for key in ("channel_order", "resize", "category_ids", "ignored_labels", "imported_from", "postprocess"):
        assert loaded[key] == payload[key], key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(channel_order="RGB"), r"'channel_order' is 'RGB', expected one of rgb, bgr"),
        (lambda p: p.update(resize="nearest"), r"'resize' is 'nearest', expected one of uint8, float, cv2"),
        (lambda p: p.update(category_ids=[1]), r"'category_ids' is \[1\], expected None or 2 integers"),
        (lambda p: p.update(category_ids=["1", 2]), r"'category_ids' is \['1', 2\]"),
        (lambda p: p.update(ignored_labels=[3]), r"'ignored_labels' is \[3\], expected a list of labels in 1\.\.2"),
        (lambda p: p.update(ignored_labels=None), r"'ignored_labels' is None"),
        (lambda p: p.update(imported_from={"source": "x"}), r"'imported_from' is \{'source': 'x'\}, expected None or"),
        (lambda p: p["postprocess"].update(rule="clip"), r"'postprocess' is .*: post-processing rule 'clip'"),
        (lambda p: p["postprocess"].update(nms_iou=0), r"'postprocess' is .*: --nms-iou 0: must be in"),
        (lambda p: p["postprocess"].update(colour=1), r"'postprocess' is .*unexpected keyword argument 'colour'"),
    ],
)
def test_malformed_version_2_fields_are_refused_at_load_in_one_line(tmp_path, change, message):
    payload = model_payload(tiny_model())
    change(payload)
    path = _raw_save(tmp_path / "best.pt", payload)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: unusable ssdcli checkpoint: ") and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        save_checkpoint(tmp_path / "again.pt", payload)


# ------------------------------------------------------------------------------- unusable files


def _raw_save(path: Path, payload: dict) -> Path:
    """Write ``payload`` as a checkpoint without save_checkpoint's checks (as a foreign tool might)."""
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["model"]["4.weight"].view(-1).__setitem__(5, float("nan")),
         r"unusable ssdcli checkpoint: the weight '4\.weight' holds NaN or inf values"),
        (lambda p: p["model"]["1.running_var"].__setitem__(0, float("inf")),
         r"the weight '1\.running_var' holds NaN or inf"),
        (lambda p: p.update(std=[0.229, 0.0, 0.225]),
         r"'std' is \[0\.229, 0\.0, 0\.225\]: inputs are divided by it, so every value must be positive"),
        (lambda p: p.update(std=[0.2, -0.2, 0.2]), r"'std' is \[0\.2, -0\.2, 0\.2\]"),
        (lambda p: p.update(mean=[0.5, float("nan"), 0.5]), r"'mean' is \[0\.5, nan, 0\.5\], expected 3 finite numbers"),
        (lambda p: p.update(mean=[0.5]), r"'mean' is \[0\.5\], expected 3 finite numbers"),
        (lambda p: p.update(class_names=["cat"]), r"'class_names' has 1 name but 'num_classes' is 2"),
        (lambda p: p.update(image_size=0), r"'image_size' is 0, expected a positive size"),
    ],
)
def test_well_formed_but_unusable_checkpoints_are_refused_at_load(tmp_path, change, message):
    payload = model_payload(tiny_model())
    payload["model"] = {k: v.clone() for k, v in payload["model"].items()}
    change(payload)
    path = _raw_save(tmp_path / "best.pt", payload)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: unusable ssdcli checkpoint: ")
    assert "\n" not in str(info.value)


def test_weights_that_do_not_fit_the_network_are_one_line_naming_the_file(tmp_path):
    from ssdcli.models import build_model, model_from_checkpoint, model_settings

    model = build_model("ssdlite320", num_classes=2, width_mult=0.25)
    settings = model_settings(model)
    state = dict(model.state_dict())
    names = list(state)
    del state[names[0]], state[names[1]]  # 2 missing
    state["extra.weight"] = torch.zeros(1)  # 1 unexpected
    head = next(k for k in names if k.startswith("conf_heads") and k.endswith("weight"))
    state[head] = torch.zeros(3, 3)  # 1 of another shape
    payload = {"model": state, "arch": "ssdlite320", "num_classes": 2, "options": settings["options"],
               "class_names": CLASSES, "image_size": 320, "mean": settings["mean"], "std": settings["std"],
               "priors": settings["prior_spec"]}
    path = _raw_save(tmp_path / "other.pt", payload)
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(load_checkpoint(path), source=path)
    expected_shape = tuple(model.state_dict()[head].shape)
    assert str(info.value) == (
        f"{path}: does not hold a usable ssdlite320 network with 2 classes: weight names or shapes do not match: "
        f"2 missing (first {names[0]!r}), 1 unexpected (first 'extra.weight'), 1 of another shape "
        f"(first {head!r}: (3, 3) in the file, {expected_shape} expected); it was written for another network, or edited"
    )


# ------------------------------------------------------------------------------- save checks


def test_non_finite_weights_are_never_written(tmp_path):
    path = tmp_path / "last.pt"
    model = tiny_model()
    save_checkpoint(path, model_payload(model))
    before = path.read_bytes()
    with torch.no_grad():
        model[4].weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"model\.4\.weight holds NaN or inf"):
        save_checkpoint(path, model_payload(model))
    with torch.no_grad():
        model[4].weight[1, 2] = 0.0
        model[1].running_var[0] = float("inf")
    with pytest.raises(ValueError, match=r"model\.1\.running_var"):
        save_checkpoint(path, model_payload(model))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_non_finite_optimizer_state_is_refused(tmp_path):
    run = Trainer()
    run.step(0)
    payload = run.payload(epoch=0, iteration=1)
    payload["optimizer"]["state"][0]["momentum_buffer"][0] = float("inf")
    with pytest.raises(ValueError, match=r"optimizer\.state\.0\.momentum_buffer"):
        save_checkpoint(tmp_path / "last.pt", payload)
    assert not (tmp_path / "last.pt").exists()


def test_non_plain_values_are_refused_with_their_key_path(tmp_path):
    path = tmp_path / "last.pt"
    payload = model_payload(tiny_model())
    payload["metrics"] = {"per_class": {"cat": np.float64(0.5)}}
    with pytest.raises(TypeError, match=r"checkpoint key metrics\.per_class\.cat: a numpy\.float64"):
        save_checkpoint(path, payload)
    payload["metrics"] = to_plain(payload["metrics"])
    payload["config"] = {"data": Path("voc")}
    with pytest.raises(TypeError, match=r"config\.data: a pathlib\.\w*Path"):
        save_checkpoint(path, payload)
    payload["config"] = {"data": "voc"}
    payload["extra"] = [1, nn.ReLU()]
    with pytest.raises(TypeError, match=r"extra\[1\]: a torch\.nn\.modules\.activation\.ReLU"):
        save_checkpoint(path, payload)
    assert not path.exists()


def test_missing_or_partial_keys_are_refused_on_save(tmp_path):
    payload = model_payload(tiny_model())
    del payload["arch"]
    with pytest.raises(ValueError, match="missing arch"):
        save_checkpoint(tmp_path / "a.pt", payload)
    payload = {**model_payload(tiny_model()), "epoch": 1, "optimizer": {}}
    with pytest.raises(ValueError, match="training state incomplete: has optimizer, epoch but not scheduler"):
        save_checkpoint(tmp_path / "a.pt", payload)
    with pytest.raises(ValueError, match="format must be"):
        save_checkpoint(tmp_path / "a.pt", {**model_payload(tiny_model()), "format": "other"})
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------- atomicity


@pytest.fixture
def old_checkpoint(tmp_path) -> tuple[Path, bytes]:
    path = tmp_path / "last.pt"
    save_checkpoint(path, model_payload(tiny_model()))
    return path, path.read_bytes()


def _new_payload() -> dict:
    payload = model_payload(nn.Sequential(nn.Linear(100, 100)))
    payload["metrics"] = {"val_loss": 0.1}
    return payload


def _partial_save(exc: BaseException):
    def save(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        file.flush()
        raise exc

    return save


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_while_writing_keeps_the_old_file(old_checkpoint, monkeypatch, exc):
    path, before = old_checkpoint
    monkeypatch.setattr(torch, "save", _partial_save(exc))
    with pytest.raises(type(exc)):
        save_checkpoint(path, _new_payload())
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["last.pt"]  # the temp file was removed
    assert load_checkpoint(path)["metrics"] == {"val_loss": 1.5, "voc07_map": 0.25}


def test_failure_at_rename_keeps_the_old_file(old_checkpoint, monkeypatch):
    path, before = old_checkpoint

    def failing_replace(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        save_checkpoint(path, _new_payload())
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["last.pt"]


def test_failure_on_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _partial_save(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "last.pt", _new_payload())
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="directory fsync and umask are POSIX")
def test_save_fsyncs_file_and_folder_and_honours_umask(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / "last.pt"
    save_checkpoint(path, _new_payload())
    assert len(synced) == 2
    if os.path.exists("/proc/self/fd"):
        assert Path(synced[0]).name.startswith(".last.pt.") and Path(synced[1]) == tmp_path.resolve()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_write_leaves_the_old_file_loadable(old_checkpoint):
    path, before = old_checkpoint
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from torch import nn
        from ssdcli.checkpoint import save_checkpoint
        from ssdcli.priors import ssd300_spec

        def killed_save(obj, file):
            file.write(b"PK\\x03\\x04 half")
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = killed_save
        save_checkpoint({str(path)!r}, {{
            "model": nn.Linear(2, 2).state_dict(), "arch": "ssd300", "num_classes": 1,
            "class_names": ["a"], "image_size": 300, "mean": [0.0], "std": [1.0],
            "priors": ssd300_spec().to_dict()}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["class_names"] == CLASSES
    # Only a stale hidden temp file can remain, never a partial last.pt.
    assert all(name == "last.pt" or name.startswith(".last.pt.") for name in os.listdir(path.parent))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_and_scaler_round_trip(tmp_path):
    torch.cuda.manual_seed_all(7)
    torch.rand(1, device="cuda")  # initialise CUDA so its generators are captured
    scaler = torch.amp.GradScaler("cuda", init_scale=256.0)
    payload = model_payload(tiny_model())
    payload.update(optimizer={}, scheduler={}, scaler=scaler.state_dict(), epoch=0, iteration=0)
    payload["rng"] = capture_rng_state()
    assert len(payload["rng"]["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(4, device="cuda")
    save_checkpoint(tmp_path / "last.pt", payload)
    torch.rand(4, device="cuda")
    ckpt = load_checkpoint(tmp_path / "last.pt", map_location="cuda", for_resume=True)
    assert ckpt["model"]["0.weight"].is_cuda
    restore_rng_state(ckpt["rng"])
    assert torch.equal(torch.rand(4, device="cuda"), expected)
    restored = torch.amp.GradScaler("cuda")
    restored.load_state_dict(ckpt["scaler"])
    assert restored.get_scale() == 256.0
