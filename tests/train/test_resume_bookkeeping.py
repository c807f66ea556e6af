"""Resume bookkeeping (issue 19 item 14): whatever moment a run is stopped at, the resumed run ends
with the weights, BatchNorm buffers and metrics rows of the run that was never stopped."""

from __future__ import annotations

import signal

import pytest
import torch

from ssdcli.checkpoint import load_checkpoint
from ssdcli.train import Callbacks, TrainingInterrupted, fit

COMPARED = ("epoch", "train_loss", "train_loc", "train_conf", "val_loss", "val_map", "lr", "skipped_steps")
"""The columns two runs of the same settings agree on (the timings differ)."""


def _config(tiny_config, synth, output):
    # 2 epochs of 2 batches, validated every epoch; last.pt also after every 2nd iteration, i.e.
    # right at each epoch's end
    return tiny_config(synth, output, epochs=2, val_data=str(synth), val_split="val", eval_every=1, save_every=2)


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory, tiny_config):
    """The run never stopped."""
    return fit(_config(tiny_config, synth, tmp_path_factory.mktemp("straight") / "run"))


def _assert_same_run(straight, resumed, read_metrics):
    a = load_checkpoint(straight.last)["model"]
    b = load_checkpoint(resumed.last)["model"]
    tracked = [k for k in a if k.endswith("num_batches_tracked")]
    assert tracked and all(int(a[k]) == int(b[k]) == 4 for k in tracked)  # 4 training steps, each counted once
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = read_metrics(straight.output / "metrics.csv"), read_metrics(resumed.output / "metrics.csv")
    assert [[r[c] for c in COMPARED] for r in rows_b] == [[r[c] for c in COMPARED] for r in rows_a]
    assert float(rows_b[0]["train_loss"]) > 0  # not the row of zeros of an epoch with no batches


class StopInValidation(Callbacks):
    """Ctrl-C while the first validation runs."""

    def on_validation_batch(self, epoch, batch):
        raise KeyboardInterrupt


class KilledAfterTheLastBatch(Callbacks):
    """The process dies (no Ctrl-C handler runs) once the epoch's batches are done, after the
    --save-every save at the epoch's end."""

    def on_precise_bn_start(self, epoch, num_batches):
        raise RuntimeError("killed")


@pytest.mark.slow
def test_ctrl_c_during_validation_resumes_to_the_same_run(synth, tmp_path, tiny_config, straight, read_metrics):
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(_config(tiny_config, synth, tmp_path / "run"), StopInValidation())
    assert load_checkpoint(stopped.value.checkpoint, for_resume=True)["train_state"]["batch_in_epoch"] == 2
    _assert_same_run(straight, fit(None, resume=stopped.value.checkpoint), read_metrics)


@pytest.mark.slow
def test_a_kill_after_the_save_at_an_epochs_end_resumes_to_the_same_run(synth, tmp_path, tiny_config, straight,
                                                                       read_metrics):
    with pytest.raises(RuntimeError, match="killed"):
        fit(_config(tiny_config, synth, tmp_path / "run"), KilledAfterTheLastBatch())
    last = tmp_path / "run" / "last.pt"
    saved = load_checkpoint(last, for_resume=True)
    assert saved["epoch"] == 0 and saved["train_state"]["batch_in_epoch"] == 2  # the --save-every save
    _assert_same_run(straight, fit(None, resume=last), read_metrics)


@pytest.mark.slow
def test_ctrl_c_in_the_middle_of_a_step_waits_for_the_step_to_end(synth, tmp_path, tiny_config, straight,
                                                                  read_metrics, monkeypatch):
    import ssdcli.train.epoch as epoch_module

    real = epoch_module.forward_backward
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        out = real(*args, **kwargs)  # the forward pass has counted the batch in BatchNorm
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C before the optimizer step
        return out

    monkeypatch.setattr(epoch_module, "forward_backward", interrupted)
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(_config(tiny_config, synth, tmp_path / "run"))
    monkeypatch.setattr(epoch_module, "forward_backward", real)
    saved = load_checkpoint(stopped.value.checkpoint, for_resume=True)
    assert saved["iteration"] == 3  # the step that was under way was finished, then saved
    _assert_same_run(straight, fit(None, resume=stopped.value.checkpoint), read_metrics)


def test_resume_removes_the_temp_files_of_a_killed_writer(synth, tmp_path, tiny_config):
    from ssdcli.train.checkpoints import save_last
    from ssdcli.train.setup import build_run

    run = build_run(tiny_config(synth, tmp_path / "run"), Callbacks())
    save_last(run, {})
    dead = tmp_path / "run" / ".last.pt.999999999.abcd1234.tmp"  # pid that cannot be running
    dead.write_bytes(b"half a checkpoint")
    other = tmp_path / "run" / "notes.tmp"
    other.write_text("mine")
    build_run(None, Callbacks(), resume=run.last_path)
    assert not dead.exists() and other.exists()


def test_a_last_pt_from_before_the_new_entries_still_resumes():
    from ssdcli.train.state import TrainState

    old = {"epoch": 3, "iteration": 30, "scheduler": {"kind": "multistep", "iteration": 30, "lr_scale": 1.0},
           "train_state": {"batch_in_epoch": 0, "lr_scale": 0.1, "best_metric": 0.25}}
    state = TrainState.from_checkpoint(old)
    assert (state.epoch, state.iteration, state.lr_scale, state.best_metric) == (3, 30, 0.1, 0.25)
    # no plan (build_run then plans it from the saved epochs), no patience count, an empty epoch
    assert state.plan is None and state.stale_validations == 0 and state.best_epoch is None
    assert state.epoch_sums == [0.0] * 6
