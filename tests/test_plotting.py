"""ssdcli.plotting: the shared figure style, PNG writing and the training curves of metrics.csv."""

from __future__ import annotations

import cv2
import matplotlib
import numpy as np
import pytest

from ssdcli.errors import UserError
from ssdcli.plotting import draw_training_curves, new_figure, read_metrics_csv, save_png, styled, to_bgr, write_training_curves

HEADER = "epoch,train_loss,train_loc,train_conf,val_loss,val_map,lr,images_per_s,seconds,skipped_steps\n"


def test_style_is_applied_only_inside_a_drawing_function():
    before = dict(matplotlib.rcParams)

    @styled
    def draw():
        assert matplotlib.rcParams["axes.spines.top"] is False and matplotlib.rcParams["text.parse_math"] is False
        figure = new_figure(2, 1)
        figure.subplots().set_title("$not math$ [/]")
        return figure

    image = to_bgr(draw())
    assert image.shape == (100, 200, 3) and image.dtype == np.uint8
    assert dict(matplotlib.rcParams) == before


def test_training_curves_from_metrics_csv(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(
        HEADER
        + "2,5.5,2.0,3.5,6.1,0.25,0.001,10,3,0\n"  # rows out of order: sorted by epoch
        + "1,7.0,3.0,4.0,,,0.0005,10,3,0\n"  # no validation in epoch 1
        + "3,4.0,1.5,2.5,5.0,0.40,0.001,10,3,0\n"
    )
    metrics = read_metrics_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert np.isnan(metrics["val_map"][0]) and metrics["val_map"][2] == pytest.approx(0.40)
    path = write_training_curves(run / "metrics.csv")
    assert path == run / "curves.png"
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (340, 1100, 3)


def test_training_curves_without_validation_or_rows(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_loss,val_loss,val_map,lr\n1,3.0,,,0.01\n")
    figure = draw_training_curves(read_metrics_csv(csv))
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert "no validation run" in texts
    csv.write_text(HEADER)
    with pytest.raises(UserError, match="no training metrics"):
        read_metrics_csv(csv)
    with pytest.raises(UserError, match="cannot read"):
        read_metrics_csv(tmp_path / "missing.csv")


def test_unwritable_figure_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write a figure"):
        save_png(styled(lambda: new_figure(1, 1))(), tmp_path / "file" / "x.png")
