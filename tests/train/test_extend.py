"""Extending a run (--resume last.pt --epochs N), stopping early (--patience K), and resuming a
run that has nothing left to do."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from ssdcli.checkpoint import load_checkpoint
from ssdcli.cli.app import app
from ssdcli.train import Callbacks, TrainingInterrupted, fit
from ssdcli.train.schedule import WARMUP_START


class LearningRates(Callbacks):
    """Records the learning rate of every step; Ctrl-C after ``stop_after`` steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.lrs: list[float] = []
        self.stop_after = stop_after

    def on_batch_end(self, epoch, batch, stats):
        self.lrs.append(stats["lr"])
        if len(self.lrs) == self.stop_after:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_extending_a_finished_run(synth, tmp_path, tiny_config, read_metrics):
    # cosine (ssdlite320's recipe), 3 steps an epoch, warm-up 2: the plan ends at lr 0 after step 3
    config = tiny_config(synth, tmp_path / "run", limit_batches=3)
    first = fit(config)
    base = config.lr
    more = LearningRates()
    result = fit(None, more, resume=first.last, overrides={"epochs": 2})
    # a warm restart: warm-up from 1/3 over 2 steps, then a cosine over the 3 added steps
    # step 3: 1/3 x 1; step 4: (1/3 x 0.5 + 0.5) x 0.5 (1 + cos(pi / 3)); step 5: 0.5 (1 + cos(2 pi / 3))
    assert more.lrs == pytest.approx([base * WARMUP_START, base * (2 / 3) * 0.75, base * 0.25])
    assert [int(r["epoch"]) for r in read_metrics(result.output / "metrics.csv")] == [1, 2]
    last = load_checkpoint(result.last, for_resume=True)
    assert last["epoch"] == 2 and last["config"]["epochs"] == 2
    assert last["scheduler"]["plan"]["start_iter"] == 3 and last["scheduler"]["plan"]["total_iters"] == 6
    assert json.loads((result.output / "config.json").read_text())["epochs"] == 2  # the run's settings now

    # multistep ends at gamma^2 = 0.01: the added epoch goes on at that rate
    steps = fit(tiny_config(synth, tmp_path / "steps", limit_batches=2, schedule="multistep"))
    more = LearningRates()
    fit(None, more, resume=steps.last, overrides={"epochs": 2})
    assert more.lrs == pytest.approx([config.lr * 0.01] * 2)


@pytest.mark.slow
def test_extending_mid_run_keeps_the_learning_rate_continuous(synth, tmp_path, tiny_config):
    config = tiny_config(synth, tmp_path / "run", epochs=2)  # cosine over 4 steps, warm-up 2
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(config, LearningRates(stop_after=2))
    more = LearningRates()
    fit(None, more, resume=stopped.value.checkpoint, overrides={"epochs": 3})
    # step 2 of the 4-step plan: progress 0.5, factor 0.5; the remaining half of the cosine is then
    # spread over steps 2..6: progress 0.5 + 0.5 x (i - 2) / 4
    expected = [0.5 * (1 + math.cos(math.pi * (0.5 + 0.5 * (i - 2) / 4))) for i in range(2, 6)]
    assert more.lrs == pytest.approx([config.lr * f for f in expected])
    assert more.lrs[0] == pytest.approx(config.lr * 0.5)  # what the 2-epoch run had at that step


def test_resuming_a_finished_run_says_so(synth, tmp_path, tiny_config):
    first = fit(tiny_config(synth, tmp_path / "run", limit_batches=1))
    again = fit(None, resume=first.last)
    assert again.rows == [] and "is finished: 1 of 1 epochs done" in again.finished
    result = CliRunner().invoke(app, ["train", "--resume", str(first.last)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and "finished: 1 of 1 epochs done" in result.stdout
    assert "--epochs N" in result.stdout and "resuming at" not in result.output and "summary" not in result.output
    fewer = CliRunner().invoke(app, ["train", "--resume", str(first.last), "--epochs", "1"])
    assert fewer.exit_code == 0 and "finished" in fewer.stdout


@pytest.fixture
def scripted_map(monkeypatch):
    """Validation returns the next of a list of mAPs (precise BN is skipped): patience, literally."""
    import ssdcli.train.loop as loop

    maps: list[float] = []

    def validate(model, dataset, device, **kwargs):
        return {"val_loss": 1.0, "val_map": maps.pop(0)}

    monkeypatch.setattr(loop, "validate", validate)
    monkeypatch.setattr(loop, "recompute_batchnorm_stats", lambda *args, **kwargs: False)
    return maps


@pytest.mark.slow
def test_patience_stops_keeps_the_best_and_survives_resume(synth, tmp_path, tiny_config, scripted_map, read_metrics):
    config = tiny_config(synth, tmp_path / "run", epochs=6, limit_batches=1, val_data=str(synth), val_split="val",
                         eval_every=1, patience=2)
    scripted_map += [0.5, 0.4, 0.45]
    result = fit(config)
    # epoch 1 is the best; epochs 2 and 3 are not better: two validations without a better mAP
    assert [r["epoch"] for r in result.rows] == [1, 2, 3]
    assert result.stopped_early.startswith("stopped early after epoch 3 of 6")
    assert "best.pt is epoch 1 (mAP 0.5000)" in result.stopped_early
    assert load_checkpoint(result.best)["metrics"]["epoch"] == 1
    assert load_checkpoint(result.last, for_resume=True)["train_state"]["stale_validations"] == 2
    # resumed as it is, the run is done; with more patience it goes on, counting from where it was
    assert "stopped early at epoch 3" in fit(None, resume=result.last).finished
    scripted_map += [0.6, 0.55, 0.5]
    more = fit(None, resume=result.last, overrides={"patience": 3})
    assert [r["epoch"] for r in more.rows] == [4, 5, 6] and more.stopped_early is None
    assert load_checkpoint(more.best)["metrics"]["epoch"] == 4
    assert [int(r["epoch"]) for r in read_metrics(result.output / "metrics.csv")] == [1, 2, 3, 4, 5, 6]
