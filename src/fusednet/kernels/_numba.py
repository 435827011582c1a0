"""The Numba backend: the raw kernels of :mod:`fusednet.kernels.reference`, compiled.

Same names, same positional signatures, same semantics as the reference (its
module docstring is the contract).  Each function here is the Python-level
entry point: it coerces the scalars to Python numbers (so the compiled kernels
see one type signature per dtype), then runs the serial kernel, or the
parallel one on ``min(n_threads, numba.get_num_threads())`` chunks when the
array has more than the kernel's ``*_SERIAL_THRESHOLD`` elements; below that a
parallel launch (2.4 to 4.5 microseconds here) costs more than it saves.

Every result has the same bits for any ``n_threads``: elementwise work does
not depend on the partition, each column's sum is accumulated by one thread
over all rows in order, and the loss's float64 cost is summed over a
partition of the rows fixed by m alone.

No kernel allocates per call.  The working memory of the compiled kernels
(float64 column-sum tiles, the loss's block sums) is owned here, allocated
once per Python thread and reused: see :class:`_Scratch`.

The compiled kernels live in :mod:`._numba_flat` (flat buffers),
:mod:`._numba_dense` ((m, n) activations) and :mod:`._numba_math` (the
vectorisable point functions); they are compiled on first call and cached on
disk.  :func:`warmup` compiles them all for float32 and float64.
"""

import math
import threading

import numba
import numpy as np

from . import _numba_dense as _dense
from . import _numba_flat as _flat
from ._codes import SIGMOID, SOFTMAX, TANH
from ._memory import empty_aligned

# Serial thresholds in elements (a kernel runs serially up to and including its threshold):
# fusednet.kernels._policy, the one place every backend's cut-offs live.
from ._policy import (  # noqa: E402
    ADAPTIVE_SERIAL_THRESHOLD,
    DROPOUT_SERIAL_THRESHOLD,
    ELEMENTWISE_SERIAL_THRESHOLD,
    LOSS_SERIAL_THRESHOLD,
    OPTIMISER_SERIAL_THRESHOLD,
    REDUCTION_MIN_BAND,
    REDUCTION_SERIAL_THRESHOLD,
    TRANSCENDENTAL_SERIAL_THRESHOLD,
)

_FORWARD_THRESHOLD = {SIGMOID: TRANSCENDENTAL_SERIAL_THRESHOLD,
                      TANH: TRANSCENDENTAL_SERIAL_THRESHOLD,
                      SOFTMAX: TRANSCENDENTAL_SERIAL_THRESHOLD}


def _chunks(n_threads, size, threshold):
    """How many parallel chunks to run: 1 (the serial kernel) up to ``threshold`` elements.

    Never more than ``n_threads`` nor than Numba's thread pool allows.
    """
    if size <= threshold or n_threads < 2:
        return 1
    return min(int(n_threads), numba.get_num_threads())


def _band_chunks(n_threads, size, n_columns):
    """Like :func:`_chunks` for kernels whose row sums are split by column bands."""
    nt = _chunks(n_threads, size, REDUCTION_SERIAL_THRESHOLD)
    return min(nt, n_columns // REDUCTION_MIN_BAND) if nt > 1 else 1


class _Scratch(threading.local):
    """Working memory of the compiled kernels, one set per Python thread.

    A training step calls the kernels hundreds of times per second; allocating
    their fixed tiles on each call would cost a ``malloc``/``free`` pair (and,
    for the larger ones, page faults) every time, and break the contract that a
    raw kernel allocates nothing.  So the memory lives here and is handed down.
    It is per Python thread because the compiled kernels release the GIL: two
    threads may run kernels at the same time, but one thread runs one at a time.

    ``tiles`` has one row of :data:`._numba_dense.SCRATCH` float64 per parallel
    chunk; :func:`_chunks` never runs more chunks than Numba's thread pool has
    threads (at most ``NUMBA_NUM_THREADS``), so every chunk gets a row of its
    own.  Rows start on cache-line boundaries 40 KiB apart, so threads do not
    share cache lines, and the pages of rows that are never used are never
    touched.  ``row`` is row 0, the serial kernels' share, kept as a view so
    that a call does not make one.  ``loss`` holds the loss's float64 block sums.
    """

    def __init__(self):
        self.tiles = empty_aligned((numba.config.NUMBA_NUM_THREADS, _dense.SCRATCH))
        self.row = self.tiles[0]
        self.loss = np.empty(_dense.LOSS_BLOCKS, np.float64)


_scratch = _Scratch()


# --------------------------------------------------------------------------
# activations and losses
# --------------------------------------------------------------------------


def bias_act_forward(Z, b, act, slope, A, n_threads):
    act = int(act)
    serial, parallel = _dense.FORWARD[act][A is Z]
    if Z.size > TRANSCENDENTAL_SERIAL_THRESHOLD:  # the small-batch path stays short
        nt = _chunks(n_threads, Z.size, _FORWARD_THRESHOLD.get(act, ELEMENTWISE_SERIAL_THRESHOLD))
        if nt > 1:
            parallel(Z, b, float(slope), A, nt)
            return
    serial(Z, b, float(slope), A, 0, Z.shape[0], 0, Z.shape[1])


def act_backward(dA, A, act, slope, dZ, db, n_threads):
    act = int(act)
    serial, parallel = _dense.BACKWARD[act][dZ is dA]
    if dA.size > REDUCTION_SERIAL_THRESHOLD and act != SOFTMAX:  # the small-batch path stays short
        nt = _band_chunks(n_threads, dA.size, dA.shape[1])
        if nt > 1:
            parallel(dA, A, float(slope), dZ, db, nt, _scratch.tiles)
            return
    serial(dA, A, float(slope), dZ, db, 0, dA.shape[1], _scratch.row)


def loss_forward(Z, b, Y, loss, A, n_threads):
    m = Z.shape[0]
    if m == 0:
        return 0.0
    serial, parallel = _dense.LOSS[int(loss)]
    # float64 sums of row blocks fixed by m alone, added in order: the same
    # cost for any thread count
    part = _scratch.loss[:min(_dense.LOSS_BLOCKS, m)]
    nt = _chunks(n_threads, Z.size, LOSS_SERIAL_THRESHOLD)
    if nt > 1:
        parallel(Z, b, Y, A, part, nt)
    else:
        serial(Z, b, Y, A, part, 0, part.size)
    return math.fsum(part) / m


def loss_backward(A, Y, dZ, db, n_threads):
    n = A.shape[1]
    if A.size > REDUCTION_SERIAL_THRESHOLD:
        nt = _band_chunks(n_threads, A.size, n)
        if nt > 1:
            _dense.loss_backward_parallel(A, Y, dZ, db, nt, _scratch.tiles)
            return
    _dense.loss_backward_band(A, Y, dZ, db, 0, n, _scratch.row)


# --------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------


def dropout_apply(X, key, threshold, scale, out, n_threads):
    key = int(key)
    threshold = int(threshold)
    k1 = key & 0xFFFFFFFF
    k2 = (key >> 32) & 0xFFFFFFFF
    drop_all = threshold <= 0
    # kept when hash < threshold, i.e. hash <= threshold - 1 (a uint32 for 1 <= threshold <= 2**32)
    last_kept = min(max(threshold, 1), 1 << 32) - 1
    nt = _chunks(n_threads, X.size, DROPOUT_SERIAL_THRESHOLD)
    if nt > 1:
        _flat.dropout_parallel(X, k1, k2, last_kept, drop_all, float(scale), out, nt)
    else:
        _flat.dropout_span(X, k1, k2, last_kept, drop_all, float(scale), out, 0, X.size)


# --------------------------------------------------------------------------
# optimisers over flat buffers
# --------------------------------------------------------------------------


def gd_update(w, g, lr, l2, n_decay, n_threads):
    nt = _chunks(n_threads, w.size, OPTIMISER_SERIAL_THRESHOLD)
    if nt > 1:
        _flat.gd_parallel(w, g, float(lr), float(l2), int(n_decay), nt)
    else:
        _flat.gd_span(w, g, float(lr), float(l2), int(n_decay), 0, w.size)


def momentum_update(w, g, v, lr, beta, bc, l2, n_decay, n_threads):
    args = (w, g, v, float(lr), float(beta), float(bc), float(l2), int(n_decay))
    nt = _chunks(n_threads, w.size, OPTIMISER_SERIAL_THRESHOLD)
    if nt > 1:
        _flat.momentum_parallel(*args, nt)
    else:
        _flat.momentum_span(*args, 0, w.size)


def rmsprop_update(w, g, s, lr, beta, eps, l2, n_decay, n_threads):
    args = (w, g, s, float(lr), float(beta), float(eps), float(l2), int(n_decay))
    nt = _chunks(n_threads, w.size, ADAPTIVE_SERIAL_THRESHOLD)
    if nt > 1:
        _flat.rmsprop_parallel(*args, nt)
    else:
        _flat.rmsprop_span(*args, 0, w.size)


def adam_update(w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, n_threads):
    args = (w, g, m, v, float(lr), float(beta1), float(beta2), float(eps),
            float(bc1), float(bc2), float(l2), int(n_decay))
    nt = _chunks(n_threads, w.size, ADAPTIVE_SERIAL_THRESHOLD)
    if nt > 1:
        _flat.adam_parallel(*args, nt)
    else:
        _flat.adam_span(*args, 0, w.size)


def ewa_update(v, x, beta, n_threads):
    nt = _chunks(n_threads, v.size, OPTIMISER_SERIAL_THRESHOLD)
    if nt > 1:
        _flat.ewa_parallel(v, x, float(beta), nt)
    else:
        _flat.ewa_span(v, x, float(beta), 0, v.size)


# --------------------------------------------------------------------------
# batch norm
# --------------------------------------------------------------------------


def batchnorm_forward_train(Z, gamma, beta, eps, xhat, out, mean, var, invstd, n_threads):
    n = Z.shape[1]
    if Z.size > REDUCTION_SERIAL_THRESHOLD:
        nt = _band_chunks(n_threads, Z.size, n)
        if nt > 1:
            _dense.batchnorm_forward_train_parallel(Z, gamma, beta, float(eps), xhat, out,
                                                    mean, var, invstd, nt, _scratch.tiles)
            return
    _dense.batchnorm_train_cols(Z, gamma, beta, float(eps), xhat, out, mean, var, invstd, 0, n,
                                _scratch.row)


def batchnorm_forward_infer(Z, gamma, beta, running_mean, running_var, eps, out, n_threads):
    if Z.size > ELEMENTWISE_SERIAL_THRESHOLD:
        nt = _chunks(n_threads, Z.size, ELEMENTWISE_SERIAL_THRESHOLD)
        if nt > 1:
            _dense.batchnorm_forward_infer_parallel(Z, gamma, beta, running_mean, running_var,
                                                    float(eps), out, nt, _scratch.tiles)
            return
    m, n = Z.shape
    _dense.batchnorm_infer_block(Z, gamma, beta, running_mean, running_var, float(eps), out,
                                 0, m, 0, n, _scratch.row)


def batchnorm_backward(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_threads):
    n = dout.shape[1]
    if dout.size > REDUCTION_SERIAL_THRESHOLD:
        nt = _band_chunks(n_threads, dout.size, n)
        if nt > 1:
            _dense.batchnorm_backward_parallel(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, nt,
                                               _scratch.tiles)
            return
    _dense.batchnorm_backward_cols(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, 0, n, _scratch.row)


# --------------------------------------------------------------------------
# compilation
# --------------------------------------------------------------------------


def warmup(dtypes=(np.float32, np.float64), progress=None):
    """Compile (or load from the on-disk cache) every kernel, serial and parallel.

    Covers writable C-contiguous arrays of each dtype in ``dtypes``: 2-D
    activations and 1-D flat buffers, the types the layers and optimisers
    pass, every activation (in place and not) and every loss (other array
    types, such as read-only inputs, compile on first use).  ``progress``,
    if given, is called as ``progress(done, total)`` after each group of
    kernels.  :func:`fusednet.kernels.warmup` calls this; benchmarks and
    tests call it to keep compile time out of their timings.
    """
    steps = [(dtype, index) for dtype in dtypes for index in range(len(_WARMUP_STEPS))]
    for done, (dtype, index) in enumerate(steps, 1):
        warmup_step(dtype, index)
        if progress is not None:
            progress(done, len(steps))


def warmup_step(dtype, index):
    """The ``index``-th of :func:`warmup`'s groups of kernels, in ``dtype``: one activation, one loss or
    the rest (:func:`warmup_steps` counts them)."""
    _WARMUP_STEPS[index](_WarmupArrays(np.dtype(dtype)))


def warmup_steps(dtypes=(np.float32, np.float64)):
    """How many times :func:`warmup` calls its ``progress``."""
    return len(dtypes) * len(_WARMUP_STEPS)


class _WarmupArrays:
    """Small arrays of one dtype for :func:`warmup`'s calls."""

    def __init__(self, dtype):
        self.Z = np.linspace(-2.0, 2.0, 24, dtype=dtype).reshape(3, 8)
        self.b, self.g, self.v1, self.v2 = (np.zeros(8, dtype) for _ in range(4))
        self.A, self.dZ, self.Y = np.empty_like(self.Z), np.empty_like(self.Z), np.full_like(self.Z, 0.125)
        self.part = np.empty(3)
        self.tiles = np.empty((2, _dense.SCRATCH))


def _warm_activation(act):
    def step(a):
        m, n = a.Z.shape
        for in_place in (False, True):
            block, parallel = _dense.FORWARD[act][in_place]
            Z = a.Z.copy() if in_place else a.Z
            out = Z if in_place else a.A
            block(Z, a.b, 0.01, out, 0, m, 0, n)
            parallel(Z, a.b, 0.01, out, 2)
            band, parallel = _dense.BACKWARD[act][in_place]
            dA = a.Y.copy() if in_place else a.Y
            dZ = dA if in_place else a.dZ
            band(dA, a.A, 0.01, dZ, a.b, 0, n, a.tiles[0])
            if parallel is not None:
                parallel(dA, a.A, 0.01, dZ, a.b, 2, a.tiles)
    return step


def _warm_loss(loss):
    def step(a):
        blocks, parallel = _dense.LOSS[loss]
        blocks(a.Z, a.b, a.Y, a.A, a.part, 0, a.part.size)
        parallel(a.Z, a.b, a.Y, a.A, a.part, 2)
    return step


def _warm_rest(a):
    Z, A, dZ, Y, b, g, v1, v2, tiles = a.Z, a.A, a.dZ, a.Y, a.b, a.g, a.v1, a.v2, a.tiles
    m, n = Z.shape
    row = tiles[0]
    _dense.loss_backward_band(A, Y, dZ, b, 0, n, row)
    _dense.loss_backward_parallel(A, Y, dZ, b, 2, tiles)
    _dense.batchnorm_train_cols(Z, g, b, 1e-5, A, dZ, v1, v2, g, 0, n, row)
    _dense.batchnorm_infer_block(Z, g, b, v1, v2, 1e-5, dZ, 0, m, 0, n, row)
    _dense.batchnorm_backward_cols(Y, A, g, v2, dZ, v1, b, 0, n, row)
    _dense.batchnorm_forward_train_parallel(Z, g, b, 1e-5, A, dZ, v1, v2, g, 2, tiles)
    _dense.batchnorm_forward_infer_parallel(Z, g, b, v1, v2, 1e-5, dZ, 2, tiles)
    _dense.batchnorm_backward_parallel(Y, A, g, v2, dZ, v1, b, 2, tiles)
    _flat.gd_span(g, b, 0.1, 0.0, 0, 0, n)
    _flat.momentum_span(g, b, v1, 0.1, 0.9, 1.0, 0.0, 0, 0, n)
    _flat.rmsprop_span(g, b, v1, 0.1, 0.9, 1e-8, 0.0, 0, 0, n)
    _flat.adam_span(g, b, v1, v2, 0.1, 0.9, 0.999, 1e-8, 1.0, 1.0, 0.0, 0, 0, n)
    _flat.ewa_span(g, b, 0.9, 0, n)
    _flat.gd_parallel(g, b, 0.1, 0.0, 0, 2)
    _flat.momentum_parallel(g, b, v1, 0.1, 0.9, 1.0, 0.0, 0, 2)
    _flat.rmsprop_parallel(g, b, v1, 0.1, 0.9, 1e-8, 0.0, 0, 2)
    _flat.adam_parallel(g, b, v1, v2, 0.1, 0.9, 0.999, 1e-8, 1.0, 1.0, 0.0, 0, 2)
    _flat.ewa_parallel(g, b, 0.9, 2)
    for X in (Z, g):  # dropout runs on activations (2-D) and flat buffers
        _flat.dropout_span(X, 1, 2, 2**31, False, 2.0, X, 0, X.size)
        _flat.dropout_parallel(X, 1, 2, 2**31, False, 2.0, X, 2)


_WARMUP_STEPS = ([_warm_activation(act) for act in range(len(_dense.FORWARD))]
                 + [_warm_loss(loss) for loss in range(len(_dense.LOSS))] + [_warm_rest])
