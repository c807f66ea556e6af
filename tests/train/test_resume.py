"""Exact resume: after Ctrl-C mid-epoch, at an epoch boundary, and after SIGKILL of the process."""

from __future__ import annotations

import pytest
import torch

from ssdcli.checkpoint import load_checkpoint
from ssdcli.train import Callbacks, TrainingInterrupted, fit


class StopAfter(Callbacks):
    """Simulates Ctrl-C after a given number of batches."""

    def __init__(self, batches: int) -> None:
        self.left = batches

    def on_batch_end(self, epoch, batch, stats):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop_after", [1, 2, 3])  # mid-epoch, at the epoch boundary, mid-epoch 2
@pytest.mark.slow
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(synth, tmp_path, stop_after, tiny_config,
                                                                  read_metrics):
    straight = fit(tiny_config(synth, tmp_path / "straight", epochs=2))
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(tiny_config(synth, tmp_path / "resumed", epochs=2), StopAfter(stop_after))
    resumed = fit(None, resume=stopped.value.checkpoint)
    assert resumed.output == tmp_path / "resumed"
    a = load_checkpoint(straight.last)["model"]
    b = load_checkpoint(resumed.last)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(read_metrics(resumed.output / "metrics.csv")) == 2
    first = read_metrics(straight.output / "metrics.csv")
    second = read_metrics(resumed.output / "metrics.csv")
    if stop_after != 2:
        return
    # resumed at an epoch boundary, the second epoch's loss is the same number
    assert first[1]["train_loss"] == second[1]["train_loss"]


@pytest.mark.slow
def test_sigkill_mid_epoch_leaves_a_loadable_last_pt_that_resumes(synth, tmp_path, read_metrics, train_args):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "ssdcli", *train_args(synth, out, "--epochs", "3", "--limit-batches", "2", "--save-every", "1")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # wait for the first checkpoint, written after iteration 1 of 6 (mid-epoch), then kill hard
        while time.monotonic() < deadline:
            if (out / "last.pt").exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared within 120 s")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(out / "last.pt", for_resume=True)  # loadable, never partial
    result = fit(None, resume=out / "last.pt")
    final = load_checkpoint(result.last, for_resume=True)
    assert final["epoch"] == 3 and final["iteration"] > killed_at["iteration"]
    assert [int(r["epoch"]) for r in read_metrics(out / "metrics.csv")] == [1, 2, 3]
