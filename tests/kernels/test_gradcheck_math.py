"""The point functions of the compiled gradient check, pinned to NumPy in float64.

``log_pos`` must be within a few ulp of NumPy over its whole range, with
NumPy's special values (the check's exp, tanh and sigmoid are the Numba
backend's, pinned by ``test_transcendental_range.py``); the
near-the-tape functions must give ``f(y0 + d)`` from the tape's ``f(y0)`` to
a few ulp of the larger of the two, for every ``|d| <= NEAR``.
"""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fusednet.kernels import _gradcheck_numba as K  # noqa: E402

FLAGS = dict(fastmath=set(K.FASTMATH), error_model="numpy")


@numba.njit(**FLAGS)
def _map1(f, x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = f(x[i])
    return out


@numba.njit(**FLAGS)
def _map2(f, x, y):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = f(x[i], y[i])
    return out


def ulps(got, want, scale=None):
    """|got - want| in units of the last place of ``scale`` (default: of want)."""
    scale = np.abs(want) if scale is None else scale
    return np.abs(got - want) / np.spacing(scale)


def grid(lo, hi, n=200_001):
    return np.linspace(lo, hi, n)


def tiny_to(hi, n=20_001):
    """Both signs, log-spaced from the smallest subnormal to ``hi``."""
    pos = np.geomspace(5e-324, hi, n)
    return np.concatenate([-pos[::-1], [0.0], pos])


# --------------------------------------------------------------------------
# the functions themselves
# --------------------------------------------------------------------------


def test_log_pos_within_2_ulp_on_normal_numbers():
    rng = np.random.default_rng(0)
    x = np.concatenate([grid(1.0, 10.0), grid(0.5, 2.0), np.geomspace(np.finfo(float).tiny, 1e308, 200_001),
                        np.exp(rng.uniform(-700, 700, 100_000)), 1.0 + np.arange(-1000, 1000) * 2.0**-52])
    want = np.log(x)
    assert ulps(_map1(K.log_pos, x), want, np.maximum(np.abs(want), 1e-300)).max() <= 2


def test_log_pos_special_values():
    x = np.array([np.nan, np.inf, 0.0, -0.0, -1.0, -np.inf, 1.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log(x)
    np.testing.assert_array_equal(_map1(K.log_pos, x), want)


# --------------------------------------------------------------------------
# near the tape
# --------------------------------------------------------------------------


def deviations(n=100_001):
    """|d| <= NEAR, log-spaced and of both signs, and 0."""
    d = np.geomspace(1e-300, K.NEAR, n // 2)
    return np.concatenate([-d, [0.0], d])


def test_expm1_and_log1p_near_within_1_ulp():
    d = deviations()
    assert ulps(_map1(K.expm1_near, d), np.expm1(d), np.maximum(np.abs(np.expm1(d)), 1e-300)).max() <= 1
    assert ulps(_map1(K.log1p_near, d), np.log1p(d), np.maximum(np.abs(np.log1p(d)), 1e-300)).max() <= 1


@pytest.mark.parametrize("name, f, ref", [("tanh", K.tanh_near, np.tanh),
                                          ("sigmoid", K.sigmoid_near, lambda y: 1.0 / (1.0 + np.exp(-y)))])
def test_near_the_tape_matches_the_function(name, f, ref):
    """``f(y0 + d)`` from ``f(y0)`` (NumPy's, as on the tape), for y0 + d exact in float64."""
    rng = np.random.default_rng(1)
    y0 = np.concatenate([rng.uniform(-6.0, 6.0, 200_000), rng.uniform(-1e-3, 1e-3, 20_000)])
    d = rng.uniform(-K.NEAR, K.NEAR, y0.size) * rng.choice([1.0, 1e-4, 1e-9], y0.size)
    y1 = y0 + d
    d = y1 - y0  # exact (Sterbenz): y1 is y0 + d in float64
    f0, f1 = ref(y0), ref(y1)
    got = _map2(f, f0, d)
    # a few ulp of the larger value: NumPy's own errors in f0 (carried along) and f1 count too
    assert ulps(got, f1, np.maximum(np.abs(f0), np.abs(f1))).max() <= 4, name


def test_near_the_tape_propagates_nan():
    nan = np.array([np.nan, 0.5])
    assert np.isnan(_map2(K.tanh_near, nan, np.array([0.0, np.nan]))).all()
    assert np.isnan(_map2(K.sigmoid_near, nan, np.array([0.0, np.nan]))).all()
