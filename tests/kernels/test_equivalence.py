"""Every kernel of every backend equals the pure-NumPy reference.

Driven by the capability table: a new kernel or backend gets these tests
without editing this file.  Parametrised over backend x dtype x shape (empty,
one element, odd sizes, >= 1e5 elements), with read-only inputs where a kernel
only reads, tolerance by dtype.
"""

import zlib

import numpy as np
import pytest

from fusednet import kernels as K
from fusednet.kernels import _codes, reference

CAPS = K.capabilities()
BACKENDS = [b for b in K.available() if b != "numpy"] or ["numpy"]
DTYPES = [np.float32, np.float64]
SHAPES = [(0, 3), (1, 1), (7, 13), (129, 65), (400, 257)]
FLAT = [0, 1, 1001, 100_003]
ACTS = list(_codes.ACTIVATIONS.values())
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def kernel(backend, name):
    if name not in CAPS[backend]:
        pytest.fail(f"backend {backend} lacks kernel {name}")
    return K.resolve(name, backend)


def ro(*arrays):
    """Read-only copies: kernels that only read must accept them."""
    out = []
    for a in arrays:
        a = np.array(a)
        a.flags.writeable = False
        out.append(a)
    return out


def close(got, ref, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(got, ref, rtol=tol["rtol"] * scale, atol=tol["atol"] * scale)


def rng_for(*key):
    """A generator seeded by ``key`` alone: the same data in every process (``hash`` of a string is not)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTS, ids=[_codes.ACTIVATION_NAMES[a] for a in ACTS])
def test_bias_act_forward(backend, dtype, shape, act):
    rng = rng_for("fwd", shape, act)
    Z, b = ro((rng.standard_normal(shape) * 3).astype(dtype), rng.standard_normal(shape[1]).astype(dtype))
    ref = np.empty(shape, dtype)
    reference.bias_act_forward(Z, b, act, 0.01, ref, 1)
    for n_threads in (1, 2):
        got = np.full(shape, np.nan, dtype)
        kernel(backend, "bias_act_forward")(Z, b, act, 0.01, got, n_threads)
        close(got, ref, dtype)
        if n_threads == 1:
            first = got.copy()
    np.testing.assert_array_equal(got, first)  # same bits for any thread count


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS, ids=[_codes.ACTIVATION_NAMES[a] for a in ACTS])
def test_bias_act_forward_in_place(backend, dtype, act):
    rng = rng_for("inplace", act)
    Z = (rng.standard_normal((33, 17)) * 3).astype(dtype)
    b = rng.standard_normal(17).astype(dtype)
    ref = np.empty_like(Z)
    reference.bias_act_forward(Z, b, act, 0.2, ref, 1)
    kernel(backend, "bias_act_forward")(Z, b, act, 0.2, Z, 2)
    close(Z, ref, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [_codes.SIGMOID, _codes.TANH, _codes.SOFTMAX], ids=["sigmoid", "tanh", "softmax"])
def test_forward_saturates_without_nan(backend, dtype, act):
    Z = np.array([[-1000.0, 0.0, 1000.0], [np.finfo(dtype).max, -np.finfo(dtype).max, 1.0]], dtype)
    b = np.zeros(3, dtype)
    got = np.empty_like(Z)
    kernel(backend, "bias_act_forward")(Z, b, act, 0.01, got, 1)
    assert np.all(np.isfinite(got))
    assert np.all((got >= -1) & (got <= 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates(backend, dtype):
    Z = np.array([[np.nan, 1.0]], dtype)
    b = np.zeros(2, dtype)
    for act in ACTS:
        got = np.empty_like(Z)
        kernel(backend, "bias_act_forward")(Z, b, act, 0.01, got, 1)
        assert np.isnan(got[0, 0]), _codes.ACTIVATION_NAMES[act]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTS, ids=[_codes.ACTIVATION_NAMES[a] for a in ACTS])
def test_act_backward(backend, dtype, shape, act):
    rng = rng_for("bwd", shape, act)
    Z = (rng.standard_normal(shape) * 2).astype(dtype)
    Z[:, ::3] = 0.0  # the derivative's convention at z = 0
    A = np.empty_like(Z)
    reference.bias_act_forward(Z, np.zeros(shape[1], dtype), act, 0.01, A, 1)
    dA, A = ro(rng.standard_normal(shape).astype(dtype), A)
    ref, ref_db = np.empty(shape, dtype), np.empty(shape[1], dtype)
    reference.act_backward(dA, A, act, 0.01, ref, ref_db, 1)
    got = {}
    for n_threads in (1, 2):
        dZ, db = np.full(shape, np.nan, dtype), np.full(shape[1], np.nan, dtype)
        kernel(backend, "act_backward")(dA, A, act, 0.01, dZ, db, n_threads)
        close(dZ, ref, dtype)
        close(db, ref_db, dtype, scale=max(1.0, np.sqrt(shape[0])))
        got[n_threads] = (dZ, db)
    np.testing.assert_array_equal(got[1][0], got[2][0])
    np.testing.assert_array_equal(got[1][1], got[2][1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_backward_in_place(backend, dtype):
    rng = rng_for("bwd-inplace")
    A = rng.random((20, 9)).astype(dtype)
    dA = rng.standard_normal((20, 9)).astype(dtype)
    ref, ref_db = np.empty_like(dA), np.empty(9, dtype)
    reference.act_backward(dA, A, _codes.SIGMOID, 0.01, ref, ref_db, 1)
    db = np.empty(9, dtype)
    kernel(backend, "act_backward")(dA, A, _codes.SIGMOID, 0.01, dA, db, 2)
    close(dA, ref, dtype)
    close(db, ref_db, dtype, scale=5)


def targets(loss, shape, rng, dtype):
    m, k = shape
    if loss == _codes.CCE:
        Y = np.zeros(shape, dtype)
        if m and k:
            Y[np.arange(m), rng.integers(0, k, m)] = 1
        return Y
    if loss == _codes.BCE:
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


LOSSES = list(_codes.LOSSES.values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", LOSSES, ids=list(_codes.LOSSES))
def test_loss_forward(backend, dtype, shape, loss):
    rng = rng_for("loss", shape, loss)
    Z, b, Y = ro(
        (rng.standard_normal(shape) * 3).astype(dtype),
        rng.standard_normal(shape[1]).astype(dtype),
        targets(loss, shape, rng, dtype),
    )
    ref = np.empty(shape, dtype)
    ref_cost = reference.loss_forward(Z, b, Y, loss, ref, 1)
    got = np.full(shape, np.nan, dtype)
    cost = kernel(backend, "loss_forward")(Z, b, Y, loss, got, 2)
    close(got, ref, dtype)
    assert isinstance(cost, float)
    np.testing.assert_allclose(cost, ref_cost, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", [_codes.BCE, _codes.CCE], ids=["bce", "cce"])
def test_loss_forward_stable_for_huge_logits(backend, dtype, loss):
    Z = np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [0.0, 0.0]], dtype)
    Y = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype)
    A = np.empty_like(Z)
    cost = kernel(backend, "loss_forward")(Z, np.zeros(2, dtype), Y, loss, A, 1)
    assert np.isfinite(cost) and np.all(np.isfinite(A))
    ref = reference.loss_forward(Z.astype(np.float64), np.zeros(2), Y.astype(np.float64), loss, np.empty((3, 2)), 1)
    np.testing.assert_allclose(cost, ref, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_backward(backend, dtype, shape):
    rng = rng_for("lossb", shape)
    A, Y = ro(rng.random(shape).astype(dtype), targets(_codes.BCE, shape, rng, dtype))
    ref, ref_db = np.empty(shape, dtype), np.empty(shape[1], dtype)
    reference.loss_backward(A, Y, ref, ref_db, 1)
    dZ, db = np.full(shape, np.nan, dtype), np.full(shape[1], np.nan, dtype)
    kernel(backend, "loss_backward")(A, Y, dZ, db, 2)
    close(dZ, ref, dtype)
    close(db, ref_db, dtype, scale=10)


@pytest.mark.parametrize("backend", K.available())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("keep_prob", [0.5, 0.8, 1.0])
def test_dropout_bit_identical(backend, dtype, shape, keep_prob):
    rng = rng_for("drop", shape)
    (X,) = ro(rng.standard_normal(shape).astype(dtype))
    key = K.dropout_key(7, 3, 11, 2)
    thr = K.dropout_threshold(keep_prob)
    ref = np.empty(shape, dtype)
    reference.dropout_apply(X, key, thr, 1.0 / keep_prob, ref, 1)
    for n_threads in (1, 2):
        got = np.full(shape, np.nan, dtype)
        kernel(backend, "dropout_apply")(X, key, thr, 1.0 / keep_prob, got, n_threads)
        np.testing.assert_array_equal(got == 0, ref == 0)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("backend", K.available())
@pytest.mark.parametrize("keep_prob", [0.5, 0.8])
def test_dropout_statistics(backend, keep_prob):
    n = 400_000
    X = np.ones(n, np.float32)
    out = np.empty_like(X)
    kernel(backend, "dropout_apply")(X, K.dropout_key(1, 0), K.dropout_threshold(keep_prob), 1.0 / keep_prob, out, 2)
    kept = out != 0
    # the keep rate is within 5 standard errors of keep_prob
    assert abs(kept.mean() - keep_prob) < 5 * np.sqrt(keep_prob * (1 - keep_prob) / n)
    assert np.all(out[kept] == np.float32(1.0 / keep_prob))
    # different keys give different masks, and the backward regenerates the same one
    other = np.empty_like(X)
    kernel(backend, "dropout_apply")(X, K.dropout_key(1, 1), K.dropout_threshold(keep_prob), 1.0 / keep_prob, other, 2)
    assert 0.3 < np.mean((other != 0) == kept) < 0.99


OPTIMISERS = {
    "gd": lambda: dict(lr=0.1),
    "momentum": lambda: dict(lr=0.05, beta=0.9, bc=1.0 - 0.9**3),
    "rmsprop": lambda: dict(lr=0.01, beta=0.9, eps=1e-8),
    "adam": lambda: dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, bc1=1 - 0.9**2, bc2=1 - 0.999**2),
}
STATE = {"gd": 0, "momentum": 1, "rmsprop": 1, "adam": 2}


def opt_call(fn, name, w, g, state, hp, l2, n_decay, n_threads):
    if name == "gd":
        fn(w, g, hp["lr"], l2, n_decay, n_threads)
    elif name == "momentum":
        fn(w, g, state[0], hp["lr"], hp["beta"], hp["bc"], l2, n_decay, n_threads)
    elif name == "rmsprop":
        fn(w, g, state[0], hp["lr"], hp["beta"], hp["eps"], l2, n_decay, n_threads)
    else:
        fn(
            w, g, state[0], state[1], hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["bc1"], hp["bc2"],
            l2, n_decay, n_threads,
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", FLAT)
@pytest.mark.parametrize("name", list(OPTIMISERS))
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_optimiser_update(backend, dtype, n, name, l2):
    rng = rng_for("opt", n, name)
    w0 = rng.standard_normal(n).astype(dtype)
    state0 = [np.abs(rng.standard_normal(n)).astype(dtype) for _ in range(STATE[name])]
    hp = OPTIMISERS[name]()
    n_decay = n // 2
    results = []
    for fn, n_threads in ((getattr(reference, f"{name}_update"), 1),
                          (kernel(backend, f"{name}_update"), 1),
                          (kernel(backend, f"{name}_update"), 2)):
        w, state = w0.copy(), [s.copy() for s in state0]
        for step in range(3):
            (g,) = ro(rng_for("g", n, step).standard_normal(n).astype(dtype))
            opt_call(fn, name, w, g, state, hp, l2, n_decay, n_threads)
        results.append((w, state))
    (w_ref, s_ref), (w1, s1), (w2, s2) = results
    close(w1, w_ref, dtype, scale=10)
    for a, b in zip(s1, s_ref):
        close(a, b, dtype, scale=10)
    np.testing.assert_array_equal(w1, w2)


@pytest.mark.parametrize("backend", K.available())
@pytest.mark.parametrize("name", ["momentum", "rmsprop", "adam"])
def test_subnormal_state_is_flushed(backend, name):
    n = 1000
    tiny = np.finfo(np.float32).tiny
    w = np.ones(n, np.float32)
    g = np.zeros(n, np.float32)
    state = [np.full(n, tiny / 4, np.float32) for _ in range(STATE[name])]  # subnormal
    hp = OPTIMISERS[name]()
    opt_call(kernel(backend, f"{name}_update"), name, w, g, state, hp, 0.0, 0, 1)
    for s in state:
        assert np.all(s == 0), "state below the smallest normal number must be flushed to zero"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3), (7, 13), (129, 65), (400, 257)])
def test_batchnorm(backend, dtype, shape):
    rng = rng_for("bn", shape)
    m, n = shape
    Z, gamma, beta = ro(
        (rng.standard_normal(shape) * 2 + 1).astype(dtype),
        rng.standard_normal(n).astype(dtype),
        rng.standard_normal(n).astype(dtype),
    )
    outs = {}
    for name, fn in (("ref", reference.batchnorm_forward_train), ("got", kernel(backend, "batchnorm_forward_train"))):
        bufs = [np.full(shape, np.nan, dtype) for _ in range(2)] + [np.full(n, np.nan, dtype) for _ in range(3)]
        fn(Z, gamma, beta, 1e-5, *bufs, 2)
        outs[name] = bufs
    for got, ref in zip(outs["got"], outs["ref"]):
        close(got, ref, dtype, scale=10)

    xhat, _, _, _, invstd = (ro(a)[0] for a in outs["ref"])
    (dout,) = ro(rng.standard_normal(shape).astype(dtype))
    grads = {}
    for name, fn in (("ref", reference.batchnorm_backward), ("got", kernel(backend, "batchnorm_backward"))):
        bufs = [np.full(shape, np.nan, dtype), np.full(n, np.nan, dtype), np.full(n, np.nan, dtype)]
        fn(dout, xhat, gamma, invstd, *bufs, 2)
        grads[name] = bufs
    for got, ref in zip(grads["got"], grads["ref"]):
        close(got, ref, dtype, scale=100)

    rmean, rvar = ro(rng.standard_normal(n).astype(dtype), rng.random(n).astype(dtype) + 0.5)
    ref, got = np.empty(shape, dtype), np.empty(shape, dtype)
    reference.batchnorm_forward_infer(Z, gamma, beta, rmean, rvar, 1e-5, ref, 1)
    kernel(backend, "batchnorm_forward_infer")(Z, gamma, beta, rmean, rvar, 1e-5, got, 2)
    close(got, ref, dtype, scale=10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", FLAT)
def test_ewa_update(backend, dtype, n):
    rng = rng_for("ewa", n)
    v0 = rng.standard_normal(n).astype(dtype)
    (x,) = ro(rng.standard_normal(n).astype(dtype))
    ref, got = v0.copy(), v0.copy()
    reference.ewa_update(ref, x, 0.9, 1)
    kernel(backend, "ewa_update")(got, x, 0.9, 2)
    close(got, ref, dtype)


def test_every_backend_has_every_kernel():
    for backend, names in CAPS.items():
        assert names == frozenset(K.KERNELS), backend


def test_builds_expected_backends():
    """The installed wheel carries both compiled backends."""
    assert K.available() == ("numpy", "numba", "cython")
