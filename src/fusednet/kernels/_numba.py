"""The Numba backend: the raw kernels of :mod:`fusednet.kernels.reference`, compiled.

Same names, same positional signatures, same semantics as the reference (its
module docstring is the contract).  Each function here is the Python-level
entry point: it coerces the scalars to Python numbers (so the compiled kernels
see one type signature per dtype), then runs the serial kernel, or the
parallel one on ``min(n_threads, numba.get_num_threads())`` chunks when the
array has at least the kernel's ``*_SERIAL_THRESHOLD`` elements; below that a
parallel launch (2.4 to 4.5 microseconds here) costs more than it saves.

Every result has the same bits for any ``n_threads``: elementwise work does
not depend on the partition, each column's sum is accumulated by one thread
over all rows in order, and the loss's float64 cost is summed over a
partition of the rows fixed by m alone.

The compiled kernels live in :mod:`._numba_flat` (flat buffers),
:mod:`._numba_dense` ((m, n) activations) and :mod:`._numba_math` (the
vectorisable point functions); they are compiled on first call and cached on
disk.  :func:`warmup` compiles them all for float32 and float64.
"""

import math

import numba
import numpy as np

from . import _numba_dense as _dense
from . import _numba_flat as _flat
from ._codes import LINEAR, SIGMOID, SOFTMAX, TANH

# Serial thresholds in elements: at or above its threshold a kernel runs in
# parallel.  Measured on 2 cores, float32, by timing the serial kernel against
# the parallel one on 2 threads at sizes 2**13 .. 2**18 (median of many
# interleaved runs) and taking the first power of two where the parallel one
# wins clearly; never below 2**15, so sizes up to 32k elements never pay a
# launch.
#: elementwise forward (linear, ReLU, leaky ReLU): about 0.2 ns per element
ELEMENTWISE_SERIAL_THRESHOLD = 65_536
#: sigmoid, tanh and softmax forward: a rational or exp per element
TRANSCENDENTAL_SERIAL_THRESHOLD = 32_768
#: activation and loss backward (an elementwise pass, then column sums)
BACKWARD_SERIAL_THRESHOLD = 65_536
#: loss forward (float64 exp and log per element)
LOSS_SERIAL_THRESHOLD = 32_768
#: dropout: two 32-bit hash rounds per element
DROPOUT_SERIAL_THRESHOLD = 32_768
#: optimiser updates and the EWA step over flat buffers (memory bound)
OPTIMISER_SERIAL_THRESHOLD = 65_536
#: batch norm (two or three passes over the batch)
BATCHNORM_SERIAL_THRESHOLD = 65_536

_FORWARD_THRESHOLD = {SIGMOID: TRANSCENDENTAL_SERIAL_THRESHOLD,
                      TANH: TRANSCENDENTAL_SERIAL_THRESHOLD,
                      SOFTMAX: TRANSCENDENTAL_SERIAL_THRESHOLD}


def _chunks(n_threads, size, threshold):
    """How many parallel chunks to run: 1 (the serial kernel) below ``threshold`` elements.

    Never more than ``n_threads`` nor than Numba's thread pool allows.
    """
    if size < threshold or n_threads < 2:
        return 1
    return min(int(n_threads), numba.get_num_threads())


def _column_chunks(n_threads, size, n_columns, threshold):
    """Like :func:`_chunks` for kernels whose reductions are split by columns
    (at least one 64-byte band of columns per chunk)."""
    nt = _chunks(n_threads, size, threshold)
    return min(nt, n_columns // _flat.ALIGN) if nt > 1 else 1


# --------------------------------------------------------------------------
# activations and losses
# --------------------------------------------------------------------------


def bias_act_forward(Z, b, act, slope, A, n_threads):
    act = int(act)
    nt = _chunks(n_threads, Z.size, _FORWARD_THRESHOLD.get(act, ELEMENTWISE_SERIAL_THRESHOLD))
    if nt > 1:
        _dense.bias_act_forward_parallel(Z, b, act, float(slope), A, nt)
    else:
        m, n = Z.shape
        _dense.forward_block(Z, b, act, float(slope), A, 0, m, 0, n)


def act_backward(dA, A, act, slope, dZ, db, n_threads):
    nt = _chunks(n_threads, dA.size, BACKWARD_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.act_backward_parallel(dA, A, int(act), float(slope), dZ, db, nt)
    else:
        _dense.act_backward_serial(dA, A, int(act), float(slope), dZ, db)


def loss_forward(Z, b, Y, loss, A, n_threads):
    m = Z.shape[0]
    if m == 0:
        return 0.0
    # float64 sums of row blocks fixed by m alone, added in order: the same
    # cost for any thread count
    part = np.empty(min(_dense.LOSS_BLOCKS, m), np.float64)
    nt = _chunks(n_threads, Z.size, LOSS_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.loss_blocks_parallel(Z, b, Y, int(loss), A, part, nt)
    else:
        _dense.loss_blocks(Z, b, Y, int(loss), A, part, 0, part.size)
    return math.fsum(part) / m


def loss_backward(A, Y, dZ, db, n_threads):
    nt = _chunks(n_threads, A.size, BACKWARD_SERIAL_THRESHOLD)
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
    n = Z.shape[1]
    nt = _column_chunks(n_threads, Z.size, n, BATCHNORM_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.batchnorm_forward_train_parallel(Z, gamma, beta, float(eps), xhat, out,
                                                mean, var, invstd, nt)
    else:
        _dense.batchnorm_train_cols(Z, gamma, beta, float(eps), xhat, out, mean, var, invstd, 0, n)


def batchnorm_forward_infer(Z, gamma, beta, running_mean, running_var, eps, out, n_threads):
    nt = _chunks(n_threads, Z.size, BATCHNORM_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.batchnorm_forward_infer_parallel(Z, gamma, beta, running_mean, running_var,
                                                float(eps), out, nt)
    else:
        m, n = Z.shape
        _dense.batchnorm_infer_block(Z, gamma, beta, running_mean, running_var, float(eps), out,
                                     0, m, 0, n)


def batchnorm_backward(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_threads):
    n = dout.shape[1]
    nt = _column_chunks(n_threads, dout.size, n, BATCHNORM_SERIAL_THRESHOLD)
    if nt > 1:
        _dense.batchnorm_backward_parallel(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, nt)
    else:
        _dense.batchnorm_backward_cols(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, 0, n)


# --------------------------------------------------------------------------
# compilation
# --------------------------------------------------------------------------


def warmup(dtypes=(np.float32, np.float64)):
    """Compile (or load from the on-disk cache) every kernel, serial and parallel.

    Covers writable C-contiguous arrays of each dtype in ``dtypes``: 2-D
    activations and 1-D flat buffers, the types the layers and optimisers
    pass (other array types, such as read-only inputs, compile on first use).
    Benchmarks and tests call it to keep compile time out of their timings.
    """
    for dtype in dtypes:
        Z = np.linspace(-2.0, 2.0, 24, dtype=dtype).reshape(3, 8)
        b, g, v1, v2 = (np.zeros(8, dtype) for _ in range(4))
        A, dZ, Y = np.empty_like(Z), np.empty_like(Z), np.full_like(Z, 0.125)
        m, n = Z.shape
        part = np.empty(m)
        # the serial kernels, as the functions above call them ...
        _dense.forward_block(Z, b, LINEAR, 0.01, A, 0, m, 0, n)
        _dense.act_backward_serial(Y, A, LINEAR, 0.01, dZ, b)
        _dense.loss_blocks(Z, b, Y, 2, A, part, 0, m)
        _dense.loss_backward_serial(A, Y, dZ, b)
        _dense.batchnorm_train_cols(Z, g, b, 1e-5, A, dZ, v1, v2, g, 0, n)
        _dense.batchnorm_infer_block(Z, g, b, v1, v2, 1e-5, dZ, 0, m, 0, n)
        _dense.batchnorm_backward_cols(Y, A, g, v2, dZ, v1, b, 0, n)
        _flat.gd_span(g, b, 0.1, 0.0, 0, 0, n)
        _flat.momentum_span(g, b, v1, 0.1, 0.9, 1.0, 0.0, 0, 0, n)
        _flat.rmsprop_span(g, b, v1, 0.1, 0.9, 1e-8, 0.0, 0, 0, n)
        _flat.adam_span(g, b, v1, v2, 0.1, 0.9, 0.999, 1e-8, 1.0, 1.0, 0.0, 0, 0, n)
        _flat.ewa_span(g, b, 0.9, 0, n)
        # ... and the parallel ones
        _dense.bias_act_forward_parallel(Z, b, LINEAR, 0.01, A, 2)
        _dense.act_backward_parallel(Y, A, LINEAR, 0.01, dZ, b, 2)
        _dense.loss_blocks_parallel(Z, b, Y, 2, A, part, 2)
        _dense.loss_backward_parallel(A, Y, dZ, b, 2)
        _dense.batchnorm_forward_train_parallel(Z, g, b, 1e-5, A, dZ, v1, v2, g, 2)
        _dense.batchnorm_forward_infer_parallel(Z, g, b, v1, v2, 1e-5, dZ, 2)
        _dense.batchnorm_backward_parallel(Y, A, g, v2, dZ, v1, b, 2)
        _flat.gd_parallel(g, b, 0.1, 0.0, 0, 2)
        _flat.momentum_parallel(g, b, v1, 0.1, 0.9, 1.0, 0.0, 0, 2)
        _flat.rmsprop_parallel(g, b, v1, 0.1, 0.9, 1e-8, 0.0, 0, 2)
        _flat.adam_parallel(g, b, v1, v2, 0.1, 0.9, 0.999, 1e-8, 1.0, 1.0, 0.0, 0, 2)
        _flat.ewa_parallel(g, b, 0.9, 2)
        for X in (Z, g):  # dropout runs on activations (2-D) and flat buffers
            _flat.dropout_span(X, 1, 2, 2**31, False, 2.0, X, 0, X.size)
            _flat.dropout_parallel(X, 1, 2, 2**31, False, 2.0, X, 2)
