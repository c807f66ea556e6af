"""Images per pass of a CPU training step: timed on the machine, cached, kept by a resume."""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn

from ssdcli.checkpoint import load_checkpoint
from ssdcli.errors import UserError
from ssdcli.export.cache import CACHE_ENV
from ssdcli.loss import LossOutput, MultiBoxLoss
from ssdcli.models import build_model, priors_for_model
from ssdcli.train import Callbacks, TrainingInterrupted, epoch, fit, micro_batch
from ssdcli.train.micro_batch import MICRO_BATCH_ENV, candidate_sizes, fixed_micro_batch, run_micro_batch
from ssdcli.train.state import LEGACY_MICRO_BATCH, TrainState

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vgg():
    return build_model("ssd300", num_classes=2)


@pytest.fixture(autouse=True)
def timed_by_default(monkeypatch):
    monkeypatch.delenv(MICRO_BATCH_ENV, raising=False)


class FakeProbe:
    """Stands in for the timing: ``ms_per_image(k)`` per size, and the sizes it was asked."""

    def __init__(self, ms_per_image):
        self.ms_per_image, self.calls = ms_per_image, []

    def __call__(self, model, sizes, loss_fn, priors):
        self.calls.append(list(sizes))
        return {k: self.ms_per_image(k) for k in sizes}


def test_the_sizes_timed_divide_the_batch_and_include_it_up_to_eight():
    assert candidate_sizes(1) == [1]
    assert candidate_sizes(2) == [1, 2]
    assert candidate_sizes(3) == [1, 3]
    assert candidate_sizes(6) == [1, 2, 6]
    assert candidate_sizes(8) == [1, 2, 4, 8]
    assert candidate_sizes(12) == [1, 2, 4]  # 8 leaves a short pass; 12 in one is more than the timing's 8
    assert candidate_sizes(32) == [1, 2, 4, 8]


def test_the_environment_fixes_the_choice_and_bad_values_say_what_to_give():
    assert fixed_micro_batch(8, {}) is None
    assert fixed_micro_batch(8, {MICRO_BATCH_ENV: "auto"}) is None
    assert fixed_micro_batch(8, {MICRO_BATCH_ENV: "whole"}) == 8
    assert fixed_micro_batch(8, {MICRO_BATCH_ENV: " 2 "}) == 2
    assert fixed_micro_batch(8, {MICRO_BATCH_ENV: "16"}) == 8  # never more than the batch
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(UserError, match=rf"\${MICRO_BATCH_ENV}={bad}: give a number of images per training pass"):
            fixed_micro_batch(8, {MICRO_BATCH_ENV: bad})


def test_the_fastest_per_image_is_chosen_said_and_cached_per_batch_size(vgg, tmp_path, monkeypatch):
    # whole batches are cheapest per image here (as on the Sapphire Rapids)
    fake = FakeProbe(lambda k: {1: 1000.0, 2: 950.0, 4: 900.0, 8: 880.0}[k])
    monkeypatch.setattr(micro_batch, "probe", fake)
    priors = priors_for_model(vgg)
    notes = []
    assert run_micro_batch(vgg, CPU, 8, MultiBoxLoss(), priors, notes=notes.append, cache_dir=tmp_path) == 8
    assert fake.calls == [[1, 2, 4, 8]]
    assert "timing training passes of 1, 2, 4 and 8 images" in notes[0]
    assert notes[1].startswith("1000 / 950 / 900 / 880 ms per image at 1 / 2 / 4 / 8 images per pass: training 8 at a time")
    saved = json.loads(next((tmp_path / "choices").glob("train-ssd300-b8-*.json")).read_text())
    assert saved["images_per_pass"] == 8 and saved["ms_per_image"]["1"] == 1000.0
    # the next run on this machine reads the decision: no timing, nothing said
    notes.clear()
    assert run_micro_batch(vgg, CPU, 8, MultiBoxLoss(), priors, notes=notes.append, cache_dir=tmp_path) == 8
    assert fake.calls == [[1, 2, 4, 8]] and notes == []
    # another batch size is another decision; image by image wins here (as on the AMD EPYC)
    fake.ms_per_image = lambda k: 900.0 + 10 * k
    assert run_micro_batch(vgg, CPU, 2, MultiBoxLoss(), priors, cache_dir=tmp_path) == 1
    assert fake.calls[-1] == [1, 2]


def test_no_timing_where_there_is_no_choice(vgg, tmp_path, monkeypatch):
    def never(*args):
        raise AssertionError("timed")

    monkeypatch.setattr(micro_batch, "probe", never)
    priors = priors_for_model(vgg)
    loss_fn = MultiBoxLoss()
    assert run_micro_batch(vgg, torch.device("cuda"), 8, loss_fn, priors, cache_dir=tmp_path) == 8  # GPU: whole
    lite = build_model("ssdlite320", num_classes=2)
    assert run_micro_batch(lite, CPU, 8, loss_fn, priors_for_model(lite), cache_dir=tmp_path) == 8  # BatchNorm
    assert run_micro_batch(vgg, CPU, 1, loss_fn, priors, cache_dir=tmp_path) == 1
    assert run_micro_batch(vgg, CPU, 8, loss_fn, priors, saved=2, cache_dir=tmp_path) == 2  # a resume keeps its own
    monkeypatch.setenv(MICRO_BATCH_ENV, "whole")
    assert run_micro_batch(vgg, CPU, 8, loss_fn, priors, cache_dir=tmp_path) == 8
    monkeypatch.setenv(MICRO_BATCH_ENV, "4")
    assert run_micro_batch(vgg, CPU, 8, loss_fn, priors, saved=1, cache_dir=tmp_path) == 1  # the resume still wins
    assert not (tmp_path / "choices").exists()


def test_a_cache_that_cannot_be_written_is_only_said(vgg, tmp_path, monkeypatch):
    monkeypatch.setattr(micro_batch, "probe", FakeProbe(lambda k: 10.0 / k))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    notes = []
    assert run_micro_batch(vgg, CPU, 2, MultiBoxLoss(), priors_for_model(vgg), notes=notes.append,
                           cache_dir=blocker) == 2
    assert "cannot save the training pass decision" in notes[-1] and "timed again next run" in notes[-1]


class TinyDetector(nn.Module):
    """An SSD's interface on 16 default boxes of a 32 px input, without BatchNorm."""

    image_size = 32
    prior_spec = types.SimpleNamespace(variances=(0.1, 0.2))

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=8, padding=1)  # (N, 8, 4, 4)
        self.cls = nn.Conv2d(8, 3, 1)
        self.loc = nn.Conv2d(8, 4, 1)

    def forward(self, images):
        features = torch.relu(self.conv(images))
        return (self.cls(features).flatten(2).transpose(1, 2), self.loc(features).flatten(2).transpose(1, 2))


def test_the_probe_times_real_passes_and_leaves_the_model_and_random_state_as_they_were(monkeypatch):
    monkeypatch.setattr(micro_batch, "PROBE_SECONDS", 0.0)
    model = TinyDetector().eval()
    grid = (torch.arange(4) + 0.5) / 4
    cy, cx = torch.meshgrid(grid, grid, indexing="ij")
    priors = torch.stack([cx.flatten(), cy.flatten(), torch.full((16,), 0.4), torch.full((16,), 0.5)], dim=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    passes = []
    model.register_forward_hook(lambda module, args, output: passes.append((args[0].shape[0], module.training)))
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    ms = micro_batch.probe(model, [1, 2, 4], MultiBoxLoss(), priors)
    assert set(ms) == {1, 2, 4} and all(v > 0 for v in ms.values())
    rounds = micro_batch.PROBE_WARMUP + micro_batch.PROBE_ROUNDS
    assert sorted(passes) == sorted([(k, True) for k in (1, 2, 4)] * rounds)  # real passes, in training mode
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_checkpoints_keep_the_number_and_older_ones_read_as_image_by_image():
    state = TrainState(micro_batch=4)
    checkpoint = {"epoch": 0, "iteration": 3, "train_state": state.train_state()}
    assert TrainState.from_checkpoint(checkpoint).micro_batch == 4
    del checkpoint["train_state"]["micro_batch"]
    assert TrainState.from_checkpoint(checkpoint).micro_batch == LEGACY_MICRO_BATCH == 1


class StopAfterOneBatch(Callbacks):
    def on_batch_end(self, epoch, batch, stats):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_a_vgg_run_trains_with_the_timed_number_and_its_resume_keeps_it(synth, tmp_path, tiny_config, monkeypatch):
    passes = []

    def recording(model, images, target_labels, target_deltas, loss_fn, scaler=None, amp=False, micro_batch=None):
        passes.append(micro_batch)
        zero = torch.zeros(())
        return LossOutput(total=zero, loc=zero, conf=zero, num_positives=torch.tensor(1))

    monkeypatch.setattr(epoch, "forward_backward", recording)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    fake = FakeProbe(lambda k: 10.0 / k)  # the whole batch of 2 in one pass is the fastest
    monkeypatch.setattr(micro_batch, "probe", fake)
    notes = []
    callbacks = StopAfterOneBatch()
    callbacks.on_note = notes.append
    config = tiny_config(synth, tmp_path / "run", arch="ssd300", epochs=2, limit_batches=1)
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(config, callbacks)
    assert passes == [2] and fake.calls == [[1, 2]] and "training 2 at a time" in notes[-1]
    assert load_checkpoint(stopped.value.checkpoint, for_resume=True)["train_state"]["micro_batch"] == 2
    # this machine now times image by image faster, and its cache is gone: the resume keeps 2
    fake.ms_per_image = lambda k: float(k)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "another cache"))
    fit(None, resume=stopped.value.checkpoint)
    assert passes == [2, 2] and fake.calls == [[1, 2]]
