"""Each schedule against its formula."""

import math

import pytest

from quantlab import schedules as S


def test_constant():
    assert S.Constant(3.5)(0, 0) == 3.5 and S.Constant(3.5)(10**6, 99) == 3.5


@pytest.mark.parametrize("step", [0, 1, 199, 200, 201, 399, 400, 12345])
def test_exponential_step_matches_md_rule(step):
    # β ← β · scale every `interval` iterations, from β = 1 (MD paper, App. B.4).
    sched = S.ExponentialStep(start=1.0, scale=1.02, interval=200)
    assert sched(step, 0) == pytest.approx(1.02 ** (step // 200), rel=1e-12)


@pytest.mark.parametrize("t", [0, 1, 9, 10, 11, 20, 21, 95])
def test_exponential_step_after_the_step_and_skipping_the_first(t):
    # A loop that multiplies after step `it` when it % 10 == 0: step t has seen ⌈t/10⌉ of them;
    # torch 0.4's StepLR ignores the first (md-bnn's lr), so one fewer.
    after = S.ExponentialStep(scale=2.0, interval=10, applied="after_step")
    skipped = S.ExponentialStep(scale=2.0, interval=10, applied="after_step", skip_first=True)
    multiplied = []
    for it in range(t):  # the loop itself: step `it` runs, then the update
        if it % 10 == 0:
            multiplied.append(it)
    assert after(t, 0) == pytest.approx(2.0 ** len(multiplied))
    assert skipped(t, 0) == pytest.approx(2.0 ** max(0, len(multiplied) - 1))


def test_exponential_step_cap_and_the_legacy_count_zero():
    sched = S.ExponentialStep(start=1.0, scale=1.1, interval=10, cap=2.0, applied="after_step")
    assert sched(0, 0) == 1.0 and sched(1, 0) == pytest.approx(1.1) and sched(11, 0) == pytest.approx(1.21)
    assert sched(10**7, 0) == 2.0
    # Enormous exponents saturate instead of overflowing.
    assert S.ExponentialStep(scale=10.0, interval=1, cap=1e35)(10**6, 0) == 1e35
    # configs of runs started before `applied` existed keep their rule (k = ⌊t/I⌋ + 1) on resume
    legacy = S.ExponentialStep(scale=1.1, interval=10, count_zero=True)
    assert [legacy(t, 0) for t in (0, 9, 10)] == pytest.approx([1.1, 1.1, 1.21])
    with pytest.raises(ValueError, match="applied='later'"):
        S.ExponentialStep(applied="later")


def test_exponential_step_as_lr_decay():
    # lr multiplied by lr_scale every 30k iterations; the cap is a floor for decays.
    sched = S.ExponentialStep(scale=0.3, interval=30000)
    assert [sched(s, 0) for s in (0, 29999, 30000, 60000, 90000)] == pytest.approx([1, 1, 0.3, 0.09, 0.027])
    assert S.ExponentialStep(scale=0.1, interval=1, cap=1e-3)(10, 0) == 1e-3


def test_multistep():
    sched = S.MultiStep([20, 30], gamma=0.1, unit="epoch")
    assert [sched(0, e) for e in (0, 19, 20, 29, 30, 50)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_multistep_with_one_gamma_per_milestone():
    """Foothill Sec. 4.1: lr divided every 10 epochs, alternately by 5 and by 2."""
    sched = S.MultiStep([10, 20, 30, 40], gamma=[0.2, 0.5, 0.2, 0.5])
    assert [sched(0, e) for e in (0, 9, 10, 20, 30, 45)] == pytest.approx([1, 1, 0.2, 0.1, 0.02, 0.01])
    with pytest.raises(ValueError, match="2 factors for 3 milestones"):
        S.MultiStep([1, 2, 3], gamma=[0.1, 0.1])


@pytest.mark.parametrize("t", [0, 1, 7, 15, 29, 30, 45])
def test_cosine(t):
    sched = S.Cosine(total=30, final=0.1, unit="epoch")
    tc = min(t, 30)
    assert sched(0, t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * tc / 30)))


def test_linear_warmup_then_cosine():
    sched = S.LinearWarmup(warmup=8, start_factor=0.0, after=S.Cosine(total=90), unit="epoch")
    assert sched(0, 0) == 0.0
    assert sched(0, 4) == pytest.approx(0.5 * S.Cosine(total=90)(0, 4))
    assert sched(0, 8) == pytest.approx(S.Cosine(total=90)(0, 8))


def test_linear_ramp():
    sched = S.LinearRamp(start=0.0, end=2.0, begin=10, end_at=20, unit="step")
    assert [sched(s, 0) for s in (0, 10, 15, 20, 99)] == pytest.approx([0, 0, 1, 2, 2])


def test_log_epoch_foothill():
    # λ = λ0 · log(t), t the 1-based epoch.
    sched = S.LogEpoch(scale=1e-6)
    assert sched(0, 0) == 0.0
    assert sched(0, 9) == pytest.approx(1e-6 * math.log(10))


def test_tanh_ramp_waveq():
    # λ_q = 0.5 (1 + tanh((epoch − 0.2E)/20)), E = 100.
    sched = S.TanhRamp(scale=1.0, center=20, width=20, unit="epoch")
    for e in (0, 20, 50):
        assert sched(0, e) == pytest.approx(0.5 * (1 + math.tanh((e - 20) / 20)))


def test_off_until_epoch():
    sched = S.OffUntil(epoch=85, then=S.Constant(0.05))
    assert sched(0, 84) == 0.0 and sched(0, 85) == 0.05
    assert S.OffUntil(epoch=3, value=2.0)(0, 3) == 2.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        S.ExponentialStep(interval=0)
    with pytest.raises(ValueError):
        S.Cosine(total=0)
    with pytest.raises(ValueError):
        S.Constant()(0, 0) and S.MultiStep([1], unit="fortnight")(0, 0)
