"""``ssd train --init MODEL`` and ``--freeze-backbone-epochs``: what a run takes from a trained
detector (arch, default boxes, normalisation, channel order, class rows), and the frozen backbone."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ssdcli.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from ssdcli.cli.app import app
from ssdcli.data.synth import CLASSES
from ssdcli.models import backbone_modules, build_model, model_settings
from ssdcli.postprocess import PostprocessSettings
from ssdcli.train import fit
from ssdcli.train.callbacks import Callbacks
from ssdcli.train.init_model import class_convs, match_classes, transfer_weights
from ssdcli.train.setup import build_run

runner = CliRunner()

# The source detector's classes: "Square" and "star" are shared with the synth data (case aside),
# "airplane" / "dog" / "kite" are not; label order differs from the data's on purpose.
SOURCE_CLASSES = ["airplane", "star", "dog", "Square", "kite"]
SOURCE_MEAN, SOURCE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _spread(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and class-head biases, so that rows are distinguishable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
        for _, conv in class_convs(model):
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An ssdlite320 checkpoint of SOURCE_CLASSES with SSDLite's 0.5/0.5 normalisation, BGR input
    and the torchvision post-processing rule: what a run started from it must keep."""
    torch.manual_seed(7)
    model = build_model("ssdlite320", num_classes=len(SOURCE_CLASSES))
    model.mean, model.std = SOURCE_MEAN, SOURCE_STD
    _spread(model, 7)
    path = tmp_path_factory.mktemp("source") / "source.pt"
    save_checkpoint(path, checkpoint_payload(
        model.state_dict(), model_settings(model), SOURCE_CLASSES,
        postprocess=PostprocessSettings(rule="torchvision").to_dict(), config={}, metrics={},
        channel_order="bgr", resize="float",
    ))
    model.eval()
    return path, model


def test_classes_match_by_name_ignoring_case_and_by_voc_coco_synonym():
    source = ["airplane", "Motorcycle", "couch", "potted plant", "dining table", "tv", "person", "dog"]
    new = ["aeroplane", "motorbike", "sofa", "pottedplant", "diningtable", "tvmonitor", "PERSON", "cat"]
    assert match_classes(new, source) == [1, 2, 3, 4, 5, 6, 7, None]
    # and the other way round: a VOC model fine-tuned on COCO names
    assert match_classes(["airplane", "tv"], ["aeroplane", "tvmonitor"]) == [1, 2]
    # ignored labels (torchvision's "N/A" rows) never match
    assert match_classes(["__unused_12__"], ["__unused_12__"], ignored_labels=(1,)) == [None]


def test_carried_rows_give_the_source_logits_exactly_per_anchor(source):
    """transfer_weights indexes (anchor, class) in every head: the carried columns of the logits,
    background included, are the source's own (to float rounding: see below); the others are not."""
    _, source_model = source
    new_classes = list(CLASSES)  # circle, square, star, triangle
    matches = match_classes(new_classes, SOURCE_CLASSES)
    assert matches == [None, 4, 2, None]
    torch.manual_seed(0)
    target = build_model("ssdlite320", num_classes=len(new_classes))
    transfer_weights(source_model, target, matches)
    target.eval()
    images = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_logits, want_deltas = source_model(images)
        got_logits, got_deltas = target(images)
    assert torch.equal(got_deltas, want_deltas)  # the same layers, the same shapes: the same arithmetic
    for new, old in [(0, 0), (2, 4), (3, 2)]:
        torch.testing.assert_close(got_logits[..., new], want_logits[..., old], rtol=0, atol=1e-5)
    assert not torch.allclose(got_logits[..., 1], want_logits[..., 1])


def test_init_run_starts_from_the_model_with_zero_steps(source, synth, tmp_path, tiny_config):
    """build_run of an --init config: the network's carried logits equal the source's exactly, the
    network has the source's normalisation, and the carry-over table's rows say where rows came from."""
    path, source_model = source
    from ssdcli.train.init_model import load_init_source

    init = load_init_source(str(path))
    config = tiny_config(synth, tmp_path / "run", init=str(path), init_model=init.settings(),
                         prior_spec=init.model.prior_spec.to_dict())
    run = build_run(config, Callbacks())
    for (_, mine), (_, theirs) in zip(class_convs(run.model), class_convs(source_model)):
        for anchor in range(mine.out_channels // (len(CLASSES) + 1)):
            for new, old in [(0, 0), (2, 4), (3, 2)]:
                assert torch.equal(mine.weight[anchor * 5 + new], theirs.weight[anchor * 6 + old])
                assert torch.equal(mine.bias[anchor * 5 + new], theirs.bias[anchor * 6 + old])
    assert run.model.mean == SOURCE_MEAN and run.model.std == SOURCE_STD
    assert [row["from"] for row in run.carried] == [None, "Square", "star", None]
    assert run.train_set.dataset.transform.channel_order == "bgr"
    run.model.eval()
    images = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, _ = source_model(images)
        got, _ = run.model(images)
    # The weights are the source's bit for bit (above); the convolutions of two networks with
    # different class counts may block their sums differently, so the logits agree to rounding.
    torch.testing.assert_close(got[..., [0, 2, 3]], want[..., [0, 4, 2]], rtol=0, atol=1e-5)
    assert not torch.allclose(got[..., 1], want[..., 1], atol=1e-2)


def _init_args(source_path, data, output, *extra):
    return ["train", "--init", str(source_path), "--data", str(data), "--split", "train", "--batch-size", "2",
            "--workers", "0", "--device", "cpu", "--eval-every", "0", "--warmup-iters", "2",
            "--limit-batches", "2", "--output", str(output), *extra]


def test_a_tiny_init_run_trains_records_its_source_and_resumes_without_it(source, synth, tmp_path):
    path, _ = source
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    result = runner.invoke(app, _init_args(copy, synth, tmp_path / "run", "--epochs", "1"))
    assert result.exit_code == 0, result.output
    assert "carried over" in result.stderr and "from 'Square'" in result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["init"] == str(copy) and config["arch"] == "ssdlite320"
    assert config["init_model"]["channel_order"] == "bgr" and config["init_model"]["mean"] == list(SOURCE_MEAN)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["channel_order"] == "bgr" and last["resize"] == "float"
    assert last["postprocess"]["rule"] == "torchvision" and last["mean"] == list(SOURCE_MEAN)
    assert last["class_names"] == list(CLASSES)

    copy.unlink()  # the resumed run needs nothing of MODEL but what config.json and last.pt hold
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(tmp_path / "run" / "last.pt")
    assert resumed["epoch"] == 2 and resumed["channel_order"] == "bgr" and resumed["std"] == list(SOURCE_STD)


@pytest.mark.parametrize(("extra", "expected"), [
    (["--arch", "ssd300"], "is an ssdlite320 network; --arch ssd300 contradicts it"),
    (["--prior-scales", "0.1", "0.9"], "brings its own default boxes"),
    (["--backbone-weights", "none"], "drop --backbone-weights"),
])
def test_flags_that_contradict_the_model_are_one_line_errors(source, synth, tmp_path, extra, expected):
    path, _ = source
    result = runner.invoke(app, _init_args(path, synth, tmp_path / "run", "--epochs", "1", *extra))
    assert result.exit_code == 2
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_init_and_resume_cannot_be_combined(source, tmp_path):
    path, _ = source
    result = runner.invoke(app, ["train", "--init", str(path), "--resume", str(tmp_path / "last.pt")])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --init starts a new run from a trained model and --resume continues a "
                                     "run (which keeps its own --init); give one of them")


def test_a_missing_model_is_a_clear_error(synth, tmp_path):
    result = runner.invoke(app, _init_args(tmp_path / "nothere.pt", synth, tmp_path / "run", "--epochs", "1"))
    assert result.exit_code == 2
    assert "nothere.pt: no such file" in result.stderr and "torchvision:ssd300_vgg16" in result.stderr


def _backbone_state(state: dict, model) -> dict:
    prefixes = []
    for module in backbone_modules(model):
        prefixes += [name for name, m in model.named_modules() if m is module]
    return {k: v for k, v in state.items() if any(k.startswith(p + ".") for p in prefixes)}


def test_freeze_keeps_the_backbone_bit_identical_then_trains_it(source, synth, tmp_path, tiny_config):
    """Epoch 1 frozen: backbone parameters and BatchNorm statistics exactly the source's (precise BN
    at the run's end leaves them too), heads trained; epoch 2 (resumed) trains the backbone."""
    path, source_model = source
    from ssdcli.train.init_model import load_init_source

    init = load_init_source(str(path))
    config = tiny_config(synth, tmp_path / "run", init=str(path), init_model=init.settings(),
                         prior_spec=init.model.prior_spec.to_dict(), freeze_backbone_epochs=1)
    fit(config)
    after_one = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    want = _backbone_state(source_model.state_dict(), source_model)
    got = _backbone_state(after_one, source_model)
    assert want and set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    extras = [k for k in after_one if k.startswith("backbone.extras.") and k.endswith("weight")]
    assert any(not torch.equal(after_one[k], source_model.state_dict()[k]) for k in extras)

    fit(None, resume=tmp_path / "run" / "last.pt", overrides={"epochs": 2})
    after_two = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    changed = [k for k in want if k.endswith("weight") and not torch.equal(after_two[k], want[k])]
    assert changed


def test_ssdlite_backbone_weights_offline_names_the_url_and_the_path(synth, tmp_path, monkeypatch):
    import ssdcli.downloads as downloads

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(downloads, "download_file", offline)
    result = runner.invoke(app, ["train", "--data", str(synth), "--epochs", "1", "--arch", "ssdlite320",
                                 "--backbone-weights", "imagenet", "--device", "cpu", "--output", str(tmp_path / "r")])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("error: offline") and len(line.splitlines()) == 1
    assert "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth" in line
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "mobilenet_v3_large-8738ca79.pth") in line
    assert "--backbone-weights none" in line
