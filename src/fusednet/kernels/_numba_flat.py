"""Numba kernels over flat buffers: dropout, the optimiser updates, the EWA step.

Each kernel comes as a ``*_span(..., start, stop)`` function that does the work
on the flat index range ``[start, stop)`` (the serial kernel is one span over
everything) and a ``*_parallel(..., n_chunks)`` function that cuts the buffer
into ``n_chunks`` contiguous 64-byte-aligned spans and runs them in a
``prange``.  Elements are independent, so both give the same bits for any
number of chunks.  Semantics and signatures: :mod:`fusednet.kernels.reference`.

Loops run over slices indexed from 0 (an index of unknown sign would make
Numba wrap negative indices and stop LLVM vectorising), in ``loop`` helpers
that are inlined at Numba IR level.  An ``OUT`` that may alias an ``IN`` is
passed to the helper as the same slice when it does: LLVM then sees one
array and vectorises without its overlap check, which would otherwise send
in-place calls down the scalar path.

Data flow is marked on each kernel: ``IN`` arguments are only read, ``OUT``
only written, ``INOUT`` both.  Nothing is allocated; everything returns None.
"""

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (a writable cache directory, before the first decorator)
from ._numba_math import (
    FASTMATH,
    adam_step,
    decayed,
    dropout_hash,
    ewa,
    flush,
    gd_step,
    like,
    momentum_step,
    rmsprop_step,
    tiny,
)

#: (no C entry point: only Python and other kernels call them)
_OPTIONS = dict(cache=True, nogil=True, fastmath=set(FASTMATH), error_model="numpy", no_cfunc_wrapper=True)
#: decorator of the compiled kernels (serial) ...
kernel = njit(**_OPTIONS)
#: ... and of their parallel drivers
parallel_kernel = njit(parallel=True, **_OPTIONS)
#: decorator of loop and index helpers, inlined into the kernel (and its flags) at Numba IR level
loop = njit(inline="always")

#: chunk boundaries are multiples of this many elements (64 bytes of float32),
#: so two threads never write the same cache line
ALIGN = 16


@loop
def bound(n, n_chunks, k):
    """Start of chunk ``k`` (end of chunk ``k - 1``) when ``[0, n)`` is cut in ``n_chunks``."""
    if k >= n_chunks:
        return n
    b = (n * k) // n_chunks
    return b - b % ALIGN


@loop
def same_buffer(a, b):
    """Whether two arrays start at the same address (an OUT aliasing an IN)."""
    return a.ctypes.data == b.ctypes.data


# --------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------


@loop
def _dropout_loop(x, o, first, key1, key2, last, c, zero):
    for j in range(o.size):
        o[j] = x[j] * c if dropout_hash(first + j, key1, key2) <= last else zero


@kernel
def dropout_span(X, k1, k2, last_kept, drop_all, scale, out, start, stop):
    """``out = X * scale`` where ``dropout_hash(i) <= last_kept``, else 0, for flat i in [start, stop).

    X (any shape, C order) IN; out (X's shape) OUT, may alias X.  ``k1, k2``
    are the key's 32-bit halves; ``last_kept = threshold - 1`` as a uint32
    (``drop_all`` when the threshold is 0).
    """
    o = out.reshape(out.size)[start:stop]
    zero = like(X, 0.0)
    if drop_all:
        for j in range(o.size):
            o[j] = zero
        return
    c = like(X, scale)
    key1 = np.uint32(k1)
    key2 = np.uint32(k2)
    last = np.uint32(last_kept)
    if same_buffer(X, out):
        _dropout_loop(o, o, start, key1, key2, last, c, zero)
    else:
        _dropout_loop(X.reshape(X.size)[start:stop], o, start, key1, key2, last, c, zero)


@parallel_kernel
def dropout_parallel(X, k1, k2, last_kept, drop_all, scale, out, n_chunks):
    n = X.size
    for k in prange(n_chunks):
        dropout_span(X, k1, k2, last_kept, drop_all, scale, out,
                     bound(n, n_chunks, k), bound(n, n_chunks, k + 1))


# --------------------------------------------------------------------------
# optimisers.  The gradient read is g + l2 * w on [0, n_decay) when l2 != 0,
# g elsewhere: each span runs the loop twice, once per part, with the decay
# switched on or off as a constant, so each loop is branch-free.
# State below the smallest normal number is flushed to zero when written, as
# in the reference, and also when read: arithmetic on subnormal operands is
# microcoded on x86 (a step over 1e7 subnormal float32 moments took 190 ms
# instead of 8), and a subnormal state can still come in from outside.
# --------------------------------------------------------------------------


@loop
def _split(l2, n_decay, start, stop):
    """End of the weight-decayed part of ``[start, stop)``."""
    if l2 == 0.0:
        return start
    return min(max(n_decay, start), stop)


@loop
def _gd_loop(w, g, decay, c_lr, c_l2):
    for i in range(w.size):
        gp = decayed(g[i], w[i], c_l2) if decay else g[i]
        w[i] = gd_step(w[i], gp, c_lr)


@kernel
def gd_span(w, g, lr, l2, n_decay, start, stop):
    """``w -= lr * (g + l2 w)``.  w (n,) INOUT, g (n,) IN."""
    c_lr = like(w, lr)
    c_l2 = like(w, l2)
    mid = _split(l2, n_decay, start, stop)
    _gd_loop(w[start:mid], g[start:mid], True, c_lr, c_l2)
    _gd_loop(w[mid:stop], g[mid:stop], False, c_lr, c_l2)


@parallel_kernel
def gd_parallel(w, g, lr, l2, n_decay, n_chunks):
    n = w.size
    for k in prange(n_chunks):
        gd_span(w, g, lr, l2, n_decay, bound(n, n_chunks, k), bound(n, n_chunks, k + 1))


@loop
def _momentum_loop(w, g, v, decay, c_lr, c_beta, c_1mb, c_bc, c_l2, tv):
    for i in range(w.size):
        gp = decayed(g[i], w[i], c_l2) if decay else g[i]
        vi = flush(ewa(flush(v[i], tv), gp, c_beta, c_1mb), tv)
        v[i] = vi
        w[i] = momentum_step(w[i], vi, c_lr, c_bc)


@kernel
def momentum_span(w, g, v, lr, beta, bc, l2, n_decay, start, stop):
    """``v = beta v + (1 - beta) g'``, ``w -= lr v / bc``.  w, v (n,) INOUT, g (n,) IN."""
    c_lr = like(w, lr)
    c_beta = like(w, beta)
    c_1mb = like(w, 1.0 - beta)
    c_bc = like(w, bc)
    c_l2 = like(w, l2)
    tv = tiny(w)
    mid = _split(l2, n_decay, start, stop)
    _momentum_loop(w[start:mid], g[start:mid], v[start:mid], True,
                   c_lr, c_beta, c_1mb, c_bc, c_l2, tv)
    _momentum_loop(w[mid:stop], g[mid:stop], v[mid:stop], False,
                   c_lr, c_beta, c_1mb, c_bc, c_l2, tv)


@parallel_kernel
def momentum_parallel(w, g, v, lr, beta, bc, l2, n_decay, n_chunks):
    n = w.size
    for k in prange(n_chunks):
        momentum_span(w, g, v, lr, beta, bc, l2, n_decay,
                      bound(n, n_chunks, k), bound(n, n_chunks, k + 1))


@loop
def _rmsprop_loop(w, g, s, decay, c_lr, c_beta, c_1mb, c_eps, c_l2, tv):
    for i in range(w.size):
        gp = decayed(g[i], w[i], c_l2) if decay else g[i]
        si = flush(ewa(flush(s[i], tv), gp * gp, c_beta, c_1mb), tv)
        s[i] = si
        w[i] = rmsprop_step(w[i], gp, si, c_lr, c_eps)


@kernel
def rmsprop_span(w, g, s, lr, beta, eps, l2, n_decay, start, stop):
    """``s = beta s + (1 - beta) g'^2``, ``w -= lr g' / (sqrt(s) + eps)``.  w, s INOUT, g IN."""
    c_lr = like(w, lr)
    c_beta = like(w, beta)
    c_1mb = like(w, 1.0 - beta)
    c_eps = like(w, eps)
    c_l2 = like(w, l2)
    tv = tiny(w)
    mid = _split(l2, n_decay, start, stop)
    _rmsprop_loop(w[start:mid], g[start:mid], s[start:mid], True,
                  c_lr, c_beta, c_1mb, c_eps, c_l2, tv)
    _rmsprop_loop(w[mid:stop], g[mid:stop], s[mid:stop], False,
                  c_lr, c_beta, c_1mb, c_eps, c_l2, tv)


@parallel_kernel
def rmsprop_parallel(w, g, s, lr, beta, eps, l2, n_decay, n_chunks):
    n = w.size
    for k in prange(n_chunks):
        rmsprop_span(w, g, s, lr, beta, eps, l2, n_decay,
                     bound(n, n_chunks, k), bound(n, n_chunks, k + 1))


@loop
def _adam_loop(w, g, m, v, decay, c_lr, c_b1, c_1mb1, c_b2, c_1mb2, c_eps, c_bc1, c_bc2, c_l2, tv):
    for i in range(w.size):
        gp = decayed(g[i], w[i], c_l2) if decay else g[i]
        mi = flush(ewa(flush(m[i], tv), gp, c_b1, c_1mb1), tv)
        vi = flush(ewa(flush(v[i], tv), gp * gp, c_b2, c_1mb2), tv)
        m[i] = mi
        v[i] = vi
        w[i] = adam_step(w[i], mi, vi, c_lr, c_bc1, c_bc2, c_eps)


@kernel
def adam_span(w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, start, stop):
    """Adam with bias-correction divisors ``bc1, bc2``.  w, m, v (n,) INOUT, g (n,) IN."""
    c_lr = like(w, lr)
    c_b1 = like(w, beta1)
    c_1mb1 = like(w, 1.0 - beta1)
    c_b2 = like(w, beta2)
    c_1mb2 = like(w, 1.0 - beta2)
    c_eps = like(w, eps)
    c_bc1 = like(w, bc1)
    c_bc2 = like(w, bc2)
    c_l2 = like(w, l2)
    tv = tiny(w)
    mid = _split(l2, n_decay, start, stop)
    _adam_loop(w[start:mid], g[start:mid], m[start:mid], v[start:mid], True,
               c_lr, c_b1, c_1mb1, c_b2, c_1mb2, c_eps, c_bc1, c_bc2, c_l2, tv)
    _adam_loop(w[mid:stop], g[mid:stop], m[mid:stop], v[mid:stop], False,
               c_lr, c_b1, c_1mb1, c_b2, c_1mb2, c_eps, c_bc1, c_bc2, c_l2, tv)


@parallel_kernel
def adam_parallel(w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, n_chunks):
    n = w.size
    for k in prange(n_chunks):
        adam_span(w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay,
                  bound(n, n_chunks, k), bound(n, n_chunks, k + 1))


# --------------------------------------------------------------------------
# exponentially weighted average
# --------------------------------------------------------------------------


@kernel
def ewa_span(v, x, beta, start, stop):
    """``v = beta v + (1 - beta) x``.  v INOUT, x (v's shape) IN, flat index range."""
    vs = v.reshape(v.size)[start:stop]
    xs = x.reshape(x.size)[start:stop]
    c_beta = like(v, beta)
    c_1mb = like(v, 1.0 - beta)
    for i in range(vs.size):
        vs[i] = ewa(vs[i], xs[i], c_beta, c_1mb)


@parallel_kernel
def ewa_parallel(v, x, beta, n_chunks):
    n = v.size
    for k in prange(n_chunks):
        ewa_span(v, x, beta, bound(n, n_chunks, k), bound(n, n_chunks, k + 1))
