"""fusednet.schedules: values per the formulas, checks at construction."""

import math

import numpy as np
import pytest

from fusednet import schedules as S

EPOCHS = (0, 1, 2, 3, 7, 10, 99)
STEPS = (0, 1, 5, 63)


@pytest.mark.parametrize("lr0", [0.1, 3, np.float32(0.5)])
def test_constant(lr0):
    s = S.Constant(lr0)
    for e in EPOCHS:
        for k in STEPS:
            assert s(e, k) == float(lr0)
    assert isinstance(s(0, 0), float)


@pytest.mark.parametrize("decay_rate", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("interval", [1, 3])
def test_inverse_time_decay(decay_rate, interval):
    s = S.InverseTimeDecay(0.2, decay_rate, time_interval=interval)
    for e in EPOCHS:
        for k in STEPS:
            expected = 0.2 / (1 + decay_rate * math.floor(e / interval))
            assert s(e, k) == pytest.approx(expected, rel=1e-15)


def test_inverse_time_decay_course_example():
    # alpha0 = 0.2, decay_rate = 1: epochs 1, 2, 3, 4 of the course give 0.1, 0.067, 0.05, 0.04
    s = S.InverseTimeDecay(0.2, 1.0)
    assert [round(s(e, 0), 3) for e in range(1, 5)] == [0.1, 0.067, 0.05, 0.04]
    assert s(0, 0) == 0.2


@pytest.mark.parametrize("base", [0.95, 0.5, 1.0])
def test_exponential_decay(base):
    s = S.ExponentialDecay(0.1, base)
    for e in EPOCHS:
        assert s(e, 17) == pytest.approx(0.1 * base**e, rel=1e-15)
    assert S.ExponentialDecay(0.1)(2, 0) == pytest.approx(0.1 * 0.95**2)


@pytest.mark.parametrize("k", [1.0, 0.5])
def test_inverse_sqrt_decay(k):
    by_epoch = S.InverseSqrtDecay(0.1, k)
    by_step = S.InverseSqrtDecay(0.1, k, per="step")
    for e in EPOCHS:
        for st in STEPS:
            assert by_epoch(e, st) == pytest.approx(0.1 * k / math.sqrt(e + 1), rel=1e-15)
            # "step" is the mini-batch index within the epoch: restarts every epoch
            assert by_step(e, st) == pytest.approx(0.1 * k / math.sqrt(st + 1), rel=1e-15)


@pytest.mark.parametrize("per", ["epoch", "step"])
def test_piecewise(per):
    s = S.Piecewise([2, 5, 9], [1.0, 0.5, 0.1, 0.01], per=per)
    expected = {0: 1.0, 1: 1.0, 2: 0.5, 4: 0.5, 5: 0.1, 8: 0.1, 9: 0.01, 1000: 0.01}
    for x, lr in expected.items():
        assert (s(x, 3) if per == "epoch" else s(3, x)) == lr
    assert S.Piecewise([], [0.3])(50, 50) == 0.3


def test_reprs():
    assert repr(S.Constant(0.1)) == "Constant(lr0=0.1)"
    assert repr(S.InverseTimeDecay(0.1, 1)) == (
        "InverseTimeDecay(lr0=0.1, decay_rate=1.0, time_interval=1)"
    )
    assert repr(S.ExponentialDecay(0.1)) == "ExponentialDecay(lr0=0.1, base=0.95)"
    assert repr(S.InverseSqrtDecay(0.1, per="step")) == (
        "InverseSqrtDecay(lr0=0.1, k=1.0, per='step')"
    )
    assert repr(S.Piecewise([3], [0.1, 0.01])) == (
        "Piecewise(boundaries=(3,), values=(0.1, 0.01), per='epoch')"
    )


@pytest.mark.parametrize(
    "build, exc, match",
    [
        (lambda: S.Constant(0.0), ValueError, "lr0"),
        (lambda: S.Constant(-1.0), ValueError, "lr0"),
        (lambda: S.Constant(float("nan")), ValueError, "lr0"),
        (lambda: S.Constant(float("inf")), ValueError, "lr0"),
        (lambda: S.Constant("0.1"), TypeError, "lr0"),
        (lambda: S.Constant(True), TypeError, "lr0"),
        (lambda: S.InverseTimeDecay(0.1, -0.5), ValueError, "decay_rate"),
        (lambda: S.InverseTimeDecay(0.1, float("inf")), ValueError, "decay_rate"),
        (lambda: S.InverseTimeDecay(0.1, 1.0, time_interval=0), ValueError, "time_interval"),
        (lambda: S.InverseTimeDecay(0.1, 1.0, time_interval=1.5), TypeError, "time_interval"),
        (lambda: S.ExponentialDecay(0.1, base=0.0), ValueError, "base"),
        (lambda: S.ExponentialDecay(0.1, base=1.05), ValueError, "base"),
        (lambda: S.ExponentialDecay(-0.1), ValueError, "lr0"),
        (lambda: S.InverseSqrtDecay(0.1, k=0.0), ValueError, "k"),
        (lambda: S.InverseSqrtDecay(0.1, per="iteration"), ValueError, "per"),
        (lambda: S.Piecewise([2, 2], [1.0, 0.5, 0.1]), ValueError, "strictly increasing"),
        (lambda: S.Piecewise([5, 2], [1.0, 0.5, 0.1]), ValueError, "strictly increasing"),
        (lambda: S.Piecewise([-1], [1.0, 0.5]), ValueError, r"boundaries\[0\]"),
        (lambda: S.Piecewise([1.5], [1.0, 0.5]), TypeError, r"boundaries\[0\]"),
        (lambda: S.Piecewise([2], [1.0]), ValueError, "len"),
        (lambda: S.Piecewise([2], [1.0, 0.5, 0.1]), ValueError, "len"),
        (lambda: S.Piecewise([2], [1.0, 0.0]), ValueError, r"values\[1\]"),
        (lambda: S.Piecewise(2, [1.0, 0.5]), TypeError, "boundaries"),
        (lambda: S.Piecewise([2], "ab"), TypeError, "values"),
        (lambda: S.Piecewise([2], [1.0, 0.5], per="batch"), ValueError, "per"),
    ],
)
def test_bad_arguments_raise_at_construction(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


@pytest.mark.parametrize(
    "s", [S.Constant(0.1), S.InverseSqrtDecay(0.1), S.Piecewise([1], [0.1, 0.2])], ids=repr
)
def test_negative_counters_are_rejected(s):
    with pytest.raises(ValueError, match="from 0"):
        s(-1, 0)
    with pytest.raises(ValueError, match="from 0"):
        s(0, -1)


def test_as_schedule():
    assert S.as_schedule(None) is None
    c = S.as_schedule(0.05)
    assert isinstance(c, S.Constant) and c(3, 4) == 0.05
    assert isinstance(S.as_schedule(np.float64(0.5)), S.Constant)
    s = S.ExponentialDecay(0.1)
    assert S.as_schedule(s) is s

    def f(epoch, step):
        return 0.1

    assert S.as_schedule(f) is f
    with pytest.raises(ValueError, match="lr0"):
        S.as_schedule(-1.0)
    for bad in ("0.1", [0.1], True):
        with pytest.raises(TypeError, match="schedule"):
            S.as_schedule(bad)


def test_schedules_drive_the_optimiser_lr():
    from fusednet.optim import GD

    sched = S.ExponentialDecay(0.5, 0.5)
    opt = GD()
    w, g = np.zeros(2), np.ones(2)
    for epoch in range(3):
        for step in range(2):
            opt.step(w, g, sched(epoch, step))
    np.testing.assert_allclose(w, -(2 * (0.5 + 0.25 + 0.125)), rtol=1e-15)
    assert opt.lr == 0.1
