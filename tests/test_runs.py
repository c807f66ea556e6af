"""Run folders never overwrite (not even when two runs start together); metrics.csv drops the rows a
resumed run redoes; run files follow the umask."""

from __future__ import annotations

import csv

import pytest

from ssdcli.runs import METRIC_COLUMNS, MetricsLog, next_run_dir


def test_run_folders_never_overwrite(tmp_path):
    base = tmp_path / "train"
    assert next_run_dir(base) == base
    base.mkdir()
    assert next_run_dir(base) == tmp_path / "train2"
    (tmp_path / "train2").mkdir()
    assert next_run_dir(base) == tmp_path / "train3"


def test_metrics_log_truncates_epochs_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "train_loss": 1.0 / epoch, "lr": 0.001})
    log.truncate_after(2)  # last.pt says 2 epochs are done: epoch 3 will be trained again
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[1]["train_loss"] == "0.5" and rows[1]["val_map"] == ""  # not measured: empty
    assert list(rows[0]) == list(METRIC_COLUMNS)


def test_runs_started_together_each_claim_their_own_folder(tmp_path):
    import threading

    from ssdcli.runs import claim_run_dir

    base = tmp_path / "runs" / "train"
    barrier = threading.Barrier(8)
    claimed: list = []

    def start():
        barrier.wait()  # all eight look for a free name at the same moment
        claimed.append(claim_run_dir(base))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(path.name for path in claimed)
    assert names == sorted(["train"] + [f"train{n}" for n in range(2, 9)])  # eight folders, none shared
    assert all(path.is_dir() for path in claimed)


def test_claiming_skips_a_folder_taken_since_the_name_was_chosen(tmp_path, monkeypatch):
    import ssdcli.runs as runs

    base = tmp_path / "train"
    real = runs.next_run_dir

    def racing(candidate):
        chosen = real(candidate)
        if chosen == base and not base.exists():
            base.mkdir()  # another run takes it between the choice and the mkdir
            (base / "last.pt").write_text("theirs")
        return chosen

    monkeypatch.setattr(runs, "next_run_dir", racing)
    assert runs.claim_run_dir(base) == tmp_path / "train2"
    assert (base / "last.pt").read_text() == "theirs"


def test_metrics_log_upgrades_an_old_header_and_knows_its_last_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    old_columns = METRIC_COLUMNS[:10]  # before the timing columns
    path.write_text(",".join(old_columns) + "\r\n" + "1,2.0,1.0,1.0,,,0.001,3.0,10.0,0\r\n")
    log = MetricsLog(path)
    assert log.last_epoch() == 1 and MetricsLog(tmp_path / "none.csv").last_epoch() == 0
    log.truncate_after(1)  # what a resumed run does first
    log.append({"epoch": 2, "train_loss": 1.5, "epoch_seconds": 12.5})
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [row["epoch"] for row in rows] == ["1", "2"] and rows[0]["epoch_seconds"] == ""
    assert rows[1]["epoch_seconds"] == "12.5"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_run_files_follow_the_umask(tmp_path, umask):
    import os

    import torch

    from ssdcli.runs import write_json, write_manifest

    previous = os.umask(umask)
    try:
        write_json(tmp_path / "config.json", {"epochs": 1})
        write_manifest(tmp_path / "manifest.json", seed=0, device=torch.device("cpu"), world_size=1)
    finally:
        os.umask(previous)
    for name in ("config.json", "manifest.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # as any file the user creates
