"""Importing foreign SSD weights: format recognition, wrappers, label spaces and every bad input.

Network-level and end-to-end parity with torchvision and ssd.pytorch: tests/test_pretrained_parity.py.
"""

from __future__ import annotations

import argparse
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from ssdcli import downloads
from ssdcli.checkpoint import check_plain
from ssdcli.errors import UserError
from ssdcli.pretrained import import_weights
from ssdcli.pretrained.info import ImportedModel, PostprocessRule, Preprocessing
from ssdcli.pretrained.labels import coco81_labels, coco91_labels
from ssdcli.pretrained.names import detectors, is_model_name
from ssdcli.pretrained.state_dict import recognise_format

COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)


@pytest.fixture(scope="module")
def lite_state() -> dict[str, torch.Tensor]:
    """A seeded torchvision ssdlite320 with 5 outputs (background + 4 classes)."""
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    return model.state_dict()


@pytest.fixture(scope="module")
def lite_coco_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict()


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _one_line_error(source, match: str, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as info:
        import_weights(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Recognition and wrappers


def test_formats_are_recognised_from_their_signature_keys() -> None:
    t = torch.zeros(1)
    assert recognise_format({"backbone.features.0.weight": t, "backbone.scale_weight": t}, "f") == "torchvision-ssd300"
    lite = {"backbone.features.0.0.0.weight": t, "backbone.features.1.0.1.0.weight": t}
    assert recognise_format(lite, "f") == "torchvision-ssdlite320"
    assert recognise_format({"vgg.0.weight": t, "L2Norm.weight": t, "conf.0.weight": t}, "f") == "ssd.pytorch"


def test_an_unknown_layout_says_what_it_looks_like() -> None:
    t = torch.zeros(1)
    known = r"f.pth: not a state dict of a known SSD layout \(2 tensors, e.g. 'features.0.weight'"
    with pytest.raises(UserError, match=known) as info:
        recognise_format({"features.0.weight": t, "classifier.0.weight": t}, "f.pth")
    assert "ImageNet classifier" in str(info.value) and "--backbone-weights" in str(info.value)


def test_training_checkpoint_wrappers_and_prefixes_are_unwrapped(tmp_path, lite_state) -> None:
    # torchvision's references/detection/train.py: {"model", "optimizer", "lr_scheduler", "args", "epoch"}.
    reference = {"model": lite_state, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {},
                 "args": argparse.Namespace(lr=0.15, data_path="/coco", weights=None), "epoch": 3}
    imported = import_weights(_save(tmp_path / "checkpoint.pth", reference))
    assert imported.source_format == "torchvision-ssdlite320" and imported.model.num_classes == 4
    # DataParallel keys inside a Lightning-style {"state_dict": ...}
    wrapped = {"state_dict": {f"module.{k}": v for k, v in lite_state.items()}, "epoch": 1}
    assert import_weights(_save(tmp_path / "dp.pth", wrapped)).model.num_classes == 4


def test_bare_import_gives_generic_names_and_the_sources_conventions(tmp_path, lite_state) -> None:
    imported = import_weights(_save(tmp_path / "lite.pth", lite_state))
    assert imported.source == str(tmp_path / "lite.pth")
    assert imported.class_names == ("class_1", "class_2", "class_3", "class_4")
    assert imported.category_ids is None and imported.ignored_labels == ()
    assert imported.preprocessing == Preprocessing(320, "rgb", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "float")
    assert imported.postprocess == PostprocessRule("torchvision", 0.001, 0.55, 300, 300)
    assert imported.model.prior_spec.clip == "size" and imported.model.num_classes == 4
    assert (imported.model.mean, imported.model.std) == ((0.5,) * 3, (0.5,) * 3)
    assert not imported.model.training
    named = import_weights(tmp_path / "lite.pth", class_names=["a", "b", "c", "d"])
    assert named.class_names == ("a", "b", "c", "d")


def test_checkpoint_fields_are_plain(tmp_path, lite_state) -> None:
    fields = import_weights(_save(tmp_path / "lite.pth", lite_state)).checkpoint_fields()
    check_plain(fields)
    assert fields["resize"] == "float" and fields["channel_order"] == "rgb"
    assert fields["priors"]["clip"] == "size" and fields["postprocess"]["rule"] == "torchvision"
    assert fields["imported_from"] == {"source": str(tmp_path / "lite.pth"), "format": "torchvision-ssdlite320"}


def test_coco_label_spaces() -> None:
    names, ids, ignored = coco91_labels()
    assert len(names) == len(ids) == 90 and ids == tuple(range(1, 91))
    assert ignored == COCO_UNUSED_IDS
    assert names[0] == "person" and names[89] == "toothbrush" and names[11] == "__unused_12__"
    assert len(set(names)) == 90  # unique, so names can key tables
    names81, ids81, ignored81 = coco81_labels()
    assert len(names81) == 80 and ignored81 == () and "N/A" not in names81
    assert ids81[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13)  # 12 is unused
    assert names81[11] == "stop sign" and ids81[-1] == 90


# ---------------------------------------------------------------------------------------------
# Bad files


def test_missing_empty_truncated_and_non_torch_files(tmp_path, lite_state) -> None:
    _one_line_error(str(tmp_path / "nope.pth"), r"nope.pth: no such file")
    (tmp_path / "empty.pth").write_bytes(b"")
    _one_line_error(str(tmp_path / "empty.pth"), r"empty.pth: not a state-dict file: the file is empty")
    (tmp_path / "text.pth").write_text("hello")
    _one_line_error(str(tmp_path / "text.pth"), r"text.pth: not a state-dict file: the file is not a PyTorch")
    whole = _save(tmp_path / "whole.pth", lite_state).read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[: len(whole) // 2])
    _one_line_error(str(tmp_path / "cut.pth"), r"cut.pth: not a state-dict file")


class Payload:
    """A pickle that would create a file if it were ever unpickled without restrictions."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_is_refused_unexecuted(tmp_path) -> None:
    marker = tmp_path / "pwned"
    for name, dump in (("raw.pth", pickle.dump), ("torch.pth", torch.save)):
        with (tmp_path / name).open("wb") as handle:
            dump({"model": Payload(marker)}, handle)
        message = _one_line_error(str(tmp_path / name), rf"{name}: refused: not a state-dict file, and unsafe")
        assert "torch.save(model.state_dict(), FILE)" in message
    assert not marker.exists()


def test_non_state_dicts_and_ssdcli_checkpoints(tmp_path) -> None:
    _one_line_error(str(_save(tmp_path / "list.pth", [torch.zeros(2)])), r"list.pth: holds a list, not a state dict")
    _one_line_error(
        str(_save(tmp_path / "dict.pth", {"epoch": 3, "optimizer": {}})),
        r"dict.pth: holds a dict without a state dict in it \(keys 'epoch', 'optimizer'",
    )
    _one_line_error(
        str(_save(tmp_path / "best.pt", {"format": "ssdcli-checkpoint", "model": {"a": torch.zeros(1)}})),
        r"best.pt: is already an ssdcli checkpoint; use it directly",
    )


def test_class_layouts_that_do_not_divide_are_explained(tmp_path) -> None:
    # The brief's example: conf.0 sized for 21 classes, conf.1 for 20.
    t = torch.zeros
    state = {"vgg.0.weight": t(1), "L2Norm.weight": t(512), "conf.0.weight": t(84, 512, 3, 3),
             "conf.1.weight": t(120, 1024, 3, 3)}
    state.update({f"conf.{i}.weight": t(6 * 21 if i < 4 else 4 * 21, 256, 3, 3) for i in range(2, 6)})
    message = _one_line_error(str(_save(tmp_path / "odd.pth", state)), r"odd.pth: looks like ssd.pytorch SSD300 but")
    assert (
        "conf.0.weight has 84 outputs for 4 boxes: 21 classes; conf.1.weight has 120 outputs for 6 boxes: 20 classes"
    ) in message


@pytest.mark.slow  # four ssdlite320 networks built
def test_incomplete_extended_and_reshaped_state_dicts(tmp_path, lite_state) -> None:
    missing = dict(lite_state)
    del missing["backbone.extra.3.2.1.running_var"]
    _one_line_error(str(_save(tmp_path / "a.pth", missing)),
                    r"a.pth: not a complete torchvision ssdlite320_mobilenet_v3_large \(width 1.0, reduced tail\) "
                    r"state dict: missing backbone.extra.3.2.1.running_var \(1 keys\)")
    extra = {**lite_state, "backbone.extra.4.0.0.weight": torch.zeros(1)}
    _one_line_error(str(_save(tmp_path / "b.pth", extra)), r"b.pth: .*unexpected backbone.extra.4.0.0.weight")
    reshaped = {**lite_state, "backbone.extra.0.0.0.weight": torch.zeros(128, 480, 1, 1)}
    _one_line_error(str(_save(tmp_path / "c.pth", reshaped)),
                    r"c.pth: backbone.extra.0.0.0.weight has shape \(128, 480, 1, 1\), but .* needs \(256, 480, 1, 1\)")
    broken = {**lite_state, "head.regression_head.module_list.0.1.bias": torch.full((24,), float("nan"))}
    _one_line_error(str(_save(tmp_path / "d.pth", broken)),
                    r"d.pth: head.regression_head.module_list.0.1.bias holds NaN")


def test_wrong_options_for_the_format(tmp_path, lite_state) -> None:
    path = str(_save(tmp_path / "lite.pth", lite_state))
    _one_line_error(path, r"--format ssd.pytorch given, but its keys are those of torchvision-ssdlite320",
                    source_format="ssd.pytorch")
    _one_line_error(path, r"unknown import format 'onnx'", source_format="onnx")
    _one_line_error(path, r"channel order is only chosen for ssd.pytorch", channel_order="bgr")
    _one_line_error(path, r"3 class names given for a model with 4 classes", class_names=["a", "b", "c"])
    _one_line_error(path, r"class name\(s\) 'a' given more than once", class_names=["a", "b", "a", "c"])


# ---------------------------------------------------------------------------------------------
# Names


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(downloads, "urlopen", offline)
    return tmp_path / "hub" / "checkpoints"


def test_names_come_from_torchvisions_enums() -> None:
    from torchvision.models.detection import SSD300_VGG16_Weights, SSDLite320_MobileNet_V3_Large_Weights

    known = detectors()
    assert list(known) == ["torchvision:ssd300_vgg16", "torchvision:ssdlite320_mobilenet_v3_large"]
    assert known["torchvision:ssd300_vgg16"].url == SSD300_VGG16_Weights.COCO_V1.url
    lite = known["torchvision:ssdlite320_mobilenet_v3_large"]
    assert lite.url == SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.url and lite.format == "torchvision-ssdlite320"
    assert is_model_name("torchvision:ssd300_vgg16") and not is_model_name("C:/weights.pth")
    assert not is_model_name("weights.pth") and not is_model_name("runs/a:b/best.pt")


def test_unknown_names_list_the_known_ones(hub) -> None:
    message = _one_line_error("torchvision:ssd512_vgg16",
                              r"unknown model name 'torchvision:ssd512_vgg16'; known names: ")
    assert "torchvision:ssd300_vgg16, torchvision:ssdlite320_mobilenet_v3_large" in message


def test_a_name_offline_without_the_file_says_where_to_put_it(hub) -> None:
    weights = detectors()["torchvision:ssd300_vgg16"]
    message = _one_line_error("torchvision:ssd300_vgg16", r"^offline: torchvision's COCO ssd300_vgg16 weights")
    assert weights.url in message and str(hub / "ssd300_vgg16_coco-b556d3b4.pth") in message


def test_a_cached_name_imports_offline_with_cocos_labels(hub, lite_coco_state) -> None:
    hub.mkdir(parents=True)
    torch.save(lite_coco_state, hub / "ssdlite320_mobilenet_v3_large_coco-a79551df.pth")
    imported = import_weights("torchvision:ssdlite320_mobilenet_v3_large")
    assert imported.source == "torchvision:ssdlite320_mobilenet_v3_large"
    assert imported.source_format == "torchvision-ssdlite320" and imported.model.num_classes == 90
    assert imported.class_names[:3] == ("person", "bicycle", "car")
    assert imported.category_ids == tuple(range(1, 91)) and imported.ignored_labels == COCO_UNUSED_IDS
    _one_line_error("torchvision:ssdlite320_mobilenet_v3_large", r"--format ssd.pytorch does not apply",
                    source_format="ssd.pytorch")


def test_imported_model_checks_its_label_space(tmp_path, lite_state) -> None:
    imported = import_weights(_save(tmp_path / "lite.pth", lite_state))
    fields = dict(imported.__dict__)
    with pytest.raises(ValueError, match="3 class names for a network with 4 classes"):
        ImportedModel(**{**fields, "class_names": ("a", "b", "c")})
    with pytest.raises(ValueError, match=r"ignored labels \(5,\) outside 1..4"):
        ImportedModel(**{**fields, "ignored_labels": (5,)})
    with pytest.raises(ValueError, match="channel order 'rbg'"):
        Preprocessing(300, "rbg", (0,) * 3, (1,) * 3, "float")
