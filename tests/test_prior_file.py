"""Prior spec files: JSON round trip, every refusal as one clear UserError, and a fitted spec
through a model and a checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ssdcli.checkpoint import load_checkpoint, save_checkpoint
from ssdcli.errors import UserError
from ssdcli.models import (
    build_model,
    model_from_checkpoint,
    model_settings,
    priors_for_model,
)
from ssdcli.prior_file import (
    FORMAT,
    load_prior_spec,
    read_prior_spec_file,
    save_prior_spec,
    spec_file_payload,
)
from ssdcli.priors import (
    PriorSpec,
    generate_priors,
    ssd300_coco_spec,
    ssd300_spec,
    ssdlite320_spec,
)


def fitted_like(base: PriorSpec) -> PriorSpec:
    """A spec as the fit makes them, in the base's layout: other sizes, and other ratio sets
    (layer 0: 3 ratios = 8 boxes per location, layer 1: none = 2 boxes)."""
    layers = list(base.layers)
    layers[0] = replace(layers[0], min_size=21.47, max_size=154.6, aspect_ratios=(1.5, 2.5, 4.0))
    layers[1] = replace(layers[1], min_size=46.9, max_size=110.8, aspect_ratios=())
    return replace(base, name=f"{base.name}-fit", layers=tuple(layers))


def write(path, payload) -> None:
    path.write_text(json.dumps(payload))


def test_round_trip_keeps_every_field(tmp_path):
    spec = fitted_like(ssdlite320_spec())
    target = tmp_path / "priors.json"
    save_prior_spec(target, spec, "ssdlite320", budget=8, fit={"data": "bccd", "seed": 0})
    data = json.loads(target.read_text())
    assert data["format"] == FORMAT and data["format_version"] == 1
    assert data["arch"] == "ssdlite320" and data["budget"] == 8 and data["fit"]["seed"] == 0
    assert set(data["prior_spec"]) == {"name", "image_size", "offset", "clip", "variances", "layers"}
    read = read_prior_spec_file(target, "ssdlite320")
    assert read.spec == spec and read.budget == 8 and read.arch == "ssdlite320"
    assert load_prior_spec(target, "ssdlite320") == spec
    assert torch.equal(generate_priors(load_prior_spec(target, "ssdlite320")), generate_priors(spec))


def test_a_preset_name_is_stored_as_its_network(tmp_path):
    target = tmp_path / "coco.json"
    save_prior_spec(target, ssd300_coco_spec(), "ssd300_coco", budget=None)
    assert json.loads(target.read_text())["arch"] == "ssd300"
    assert json.loads(target.read_text())["budget"] == "same"
    assert load_prior_spec(target, "ssd300") == ssd300_coco_spec()
    assert load_prior_spec(target, "ssd300_coco") == ssd300_coco_spec()  # same network


def test_existing_files_are_never_overwritten(tmp_path):
    target = tmp_path / "priors.json"
    target.write_text("mine")
    with pytest.raises(UserError, match="exists"):
        save_prior_spec(target, ssd300_spec(), "ssd300", None)
    assert target.read_text() == "mine"


def test_more_boxes_than_the_head_need_a_budget(tmp_path):
    spec = fitted_like(ssd300_spec())  # layer 0: 8 boxes per location, the ssd300 head has 4
    with pytest.raises(UserError, match=r"layer 0 has 8 boxes per location, more than ssd300's head allows \(4\)"):
        save_prior_spec(tmp_path / "a.json", spec, "ssd300", None)
    assert not (tmp_path / "a.json").exists()
    write(tmp_path / "b.json", spec_file_payload(spec, "ssd300", None))
    with pytest.raises(UserError, match="--budget 8"):
        load_prior_spec(tmp_path / "b.json", "ssd300")
    write(tmp_path / "c.json", spec_file_payload(spec, "ssd300", 6))
    with pytest.raises(UserError, match=r"more than the budget allows \(6\)"):
        load_prior_spec(tmp_path / "c.json", "ssd300")
    write(tmp_path / "d.json", spec_file_payload(spec, "ssd300", 8))
    assert load_prior_spec(tmp_path / "d.json", "ssd300") == spec


def _bad_payloads() -> list[tuple[str, dict, str]]:
    good = spec_file_payload(ssd300_spec(), "ssd300", None)

    def edited(path: str, value) -> dict:
        payload = json.loads(json.dumps(good))
        *keys, last = path.split(".")
        node = payload
        for key in keys:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
        return payload

    fewer = json.loads(json.dumps(good))
    fewer["prior_spec"]["layers"].pop()
    return [
        ("other arch", spec_file_payload(ssdlite320_spec(), "ssdlite320", None), "a spec for ssdlite320, not ssd300"),
        ("unknown arch", edited("arch", "yolo"), "arch 'yolo' is not one of"),
        ("not ours", {"layers": []}, "not a prior spec file"),
        ("newer", edited("format_version", 2), "format_version 2"),
        ("layer count", fewer, "5 layers, but ssd300 has 6 source layers"),
        ("feature map", edited("prior_spec.layers.0.feature_map", 40), "layer 0: feature map 40, step 8, but ssd300 has 38"),
        ("step", edited("prior_spec.layers.2.step", 30), "layer 2: feature map 10, step 30"),
        ("image size", edited("prior_spec.image_size", 320), "image_size 320, but ssd300 takes 300"),
        ("min >= max", edited("prior_spec.layers.1.max_size", 60), "layer 1: min_size 60.0, max_size 60.0"),
        ("negative", edited("prior_spec.layers.1.min_size", -5), "need 0 < min_size < max_size"),
        ("nan", edited("prior_spec.layers.3.min_size", float("nan")), "layer 3: min_size nan"),
        ("ratio 1", edited("prior_spec.layers.0.aspect_ratios", [1.0]), "need distinct numbers above 1"),
        ("ratio twice", edited("prior_spec.layers.1.aspect_ratios", [2, 2]), "need distinct numbers above 1"),
        ("ratio text", edited("prior_spec.layers.1.aspect_ratios", ["two"]), "malformed prior settings"),
        ("missing key", edited("prior_spec.layers.0", {"feature_map": 38}), "malformed prior settings"),
        ("variance", edited("prior_spec.variances", [0.1, 0]), "variances [0.1, 0.0]"),
        ("budget", edited("budget", 1), "budget 1"),
        ("budget text", edited("budget", "more"), "budget 'more'"),
        ("clip text", edited("prior_spec.clip", "no"), "whose clip is one of false, true, \"size\", \"cxcywh\""),
    ]


@pytest.mark.parametrize("name, payload, message", _bad_payloads(), ids=[c[0] for c in _bad_payloads()])
def test_bad_files_are_one_clear_line(tmp_path, name, payload, message):
    target = tmp_path / "bad.json"
    write(target, payload)
    with pytest.raises(UserError) as caught:
        load_prior_spec(target, "ssd300")
    text = str(caught.value)
    assert message in text and "\n" not in text and text.startswith(str(target))


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="no such prior spec file"):
        load_prior_spec(tmp_path / "missing.json", "ssd300")
    (tmp_path / "text.json").write_text("min_size: 30")
    with pytest.raises(UserError, match="not a readable JSON prior spec file"):
        load_prior_spec(tmp_path / "text.json", "ssd300")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a prior spec file"):
        load_prior_spec(tmp_path / "list.json", "ssd300")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not a readable JSON"):
        load_prior_spec(tmp_path / "binary.json", "ssd300")


def test_a_fitted_spec_travels_through_a_model_and_a_checkpoint(tmp_path):
    spec = fitted_like(ssdlite320_spec())  # 8 and 2 boxes per location on layers 0 and 1
    save_prior_spec(tmp_path / "priors.json", spec, "ssdlite320", budget=8)
    loaded = load_prior_spec(tmp_path / "priors.json", "ssdlite320")
    torch.manual_seed(0)
    model = build_model("ssdlite320", num_classes=2, prior_spec=loaded, width_mult=0.25)
    cls_logits, box_deltas = model.eval()(torch.zeros(1, 3, 320, 320))
    assert cls_logits.shape == (1, spec.num_priors, 3) and box_deltas.shape == (1, spec.num_priors, 4)
    # the same payload keys training writes (train's checkpoint builder takes them from model_settings)
    settings = model_settings(model)
    payload = {
        "model": model.state_dict(), "arch": settings["arch"], "num_classes": settings["num_classes"],
        "options": settings["options"], "class_names": ["a", "b"], "image_size": settings["image_size"],
        "mean": settings["mean"], "std": settings["std"], "priors": settings["prior_spec"],
    }
    save_checkpoint(tmp_path / "best.pt", payload)
    checkpoint = load_checkpoint(tmp_path / "best.pt")
    assert PriorSpec.from_dict(checkpoint["priors"]) == spec
    rebuilt = model_from_checkpoint(checkpoint)
    assert rebuilt.prior_spec.boxes_per_location == (8, 2, 6, 6, 6, 6)
    assert torch.equal(priors_for_model(rebuilt), generate_priors(spec))
    assert torch.equal(priors_for_model(rebuilt), priors_for_model(model))
