"""Numba kernels over (m, n) activations: bias + activation, losses, batch norm.

Each kernel is a ``*_block`` / ``*_cols`` function over rows ``[r0, r1)`` or
columns ``[c0, c1)`` (the serial kernel is one block over everything) and a
``*_parallel(..., n_chunks)`` function that runs ``n_chunks`` blocks in one
``prange``.  Semantics and signatures: :mod:`fusednet.kernels.reference`.

Sums over rows (``db``, batch-norm statistics) never race and never depend on
the thread count: a column's sum is always accumulated by one thread walking
all rows in order, in float64 tiles of :data:`TILE` columns, so a parallel
kernel splits those reductions by columns only.  The loss's float64 cost is
summed over a fixed partition of the rows (at most :data:`LOSS_BLOCKS`
blocks, a function of m only) and the block sums are added in order, so it
too has the same bits for any thread count.

Data flow is marked on each kernel: ``IN`` arguments are only read, ``OUT``
only written.  Only fixed-size tiles are allocated; everything returns None
except the loss, which returns its cost.
"""

import math

import numpy as np
from numba import prange

from ._codes import BCE, CCE, LEAKY_RELU, LINEAR, MSE, RELU, SIGMOID, SOFTMAX, TANH
from ._numba_flat import bound, kernel, parallel_kernel
from ._numba_math import exp, leaky_relu, like, log1p_unit, point, relu, sigmoid, tanh

#: columns per float64 accumulator tile of a row-walking reduction
TILE = 256
#: the loss cost is summed over at most this many fixed row blocks
LOSS_BLOCKS = 64


@point
def _rows(m, n_chunks, k):
    """Start of row chunk ``k`` of ``n_chunks`` over ``m`` rows."""
    return (m * k) // n_chunks


@point
def block(m, n, n_chunks, k, by_rows):
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of chunk ``k``: a band of whole
    rows when ``by_rows``, else a band of whole, 64-byte-aligned columns."""
    if by_rows:
        return _rows(m, n_chunks, k), _rows(m, n_chunks, k + 1), 0, n
    return 0, m, bound(n, n_chunks, k), bound(n, n_chunks, k + 1)


# --------------------------------------------------------------------------
# bias + activation forward
# --------------------------------------------------------------------------


@point
def _softmax_rows(Z, b, A, r0, r1):
    """Row-wise, max-subtracted ``A = softmax(Z + b)`` on rows [r0, r1).

    A NaN or +inf in a row makes the whole row NaN, as in the reference.
    """
    n = Z.shape[1]
    for i in range(r0, r1):
        zmax = -np.inf
        for j in range(n):
            z = Z[i, j] + b[j]
            zmax = z if z > zmax else zmax
        zm = like(A, zmax)
        total = 0.0
        for j in range(n):
            e = exp(Z[i, j] + b[j] - zm)
            A[i, j] = e
            total += e
        inv = like(A, 1.0 / total)
        for j in range(n):
            A[i, j] *= inv


@kernel
def forward_block(Z, b, act, slope, A, r0, r1, c0, c1):
    """``A = g(Z + b)`` on rows [r0, r1) x columns [c0, c1).

    Z (m, n) IN, b (n,) IN, A (m, n) OUT (may alias Z).  Softmax couples a
    row's columns: it takes whole rows r0..r1 and ignores c0, c1.
    """
    zero = like(A, 0.0)
    s = like(A, slope)
    if act == LINEAR:
        for i in range(r0, r1):
            for j in range(c0, c1):
                A[i, j] = Z[i, j] + b[j]
    elif act == SIGMOID:
        for i in range(r0, r1):
            for j in range(c0, c1):
                A[i, j] = sigmoid(Z[i, j] + b[j])
    elif act == TANH:
        for i in range(r0, r1):
            for j in range(c0, c1):
                A[i, j] = tanh(Z[i, j] + b[j])
    elif act == RELU:
        for i in range(r0, r1):
            for j in range(c0, c1):
                A[i, j] = relu(Z[i, j] + b[j], zero)
    elif act == LEAKY_RELU:
        for i in range(r0, r1):
            for j in range(c0, c1):
                A[i, j] = leaky_relu(Z[i, j] + b[j], s, zero)
    elif act == SOFTMAX:
        _softmax_rows(Z, b, A, r0, r1)


@parallel_kernel
def bias_act_forward_parallel(Z, b, act, slope, A, n_chunks):
    m, n = Z.shape
    by_rows = act == SOFTMAX or m >= n_chunks
    for k in prange(n_chunks):
        r0, r1, c0, c1 = block(m, n, n_chunks, k, by_rows)
        forward_block(Z, b, act, slope, A, r0, r1, c0, c1)


# --------------------------------------------------------------------------
# activation backward, from the cached output A
# --------------------------------------------------------------------------


@point
def _softmax_backward_rows(dA, A, dZ, r0, r1):
    """``dZ = A * (dA - sum_cols(dA * A))`` on rows [r0, r1).  dZ may alias dA."""
    n = dA.shape[1]
    for i in range(r0, r1):
        dot = 0.0
        for j in range(n):
            dot += dA[i, j] * A[i, j]
        c = like(A, dot)
        for j in range(n):
            dZ[i, j] = A[i, j] * (dA[i, j] - c)


@kernel
def backward_cols(dA, A, act, slope, dZ, db, c0, c1):
    """``dZ = dA * g'(A)`` and ``db = sum_rows(dZ)`` on columns [c0, c1), all rows.

    dA, A (m, n) IN; dZ (m, n) OUT (may alias dA); db (n,) OUT.  Each
    derivative is read from the output, as in the reference.  Softmax couples
    a row's columns: it needs all of them (c0 = 0, c1 = n), so it runs serially.
    """
    m = dA.shape[0]
    zero = like(A, 0.0)
    one = like(A, 1.0)
    s = like(A, slope)
    if act == SOFTMAX:
        _softmax_backward_rows(dA, A, dZ, 0, m)
    acc = np.empty(TILE, np.float64)
    for t0 in range(c0, c1, TILE):
        t1 = min(t0 + TILE, c1)
        for j in range(t1 - t0):
            acc[j] = 0.0
        if act == LINEAR:
            for i in range(m):
                for j in range(t0, t1):
                    d = dA[i, j]
                    dZ[i, j] = d
                    acc[j - t0] += d
        elif act == SIGMOID:
            for i in range(m):
                for j in range(t0, t1):
                    a = A[i, j]
                    d = dA[i, j] * (a * (one - a))
                    dZ[i, j] = d
                    acc[j - t0] += d
        elif act == TANH:
            for i in range(m):
                for j in range(t0, t1):
                    a = A[i, j]
                    d = dA[i, j] * (one - a * a)
                    dZ[i, j] = d
                    acc[j - t0] += d
        elif act == RELU:
            for i in range(m):
                for j in range(t0, t1):
                    d = dA[i, j] * (one if A[i, j] > zero else zero)
                    dZ[i, j] = d
                    acc[j - t0] += d
        elif act == LEAKY_RELU:
            for i in range(m):
                for j in range(t0, t1):
                    d = dA[i, j] * (one if A[i, j] > zero else s)
                    dZ[i, j] = d
                    acc[j - t0] += d
        elif act == SOFTMAX:
            for i in range(m):
                for j in range(t0, t1):
                    acc[j - t0] += dZ[i, j]
        for j in range(t0, t1):
            db[j] = acc[j - t0]


@parallel_kernel
def act_backward_parallel(dA, A, act, slope, dZ, db, n_chunks):
    """Not for softmax (see :func:`backward_cols`)."""
    n = dA.shape[1]
    for k in prange(n_chunks):
        backward_cols(dA, A, act, slope, dZ, db, bound(n, n_chunks, k), bound(n, n_chunks, k + 1))


# --------------------------------------------------------------------------
# output activation + loss, computed in float64 like the reference
# --------------------------------------------------------------------------


@point
def _loss_rows(Z, b, Y, loss, A, r0, r1):
    """``A = g(Z + b)`` on rows [r0, r1); returns those rows' summed loss (float64).

    The logits are formed in the arrays' dtype and the rest is float64: MSE
    ``(a - y)**2 / 2``; BCE on the logits, ``max(z, 0) - z y +
    log1p(exp(-|z|))``, which never overflows; CCE through the max-subtracted
    log-sum-exp.
    """
    k = Z.shape[1]
    total = 0.0
    if loss == MSE:
        for i in range(r0, r1):
            for j in range(k):
                zd = Z[i, j] + b[j]
                A[i, j] = zd
                d = np.float64(zd) - np.float64(Y[i, j])
                total += d * d
        return 0.5 * total
    if loss == BCE:
        for i in range(r0, r1):
            for j in range(k):
                z = np.float64(Z[i, j] + b[j])
                A[i, j] = sigmoid(z)
                y = np.float64(Y[i, j])
                total += (z if z > 0.0 else 0.0) - z * y + log1p_unit(exp(-abs(z)))
        return total
    if loss == CCE:
        for i in range(r0, r1):
            zmax = -np.inf
            for j in range(k):
                z = np.float64(Z[i, j] + b[j])
                zmax = z if z > zmax else zmax
            s = 0.0
            for j in range(k):
                s += exp(np.float64(Z[i, j] + b[j]) - zmax)
            lse = zmax + math.log(s)
            for j in range(k):
                z = np.float64(Z[i, j] + b[j])
                A[i, j] = exp(z - lse)
                total += np.float64(Y[i, j]) * (lse - z)
        return total
    return np.nan


@kernel
def loss_blocks(Z, b, Y, loss, A, part, k0, k1):
    """Rows of blocks [k0, k1) of the ``part.size`` fixed row blocks; ``part[k]`` = block k's summed loss.

    Z, Y (m, k) IN, b (k,) IN; A (m, k) OUT; part (n_blocks,) float64 OUT.
    The caller adds ``part`` in order, so the cost does not depend on how the
    blocks were shared between threads.
    """
    m = Z.shape[0]
    nb = part.size
    for blk in range(k0, k1):
        part[blk] = _loss_rows(Z, b, Y, loss, A, _rows(m, nb, blk), _rows(m, nb, blk + 1))


@parallel_kernel
def loss_blocks_parallel(Z, b, Y, loss, A, part, n_chunks):
    nb = part.size
    for k in prange(n_chunks):
        loss_blocks(Z, b, Y, loss, A, part, _rows(nb, n_chunks, k), _rows(nb, n_chunks, k + 1))


@kernel
def loss_backward_cols(A, Y, dZ, db, c0, c1):
    """``dZ = (A - Y) / m`` and ``db = sum_rows(dZ)`` on columns [c0, c1).

    A, Y (m, k) IN; dZ (m, k) OUT (may alias A or Y); db (k,) OUT.
    """
    m = A.shape[0]
    cm = like(A, m)
    acc = np.empty(TILE, np.float64)
    for t0 in range(c0, c1, TILE):
        t1 = min(t0 + TILE, c1)
        for j in range(t1 - t0):
            acc[j] = 0.0
        for i in range(m):
            for j in range(t0, t1):
                d = (A[i, j] - Y[i, j]) / cm
                dZ[i, j] = d
                acc[j - t0] += d
        for j in range(t0, t1):
            db[j] = acc[j - t0]


@parallel_kernel
def loss_backward_parallel(A, Y, dZ, db, n_chunks):
    n = A.shape[1]
    for k in prange(n_chunks):
        loss_backward_cols(A, Y, dZ, db, bound(n, n_chunks, k), bound(n, n_chunks, k + 1))


# --------------------------------------------------------------------------
# batch norm
# --------------------------------------------------------------------------


@kernel
def batchnorm_train_cols(Z, gamma, beta, eps, xhat, out, mean, var, invstd, c0, c1):
    """Batch statistics and normalisation of columns [c0, c1), all rows.

    Z (m, n) IN, gamma, beta (n,) IN; xhat, out (m, n) OUT; mean, var, invstd
    (n,) OUT.  Mean and biased variance are two-pass float64 sums, as
    ``numpy.mean``/``numpy.var`` with ``dtype=float64``; ``invstd`` is taken
    from the variance rounded to the dtype, as in the reference.
    """
    m = Z.shape[0]
    s1 = np.empty(TILE, np.float64)
    s2 = np.empty(TILE, np.float64)
    for t0 in range(c0, c1, TILE):
        t1 = min(t0 + TILE, c1)
        for j in range(t1 - t0):
            s1[j] = 0.0
            s2[j] = 0.0
        for i in range(m):
            for j in range(t0, t1):
                s1[j - t0] += Z[i, j]
        for j in range(t1 - t0):
            s1[j] = s1[j] / m
        for i in range(m):
            for j in range(t0, t1):
                d = np.float64(Z[i, j]) - s1[j - t0]
                s2[j - t0] += d * d
        for j in range(t0, t1):
            mean[j] = s1[j - t0]
            var[j] = s2[j - t0] / m
            invstd[j] = 1.0 / np.sqrt(np.float64(var[j]) + eps)
        for i in range(m):
            for j in range(t0, t1):
                x = (Z[i, j] - mean[j]) * invstd[j]
                xhat[i, j] = x
                out[i, j] = gamma[j] * x + beta[j]


@parallel_kernel
def batchnorm_forward_train_parallel(Z, gamma, beta, eps, xhat, out, mean, var, invstd, n_chunks):
    n = Z.shape[1]
    for k in prange(n_chunks):
        batchnorm_train_cols(Z, gamma, beta, eps, xhat, out, mean, var, invstd,
                             bound(n, n_chunks, k), bound(n, n_chunks, k + 1))


@kernel
def batchnorm_infer_block(Z, gamma, beta, running_mean, running_var, eps, out, r0, r1, c0, c1):
    """``out = gamma * ((Z - running_mean) * inv) + beta`` on a block, inv = 1/sqrt(running_var + eps).

    Z (m, n) IN; gamma, beta, running_mean, running_var (n,) IN; out (m, n) OUT
    (may alias Z).  ``inv`` is computed in float64 and rounded to the dtype.
    """
    inv = np.empty(TILE, Z.dtype)
    for t0 in range(c0, c1, TILE):
        t1 = min(t0 + TILE, c1)
        for j in range(t0, t1):
            inv[j - t0] = 1.0 / np.sqrt(np.float64(running_var[j]) + eps)
        for i in range(r0, r1):
            for j in range(t0, t1):
                out[i, j] = gamma[j] * ((Z[i, j] - running_mean[j]) * inv[j - t0]) + beta[j]


@parallel_kernel
def batchnorm_forward_infer_parallel(Z, gamma, beta, running_mean, running_var, eps, out, n_chunks):
    m, n = Z.shape
    by_rows = m >= n_chunks
    for k in prange(n_chunks):
        r0, r1, c0, c1 = block(m, n, n_chunks, k, by_rows)
        batchnorm_infer_block(Z, gamma, beta, running_mean, running_var, eps, out, r0, r1, c0, c1)


@kernel
def batchnorm_backward_cols(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, c0, c1):
    """Batch-norm gradients of columns [c0, c1), all rows.

    dout, xhat (m, n) IN; gamma, invstd (n,) IN; dZ (m, n) OUT (may alias
    dout); dgamma, dbeta (n,) OUT.  ``dbeta = sum(dout)``, ``dgamma =
    sum(dout * xhat)`` (products in the dtype, sums in float64), then
    ``dZ = gamma * invstd * (dout - dbeta/m - xhat * dgamma/m)``.
    """
    m = dout.shape[0]
    cm = like(dout, m)
    sb = np.empty(TILE, np.float64)
    sg = np.empty(TILE, np.float64)
    for t0 in range(c0, c1, TILE):
        t1 = min(t0 + TILE, c1)
        for j in range(t1 - t0):
            sb[j] = 0.0
            sg[j] = 0.0
        for i in range(m):
            for j in range(t0, t1):
                d = dout[i, j]
                sb[j - t0] += d
                sg[j - t0] += d * xhat[i, j]
        for j in range(t0, t1):
            dbeta[j] = sb[j - t0]
            dgamma[j] = sg[j - t0]
        for i in range(m):
            for j in range(t0, t1):
                dZ[i, j] = (gamma[j] * invstd[j]) * (
                    dout[i, j] - dbeta[j] / cm - xhat[i, j] * (dgamma[j] / cm))


@parallel_kernel
def batchnorm_backward_parallel(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_chunks):
    n = dout.shape[1]
    for k in prange(n_chunks):
        batchnorm_backward_cols(dout, xhat, gamma, invstd, dZ, dgamma, dbeta,
                                bound(n, n_chunks, k), bound(n, n_chunks, k + 1))
