"""Run folders never overwrite; metrics.csv drops the rows a resumed run redoes."""

from __future__ import annotations

import csv

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
