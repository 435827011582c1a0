"""Numba-backend specifics: the vectorisable point functions' error bounds, the
dropout hash in 32-bit arithmetic, and the same bits for any thread count or
chunking (the cross-backend equivalence lives in ``test_equivalence.py``)."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fusednet.kernels import _codes, reference  # noqa: E402
from fusednet.kernels import _numba as N  # noqa: E402
from fusednet.kernels import _numba_dense as D  # noqa: E402
from fusednet.kernels import _numba_flat as F  # noqa: E402
from fusednet.kernels import _numba_math as M  # noqa: E402

DTYPES = [np.float32, np.float64]
ACTS = list(_codes.ACTIVATIONS.values())
ACT_IDS = [_codes.ACTIVATION_NAMES[a] for a in ACTS]


def _elementwise(point):
    @numba.njit(fastmath=set(M.FASTMATH), error_model="numpy")
    def run(x, out):
        for i in range(x.size):
            out[i] = point(x[i])

    return run


_RUN = {name: _elementwise(getattr(M, name)) for name in ("exp", "exp_nonpos", "tanh", "sigmoid")}

EXTREMES = [0.0, -0.0, 1e-30, -1e-30, 1e-3, 0.625, 7.9, 8.0, 9.1, 20.0, 87.0, 88.7, 89.0,
            -86.4, -87.5, -88.7, -104.0, 700.0, 709.7, 710.0, -708.0, -745.0, -746.0,
            1000.0, -1000.0, 1e30, -1e30, np.inf, -np.inf]


def grid(dtype):
    tiny = float(np.finfo(dtype).smallest_subnormal)
    g = np.concatenate([
        np.linspace(-30.0, 30.0, 600_001),
        np.linspace(-1000.0, 1000.0, 200_001),
        np.geomspace(tiny, 1e3, 20_000),
        -np.geomspace(tiny, 1e3, 20_000),
        EXTREMES,
    ])
    with np.errstate(over="ignore"):
        return g.astype(dtype)


def reference_values(name, x):
    """In extended precision (x86 long double), so the float64 bounds are the kernels' own."""
    x = x.astype(np.longdouble)
    with np.errstate(over="ignore"):
        if name in ("exp", "exp_nonpos"):
            return np.exp(x)
        if name == "tanh":
            return np.tanh(x)
        return 1 / (1 + np.exp(-x))


#: max error in ulp of the exact value rounded to the dtype (the subnormal
#: spacing below the smallest normal number, so relative down to there)
BOUNDS = {
    ("exp", np.float32): 2.0,
    ("exp", np.float64): 2.0,
    ("exp_nonpos", np.float32): 1.0,
    ("exp_nonpos", np.float64): 2.0,
    ("tanh", np.float32): 3.0,
    ("tanh", np.float64): 4.0,
    ("sigmoid", np.float32): 3.0,
    ("sigmoid", np.float64): 3.0,
}


def ulp_error(got, ref, dtype):
    """``|got - ref|`` in ulp of ``ref`` rounded to ``dtype``; 0 where both round to the same inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = ref.astype(dtype)
        same = (got == ref) | (np.isinf(got) & (got == rounded))
        err = np.abs(got.astype(np.longdouble) - ref) / np.spacing(np.abs(rounded)).astype(np.longdouble)
        return np.where(same, 0.0, err.astype(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["exp", "exp_nonpos", "tanh", "sigmoid"])
def test_point_function_error_bound(name, dtype):
    x = grid(dtype)
    if name == "exp_nonpos":
        x = x[x <= 0]
    got = np.empty_like(x)
    _RUN[name](x, got)
    ref = reference_values(name, x)
    with np.errstate(over="ignore"):
        ref_d = ref.astype(dtype)
    # inf where NumPy overflows, finite elsewhere
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref_d))
    err = ulp_error(got, ref, dtype)
    worst = int(np.argmax(err))
    assert err[worst] <= BOUNDS[(name, dtype)], f"{err[worst]:.3g} ulp at x = {x[worst]!r}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_tail_is_relative_not_absolute(dtype):
    """sigmoid(-20) = 2.06e-9 and sigmoid(-80) = 1.8e-35, not 0; 0 only below the subnormal range."""
    z = np.array([-16.0, -20.0, -80.0, -100.0, -700.0, -740.0], dtype)
    got = np.empty_like(z)
    _RUN["sigmoid"](z, got)
    ref = reference_values("sigmoid", z)
    assert np.all(ulp_error(got, ref, dtype) <= 3.0)
    below = -104.0 if dtype == np.float32 else -746.0  # under half the smallest subnormal
    exact_zero = np.empty(1, dtype)
    _RUN["sigmoid"](np.array([below], dtype), exact_zero)
    assert exact_zero[0] == 0.0
    assert (got[z > below] > 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_keeps_relative_precision_near_zero(dtype):
    """tanh(x) = x (within an ulp) for tiny and subnormal x; float32 keeps the sign of a zero."""
    fi = np.finfo(dtype)
    x = np.array([0.0, -0.0, fi.smallest_subnormal, -fi.smallest_subnormal, fi.tiny, 1.5e-38, 1e-20, -3e-9],
                 dtype)
    got = np.empty_like(x)
    _RUN["tanh"](x, got)
    assert np.all(ulp_error(got, reference_values("tanh", x), dtype) <= 1.0)
    if dtype == np.float32:
        np.testing.assert_array_equal(np.signbit(got), np.signbit(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_point_function_nan_and_range(name, dtype):
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 1000.0, -1000.0], dtype)
    got = np.empty_like(x)
    _RUN[name](x, got)
    assert np.isnan(got[0]) and np.isnan(got[1])
    if name != "exp":
        lo = -1.0 if name == "tanh" else 0.0
        np.testing.assert_array_equal(got[2:], [1.0, lo, 1.0, lo])
    else:
        np.testing.assert_array_equal(got[2:], [np.inf, 0.0, np.inf, 0.0])


def test_exp_nonpos_nan_range_and_payload():
    """NaN (with any payload) stays NaN, -inf and x below the underflow point give 0, x > 0 reads as 0."""
    nan_payload = np.array([0x7FC00001, 0xFFC12345], np.uint32).view(np.float32)
    x = np.concatenate([[np.nan, -np.inf, -104.0, -1e30, -0.0, 0.0, 5.0, np.inf], nan_payload])
    x = x.astype(np.float32)
    got = np.empty_like(x)
    _RUN["exp_nonpos"](x, got)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))
    np.testing.assert_array_equal(got[1:8], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])


def test_expm1_nonpos_error_bound():
    run = _elementwise(M.expm1_nonpos_f32)
    x = grid(np.float32)
    x = x[x <= 0]
    got = np.empty_like(x)
    run(x, got)
    ref = np.expm1(x.astype(np.longdouble))
    err = ulp_error(got, ref, np.float32)
    worst = int(np.argmax(err))
    assert err[worst] <= 2.0, f"{err[worst]:.3g} ulp at x = {x[worst]!r}"


def test_log1p_unit_error_bound():
    run = _elementwise(M.log1p_unit)
    t = np.concatenate([np.linspace(0.0, 1.0, 200_001), np.geomspace(1e-300, 1.0, 20_000)])
    got = np.empty_like(t)
    run(t, got)
    ref = np.log1p(t)
    nz = ref > 0
    assert np.max(np.abs(got[nz] - ref[nz]) / ref[nz]) <= 2 * np.finfo(np.float64).eps
    assert got[0] == 0.0


def test_log1p_unit_f32_error_bound():
    """The float32 series over every 512th float32 in [0, 1] and the dense end near 1 (every float32
    there was checked once: 1.97 ulp at worst, near t = 0.0039)."""
    top = int(np.float32(1.0).view(np.uint32))
    bits = np.concatenate([np.arange(0, top + 1, 512), np.arange(top - 100_000, top + 1),
                           np.arange(0x3B7D0000, 0x3B7F0000)]).astype(np.uint32)
    t = bits.view(np.float32)
    got = np.empty_like(t)
    _elementwise(M.log1p_unit_f32)(t, got)
    ref = np.log1p(t.astype(np.longdouble))
    err = ulp_error(got, ref, np.float32)
    worst = int(np.argmax(err))
    assert err[worst] <= 2.0, f"{err[worst]:.3g} ulp at t = {t[worst]!r}"
    assert got[0] == 0.0


@numba.njit
def _hash_many(idx, k1, k2, out):
    a = np.uint32(k1)
    b = np.uint32(k2)
    for i in range(idx.size):
        out[i] = M.dropout_hash(idx[i], a, b)


@pytest.mark.parametrize("key", [0, 1, 2**32 - 1, 2**32, 2**64 - 1, _codes.dropout_key(7, 3, 11, 2)])
def test_dropout_hash_matches_reference(key):
    idx = np.concatenate([np.arange(100_000), [2**31 - 1, 2**31, 2**32 - 1]]).astype(np.int64)
    got = np.empty(idx.size, np.uint32)
    _hash_many(idx, key & 0xFFFFFFFF, key >> 32, got)
    np.testing.assert_array_equal(got, reference.dropout_hash(idx.astype(np.uint64), key))


@pytest.mark.parametrize("threshold", [0, 1, 2**31, 2**32 - 1, 2**32])
def test_dropout_threshold_edges(threshold):
    X = np.arange(1, 5001, dtype=np.float32)
    key = _codes.dropout_key(3, 1)
    ref, got = np.empty_like(X), np.empty_like(X)
    reference.dropout_apply(X, key, threshold, 2.0, ref, 1)
    N.dropout_apply(X, key, threshold, 2.0, got, 1)
    np.testing.assert_array_equal(got, ref)


# --------------------------------------------------------------------------
# same bits for any thread count, any chunking, in place or not
# --------------------------------------------------------------------------

SHAPES = [(0, 5), (1, 1), (3, 70_001), (301, 257), (2000, 10), (700, 131), (300, 1024)]


def _call_all(dtype, shape, n_threads, rng_seed=0):
    """Run every kernel once; return all outputs."""
    rng = np.random.default_rng(rng_seed)
    m, n = shape
    Z = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    dA = rng.standard_normal(shape).astype(dtype)
    out = {}
    for act in ACTS:
        A = np.empty(shape, dtype)
        N.bias_act_forward(Z, b, act, 0.01, A, n_threads)
        dZ, db = np.empty(shape, dtype), np.empty(n, dtype)
        N.act_backward(dA, A, act, 0.01, dZ, db, n_threads)
        out[f"fwd{act}"], out[f"bwd{act}"], out[f"db{act}"] = A, dZ, db
    Y = (rng.random(shape) < 0.5).astype(dtype)
    for loss in _codes.LOSSES.values():
        A = np.empty(shape, dtype)
        out[f"cost{loss}"] = np.array(N.loss_forward(Z, b, Y, loss, A, n_threads))
        out[f"loss{loss}"] = A
    dZ, db = np.empty(shape, dtype), np.empty(n, dtype)
    N.loss_backward(out["loss1"], Y, dZ, db, n_threads)
    out["lossb"], out["lossdb"] = dZ, db
    D_ = np.empty(shape, dtype)
    N.dropout_apply(Z, _codes.dropout_key(1, 2), _codes.dropout_threshold(0.7), 1 / 0.7, D_, n_threads)
    out["drop"] = D_
    if m >= 1:
        bn = [np.empty(shape, dtype), np.empty(shape, dtype)] + [np.empty(n, dtype) for _ in range(3)]
        N.batchnorm_forward_train(Z, b, b, 1e-5, *bn, n_threads)
        out.update({f"bn{i}": a for i, a in enumerate(bn)})
        grads = [np.empty(shape, dtype), np.empty(n, dtype), np.empty(n, dtype)]
        N.batchnorm_backward(dA, bn[0], b, bn[4], *grads, n_threads)
        out.update({f"bnb{i}": a for i, a in enumerate(grads)})
        inf = np.empty(shape, dtype)
        N.batchnorm_forward_infer(Z, b, b, bn[2], bn[3], 1e-5, inf, n_threads)
        out["bninf"] = inf
    size = Z.size
    w0 = Z.reshape(-1).copy()
    g = dA.reshape(-1)
    for name in ("gd", "momentum", "rmsprop", "adam", "ewa"):
        w = w0.copy()
        s1, s2 = np.abs(w0) * 0.1, np.abs(w0) * 0.01
        if name == "gd":
            N.gd_update(w, g, 0.1, 0.01, size // 3, n_threads)
        elif name == "momentum":
            N.momentum_update(w, g, s1, 0.1, 0.9, 0.5, 0.01, size // 3, n_threads)
        elif name == "rmsprop":
            N.rmsprop_update(w, g, s1, 0.1, 0.9, 1e-8, 0.01, size // 3, n_threads)
        elif name == "adam":
            N.adam_update(w, g, s1, s2, 0.1, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.01, size // 3, n_threads)
        else:
            N.ewa_update(w, g, 0.9, n_threads)
        out[name], out[name + "_s1"], out[name + "_s2"] = w, s1, s2
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bits_do_not_depend_on_thread_count(dtype, shape):
    one = _call_all(dtype, shape, 1)
    for n_threads in (2, 3, 64):
        other = _call_all(dtype, shape, n_threads)
        for key in one:
            np.testing.assert_array_equal(other[key], one[key], err_msg=f"{key}, n_threads={n_threads}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bits_do_not_depend_on_numba_pool_size(dtype):
    shape = (301, 257)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        pool1 = _call_all(dtype, shape, 2)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        pool2 = _call_all(dtype, shape, 2)
    finally:
        numba.set_num_threads(saved)
    for key in pool1:
        np.testing.assert_array_equal(pool2[key], pool1[key], err_msg=key)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_chunks", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_parallel_kernels_any_chunking(dtype, n_chunks, act):
    """The parallel kernels, called directly, give the serial bits for any chunk count."""
    rng = np.random.default_rng(act)
    shape = (203, 77)
    Z = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    A1, A2 = np.empty(shape, dtype), np.empty(shape, dtype)
    D.forward_block(Z, b, act, 0.01, A1, 0, shape[0], 0, shape[1])
    D.bias_act_forward_parallel(Z, b, act, 0.01, A2, n_chunks)
    np.testing.assert_array_equal(A2, A1)
    dA = rng.standard_normal(shape).astype(dtype)
    d1, d2 = np.empty(shape, dtype), np.empty(shape, dtype)
    b1, b2 = np.empty(shape[1], dtype), np.empty(shape[1], dtype)
    D.backward_band(dA, A1, act, 0.01, d1, b1, 0, shape[1])
    if act != _codes.SOFTMAX:  # softmax backward couples columns: serial only
        D.act_backward_parallel(dA, A1, act, 0.01, d2, b2, n_chunks)
        np.testing.assert_array_equal(d2, d1)
        np.testing.assert_array_equal(b2, b1)
    x = Z.reshape(-1)
    o1, o2 = np.empty_like(x), np.empty_like(x)
    F.dropout_span(x, 5, 6, 2**31, False, 2.0, o1, 0, x.size)
    F.dropout_parallel(x, 5, 6, 2**31, False, 2.0, o2, n_chunks)
    np.testing.assert_array_equal(o2, o1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_in_place_equals_out_of_place(dtype, n_threads, act):
    rng = np.random.default_rng(10 + act)
    shape = (400, 257)
    Z = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    A = np.empty_like(Z)
    N.bias_act_forward(Z, b, act, 0.01, A, n_threads)
    Zi = Z.copy()
    N.bias_act_forward(Zi, b, act, 0.01, Zi, n_threads)
    np.testing.assert_array_equal(Zi, A)
    dA = rng.standard_normal(shape).astype(dtype)
    dZ, db = np.empty_like(dA), np.empty(shape[1], dtype)
    N.act_backward(dA, A, act, 0.01, dZ, db, n_threads)
    dAi, dbi = dA.copy(), np.empty(shape[1], dtype)
    N.act_backward(dAi, A, act, 0.01, dAi, dbi, n_threads)
    np.testing.assert_array_equal(dAi, dZ)
    np.testing.assert_array_equal(dbi, db)
    key, thr = _codes.dropout_key(4), _codes.dropout_threshold(0.6)
    out = np.empty_like(Z)
    N.dropout_apply(Z, key, thr, 1 / 0.6, out, n_threads)
    N.dropout_apply(Z, key, thr, 1 / 0.6, Z, n_threads)
    np.testing.assert_array_equal(Z, out)


def test_column_sums_accumulate_in_float64():
    """A float32 db is a float64 sum rounded once, where a float32 running sum drifts."""
    dtype = np.float32
    m = 100_000
    dA = np.full((m, 3), 0.1, dtype)
    dA[0] = 1e4
    A = np.ones((m, 3), dtype)
    dZ, db = np.empty_like(dA), np.empty(3, dtype)
    N.act_backward(dA, A, _codes.LINEAR, 0.0, dZ, db, 2)
    exact = dA[:, 0].astype(np.float64).sum()
    np.testing.assert_array_equal(db, np.full(3, exact, dtype))
    running = np.float32(0)
    for x in dA[:1000, 0]:
        running += x
    assert running != np.float32(dA[:1000, 0].astype(np.float64).sum())


def test_loss_forward_huge_logits_float32():
    Z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 3.0]], np.float32)
    b = np.zeros(3, np.float32)
    for loss, Y in ((_codes.CCE, np.eye(3, dtype=np.float32)[[1, 0]]),
                    (_codes.BCE, np.array([[1, 0, 1], [1, 0, 0]], np.float32))):
        A = np.empty_like(Z)
        cost = N.loss_forward(Z, b, Y, loss, A, 1)
        ref = reference.loss_forward(Z.astype(np.float64), b.astype(np.float64),
                                     Y.astype(np.float64), loss, np.empty(Z.shape), 1)
        assert np.isfinite(cost) and np.all(np.isfinite(A))
        np.testing.assert_allclose(cost, ref, rtol=1e-12)


def test_n_threads_beyond_the_pool_is_capped():
    x = np.ones(200_000, np.float32)
    g = np.ones_like(x)
    N.gd_update(x, g, 0.5, 0.0, 0, 10_000)
    np.testing.assert_array_equal(x, 0.5)


def test_warmup_compiles_everything():
    N.warmup()
    for mod in (D, F):
        for name in dir(mod):
            f = getattr(mod, name)
            if isinstance(f, numba.core.registry.CPUDispatcher) and f.targetoptions.get("cache"):
                assert f.signatures, f"{mod.__name__}.{name} was not compiled"


_SOFTMAX_IN_TWO_PROCESSES = """
import sys
import numpy as np
from fusednet.kernels import _codes
from fusednet.kernels import _numba as N

S = _codes.SOFTMAX
out = {}
for dtype in (np.float32, np.float64):
    rng = np.random.default_rng(15)
    Z = (rng.standard_normal((400, 257)) * 3).astype(dtype)
    b = rng.standard_normal(257).astype(dtype)
    dA = rng.standard_normal((400, 257)).astype(dtype)
    Zi, di, db = Z.copy(), dA.copy(), np.empty(257, dtype)
    N.bias_act_forward(Zi, b, S, 0.01, Zi, 1)
    N.act_backward(di, Zi, S, 0.01, di, db, 1)
    if sys.argv[1] == "both":
        A, dZ = np.empty_like(Z), np.empty_like(dA)
        N.bias_act_forward(Z, b, S, 0.01, A, 1)
        N.act_backward(dA, A, S, 0.01, dZ, db, 1)
        print(dtype.__name__, np.array_equal(A, Zi), np.array_equal(dZ, di))
"""


@pytest.mark.slow
def test_softmax_in_place_equals_out_of_place_when_the_kernels_come_from_two_processes(tmp_path):
    """The in-place softmax kernels compiled and cached by one process, the out-of-place ones compiled
    by the next: a row's sums run in a fixed order (``_lane_sum``, ``_lane_dot``), so the bits agree
    however each kernel was compiled."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    script = tmp_path / "softmax.py"
    script.write_text(_SOFTMAX_IN_TWO_PROCESSES)
    subprocess.run([sys.executable, str(script), "in-place"], env=env, check=True, timeout=600)
    out = subprocess.run([sys.executable, str(script), "both"], env=env, check=True, timeout=600,
                         capture_output=True, text=True).stdout.split("\n")
    assert out[:2] == ["float32 True True", "float64 True True"]
