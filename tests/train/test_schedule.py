import math

import pytest

from ssdcli.train.schedule import WARMUP_START, lr_factor


def test_warmup_is_linear_from_one_third():
    assert lr_factor(0, 1000, 100) == pytest.approx(WARMUP_START)
    # halfway: 1/3 * 0.5 + 0.5 = 2/3
    assert lr_factor(50, 1000, 100) == pytest.approx(2 / 3)
    assert lr_factor(100, 1000, 100) == pytest.approx(1.0)


def test_multistep_decays_at_two_thirds_and_five_sixths():
    # 600 iterations: milestones at 400 and 500
    assert lr_factor(399, 600, 0) == pytest.approx(1.0)
    assert lr_factor(400, 600, 0) == pytest.approx(0.1)
    assert lr_factor(499, 600, 0) == pytest.approx(0.1)
    assert lr_factor(500, 600, 0) == pytest.approx(0.01)


def test_cosine_goes_to_zero():
    assert lr_factor(0, 100, 0, "cosine") == pytest.approx(1.0)
    assert lr_factor(50, 100, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(25, 100, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_warmup_longer_than_run_is_capped():
    # warm-up spans the 10 iterations; no decay yet with the milestone at the very end
    assert lr_factor(9, 10, 1000, milestones=(1.0,)) == pytest.approx(WARMUP_START * 0.1 + 0.9)


def test_unknown_schedule():
    with pytest.raises(ValueError):
        lr_factor(0, 10, 0, "linear")
