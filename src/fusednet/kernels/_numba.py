"""The Numba backend: the raw kernels of :mod:`fusednet.kernels.reference`, compiled.

Same names, same positional signatures, same semantics as the reference (its
module docstring is the contract).  Each function here is the Python-level
entry point: it coerces the scalars to Python numbers (so the compiled kernels
see one type signature per dtype), then runs the serial kernel, or the
parallel one on ``min(n_threads, numba.get_num_threads())`` chunks when the
array is at least the kernel's ``*_SERIAL_THRESHOLD`` elements; below that a
parallel launch (2.4 to 4.5 microseconds here) costs more than it saves.

Every result has the same bits for any ``n_threads``: elementwise work is
independent of the partition, row sums are split by columns only, and the
loss's float64 cost is summed over a partition of the rows fixed by m alone.

The compiled kernels live in :mod:`._numba_flat` (flat buffers),
:mod:`._numba_dense` ((m, n) activations) and :mod:`._numba_math` (the
vectorisable point functions); they are compiled on first call and cached on
disk.  :func:`warmup` compiles them all for float32 and float64.
"""

import numba
import numpy as np

from . import _numba_dense as _dense
from . import _numba_flat as _flat
from ._codes import LINEAR, SIGMOID, SOFTMAX, TANH

# Serial thresholds, in elements (float32, 2 cores; see warmup's notes in the
# module docstring).  At or above the threshold the kernel runs in parallel.
#: cheap elementwise work per element (linear, ReLU, leaky ReLU; their backward)
ELEMENTWISE_SERIAL_THRESHOLD = 65_536
#: sigmoid, tanh and softmax forward: a vectorised exp or rational per element
TRANSCENDENTAL_SERIAL_THRESHOLD = 32_768
#: loss forward (float64 exp and log per element)
LOSS_SERIAL_THRESHOLD = 32_768
#: dropout: two 32-bit hash rounds per element
DROPOUT_SERIAL_THRESHOLD = 32_768
#: optimiser updates and the EWA step over flat buffers (memory bound)
OPTIMISER_SERIAL_THRESHOLD = 65_536
#: batch norm (two or three passes over the batch)
BATCHNORM_SERIAL_THRESHOLD = 65_536

#: a parallel reduction split by columns needs at least this many columns per chunk
_MIN_COLUMNS = _flat.ALIGN

_FORWARD_THRESHOLD = {SIGMOID: TRANSCENDENTAL_SERIAL_THRESHOLD,
                      TANH: TRANSCENDENTAL_SERIAL_THRESHOLD,
                      SOFTMAX: TRANSCENDENTAL_SERIAL_THRESHOLD}


def _chunks(n_threads, size, threshold):
    """How many parallel chunks to run: 1 (serial) below ``threshold`` elements."""
    if size < threshold or n_threads < 2:
        return 1
    return min(int(n_threads), numba.get_num_threads())


def _column_chunks(n_threads, size, n_columns, threshold):
    """Like :func:`_chunks` for reductions over rows, split by columns."""
    n = _chunks(n_threads, size, threshold)
    return min(n, n_columns // _MIN_COLUMNS) if n > 1 else 1


# --------------------------------------------------------------------------
# activations and losses
# --------------------------------------------------------------------------


def bias_act_forward(Z, b, act, slope, A, n_threads):
    act = int(act)
    nt = _chunks(n_threads, Z.size, _FORWARD_THRESHOLD.get(act, ELEMENTWISE_SERIAL_THRESHOLD))
    if nt > 1:
        _dense.bias_act_forward_parallel(Z, b, act, float(slope), A, nt)
    else:
        _dense.bias_act_forward_serial(Z, b, act, float(slope), A)


def act_backward(dA, A, act, slope, dZ, db, n_threads):
    act = int(act)
    nt = _column_chunks(n_threads, dA.size, dA.shape[1], ELEMENTWISE_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.act_backward_parallel(dA, A, act, float(slope), dZ, db, nt)
    else:
        _dense.act_backward_serial(dA, A, act, float(slope), dZ, db)


def loss_forward(Z, b, Y, loss, A, n_threads):
    nt = _chunks(n_threads, Z.size, LOSS_SERIAL_THRESHOLD)
    if nt > 1:
        return float(_dense.loss_forward_parallel(Z, b, Y, int(loss), A, nt))
    return float(_dense.loss_forward_serial(Z, b, Y, int(loss), A))


def loss_backward(A, Y, dZ, db, n_threads):
    nt = _column_chunks(n_threads, A.size, A.shape[1], ELEMENTWISE_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.loss_backward_parallel(A, Y, dZ, db, nt)
    else:
        _dense.loss_backward_serial(A, Y, dZ, db)


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
    nt = _chunks(n_threads, w.size, OPTIMISER_SERIAL_THRESHOLD)
    if nt > 1:
        _flat.rmsprop_parallel(*args, nt)
    else:
        _flat.rmsprop_span(*args, 0, w.size)


def adam_update(w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, n_threads):
    args = (w, g, m, v, float(lr), float(beta1), float(beta2), float(eps),
            float(bc1), float(bc2), float(l2), int(n_decay))
    nt = _chunks(n_threads, w.size, OPTIMISER_SERIAL_THRESHOLD)
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
    nt = _column_chunks(n_threads, Z.size, Z.shape[1], BATCHNORM_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.batchnorm_forward_train_parallel(Z, gamma, beta, float(eps), xhat, out,
                                                mean, var, invstd, nt)
    else:
        _dense.batchnorm_forward_train_serial(Z, gamma, beta, float(eps), xhat, out,
                                              mean, var, invstd)


def batchnorm_forward_infer(Z, gamma, beta, running_mean, running_var, eps, out, n_threads):
    nt = _chunks(n_threads, Z.size, BATCHNORM_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.batchnorm_forward_infer_parallel(Z, gamma, beta, running_mean, running_var,
                                                float(eps), out, nt)
    else:
        _dense.batchnorm_forward_infer_serial(Z, gamma, beta, running_mean, running_var,
                                              float(eps), out)


def batchnorm_backward(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_threads):
    nt = _column_chunks(n_threads, dout.size, dout.shape[1], BATCHNORM_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.batchnorm_backward_parallel(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, nt)
    else:
        _dense.batchnorm_backward_serial(dout, xhat, gamma, invstd, dZ, dgamma, dbeta)


# --------------------------------------------------------------------------
# compilation
# --------------------------------------------------------------------------


def warmup(dtypes=(np.float32, np.float64)):
    """Compile (or load from the on-disk cache) every kernel, serial and parallel.

    Covers writable C-contiguous arrays of each dtype in ``dtypes`` (2-D
    activations, 1-D flat buffers), the types the layers and optimisers pass.
    Benchmarks and tests call it to keep compile time out of their timings.
    """
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        Z = np.linspace(-2.0, 2.0, 12, dtype=dtype).reshape(3, 4)
        b = np.zeros(4, dtype)
        A = np.empty_like(Z)
        dZ = np.empty_like(Z)
        db = np.empty(4, dtype)
        Y = np.full_like(Z, 0.25)
        for nt in (1, 2):  # 1: the serial kernels, 2: the parallel ones
            par = nt > 1
            for act in (LINEAR, SOFTMAX):
                (_dense.bias_act_forward_parallel(Z, b, act, 0.01, A, nt) if par
                 else _dense.bias_act_forward_serial(Z, b, act, 0.01, A))
                (_dense.act_backward_parallel(Y, A, act, 0.01, dZ, db, nt) if par
                 else _dense.act_backward_serial(Y, A, act, 0.01, dZ, db))
            (_dense.loss_forward_parallel(Z, b, Y, 2, A, nt) if par
             else _dense.loss_forward_serial(Z, b, Y, 2, A))
            (_dense.loss_backward_parallel(A, Y, dZ, db, nt) if par
             else _dense.loss_backward_serial(A, Y, dZ, db))
            mean, var, invstd = (np.empty(4, dtype) for _ in range(3))
            (_dense.batchnorm_forward_train_parallel(Z, b, b, 1e-5, A, dZ, mean, var, invstd, nt) if par
             else _dense.batchnorm_forward_train_serial(Z, b, b, 1e-5, A, dZ, mean, var, invstd))
            (_dense.batchnorm_forward_infer_parallel(Z, b, b, b, invstd, 1e-5, dZ, nt) if par
             else _dense.batchnorm_forward_infer_serial(Z, b, b, b, invstd, 1e-5, dZ))
            (_dense.batchnorm_backward_parallel(Y, A, b, invstd, dZ, mean, var, nt) if par
             else _dense.batchnorm_backward_serial(Y, A, b, invstd, dZ, mean, var))
            (_flat.dropout_parallel(Z, 1, 2, 2**31, False, 2.0, A, nt) if par
             else _flat.dropout_span(Z, 1, 2, 2**31, False, 2.0, A, 0, Z.size))
            w, g, s1, s2 = (np.zeros(8, dtype) for _ in range(4))
            if par:
                _flat.gd_parallel(w, g, 0.1, 0.0, 0, nt)
                _flat.momentum_parallel(w, g, s1, 0.1, 0.9, 1.0, 0.0, 0, nt)
                _flat.rmsprop_parallel(w, g, s1, 0.1, 0.9, 1e-8, 0.0, 0, nt)
                _flat.adam_parallel(w, g, s1, s2, 0.1, 0.9, 0.999, 1e-8, 1.0, 1.0, 0.0, 0, nt)
                _flat.ewa_parallel(w, g, 0.9, nt)
            else:
                _flat.gd_span(w, g, 0.1, 0.0, 0, 0, 8)
                _flat.momentum_span(w, g, s1, 0.1, 0.9, 1.0, 0.0, 0, 0, 8)
                _flat.rmsprop_span(w, g, s1, 0.1, 0.9, 1e-8, 0.0, 0, 0, 8)
                _flat.adam_span(w, g, s1, s2, 0.1, 0.9, 0.999, 1e-8, 1.0, 1.0, 0.0, 0, 0, 8)
                _flat.ewa_span(w, g, 0.9, 0, 8)
