"""The zero-detection hint: the best score a run saw and the --min-score that would show it."""

from __future__ import annotations

import math

import pytest
import torch

from ssdcli.inference import Timings
from ssdcli.score_hint import best_class_scores, no_detection_message, suggested_min_score


def test_best_class_scores_is_the_max_foreground_probability_per_class():
    # one image, two default boxes, background + 2 classes
    cls_logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.5, 0.1, 0.4]]]))  # (1, 2, 3): softmax = these
    assert torch.allclose(best_class_scores(cls_logits), torch.tensor([0.2, 0.4]))


def test_timings_fold_batches_by_maximum_ignoring_nan():
    timings = Timings()
    assert timings.best_scores is None
    timings.see_scores(torch.tensor([0.1, math.nan, 0.3]))
    timings.see_scores(torch.tensor([0.2, math.nan, 0.05]))
    timings.see_scores(torch.tensor([math.nan, math.nan, 0.1]))
    assert torch.equal(timings.best_scores[[0, 2]], torch.tensor([0.2, 0.3])) and math.isnan(timings.best_scores[1])


@pytest.mark.parametrize(
    ("best", "floor", "expected"),
    [
        (0.268, 0.0, 0.25),  # the largest multiple of 0.05 below it
        (0.25, 0.0, 0.2),  # strictly below: a detection must score *above* the threshold
        (0.3, 0.0, 0.25),
        (0.051, 0.0, 0.05),
        (0.05, 0.0, 0.04),  # no multiple of 0.05 left: hundredths
        (0.043, 0.0, 0.04),
        (0.0062, 0.0, 0.006),  # thousandths
        (0.0004, 0.0, 0.0),
        (0.22, 0.21, 0.21),  # an exported model refuses thresholds below its own
    ],
)
def test_suggested_min_score(best, floor, expected):
    value = suggested_min_score(best, floor)
    assert value == pytest.approx(expected) and (value < best or value == floor)


def test_message_names_the_best_score_of_the_kept_classes_and_a_threshold_that_shows_it():
    best = torch.tensor([0.268, 0.9, math.nan])
    message = no_detection_message(0.3, best, 0.0, 12, labels=torch.tensor([1, 3]))
    assert message == "no detection scored above 0.3 on 12 images; the best score was 0.268: try --min-score 0.25"
    message = no_detection_message(0.3, best[:1], 0.0, 1, 40)
    assert message.startswith("no detection scored above 0.3 on 1 image and 40 video frames; the best score was 0.268")
    assert no_detection_message(0.3, None, 0.0, 0, 2) == "no detection scored above 0.3 on 2 video frames; try a lower --min-score"


def test_message_of_an_exported_model_that_hides_low_scores():
    unseen = torch.full((3,), math.nan)
    assert no_detection_message(0.5, unseen, 0.05, 4) == (
        "no detection scored above 0.5 on 4 images, nor above 0.05, the lowest score this exported model returns"
    )
    assert "returns no score at or below 0.5" in no_detection_message(0.5, unseen, 0.5, 4)
    # a best score it returned (above its export threshold 0.2) gives a threshold it accepts
    seen = torch.tensor([0.22, math.nan, math.nan])
    assert no_detection_message(0.5, seen, 0.21, 4).endswith("the best score was 0.220: try --min-score 0.21")
