"""`ssd train`'s progress without a terminal: whole lines, one per 10 % of an epoch, never cut."""

from __future__ import annotations

from ssdcli.cli.train_progress import PlainCallbacks, RichCallbacks, epoch_end_line, start_line

INFO = {"classes": ["a", "[b]"], "train_images": 100, "val_images": 0, "device": "cpu", "world_size": 1,
        "amp": False, "lr": 0.05, "output": "runs/[x]/train", "start_epoch": 0, "epochs": 2, "batches_per_epoch": 50}
STATS = {"loss": 3.25, "loc": 1.0, "conf": 2.25, "lr": 0.05, "images_per_s": 12.5}
ROW = {"epoch": 1, "train_loss": 3.0, "train_loc": 1.0, "train_conf": 2.0, "images_per_s": 12.5, "seconds": 40.0,
       "bn_seconds": 5.0, "val_seconds": 0.0, "save_seconds": 1.0, "epoch_seconds": 46.0}


def test_plain_progress_is_a_line_per_tenth_of_an_epoch(capsys):
    callbacks = PlainCallbacks(enabled=True)
    callbacks.on_start(INFO)
    callbacks.on_epoch_start(0, 50, 0)
    for batch in range(1, 51):
        callbacks.on_batch_end(0, batch, STATS)
    callbacks.on_precise_bn_start(0, 8)
    callbacks.on_epoch_end(0, ROW)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == start_line(INFO) and "runs/[x]/train" in lines[0]  # plain text: brackets kept
    progress = lines[1:11]
    assert [line.split()[2] for line in progress] == [f"{p}%" for p in range(10, 101, 10)]  # batches 5, 10, ... 50
    assert progress[0].startswith("epoch 1/2  10% (batch 5/50): loss 3.2500 (loc 1.0000, conf 2.2500), lr 5.00e-02,"
                                  " 12.5 img/s, epoch eta ")
    assert lines[11] == "epoch 1/2: BatchNorm statistics over 8 batches of training images"
    assert lines[12].startswith("epoch 1/2 done: loss 3.0000 (loc 1.0000, conf 2.0000); 46 s (training 40 s")
    assert len(lines) == 13


def test_few_batches_give_a_line_each_and_a_resumed_epoch_starts_where_it_was(capsys):
    callbacks = PlainCallbacks(enabled=True)
    callbacks.on_start({**INFO, "start_epoch": 1, "batches_per_epoch": 3})
    callbacks.on_epoch_start(1, 3, 1)
    for batch in (2, 3):
        callbacks.on_batch_end(1, batch, STATS)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("resuming at epoch 2 of 2")
    assert [line.split()[:3] for line in lines[1:]] == [["epoch", "2/2", "66%"], ["epoch", "2/2", "100%"]]


def test_other_ranks_print_nothing(capsys):
    for kind in (PlainCallbacks, RichCallbacks):
        callbacks = kind(enabled=False)
        callbacks.on_start(INFO)
        callbacks.on_epoch_start(0, 50, 0)
        callbacks.on_batch_end(0, 50, STATS)
        callbacks.on_warning("x")
        callbacks.on_note("timing training passes")
        callbacks.on_epoch_end(0, ROW)
    assert capsys.readouterr().err == ""


def test_notes_are_plain_lines_without_a_warning_prefix(capsys):
    callbacks = PlainCallbacks(enabled=True)
    callbacks.on_note("timing training passes of 1 and 2 images on [this] machine")
    callbacks.on_warning("w")
    assert capsys.readouterr().err.splitlines() == [
        "timing training passes of 1 and 2 images on [this] machine", "warning: w"]


def test_the_epoch_line_names_where_the_time_went():
    line = epoch_end_line(0, 3, {**ROW, "val_loss": 2.5, "val_map": 0.4321, "val_seconds": 7.0}, run_eta=3725)
    assert "val loss 2.5000, VOC07 mAP 0.4321" in line
    assert "BatchNorm statistics 5 s, validation 7 s, checkpoints 1 s" in line and line.endswith("run eta 1:02:05")
    assert "run eta" not in epoch_end_line(2, 3, ROW, run_eta=10)  # the last epoch
