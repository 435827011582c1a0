"""The compiled raw kernels allocate nothing per call, on the serial and the parallel path (Numba; Cython below).

Two witnesses, after a warm-up call (compilation, the per-thread scratch):

* Numba's runtime (NRT) statistics count every allocation compiled code makes
  (``np.empty`` inside a kernel, a parallel reduction's temporaries).  Numba
  also allocates one small record (a "meminfo") per array argument it receives
  from Python, which no kernel can avoid; so the calls from the raw kernels into
  compiled code are counted, and the NRT allocations must equal the number of
  array arguments they passed.
* tracemalloc sees NumPy's buffers and Python's objects (and, in this Numba,
  the runtime's own): the peak growth over a call stays below
  :data:`PYTHON_BYTES`, what argument tuples, array views and Numba's
  per-argument records take, less than any scratch buffer would.
"""

import tracemalloc

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from numba.core.registry import CPUDispatcher  # noqa: E402
from numba.core.runtime import _nrt_python, rtsys  # noqa: E402

from fusednet import kernels as K  # noqa: E402
from fusednet.kernels import _codes  # noqa: E402
from fusednet.kernels import _numba as N  # noqa: E402

DTYPES = [np.float32, np.float64]
#: every kernel serial (64 rows: the loss's full set of block sums), then above
#: every serial threshold with enough columns for two column bands
SHAPES = [(64, 5), (1024, 2 * N.REDUCTION_MIN_BAND + 8)]
#: transient bytes a call may allocate on the Python side: measured up to 528
#: (Numba's 48-byte record per array argument, argument tuples, array views);
#: a float64 tile is 8 KiB, the loss's block sums 512 bytes plus a header
PYTHON_BYTES = 640
#: a typed memoryview's Python object, per array argument of a Cython kernel
MEMORYVIEW_BYTES = 192


def _cases(dtype, shape):
    """``name -> (raw kernel, args)`` for every raw kernel, valid inputs of ``shape``."""
    rng = np.random.default_rng(0)
    m, n = shape
    size = m * n

    def mat(scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def vec(k, low=0.5, high=1.5):
        return rng.uniform(low, high, k).astype(dtype)

    Z, A, dZ, Y, xhat, out = mat(), mat(0.25), mat(), np.abs(mat(0.1)), mat(), mat()
    cols = [vec(n) for _ in range(6)]
    w, g, s1, s2 = (vec(size) for _ in range(4))
    T = 2
    return {
        "bias_act_forward": (N.bias_act_forward, (Z, cols[0], _codes.TANH, 0.01, A, T)),
        "act_backward": (N.act_backward, (dZ, A, _codes.TANH, 0.01, out, cols[1], T)),
        "act_backward softmax": (N.act_backward, (dZ, A, _codes.SOFTMAX, 0.01, out, cols[1], T)),
        "loss_forward": (N.loss_forward, (Z, cols[0], Y, _codes.CCE, A, T)),
        "loss_backward": (N.loss_backward, (A, Y, dZ, cols[1], T)),
        "dropout_apply": (N.dropout_apply, (Z, _codes.dropout_key(3), _codes.dropout_threshold(0.6),
                                            1 / 0.6, out, T)),
        "gd_update": (N.gd_update, (w, g, 1e-3, 1e-2, size // 2, T)),
        "momentum_update": (N.momentum_update, (w, g, s1, 1e-3, 0.9, 1.0, 1e-2, size // 2, T)),
        "rmsprop_update": (N.rmsprop_update, (w, g, s1, 1e-3, 0.9, 1e-8, 1e-2, size // 2, T)),
        "adam_update": (N.adam_update, (w, g, s1, s2, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 1e-2,
                                        size // 2, T)),
        "ewa_update": (N.ewa_update, (s1, g, 0.9, T)),
        "batchnorm_forward_train": (N.batchnorm_forward_train,
                                    (Z, cols[0], cols[1], 1e-5, xhat, out, cols[2], cols[3], cols[4], T)),
        "batchnorm_forward_infer": (N.batchnorm_forward_infer,
                                    (Z, cols[0], cols[1], cols[2], cols[3], 1e-5, out, T)),
        "batchnorm_backward": (N.batchnorm_backward,
                               (dZ, xhat, cols[0], cols[1], out, cols[2], cols[3], T)),
    }


class _Counting:
    """Stands in for a module of compiled kernels; counts what its kernels are passed."""

    def __init__(self, module, log):
        self._module = module
        self._log = log

    def __getattr__(self, name):
        return self._wrap(name, getattr(self._module, name))

    def _wrap(self, name, attr):
        if isinstance(attr, tuple):  # a table of kernels (per activation or loss), logged by their own names
            return tuple(self._wrap(getattr(a, "__name__", name), a) for a in attr)
        if not isinstance(attr, CPUDispatcher):
            return attr

        def call(*args):
            self._log.append((name, sum(isinstance(a, np.ndarray) for a in args)))
            return attr(*args)

        return call


@pytest.fixture
def nrt_stats():
    was_on = _nrt_python.memsys_stats_enabled()
    _nrt_python.memsys_enable_stats()
    yield lambda: rtsys.get_allocation_stats().alloc
    if not was_on:
        _nrt_python.memsys_disable_stats()


def test_every_raw_kernel_is_covered():
    names = {name.split()[0] for name in _cases(np.float64, SHAPES[0])}
    assert names == set(K.capabilities()["numba"])


def _python_peak(kernel, args):
    """Peak bytes tracemalloc sees allocated during one call."""
    tracemalloc.start()
    try:
        kernel(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("shape", SHAPES, ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_no_allocation_per_call(monkeypatch, nrt_stats, dtype, shape):
    parallel = shape == SHAPES[1] and numba.get_num_threads() >= 2
    failures = []
    for name, (kernel, args) in _cases(dtype, shape).items():
        kernel(*args)  # warm-up: compilation, the calling thread's scratch
        peak = _python_peak(kernel, args)
        log = []
        with monkeypatch.context() as patch:
            patch.setattr(N, "_dense", _Counting(N._dense, log))
            patch.setattr(N, "_flat", _Counting(N._flat, log))
            before = nrt_stats()
            kernel(*args)
            allocated = nrt_stats() - before
        compiled = [called for called, _ in log]
        unboxed = sum(n_arrays for _, n_arrays in log)
        if "softmax" not in name:  # softmax backward couples columns: always serial
            assert any(c.endswith("_parallel") for c in compiled) == parallel, (name, compiled)
        if allocated != unboxed or peak >= PYTHON_BYTES:
            failures.append(f"{name}: {allocated} NRT allocations for {unboxed} array arguments "
                            f"({', '.join(compiled)}), Python peak {peak} bytes")
    assert not failures, "\n".join(failures)


@pytest.mark.skipif("cython" not in K.available(), reason="the Cython extension is not built")
@pytest.mark.parametrize("shape", SHAPES, ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_cython_kernels_allocate_no_arrays(dtype, shape):
    """The Cython kernels take typed memoryviews of the caller's arrays: no buffer per call.

    Acquiring a typed memoryview makes one small Python object per array
    argument (measured 150-170 bytes); the bound allows
    :data:`MEMORYVIEW_BYTES` per array plus :data:`PYTHON_BYTES`, far below
    the smallest column buffer of the parallel shape (528 float32 = 2 KiB) or
    any buffer of the data's size.
    """
    from fusednet.kernels import _cython as C

    failures = []
    for name, (kernel, args) in _cases(dtype, shape).items():
        ckernel = getattr(C, kernel.__name__)
        ckernel(*args)
        peak = _python_peak(ckernel, args)
        bound = PYTHON_BYTES + MEMORYVIEW_BYTES * sum(isinstance(a, np.ndarray) for a in args)
        if peak >= bound:
            failures.append(f"{name}: Python peak {peak} bytes (bound {bound})")
    assert not failures, "\n".join(failures)
