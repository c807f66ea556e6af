"""Multi-process training: DistInfo from torchrun's variables, the collectives with one process and
with two (gloo), and a whole training run under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

from ssdcli.checkpoint import load_checkpoint
from ssdcli.train import distributed
from ssdcli.train.distributed import DistInfo


def _run_torchrun(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A session of its own so that, on a hang, torchrun's worker processes die with it.
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"torchrun with 2 processes did not finish within {timeout} s")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_without_torchrun_it_is_one_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_torchrun()
    info = distributed.setup("cpu")
    assert info == DistInfo(rank=0, local_rank=0, world_size=1)
    assert not info.enabled and info.is_main


def test_dist_info_comes_from_torchrun_variables(monkeypatch):
    # A one-process torchrun: the variables are read, no process group is needed.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.launched_by_torchrun()
    info = distributed.setup("cpu")
    assert info == DistInfo(rank=0, local_rank=3, world_size=1)
    assert not dist.is_initialized()
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.setup("cpu").local_rank == 0  # LOCAL_RANK is optional
    monkeypatch.delenv("WORLD_SIZE")
    assert not distributed.launched_by_torchrun()  # RANK alone is not torchrun


def test_rank_and_world_size_decide_enabled_and_main():
    assert DistInfo(rank=1, world_size=2).enabled and not DistInfo(rank=1, world_size=2).is_main
    assert DistInfo(rank=0, world_size=4).is_main
    assert not DistInfo().enabled


def test_collectives_are_identities_for_one_process():
    info = DistInfo()
    values = torch.tensor([1.0, 2.5], dtype=torch.float64)
    summed = distributed.all_reduce_sum(values, info)
    assert torch.equal(summed, values) and summed is not values  # a copy: the caller's tensor stays
    assert distributed.any_process(True, info, torch.device("cpu")) is True
    assert distributed.any_process(False, info, torch.device("cpu")) is False
    payload = {"output": "runs/train3"}
    assert distributed.broadcast_object(payload, info) is payload
    distributed.barrier(info)  # no process group: returns at once
    distributed.teardown()
    assert not dist.is_initialized()


COLLECTIVES = textwrap.dedent(
    """
    import json, sys
    import torch
    from ssdcli.train import distributed

    info = distributed.setup("cpu")
    out = {
        "info": [info.rank, info.local_rank, info.world_size, info.enabled, info.is_main],
        # rank r contributes [r + 1, 10 * r]: the sum over ranks 0 and 1 is [3, 10]
        "sum": distributed.all_reduce_sum(torch.tensor([info.rank + 1.0, 10.0 * info.rank]), info).tolist(),
        "any_one": distributed.any_process(info.rank == 1, info, torch.device("cpu")),
        "any_none": distributed.any_process(False, info, torch.device("cpu")),
        "broadcast": distributed.broadcast_object(f"from rank {info.rank}", info),
    }
    distributed.barrier(info)
    distributed.teardown()
    with open(f"{sys.argv[1]}/rank{info.rank}.json", "w") as handle:
        json.dump(out, handle)
    """
)


@pytest.mark.slow
def test_collectives_across_two_processes(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    completed = _run_torchrun([str(script), str(tmp_path)], timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["info"] == [0, 0, 2, True, True] and ranks[1]["info"] == [1, 1, 2, True, False]
    for result in ranks:
        assert result["sum"] == [3.0, 10.0]
        assert result["any_one"] is True and result["any_none"] is False  # every rank takes the same branch
        assert result["broadcast"] == "from rank 0"


@pytest.mark.slow
def test_two_processes_with_gloo_train_and_only_rank0_writes(synth, tmp_path, read_metrics, train_args):
    out = tmp_path / "ddp"
    # validated, with --patience: every process must take rank 0's decision (its mAP is broadcast)
    completed = _run_torchrun(["-m", "ssdcli", *train_args(synth, out, "--epochs", "1", "--limit-batches", "2",
                                                           "--val-data", str(synth), "--val-split", "val",
                                                           "--eval-every", "1", "--patience", "1")],
                              timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt", for_resume=True)
    assert ckpt["iteration"] == 2
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 1 and rows[0]["val_map"] != ""
    # rank 1 wrote nothing of its own: no second run folder next to ours
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    assert completed.stdout.count("training summary") == 1
