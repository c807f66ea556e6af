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


# --- SchedulePlan: a fresh plan is lr_factor; extended plans stretch the rest (ssd train --resume --epochs N)

from ssdcli.train.schedule import SchedulePlan  # noqa: E402


def test_a_fresh_plan_gives_exactly_the_old_factors():
    plan = SchedulePlan.fresh(600, 100)
    for schedule in ("multistep", "cosine"):
        for iteration in (0, 50, 99, 100, 399, 400, 499, 500, 599):
            # the formulas of the schedule, written out: warm-up x step decay / cosine
            warm = WARMUP_START * (1 - iteration / 100) + iteration / 100 if iteration < 100 else 1.0
            decay = 0.1 ** ((iteration >= 400) + (iteration >= 500)) if schedule == "multistep" else (
                0.5 * (1 + math.cos(math.pi * iteration / 600)))
            assert plan.factor(iteration, schedule) == pytest.approx(warm * decay, rel=1e-12)
    assert plan.milestone_iters == (400, 500)  # round(2/3 * 600), round(5/6 * 600)


def test_extending_mid_run_stretches_the_remaining_milestones():
    plan = SchedulePlan.fresh(600, 0)  # decays at 400 and 500
    longer = plan.extended(300, 900, "multistep", warmup_iters=0)
    # the rest 300..600 becomes 300..900 (x2): 400 -> 300 + 2 * 100 = 500, 500 -> 300 + 2 * 200 = 700
    assert longer.milestone_iters == (500, 700) and longer.passed_milestones == 0
    assert [longer.factor(i) for i in (300, 499, 500, 699, 700, 899)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    # after the first decay: it stays applied, the second moves
    later = plan.extended(450, 750, "multistep", warmup_iters=0)
    assert later.passed_milestones == 1 and later.milestone_iters == (450 + round(50 * 300 / 150),)  # 550
    assert later.factor(450) == pytest.approx(plan.factor(450)) == pytest.approx(0.1)


def test_extending_a_cosine_mid_run_keeps_the_lr_continuous_and_ends_at_zero():
    plan = SchedulePlan.fresh(100, 0)
    longer = plan.extended(50, 150, "cosine", warmup_iters=0)
    assert longer.factor(50, "cosine") == pytest.approx(plan.factor(50, "cosine")) == pytest.approx(0.5)
    # progress goes linearly from 0.5 at 50 to 1 at 150: 0.75 at 100
    assert longer.factor(100, "cosine") == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))
    assert longer.factor(150, "cosine") == pytest.approx(0.0, abs=1e-12)
    shorter = plan.extended(50, 60, "cosine", warmup_iters=0)  # fewer epochs than planned: compressed
    assert shorter.factor(50, "cosine") == pytest.approx(0.5) and shorter.factor(55, "cosine") == pytest.approx(
        0.5 * (1 + math.cos(0.75 * math.pi)))


def test_a_warm_up_under_way_ends_where_it_would_have():
    plan = SchedulePlan.fresh(100, 40)
    longer = plan.extended(10, 300, "cosine", warmup_iters=40)
    assert longer.factor(10, "cosine") == pytest.approx(plan.factor(10, "cosine"))
    # the warm-up still ends at 40; the cosine part is then the stretched one
    alpha = 39 / 40
    assert longer.factor(39, "cosine") == pytest.approx(
        (WARMUP_START * (1 - alpha) + alpha) * 0.5 * (1 + math.cos(math.pi * (0.1 + 0.9 * 29 / 290))))


def test_extending_a_finished_run():
    # multistep ended at gamma^2: the extension continues at that rate (the paper's last stage)
    steps = SchedulePlan.fresh(600, 0).extended(600, 900, "multistep", warmup_iters=100)
    assert steps.factor(600) == pytest.approx(0.01) and steps.factor(899) == pytest.approx(0.01)
    # a cosine ended at 0: a warm restart, warm-up from the resume point then a new cosine to 0
    restart = SchedulePlan.fresh(600, 50).extended(600, 900, "cosine", warmup_iters=100)
    assert restart.factor(600, "cosine") == pytest.approx(WARMUP_START)
    assert restart.factor(700, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 100 / 300)))
    assert restart.factor(900, "cosine") == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        SchedulePlan.fresh(600, 0).extended(600, 600, "cosine", warmup_iters=0)


def test_a_plan_round_trips_through_its_dict():
    plan = SchedulePlan.fresh(600, 30).extended(450, 750, "multistep", warmup_iters=30)
    assert SchedulePlan.from_dict(plan.to_dict()) == plan
