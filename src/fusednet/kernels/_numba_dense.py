"""Numba kernels over (m, n) activations: bias + activation, losses, batch norm.

Each kernel is a ``*_block`` / ``*_cols`` function over rows ``[r0, r1)`` or
columns ``[c0, c1)`` (the serial kernel is one block over everything) and a
``*_parallel(..., n_chunks)`` function that runs ``n_chunks`` blocks in one
``prange``.  Semantics and signatures: :mod:`fusednet.kernels.reference`.

Compiled per activation and per loss.  The activation forward and backward
and the loss come as one pair of kernels (serial, parallel) per activation or
loss code, in :data:`FORWARD`, :data:`BACKWARD` and :data:`LOSS`, the forward
and backward also in an in-place form (``OUT is IN``, which the layers' own
calls are) that leaves out the out-of-place loops.  Each is built from one
Python function with the code frozen in as a closure constant: Numba drops
the branches of the other codes before typing them, so a kernel holds only
its own loops (a ReLU forward has no exp in it), and a run compiles only the
activations and losses it uses, on first call.  A parallel kernel calls its
serial one (see :func:`_variant`).  What a cold start compiles, and for how
long, is measured by ``benchmarks/test_bench_compile.py``.
:func:`forward_block`, :func:`backward_band` and the other functions that take
the code as an argument pick the kernel from its table (tests and benchmarks
use them).

Sums over rows (``db``, batch-norm statistics) never race and never depend on
the thread count: a column's sum is always accumulated by one thread walking
all rows in a fixed order, into float64 tiles of :data:`TILE` columns, so a
parallel kernel splits those reductions by columns only.  The loss's float64 cost is
summed over a fixed partition of the rows (at most :data:`LOSS_BLOCKS`
blocks, a function of m only) and the block sums are added in order, so it
too has the same bits for any thread count.

Loops run over row slices indexed from 0 (an index of unknown sign would make
Numba wrap negative indices and stop LLVM vectorising), in ``loop`` helpers
inlined at Numba IR level; an ``OUT`` that may alias an ``IN`` is passed as the
same slice when it does, so in-place calls vectorise too (see
:mod:`._numba_flat`).

Data flow is marked on each kernel: ``IN`` arguments are only read, ``OUT``
only written.  Everything returns None except the loss, which returns its cost.

Nothing is allocated per call.  The kernels that need working memory (the
float64 column-sum tiles, batch norm's per-column factors) take it as a
``scratch`` argument: one float64 row of :data:`SCRATCH` elements for a
``*_band``/``*_cols``/``*_block`` kernel, an ``(n_chunks or more, SCRATCH)``
array for a ``*_parallel`` one, which hands row ``k`` to chunk ``k``.  The
raw kernels of :mod:`._numba` own that memory and reuse it from call to call
(an allocation is a lock-taking ``malloc`` and, above a few hundred KiB, fresh
pages to fault in, on every training step).  ``scratch`` may be omitted when a
kernel is called directly (tests, benchmarks): it then allocates its own.
What is stored in the tiles, and the order of every addition, do not depend on
where the tiles live, so the results are the same bits either way.
"""

import math
import types as pytypes

import numpy as np
from numba import njit, prange

from ._codes import ACTIVATION_NAMES, BCE, LEAKY_RELU, LINEAR, LOSS_NAMES, MSE, RELU, SIGMOID, SOFTMAX, TANH
from ._numba_flat import bound, kernel, loop, parallel_kernel, same_buffer
from ._numba_math import (
    exp_nonpos,
    leaky_relu,
    leaky_relu_grad,
    like,
    log1p_unit,
    point,
    relu,
    relu_grad,
    sigmoid,
    sigmoid_grad,
    tanh,
    tanh_grad,
)
from ._policy import REDUCTION_FASTMATH

#: columns per float64 accumulator tile of a row-walking reduction
TILE = 1024
#: elements per row group of the two-pass kernels (stays in L2)
GROUP = 16384
#: the loss cost is summed over at most this many fixed row blocks
LOSS_BLOCKS = 64
#: float64 elements in one scratch row: the most tiles a kernel uses at once
#: (batch-norm backward: two float64 column sums and three per-column factors)
SCRATCH = 5 * TILE

_ROW_OPTIONS = dict(cache=True, nogil=True, fastmath=set(REDUCTION_FASTMATH), error_model="numpy",
                    no_cfunc_wrapper=True)
#: decorators of the loss kernels, whose own loops sum along rows, with the reduction flags
#: (:data:`~fusednet.kernels._policy.REDUCTION_FASTMATH`); a row is never split between threads
row_kernel = njit(**_ROW_OPTIONS)
row_parallel_kernel = njit(parallel=True, **_ROW_OPTIONS)


@loop
def tile(scratch, i):
    """Float64 tile ``i`` (``TILE`` elements) of a scratch row."""
    return scratch[i * TILE:(i + 1) * TILE]


@loop
def tile_like(scratch, i, a):
    """Tile ``i`` of a scratch row as ``TILE`` elements of ``a``'s dtype.

    A float32 tile reuses the first half of the float64 one's bytes: values
    stored there are rounded to the dtype, as the arithmetic that reads them
    expects.
    """
    return tile(scratch, i).view(a.dtype)[:TILE]


@loop
def _rows(m, n_chunks, k):
    """Start of row chunk ``k`` of ``n_chunks`` over ``m`` rows."""
    return (m * k) // n_chunks


@loop
def block(m, n, n_chunks, k, by_rows):
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of chunk ``k``: a band of whole
    rows when ``by_rows``, else a band of whole, 64-byte-aligned columns."""
    if by_rows:
        return _rows(m, n_chunks, k), _rows(m, n_chunks, k + 1), 0, n
    return 0, m, bound(n, n_chunks, k), bound(n, n_chunks, k + 1)


# --------------------------------------------------------------------------
# bias + activation forward
# --------------------------------------------------------------------------


#: the serial kernel that a parallel kernel calls: set in each parallel kernel's globals by :func:`_variant`
_serial = None


def _variant(f, name, decorator, **names):
    """``f`` compiled by ``decorator`` under the name ``name``, seeing ``names`` as globals.

    Each variant gets a name of its own, so each has its own entry in Numba's
    cache.  A parallel kernel calls its serial kernel through such a global
    (a closure cell holding a dispatcher would make a cache key that changes
    from process to process); it then links the serial kernel's compiled code
    instead of compiling the body a second and a third time (its loop, then
    the function around it).
    """
    g = pytypes.FunctionType(f.__code__, dict(f.__globals__, **names), name, f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__.rsplit(".", 1)[0] + "." + name if "." in f.__qualname__ else name
    g.__doc__ = f.__doc__
    return decorator(g)


#: The softmax rows' sums run in one fixed order, whatever the compiler does with their loops:
#: term j goes into running sum ``j % 8`` in order of j, and the eight sums are added as
#: ``((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))``.  The row functions that inline these
#: helpers are compiled without reassociation (``point``), so the bits do not depend on whether a
#: loop is vectorised, which the compiler decides per calling kernel: a row must come out the same
#: from the in-place and the out-of-place kernels, and from the serial and the parallel ones, even
#: when Numba's cache holds some of them from another process.  The eight sums are independent, so
#: the loop still runs eight additions at a time.


@loop
def _lane_sum(a):
    """``sum_j a[j]`` in float64, in the fixed order above."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n = a.size
    n8 = n - n % 8
    for j in range(0, n8, 8):
        s0 += a[j]
        s1 += a[j + 1]
        s2 += a[j + 2]
        s3 += a[j + 3]
        s4 += a[j + 4]
        s5 += a[j + 5]
        s6 += a[j + 6]
        s7 += a[j + 7]
    t = n - n8
    s0 += a[n8] if t > 0 else 0.0
    s1 += a[n8 + 1] if t > 1 else 0.0
    s2 += a[n8 + 2] if t > 2 else 0.0
    s3 += a[n8 + 3] if t > 3 else 0.0
    s4 += a[n8 + 4] if t > 4 else 0.0
    s5 += a[n8 + 5] if t > 5 else 0.0
    s6 += a[n8 + 6] if t > 6 else 0.0
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@loop
def _lane_dot(x, a):
    """``sum_j x[j] * a[j]`` in float64, in the fixed order above (each product in the arrays' dtype)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n = a.size
    n8 = n - n % 8
    for j in range(0, n8, 8):
        s0 += x[j] * a[j]
        s1 += x[j + 1] * a[j + 1]
        s2 += x[j + 2] * a[j + 2]
        s3 += x[j + 3] * a[j + 3]
        s4 += x[j + 4] * a[j + 4]
        s5 += x[j + 5] * a[j + 5]
        s6 += x[j + 6] * a[j + 6]
        s7 += x[j + 7] * a[j + 7]
    t = n - n8
    s0 += x[n8] * a[n8] if t > 0 else 0.0
    s1 += x[n8 + 1] * a[n8 + 1] if t > 1 else 0.0
    s2 += x[n8 + 2] * a[n8 + 2] if t > 2 else 0.0
    s3 += x[n8 + 3] * a[n8 + 3] if t > 3 else 0.0
    s4 += x[n8 + 4] * a[n8 + 4] if t > 4 else 0.0
    s5 += x[n8 + 5] * a[n8 + 5] if t > 5 else 0.0
    s6 += x[n8 + 6] * a[n8 + 6] if t > 6 else 0.0
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@loop
def _softmax_row(z, bb, a):
    zmax = -np.inf
    for j in range(a.size):
        v = z[j] + bb[j]
        zmax = v if v > zmax else zmax
    zm = like(a, zmax)
    for j in range(a.size):
        a[j] = exp_nonpos(z[j] + bb[j] - zm)  # at most 0: zm is the row's max
    inv = like(a, 1.0 / _lane_sum(a))
    for j in range(a.size):
        a[j] *= inv


@point
def _softmax_rows(Z, b, A, r0, r1):
    """Row-wise, max-subtracted ``A = softmax(Z + b)`` on rows [r0, r1).

    A NaN or +inf in a row makes the whole row NaN, as in the reference.
    A function of its own, without reassociation: each row's sum runs in the order of
    :func:`_lane_sum`.
    """
    if same_buffer(Z, A):
        for i in range(r0, r1):
            a = A[i]
            _softmax_row(a, b, a)
    else:
        for i in range(r0, r1):
            _softmax_row(Z[i], b, A[i])


@loop
def _bias_rows(zf, af, bb, n, g0, g1, c0, w, act, s, zero):
    """Rows g0..g1, columns c0..c0+w of the flat arrays: ``a = z + b``, with
    ReLU/leaky ReLU applied on the way (the other activations follow in a
    second pass).  ``w`` is unsigned, so the indices need no wraparound."""
    for i in range(g0, g1):
        base = np.uint64(i * n + c0)
        if act == RELU:
            for j in range(w):
                af[base + j] = relu(zf[base + j] + bb[j], zero)
        elif act == LEAKY_RELU:
            for j in range(w):
                af[base + j] = leaky_relu(zf[base + j] + bb[j], s, zero)
        else:
            for j in range(w):
                af[base + j] = zf[base + j] + bb[j]


@loop
def _activate(a, act):
    """``a = g(a)`` in place over a contiguous span, for sigmoid and tanh."""
    if act == SIGMOID:
        for k in range(a.size):
            a[k] = sigmoid(a[k])
    elif act == TANH:
        for k in range(a.size):
            a[k] = tanh(a[k])


def _forward_kernels(act, in_place):
    """``(block, parallel)``: the forward kernels of activation code ``act``, in place or not.

    ``block(Z, b, slope, A, r0, r1, c0, c1)``: ``A = g(Z + b)`` on rows [r0,
    r1) x columns [c0, c1); Z (m, n) IN, b (n,) IN, A (m, n) OUT, which is Z
    itself when ``in_place`` and may alias Z otherwise.  Softmax couples a
    row's columns: it takes whole rows r0..r1 and ignores c0, c1.  Sigmoid and tanh take
    two passes over groups of rows that stay in cache: the bias add by rows,
    then the activation over one long contiguous span, so the expensive loop
    vectorises end to end instead of leaving a scalar remainder on every row.
    ``parallel(Z, b, slope, A, n_chunks)`` runs ``n_chunks`` blocks.
    """

    def forward_block(Z, b, slope, A, r0, r1, c0, c1):
        n = Z.shape[1]
        if act == SOFTMAX:
            _softmax_rows(Z, b, A, r0, r1)
            return
        zero = like(A, 0.0)
        s = like(A, slope)
        zf = Z.reshape(Z.size)
        af = A.reshape(A.size)
        same = same_buffer(Z, A)
        w = c1 - c0
        uw = np.uint64(w)
        bb = b[c0:c1]
        group = GROUP // w if w > 0 else GROUP
        group = group if group > 1 else 1
        for g0 in range(r0, r1, group):
            g1 = g0 + group if g0 + group < r1 else r1
            if in_place:
                _bias_rows(af, af, bb, n, g0, g1, c0, uw, act, s, zero)
            elif same:
                _bias_rows(af, af, bb, n, g0, g1, c0, uw, act, s, zero)
            else:
                _bias_rows(zf, af, bb, n, g0, g1, c0, uw, act, s, zero)
            if act == SIGMOID or act == TANH:
                # whole rows are one contiguous span (c0 = 0); a band of columns, one span per
                # row.  One call site: the activation's loop is inlined, and compiled, once
                first, last, span = (g0, g0 + 1, (g1 - g0) * n) if w == n else (g0, g1, w)
                for i in range(first, last):
                    _activate(af[i * n + c0:i * n + c0 + span], act)

    def forward_parallel(Z, b, slope, A, n_chunks):
        m, n = Z.shape
        by_rows = act == SOFTMAX or m >= n_chunks
        for k in prange(n_chunks):
            r0, r1, c0, c1 = block(m, n, n_chunks, k, by_rows)
            _serial(Z, b, slope, A, r0, r1, c0, c1)

    tag = ACTIVATION_NAMES[act] + ("_in_place" if in_place else "")
    blk = _variant(forward_block, f"forward_{tag}_block", kernel)
    return blk, _variant(forward_parallel, f"forward_{tag}_parallel", parallel_kernel, _serial=blk)


#: ``FORWARD[act][in_place]``: the ``(block, parallel)`` forward kernels of each activation code,
#: out of place (``A`` may alias ``Z``) and in place (``A is Z``)
FORWARD = tuple((_forward_kernels(act, False), _forward_kernels(act, True)) for act in sorted(ACTIVATION_NAMES))


def forward_block(Z, b, act, slope, A, r0, r1, c0, c1):
    """``A = g(Z + b)`` on a block, by activation code: ``FORWARD[act][A is Z][0]``."""
    FORWARD[act][A is Z][0](Z, b, slope, A, r0, r1, c0, c1)


def bias_act_forward_parallel(Z, b, act, slope, A, n_chunks):
    """``A = g(Z + b)`` by activation code, in ``n_chunks`` chunks: ``FORWARD[act][A is Z][1]``."""
    FORWARD[act][A is Z][1](Z, b, slope, A, n_chunks)


# --------------------------------------------------------------------------
# activation backward, from the cached output A.  One thread owns a band of
# columns: per group of rows (small enough to stay in cache) it writes dZ,
# then adds those rows into the band's float64 column sums.
# --------------------------------------------------------------------------


@loop
def _add_rows(xf, n, g0, g1, t0, acc):
    """``acc += X[g0:g1, t0:t0 + acc.size]``; g0 is a multiple of 4.

    Rows go four at a time while four remain, ``acc += (x0 + x1) + (x2 + x3)``
    with the inner sums in the array's dtype and the running sum in float64,
    so the order of additions is fixed by the row index alone.
    """
    uw = np.uint64(acc.size)
    g4 = g0 + (g1 - g0) // 4 * 4
    for i in range(g0, g4, 4):
        b0 = np.uint64(i * n + t0)
        b1 = b0 + np.uint64(n)
        b2 = b1 + np.uint64(n)
        b3 = b2 + np.uint64(n)
        for j in range(uw):
            acc[j] += np.float64((xf[b0 + j] + xf[b1 + j]) + (xf[b2 + j] + xf[b3 + j]))
    for i in range(g4, g1):
        base = np.uint64(i * n + t0)
        for j in range(uw):
            acc[j] += xf[base + j]


@loop
def column_sums(X, out, c0, c1, sums):
    """``out = sum_rows(X)`` on columns [c0, c1), in float64, rows in a fixed order.

    X (m, n) IN, out (n,) OUT; sums: a float64 tile of scratch.
    """
    m, n = X.shape
    xf = X.reshape(X.size)
    for t0 in range(c0, c1, TILE):
        t1 = t0 + TILE if t0 + TILE < c1 else c1
        acc = sums[:t1 - t0]
        acc[:] = 0.0
        _add_rows(xf, n, 0, m, t0, acc)
        o = out[t0:t1]
        for j in range(acc.size):
            o[j] = acc[j]


@loop
def _backward_span(x, a, d, base, w, act, s):
    """``d = x * g'(a)`` on ``w`` (unsigned) elements from flat ``base``, g' read from the output."""
    if act == LINEAR:
        for k in range(w):
            d[base + k] = x[base + k]
    elif act == SIGMOID:
        for k in range(w):
            ak = a[base + k]
            d[base + k] = x[base + k] * sigmoid_grad(ak)
    elif act == TANH:
        for k in range(w):
            ak = a[base + k]
            d[base + k] = x[base + k] * tanh_grad(ak)
    elif act == RELU:
        for k in range(w):
            d[base + k] = x[base + k] * relu_grad(a[base + k])
    elif act == LEAKY_RELU:
        for k in range(w):
            d[base + k] = x[base + k] * leaky_relu_grad(a[base + k], s)


@loop
def _softmax_backward_row(x, a, d):
    c = like(a, _lane_dot(x, a))
    for j in range(d.size):
        d[j] = a[j] * (x[j] - c)


@point
def _softmax_backward_rows(dA, A, dZ):
    """``dZ = A * (dA - sum_cols(dA * A))`` on every row.  dZ may alias dA."""
    if same_buffer(dA, dZ):
        for i in range(dZ.shape[0]):
            d = dZ[i]
            _softmax_backward_row(d, A[i], d)
    else:
        for i in range(dZ.shape[0]):
            _softmax_backward_row(dA[i], A[i], dZ[i])


@kernel
def softmax_backward(dA, A, slope, dZ, db, c0, c1, scratch=None):
    """``dZ = A * (dA - sum_cols(dA * A))`` and ``db = sum_rows(dZ)`` (``slope`` unused).

    Softmax couples a row's columns: it needs all of them (c0 = 0, c1 = n),
    so it runs serially; there is no parallel softmax backward.
    """
    if scratch is None:
        scratch = np.empty(SCRATCH)
    _softmax_backward_rows(dA, A, dZ)
    column_sums(dZ, db, c0, c1, tile(scratch, 0))


def _backward_kernels(act, in_place):
    """``(band, parallel)``: the backward kernels of activation code ``act``, in place or not.

    ``band(dA, A, slope, dZ, db, c0, c1, scratch)``: ``dZ = dA * g'(A)`` and
    ``db = sum_rows(dZ)`` on columns [c0, c1), all rows; dA, A (m, n) IN; dZ
    (m, n) OUT, which is dA itself when ``in_place`` and may alias dA
    otherwise; db (n,) OUT; scratch (SCRATCH,) float64.  Each derivative is
    read from the output, as in the reference.  ``parallel(dA, A, slope, dZ,
    db, n_chunks, scratch)`` runs bands at least 64 bytes wide, scratch
    (n_chunks or more, SCRATCH).  Softmax: :func:`softmax_backward`, serial only.
    """
    if act == SOFTMAX:
        return softmax_backward, None

    def backward_band(dA, A, slope, dZ, db, c0, c1, scratch=None):
        if scratch is None:
            scratch = np.empty(SCRATCH)
        sums = tile(scratch, 0)
        m, n = dA.shape
        s = like(A, slope)
        xf = dA.reshape(dA.size)
        af = A.reshape(A.size)
        df = dZ.reshape(dZ.size)
        same = same_buffer(dA, dZ)
        for t0 in range(c0, c1, TILE):
            t1 = t0 + TILE if t0 + TILE < c1 else c1
            w = t1 - t0
            acc = sums[:w]
            acc[:] = 0.0
            group = GROUP // w // 4 * 4
            group = group if group > 4 else 4
            for g0 in range(0, m, group):
                g1 = g0 + group if g0 + group < m else m
                # whole rows are one contiguous span; a band of columns, one span per row
                first, last, span = (g0, g0 + 1, (g1 - g0) * n) if w == n else (g0, g1, w)
                for i in range(first, last):
                    base = np.uint64(i * n + t0)
                    if in_place:
                        _backward_span(df, af, df, base, np.uint64(span), act, s)
                    elif same:
                        _backward_span(df, af, df, base, np.uint64(span), act, s)
                    else:
                        _backward_span(xf, af, df, base, np.uint64(span), act, s)
                _add_rows(df, n, g0, g1, t0, acc)
            o = db[t0:t1]
            for j in range(w):
                o[j] = acc[j]

    def backward_parallel(dA, A, slope, dZ, db, n_chunks, scratch=None):
        if scratch is None:
            scratch = np.empty((n_chunks, SCRATCH))
        n = dA.shape[1]
        for k in prange(n_chunks):
            _serial(dA, A, slope, dZ, db, bound(n, n_chunks, k), bound(n, n_chunks, k + 1), scratch[k])

    tag = ACTIVATION_NAMES[act] + ("_in_place" if in_place else "")
    band = _variant(backward_band, f"backward_{tag}_band", kernel)
    return band, _variant(backward_parallel, f"backward_{tag}_parallel", parallel_kernel, _serial=band)


#: ``BACKWARD[act][in_place]``: the ``(band, parallel)`` backward kernels of each activation code,
#: out of place (``dZ`` may alias ``dA``) and in place (``dZ is dA``); softmax has no parallel one
BACKWARD = tuple((_backward_kernels(act, False), _backward_kernels(act, True)) for act in sorted(ACTIVATION_NAMES))


def backward_band(dA, A, act, slope, dZ, db, c0, c1, scratch=None):
    """``dZ = dA * g'(A)``, ``db = sum_rows(dZ)`` on a band, by activation code: ``BACKWARD[act][dZ is dA][0]``."""
    BACKWARD[act][dZ is dA][0](dA, A, slope, dZ, db, c0, c1, scratch)


def act_backward_parallel(dA, A, act, slope, dZ, db, n_chunks, scratch=None):
    """The same in ``n_chunks`` column bands (not softmax): ``BACKWARD[act][dZ is dA][1]``."""
    BACKWARD[act][dZ is dA][1](dA, A, slope, dZ, db, n_chunks, scratch)


# --------------------------------------------------------------------------
# output activation + loss, computed in float64 like the reference
# --------------------------------------------------------------------------


@point
def _cce_output(zr, b, ar, zmax, lse):
    """``ar = exp((z - zmax) - lse)``, z = zr + b in float64: a softmax row from its log-sum-exp.

    Without ``reassoc`` (a call of its own), so ``z - zmax`` is formed first
    and the max's output stays within an ulp of ``exp(-lse)``.
    """
    for j in range(ar.size):
        ar[j] = exp_nonpos((np.float64(zr[j] + b[j]) - zmax) - lse)


@loop
def _mse_rows(Z, b, Y, A, r0, r1):
    """``A = Z + b`` on rows [r0, r1); their summed loss ``(a - y)**2 / 2`` (float64).

    The logits are formed in the arrays' dtype and the rest is float64, in
    these three functions: MSE; BCE on the logits, ``max(z, 0) - z y +
    log1p(exp(-|z|))``, which never overflows; CCE through the max-subtracted
    log-sum-exp, ``log1p`` of the terms other than the maximum's 1, so the
    cost of a confident right answer (below eps) keeps its relative precision.
    The loss kernels carry the reduction flags, so their sums vectorise.
    """
    total = 0.0
    for i in range(r0, r1):
        zr, yr, ar = Z[i], Y[i], A[i]
        for j in range(ar.size):
            zd = zr[j] + b[j]
            ar[j] = zd
            d = np.float64(zd) - np.float64(yr[j])
            total += d * d
    return 0.5 * total


@loop
def _bce_rows(Z, b, Y, A, r0, r1):
    """``A = sigmoid(Z + b)`` on rows [r0, r1); their summed loss (float64)."""
    total = 0.0
    for i in range(r0, r1):
        zr, yr, ar = Z[i], Y[i], A[i]
        for j in range(ar.size):
            z = np.float64(zr[j] + b[j])
            ar[j] = sigmoid(z)
            total += (z if z > 0.0 else 0.0) - z * np.float64(yr[j]) + log1p_unit(exp_nonpos(-abs(z)))
    return total


@loop
def _cce_rows(Z, b, Y, A, r0, r1):
    """``A = softmax(Z + b)`` on rows [r0, r1); their summed loss ``y (lse - z)`` (float64).

    ``lse`` below is the log-sum-exp minus the row's max.
    """
    total = 0.0
    for i in range(r0, r1):
        zr, yr, ar = Z[i], Y[i], A[i]
        zmax = -np.inf
        for j in range(ar.size):
            z = np.float64(zr[j] + b[j])
            zmax = z if z > zmax else zmax
        # lse = log-sum-exp - zmax = log1p(rest): each maximum's exp(0) = 1
        # is counted apart, so rest holds the other terms alone (selected, not
        # subtracted: reassoc could cancel a subtracted 1 against the count).
        # The cost sum_j y_j (lse - (z_j - zmax)) is lse sum(y) + sum(y (zmax - z)),
        # whose second sum is 0 for a one-hot y on the max, leaving lse intact.
        rest = 0.0
        tops = 0.0
        ysum = 0.0
        ygap = 0.0
        for j in range(ar.size):
            z = np.float64(zr[j] + b[j])
            y = np.float64(yr[j])
            rest += 0.0 if z == zmax else exp_nonpos(z - zmax)
            tops += 1.0 if z == zmax else 0.0
            ysum += y
            ygap += y * (zmax - z)
        extra = tops - 1.0
        lse = math.log1p(rest + extra) if extra > 0.0 else math.log1p(rest)
        lse = lse if zmax < np.inf else np.nan  # +inf: a NaN row
        _cce_output(zr, b, ar, zmax, lse)
        total += ysum * lse + ygap
    return total


def _loss_kernels(loss):
    """``(blocks, parallel)``: the output activation and loss kernels of loss code ``loss``.

    ``blocks(Z, b, Y, A, part, k0, k1)`` does the rows of blocks [k0, k1) of
    the ``part.size`` fixed row blocks and sets ``part[k]`` to block k's
    summed loss: Z, Y (m, k) IN, b (k,) IN; A (m, k) OUT; part (n_blocks,)
    float64 OUT.  ``parallel(Z, b, Y, A, part, n_chunks)`` shares the blocks
    out in ``n_chunks`` runs.  The caller adds ``part`` in order, so the cost
    does not depend on how the blocks were shared between threads.
    """

    def loss_blocks(Z, b, Y, A, part, k0, k1):
        m, nb = Z.shape[0], part.size
        for blk in range(k0, k1):
            r0, r1 = _rows(m, nb, blk), _rows(m, nb, blk + 1)
            if loss == MSE:
                part[blk] = _mse_rows(Z, b, Y, A, r0, r1)
            elif loss == BCE:
                part[blk] = _bce_rows(Z, b, Y, A, r0, r1)
            else:
                part[blk] = _cce_rows(Z, b, Y, A, r0, r1)

    def loss_parallel(Z, b, Y, A, part, n_chunks):
        nb = part.size
        for k in prange(n_chunks):
            _serial(Z, b, Y, A, part, _rows(nb, n_chunks, k), _rows(nb, n_chunks, k + 1))

    tag = LOSS_NAMES[loss]
    blocks = _variant(loss_blocks, f"loss_{tag}_blocks", row_kernel)
    return blocks, _variant(loss_parallel, f"loss_{tag}_parallel", row_parallel_kernel, _serial=blocks)


#: ``LOSS[loss]``: the ``(blocks, parallel)`` kernels of each loss code
LOSS = tuple(_loss_kernels(loss) for loss in sorted(LOSS_NAMES))


def loss_blocks(Z, b, Y, loss, A, part, k0, k1):
    """Output activation and the summed loss of row blocks [k0, k1), by loss code: ``LOSS[loss][0]``."""
    LOSS[loss][0](Z, b, Y, A, part, k0, k1)


def loss_blocks_parallel(Z, b, Y, loss, A, part, n_chunks):
    """The same over all blocks, in ``n_chunks`` chunks: ``LOSS[loss][1]``."""
    LOSS[loss][1](Z, b, Y, A, part, n_chunks)


@kernel
def loss_backward_band(A, Y, dZ, db, c0, c1, scratch=None):
    """``dZ = (A - Y) / m`` and ``db = sum_rows(dZ)`` on columns [c0, c1).

    A, Y (m, k) IN; dZ (m, k) OUT; db (k,) OUT; scratch (SCRATCH,) float64.
    """
    if scratch is None:
        scratch = np.empty(SCRATCH)
    sums = tile(scratch, 0)
    m, n = A.shape
    cm = like(A, m)
    af = A.reshape(A.size)
    yf = Y.reshape(Y.size)
    df = dZ.reshape(dZ.size)
    for t0 in range(c0, c1, TILE):
        t1 = t0 + TILE if t0 + TILE < c1 else c1
        w = t1 - t0
        acc = sums[:w]
        acc[:] = 0.0
        group = GROUP // w // 4 * 4
        group = group if group > 4 else 4
        for g0 in range(0, m, group):
            g1 = g0 + group if g0 + group < m else m
            first, last, span = (g0, g0 + 1, (g1 - g0) * n) if w == n else (g0, g1, w)
            for i in range(first, last):
                base = np.uint64(i * n + t0)
                for j in range(np.uint64(span)):
                    df[base + j] = (af[base + j] - yf[base + j]) / cm
            _add_rows(df, n, g0, g1, t0, acc)
        o = db[t0:t1]
        for j in range(w):
            o[j] = acc[j]


def _loss_backward_parallel(A, Y, dZ, db, n_chunks, scratch=None):
    if scratch is None:
        scratch = np.empty((n_chunks, SCRATCH))
    n = A.shape[1]
    for k in prange(n_chunks):
        _serial(A, Y, dZ, db, bound(n, n_chunks, k), bound(n, n_chunks, k + 1), scratch[k])


loss_backward_parallel = _variant(_loss_backward_parallel, "loss_backward_parallel", parallel_kernel,
                                  _serial=loss_backward_band)


# --------------------------------------------------------------------------
# batch norm
# --------------------------------------------------------------------------


@kernel
def batchnorm_train_cols(Z, gamma, beta, eps, xhat, out, mean, var, invstd, c0, c1, scratch=None):
    """Batch statistics and normalisation of columns [c0, c1), all rows.

    Z (m, n) IN, gamma, beta (n,) IN; xhat, out (m, n) OUT; mean, var, invstd
    (n,) OUT; scratch (SCRATCH,) float64.  Mean and biased variance are
    two-pass float64 sums, as ``numpy.mean``/``numpy.var`` with
    ``dtype=float64``; ``invstd`` is taken from the variance rounded to the
    dtype, as in the reference.
    """
    if scratch is None:
        scratch = np.empty(SCRATCH)
    tile1 = tile(scratch, 0)
    tile2 = tile(scratch, 1)
    m = Z.shape[0]
    for t0 in range(c0, c1, TILE):
        t1 = min(t0 + TILE, c1)
        s1 = tile1[:t1 - t0]
        s2 = tile2[:t1 - t0]
        s1[:] = 0.0
        s2[:] = 0.0
        for i in range(m):
            zr = Z[i, t0:t1]
            for j in range(s1.size):
                s1[j] += zr[j]
        for j in range(s1.size):
            s1[j] = s1[j] / m
        for i in range(m):
            zr = Z[i, t0:t1]
            for j in range(s1.size):
                d = np.float64(zr[j]) - s1[j]
                s2[j] += d * d
        mu, va, iv = mean[t0:t1], var[t0:t1], invstd[t0:t1]
        ga, be = gamma[t0:t1], beta[t0:t1]
        for j in range(s1.size):
            mu[j] = s1[j]
            va[j] = s2[j] / m
            iv[j] = 1.0 / np.sqrt(np.float64(va[j]) + eps)
        for i in range(m):
            zr, xr, orow = Z[i, t0:t1], xhat[i, t0:t1], out[i, t0:t1]
            for j in range(s1.size):
                x = (zr[j] - mu[j]) * iv[j]
                xr[j] = x
                orow[j] = ga[j] * x + be[j]


@parallel_kernel
def batchnorm_forward_train_parallel(Z, gamma, beta, eps, xhat, out, mean, var, invstd, n_chunks,
                                     scratch=None):
    if scratch is None:
        scratch = np.empty((n_chunks, SCRATCH))
    n = Z.shape[1]
    for k in prange(n_chunks):
        batchnorm_train_cols(Z, gamma, beta, eps, xhat, out, mean, var, invstd,
                             bound(n, n_chunks, k), bound(n, n_chunks, k + 1), scratch[k])


@loop
def _infer_row(z, o, ga, be, mu, inv):
    for j in range(o.size):
        o[j] = ga[j] * ((z[j] - mu[j]) * inv[j]) + be[j]


@kernel
def batchnorm_infer_block(Z, gamma, beta, running_mean, running_var, eps, out, r0, r1, c0, c1,
                          scratch=None):
    """``out = gamma * ((Z - running_mean) * inv) + beta`` on a block, inv = 1/sqrt(running_var + eps).

    Z (m, n) IN; gamma, beta, running_mean, running_var (n,) IN; out (m, n) OUT
    (may alias Z); scratch (SCRATCH,) float64.  ``inv`` is computed in float64
    and rounded to the dtype.
    """
    if scratch is None:
        scratch = np.empty(SCRATCH)
    inv_tile = tile_like(scratch, 0, Z)
    same = same_buffer(Z, out)
    for t0 in range(c0, c1, TILE):
        t1 = min(t0 + TILE, c1)
        inv = inv_tile[:t1 - t0]
        rv = running_var[t0:t1]
        for j in range(inv.size):
            inv[j] = 1.0 / np.sqrt(np.float64(rv[j]) + eps)
        ga, be, mu = gamma[t0:t1], beta[t0:t1], running_mean[t0:t1]
        for i in range(r0, r1):
            o = out[i, t0:t1]
            if same:
                _infer_row(o, o, ga, be, mu, inv)
            else:
                _infer_row(Z[i, t0:t1], o, ga, be, mu, inv)


@parallel_kernel
def batchnorm_forward_infer_parallel(Z, gamma, beta, running_mean, running_var, eps, out, n_chunks,
                                     scratch=None):
    if scratch is None:
        scratch = np.empty((n_chunks, SCRATCH))
    m, n = Z.shape
    by_rows = m >= n_chunks
    for k in prange(n_chunks):
        r0, r1, c0, c1 = block(m, n, n_chunks, k, by_rows)
        batchnorm_infer_block(Z, gamma, beta, running_mean, running_var, eps, out, r0, r1, c0, c1,
                              scratch[k])


@loop
def _bn_backward_row(x, xh, d, k, mb, mg):
    for j in range(d.size):
        d[j] = k[j] * (x[j] - mb[j] - xh[j] * mg[j])


@kernel
def batchnorm_backward_cols(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, c0, c1, scratch=None):
    """Batch-norm gradients of columns [c0, c1), all rows.

    dout, xhat (m, n) IN; gamma, invstd (n,) IN; dZ (m, n) OUT (may alias
    dout); dgamma, dbeta (n,) OUT; scratch (SCRATCH,) float64.  ``dbeta =
    sum(dout)``, ``dgamma = sum(dout * xhat)`` (products in the dtype, sums in
    float64), then ``dZ = gamma * invstd * (dout - dbeta/m - xhat * dgamma/m)``.
    """
    if scratch is None:
        scratch = np.empty(SCRATCH)
    tb, tg = tile(scratch, 0), tile(scratch, 1)
    tk0, tk1, tk2 = tile_like(scratch, 2, dout), tile_like(scratch, 3, dout), tile_like(scratch, 4, dout)
    m = dout.shape[0]
    cm = like(dout, m)
    same = same_buffer(dout, dZ)
    for t0 in range(c0, c1, TILE):
        t1 = min(t0 + TILE, c1)
        w = t1 - t0
        sb, sg = tb[:w], tg[:w]
        sb[:] = 0.0
        sg[:] = 0.0
        for i in range(m):
            dr, xr = dout[i, t0:t1], xhat[i, t0:t1]
            for j in range(w):
                d = dr[j]
                sb[j] += d
                sg[j] += d * xr[j]
        k, mb, mg = tk0[:w], tk1[:w], tk2[:w]
        dbt, dgt, ga, iv = dbeta[t0:t1], dgamma[t0:t1], gamma[t0:t1], invstd[t0:t1]
        for j in range(w):
            dbt[j] = sb[j]
            dgt[j] = sg[j]
            k[j] = ga[j] * iv[j]
            mb[j] = dbt[j] / cm
            mg[j] = dgt[j] / cm
        for i in range(m):
            d = dZ[i, t0:t1]
            if same:
                _bn_backward_row(d, xhat[i, t0:t1], d, k, mb, mg)
            else:
                _bn_backward_row(dout[i, t0:t1], xhat[i, t0:t1], d, k, mb, mg)


@parallel_kernel
def batchnorm_backward_parallel(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_chunks, scratch=None):
    if scratch is None:
        scratch = np.empty((n_chunks, SCRATCH))
    n = dout.shape[1]
    for k in prange(n_chunks):
        batchnorm_backward_cols(dout, xhat, gamma, invstd, dZ, dgamma, dbeta,
                                bound(n, n_chunks, k), bound(n, n_chunks, k + 1), scratch[k])
