"""Every kernel of every backend against the course's textbook NumPy, at 1e3 … 1e7 elements.

Run:  pytest benchmarks/test_bench_kernels.py --benchmark-only
(float32, all usable cores; the ratio table is printed at the end.)
"""

import numpy as np
import pytest
from conftest import add_external, matrix, run_isolated, sizes
from numba import njit, prange

from fusednet import _textbook as tb
from fusednet import kernels as K
from fusednet.kernels import _codes

BACKENDS = K.available()
IMPLS = ["textbook", *BACKENDS]
T = lambda: K.get_num_threads()  # noqa: E731


def _setup(benchmark, group, impl):
    benchmark.group = group
    benchmark.extra_info["impl"] = impl


# ---------------------------------------------------------------- activations



def _ufunc_out(act, Z, b, A):
    """NumPy ufuncs into a preallocated buffer: the fastest NumPy can do."""
    np.add(Z, b, out=A)
    if act == "sigmoid":
        np.negative(A, out=A)
        np.exp(A, out=A)
        np.add(A, 1, out=A)
        np.reciprocal(A, out=A)
    elif act == "tanh":
        np.tanh(A, out=A)
    else:
        np.maximum(A, 0, out=A)


@pytest.mark.parametrize("size", sizes())
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("impl", ["ufunc-out", *IMPLS])
def test_act_forward(benchmark, record, act, size, impl):
    _setup(benchmark, f"fwd {act} {size:.0e}", impl)
    Z = matrix(size)
    b = np.random.default_rng(1).standard_normal(Z.shape[1], dtype=np.float32)
    A = np.empty_like(Z)
    if impl == "textbook":
        record(tb.FORWARD[act], Z, b)
    elif impl == "ufunc-out":
        record(_ufunc_out, act, Z, b, A)
    else:
        kern = K.resolve("bias_act_forward", impl)
        record(kern, Z, b, _codes.ACTIVATIONS[act], 0.01, A, T())


@pytest.mark.parametrize("size", sizes())
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("impl", IMPLS)
def test_act_backward(benchmark, record, act, size, impl):
    _setup(benchmark, f"bwd {act} {size:.0e}", impl)
    dA = matrix(size, seed=2)
    A = np.abs(matrix(size, seed=3)) / 4
    dZ, db = np.empty_like(dA), np.empty(dA.shape[1], dA.dtype)
    if impl == "textbook":
        record(tb.BACKWARD[act], dA, A)
    else:
        kern = K.resolve("act_backward", impl)
        record(kern, dA, A, _codes.ACTIVATIONS[act], 0.01, dZ, db, T())


# ---------------------------------------------------------------- softmax + cross-entropy


@pytest.mark.parametrize("m", [128, 10_000, 1_000_000])
@pytest.mark.parametrize("impl", IMPLS)
def test_softmax_ce(benchmark, record, m, impl):
    _setup(benchmark, f"softmax+CE ({m}, 10)", impl)
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((m, 10), dtype=np.float32)
    b = np.zeros(10, np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, m)]
    A = np.empty_like(Z)
    if impl == "textbook":
        record(tb.softmax_cross_entropy, Z, b, Y)
    else:
        record(K.resolve("loss_forward", impl), Z, b, Y, _codes.CCE, A, T())


@pytest.mark.parametrize("m", [128, 10_000, 1_000_000])
@pytest.mark.parametrize("impl", IMPLS)
def test_softmax_ce_backward(benchmark, record, m, impl):
    _setup(benchmark, f"softmax+CE backward ({m}, 10)", impl)
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((m, 10), dtype=np.float32)
    A = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, m)]
    dZ, db = np.empty_like(A), np.empty(10, np.float32)
    if impl == "textbook":
        record(tb.softmax_cross_entropy_backward, A, Y)
    else:
        record(K.resolve("loss_backward", impl), A, Y, dZ, db, T())


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize("size", sizes())
@pytest.mark.parametrize("impl", IMPLS)
def test_dropout(benchmark, record, size, impl):
    _setup(benchmark, f"dropout {size:.0e}", impl)
    X = matrix(size)
    out = np.empty_like(X)
    if impl == "textbook":
        record(tb.dropout, X, 0.8, np.random.default_rng(0))
    else:
        key = K.dropout_key(0, 1)
        record(K.resolve("dropout_apply", impl), X, key, K.dropout_threshold(0.8), 1 / 0.8, out, T())


# ---------------------------------------------------------------- optimisers


def _opt_arrays(n, subnormal=False):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * 1e-3
    if subnormal:  # dead units: zero gradient, moments decayed into subnormal numbers
        g[:] = 0
        m = np.full(n, 1e-39, np.float32)
        v = np.full(n, 1e-39, np.float32)
    else:
        m = np.abs(rng.standard_normal(n, dtype=np.float32)) * 1e-3
        v = np.abs(rng.standard_normal(n, dtype=np.float32)) * 1e-6
    return w, g, m, v


OPT_SIZES = [1_000, 100_000, 250_000, 10_000_000]


@pytest.mark.parametrize("n", OPT_SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_adam(benchmark, record, n, impl):
    _setup(benchmark, f"adam {n:.1e}", impl)
    w, g, m, v = _opt_arrays(n)
    if impl == "textbook":
        record(tb.adam_update, w, g, m, v, 10)
    else:
        kern = K.resolve("adam_update", impl)
        record(kern, w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1 - 0.9**10, 1 - 0.999**10, 0.0, 0, T())


@pytest.mark.parametrize("state", ["subnormal", "normal"])
@pytest.mark.parametrize("impl", IMPLS)
def test_adam_subnormal_state(benchmark, record, impl, state):
    """Moments decayed into subnormal numbers must not slow the update down (compare the two groups)."""
    n = 1_000_000
    _setup(benchmark, f"adam {state} state {n:.0e}", impl)
    w, g, m, v = _opt_arrays(n, subnormal=state == "subnormal")
    if impl == "textbook":
        record(tb.adam_update, w, g, m, v, 10)
    else:
        kern = K.resolve("adam_update", impl)
        record(kern, w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1 - 0.9**10, 1 - 0.999**10, 0.0, 0, T())


@pytest.mark.parametrize("n", [1_000, 100_000, 10_000_000])
@pytest.mark.parametrize("impl", IMPLS)
def test_rmsprop(benchmark, record, n, impl):
    _setup(benchmark, f"rmsprop {n:.0e}", impl)
    w, g, s, _ = _opt_arrays(n)
    if impl == "textbook":
        record(tb.rmsprop_update, w, g, s)
    else:
        record(K.resolve("rmsprop_update", impl), w, g, s, 1e-3, 0.9, 1e-8, 0.0, 0, T())


@pytest.mark.parametrize("n", [1_000, 100_000, 10_000_000])
@pytest.mark.parametrize("impl", IMPLS)
def test_momentum(benchmark, record, n, impl):
    _setup(benchmark, f"momentum {n:.0e}", impl)
    w, g, v, _ = _opt_arrays(n)
    if impl == "textbook":
        record(tb.momentum_update, w, g, v)
    else:
        record(K.resolve("momentum_update", impl), w, g, v, 1e-2, 0.9, 1.0, 0.0, 0, T())


@pytest.mark.parametrize("n", [1_000, 100_000, 10_000_000])
@pytest.mark.parametrize("impl", IMPLS)
def test_gd(benchmark, record, n, impl):
    _setup(benchmark, f"gd {n:.0e}", impl)
    w, g, _, _ = _opt_arrays(n)
    if impl == "textbook":
        record(tb.gd_update, w, g)
    else:
        record(K.resolve("gd_update", impl), w, g, 1e-2, 0.0, 0, T())


@pytest.mark.parametrize("n", [1_000, 100_000, 10_000_000])
@pytest.mark.parametrize("impl", IMPLS)
def test_ewa(benchmark, record, n, impl):
    _setup(benchmark, f"ewa {n:.0e}", impl)
    _, x, v, _ = _opt_arrays(n)
    if impl == "textbook":
        record(tb.ewa_update, v, x)
    else:
        record(K.resolve("ewa_update", impl), v, x, 0.9, T())


# ---------------------------------------------------------------- the machine's in-place update bandwidth
#
# The optimiser kernels at 10M elements are limited by memory traffic.  The
# "bandwidth" entry of each group is the same traffic with no arithmetic to
# speak of: a parallel loop that reads the same arrays and writes back the same
# ones (``x += g * c`` with ``c = 0`` given at run time, so nothing folds away).
# A kernel's median over this floor's median is its fraction of the in-place
# update bandwidth; bytes per element: Adam 28 (w, m, v read and written, g
# read), RMSProp and momentum 20.

_FLOOR = {"adam": 3, "rmsprop": 2, "momentum": 2}  # arrays updated in place beside the read-only g


@njit(parallel=True, cache=True)
def _floor3(w, m, v, g, c):
    for i in prange(w.size):
        gi = g[i] * c
        w[i] += gi
        m[i] += gi
        v[i] += gi


@njit(parallel=True, cache=True)
def _floor2(w, v, g, c):
    for i in prange(w.size):
        gi = g[i] * c
        w[i] += gi
        v[i] += gi


_FLOOR_KERNELS = {3: _floor3, 2: _floor2}


@pytest.mark.parametrize("opt", list(_FLOOR))
def test_update_bandwidth(benchmark, record, opt):
    n = 10_000_000
    group = f"adam {n:.1e}" if opt == "adam" else f"{opt} {n:.0e}"
    _setup(benchmark, group, "bandwidth")
    w, g, m, v = _opt_arrays(n)
    arrays = (w, m, v)[: _FLOOR[opt]]
    before = [a.copy() for a in arrays]
    record(_FLOOR_KERNELS[_FLOOR[opt]], *arrays, g, np.float32(0.0))
    for a, b in zip(arrays, before):  # the floor really moved the bytes and changed nothing
        np.testing.assert_array_equal(a, b)
    if not benchmark.disabled:
        nbytes = (2 * _FLOOR[opt] + 1) * 4 * n
        benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9


# ---------------------------------------------------------------- batch norm


@pytest.mark.parametrize("shape", [(128, 64), (128, 256), (4096, 512)])
@pytest.mark.parametrize("impl", IMPLS)
def test_batchnorm_forward(benchmark, record, shape, impl):
    _setup(benchmark, f"batchnorm fwd {shape}", impl)
    rng = np.random.default_rng(0)
    Z = rng.standard_normal(shape, dtype=np.float32)
    gamma, beta = np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32)
    if impl == "textbook":
        record(tb.batchnorm_forward, Z, gamma, beta)
    else:
        bufs = [np.empty_like(Z), np.empty_like(Z)] + [np.empty(shape[1], np.float32) for _ in range(3)]
        record(K.resolve("batchnorm_forward_train", impl), Z, gamma, beta, 1e-5, *bufs, T())


def _bn_arrays(shape):
    rng = np.random.default_rng(0)
    Z = rng.standard_normal(shape, dtype=np.float32)
    n = shape[1]
    gamma = rng.uniform(0.5, 1.5, n).astype(np.float32)
    beta = rng.standard_normal(n, dtype=np.float32)
    return Z, gamma, beta


@pytest.mark.parametrize("shape", [(128, 64), (128, 256), (4096, 512)])
@pytest.mark.parametrize("impl", IMPLS)
def test_batchnorm_forward_infer(benchmark, record, shape, impl):
    _setup(benchmark, f"batchnorm fwd infer {shape}", impl)
    Z, gamma, beta = _bn_arrays(shape)
    mu, var = Z.mean(axis=0), Z.var(axis=0)
    if impl == "textbook":
        record(tb.batchnorm_forward_infer, Z, gamma, beta, mu, var)
    else:
        out = np.empty_like(Z)
        record(K.resolve("batchnorm_forward_infer", impl), Z, gamma, beta, mu, var, 1e-5, out, T())


@pytest.mark.parametrize("shape", [(128, 64), (128, 256), (4096, 512)])
@pytest.mark.parametrize("impl", IMPLS)
def test_batchnorm_backward(benchmark, record, shape, impl):
    _setup(benchmark, f"batchnorm bwd {shape}", impl)
    Z, gamma, _ = _bn_arrays(shape)
    invstd = (1 / np.sqrt(Z.var(axis=0) + 1e-5)).astype(np.float32)
    xhat = ((Z - Z.mean(axis=0)) * invstd).astype(np.float32)
    dout = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    if impl == "textbook":
        record(tb.batchnorm_backward, dout, xhat, gamma, invstd)
    else:
        dZ, dgamma, dbeta = np.empty_like(dout), np.empty(shape[1], np.float32), np.empty(shape[1], np.float32)
        record(K.resolve("batchnorm_backward", impl), dout, xhat, gamma, invstd, dZ, dgamma, dbeta, T())


# ---------------------------------------------------------------- PyTorch, each in its own process

_TORCH_ADAM = """
import time, statistics, torch
torch.set_num_threads({threads})
n = {n}
p = torch.nn.Parameter(torch.randn(n))
p.grad = torch.randn(n) * 1e-3
opt = torch.optim.Adam([p], lr=1e-3, fused={fused})
for _ in range(20): opt.step()
ts = []
for _ in range({reps}):
    t0 = time.perf_counter(); opt.step(); ts.append(time.perf_counter() - t0)
print(statistics.median(ts))
"""

_TORCH_DROPOUT = """
import time, statistics, torch
torch.set_num_threads({threads})
x = torch.randn({n})
for _ in range(3): torch.nn.functional.dropout(x, 0.2, True)
ts = []
for _ in range({reps}):
    t0 = time.perf_counter(); torch.nn.functional.dropout(x, 0.2, True); ts.append(time.perf_counter() - t0)
print(statistics.median(ts))
"""


def _torch_available():
    try:
        run_isolated("import torch")
        return True
    except Exception:
        return False


@pytest.mark.parametrize("n", [250_000, 10_000_000])
def test_torch_adam_reference(benchmark, n):
    """torch.optim.Adam(fused=True) on one flat buffer, timed in its own process."""
    if not _torch_available():
        pytest.skip("PyTorch is not installed (install the 'bench' extra)")
    benchmark.group = f"adam {n:.1e}"
    reps = 3 if benchmark.disabled else 50
    for fused in (True, False):
        med = float(run_isolated(_TORCH_ADAM.format(threads=T(), n=n, fused=fused, reps=reps)))
        add_external(benchmark.group, f"torch-adam{'-fused' if fused else ''}", med)
    benchmark.pedantic(lambda: None, rounds=1)


def test_torch_dropout_reference(benchmark):
    if not _torch_available():
        pytest.skip("PyTorch is not installed (install the 'bench' extra)")
    n = 10_000_000
    benchmark.group = f"dropout {n:.0e}"
    reps = 3 if benchmark.disabled else 20
    med = float(run_isolated(_TORCH_DROPOUT.format(threads=T(), n=n, reps=reps)))
    add_external(benchmark.group, "torch-dropout", med)
    benchmark.pedantic(lambda: None, rounds=1)


# ---------------------------------------------------------------- the fused step's matrix products
# One thread's share of each product of a 784-256-128-10 step at batch 128 on two threads, as
# the step computes it: fusednet's own float32 kernels (kernels/_gemm.h) against SciPy's sgemm
# held at one thread (what the step calls where those kernels are not built).  "textbook" is
# NumPy's matmul with its own threads.

_STEP_PRODUCTS = {
    # name: (op(A) shape, op(B) shape, form)
    "fwd 128x784 @ 784x128": ((128, 784), (784, 128), "nn"),
    "dW 392x128 @ 128x256": ((392, 128), (128, 256), "tn"),
    "dA 128x128 @ 128x128": ((128, 128), (128, 128), "nt"),
}


def _own_gemm():
    from fusednet.kernels import _cython

    return _cython._ck if getattr(_cython._ck, "FUSED_GEMM", False) else None


@pytest.mark.parametrize("name", list(_STEP_PRODUCTS))
@pytest.mark.parametrize("impl", ["textbook", "sgemm-1-thread", "fusednet-own"])
def test_step_product(benchmark, record, name, impl):
    (m, k), (_, n), form = _STEP_PRODUCTS[name]
    _setup(benchmark, f"step product {name}", impl)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((k, m) if form == "tn" else (m, k), dtype=np.float32)
    B = rng.standard_normal((n, k) if form == "nt" else (k, n), dtype=np.float32)
    C = np.empty((m, n), np.float32)
    opA = A.T if form == "tn" else A
    opB = B.T if form == "nt" else B
    if impl == "textbook":
        record(np.matmul, opA, opB, C)
    elif impl == "sgemm-1-thread":
        from scipy.linalg import blas

        from fusednet.kernels import _blas

        if not _blas.AVAILABLE:
            pytest.skip(_blas.STATUS)
        # C^T = op(B)^T op(A)^T in column-major terms: Fortran order views of the row-major arrays
        with _blas.single_threaded():
            record(blas.sgemm, 1.0, B.T, A.T, 0.0, C.T, form == "nt", form == "tn", True)
    else:
        ck = _own_gemm()
        if ck is None:
            pytest.skip("this copy of the extension has no own products (no AVX2 or AVX-512; the step uses sgemm)")
        record(ck.gemm_f32, A, B, C, form == "tn", form == "nt")
    np.testing.assert_allclose(C, opA.astype(np.float64) @ opB, rtol=1e-3, atol=1e-3)
