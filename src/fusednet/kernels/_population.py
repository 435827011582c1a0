r"""The population engine: K models of one architecture trained together, compiled.

:class:`fusednet.Population` trains K configurations (learning rates, betas,
L2, keep_prob, initial weights) of one layer list at once.  Every model sees
the same shuffled mini-batches, so one compiled call runs a range of epochs
for all of them: per mini-batch the rows are gathered once, the first Dense
layer's product runs for all the models as one wide loop over the batch,
and then each model's remaining forward pass, loss, backward pass and
optimiser update follow, inside the same call.  The models' parameters live
in one arena of shape ``(K, n_params)``: row ``k`` is model ``k``'s arena in
:class:`~fusednet.Sequential`'s layout, so the update of all K is one pass
over it.

Layout.  Activations are stored *by unit*, as in the course's notation:
a layer of ``n`` units over a batch of ``nb`` examples is an ``(n, nb)``
array, so every element-wise loop and every product runs along the
batch, contiguous, whatever the widths (the course's nets are a few units
wide).  A Dense layer computes :math:`Z = W^T A_{in}` (``W`` of shape
``(n_in, n_out)`` as in the model), its gradients are
:math:`dW = A_{in}\, dZ^T` and :math:`dA_{in} = W\, dZ`.  Products of at least
:data:`BLAS_MACS` multiply-adds go to BLAS (``np.dot``), smaller ones run as
loops here.  The element index of a dropout mask is the one of the model's
``(nb, n)`` activation (``row * n + unit``), so the masks are those of the
trainer.

Threads.  The models are cut into contiguous chunks (:func:`fit_chunk` runs
one chunk on the calling thread; :class:`Team` hands the chunks out
to a team of threads, the next free thread taking the next chunk); a chunk
runs every epoch and step of the call for its models, with no
synchronisation between chunks.  Each model's arithmetic is the same
whichever chunk it is in and however many models the population holds, so
the results do not depend on the thread count or on K -- but for a first
layer of at least :data:`BLAS_MACS` multiply-adds, whose forward product and
weight gradient run as one BLAS product over the chunk's models, and whose
rows BLAS may round differently for another number of them.

Formulas come from their one source: activations, their derivatives from
the output, the loss rows and the dropout hash from
:mod:`._numba_math` / :mod:`._numba_dense`, batch norm from
:func:`._numba_dense.batchnorm_train_cols` and its siblings, the optimiser
updates from the loops of :mod:`._numba_flat`, the EWA of the running
statistics from :func:`._numba_flat.ewa_span`, and the bias corrections
from :func:`fusednet.optim.bias_correction` (a table the caller fills).

A model whose cost, gradient, update or batch statistics turn NaN or inf
stops: its parameters, optimiser state and running statistics keep their
values from before that step and ``status[k]`` records why (the codes of
``fusednet._fused.FAILED``), the epoch and the step; the other models go on.

Tables:

``net`` (L,) :data:`~fusednet.kernels._plan.NODE_DTYPE`
    :meth:`fusednet.Sequential.plan`'s ``"layers"``, walked as they are (the
    arena offsets are those of every model's row; a Dropout's ``keep_prob``
    is per model, in ``hyp``).
``at`` int64 (L, 4)
    per layer (:func:`layout`): the workspace offsets of its output
    (``OUT``), of batch norm's ``xhat`` (``XHAT``) and statistics (``STAT``:
    mean, var, invstd), and ``NEED_DIN`` (whether the backward pass needs
    the delta of its input).
``info`` int64 (:data:`N_INFO`,)
    the call's scalars and the workspace offsets shared by the layers.
``hyp`` float64 (K, 5 + L)
    per model: lr, beta1 (momentum's beta), beta2 (RMSProp's beta), eps, the
    L2 :math:`\lambda`, then each layer's keep_prob (1 but for Dropout).
``keys`` uint64 (K, 1 + L)
    per model: the seed its dropout keys fold from, then each layer's dropout
    threshold (``fusednet.kernels.dropout_threshold`` of its keep_prob).
"""

import math
import threading

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

from . import (
    _numba_cache,  # noqa: F401  (a writable cache directory, before the first decorator)
    _placement,
)
from ._codes import (
    ACTIVATION,
    BATCHNORM,
    CCE,
    DENSE,
    DROPOUT,
    LEAKY_RELU,
    LINEAR,
    MSE,
    OPT_ADAM,
    OPT_GD,
    OPT_MOMENTUM,
    RELU,
    SIGMOID,
    TANH,
)
from ._numba_dense import (
    SCRATCH,
    _activate,
    _cce_rows,
    batchnorm_backward_cols,
    batchnorm_infer_block,
    batchnorm_train_cols,
)
from ._numba_flat import _adam_loop, _gd_loop, _momentum_loop, _rmsprop_loop, ewa_span, loop
from ._numba_math import (
    dropout_hash,
    exp_nonpos,
    leaky_relu,
    leaky_relu_grad,
    like,
    log1p_unit_typed,
    relu,
    relu_grad,
    sigmoid_from_exp,
    sigmoid_grad,
    tanh_grad,
    tiny,
)
from ._policy import REDUCTION_FASTMATH

#: columns of ``at``
OUT, XHAT, STAT, NEED_DIN = range(4)
#: entries of ``info``
(EPOCH0, N_EPOCHS, BATCH, LOSS, OPT, ACC, N_STEPS, XT_AT, YT_AT, D0, D1, Z1W, SAVE, ZEROS, STATS, STAT_SIZE,
 W1S_AT, DZ1_AT, DW1S_AT, WS_SIZE) = range(20)
N_INFO = 20
#: columns of ``hyp`` (layer ``i``'s keep_prob at ``KEEP + i``)
LR, BETA1, BETA2, EPS, L2, KEEP = range(6)
#: accuracy modes: none (a linear output), argmax against class ids (softmax), A > 0.5 against Y > 0.5 (sigmoid)
ACC_NONE, ACC_ARGMAX, ACC_THRESHOLD = 0, 1, 2
#: columns of ``out`` (per epoch and model): summed batch costs x batch sizes, correct training
#: predictions, dev cost, correct dev predictions
TRAIN_SUM, TRAIN_CORRECT, DEV_LOSS, DEV_CORRECT = range(4)
#: ``status`` codes (``fusednet._fused.FAILED``): 0 training
COST, GRADIENT, UPDATE, BN_STATS = 1, 2, 3, 4

#: products of at least this many multiply-adds run on BLAS (``np.dot``), smaller ones as loops here:
#: chosen with the digits workload of benchmarks/test_bench_population.py (64-64-10, batch 64), whose
#: second layer's products (40960 multiply-adds) took 0.5 us (forward) and 1.7 us (both gradients) per
#: model on BLAS against 4.8 us and 5.3 us as loops; the moons net's (2-5-2-1) stay loops
BLAS_MACS = 16_384

_OPTIONS = dict(nogil=True, fastmath=set(REDUCTION_FASTMATH), error_model="numpy", boundscheck=False)
#: the chunk kernel (cached: a user-called dispatcher)
kernel = njit(cache=True, **_OPTIONS)
#: the passes and products, compiled once each into the kernel that calls them (inlining them at Numba IR
#: level instead, as the small helpers are, multiplies the kernel's compile time)
helper = njit(cache=False, no_cpython_wrapper=True, no_cfunc_wrapper=True, **_OPTIONS)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# --------------------------------------------------------------------------
# the layout: workspace offsets, built once per population and batch size
# --------------------------------------------------------------------------


def layout(net, n_models, batch, n_params):
    """``(at, info)``: the workspace of the model described by ``net`` (:meth:`~fusednet.Sequential.plan`'s
    ``"layers"``) for chunks of ``n_models`` models and batches of ``batch`` rows.

    The workspace of one chunk (one row of ``work`` in :func:`fit_chunk`)
    holds, each for ``batch`` examples: every layer's output, batch norm's
    ``xhat``, the gathered batch ``X^T`` and ``Y^T``, two delta buffers of the
    widest layer, and for all ``n_models`` models the first layer's output,
    its delta, its weights and their gradient side by side (the wide
    products), and each model's batch-norm statistics; then a copy of one
    model's parameters and optimiser state (restored if its update fails) and a
    row of zeros (the bias of a Dense without one and of an Activation).  ``info[WS_SIZE]`` is its length; the
    call's own scalars (epochs, loss, optimiser, ...) are left 0 for the caller.
    """
    L = net.shape[0]
    at = np.full((L, 4), -1, np.int64)
    nf = int(net[0]["n_in"])
    wmax = max(nf, int(net["n_out"].max()))
    off = 0

    def take(n):
        nonlocal off
        start = off
        off += int(n)
        return start

    seen = False
    stat_size = 0
    for i in range(L):
        n = int(net[i]["n_out"])
        bn = int(net[i]["op"]) == BATCHNORM
        at[i, OUT] = take(n * batch)
        if bn:
            at[i, XHAT] = take(n * batch)
            at[i, STAT] = stat_size  # within each model's block of statistics
            stat_size += 3 * n
        at[i, NEED_DIN] = int(seen)
        seen = seen or int(net[i]["op"]) in (DENSE, BATCHNORM)
    n1 = int(net[0]["n_out"])
    info = np.zeros(N_INFO, np.int64)
    info[STAT_SIZE] = stat_size
    info[STATS] = take(n_models * stat_size)
    info[W1S_AT] = take(n_models * n1 * nf)
    info[DZ1_AT] = take(n_models * n1 * batch)
    info[DW1S_AT] = take(n_models * n1 * nf)
    info[BATCH] = batch
    info[XT_AT] = take(nf * batch)
    info[YT_AT] = take(int(net[L - 1]["n_out"]) * batch)
    info[D0] = take(wmax * batch)
    info[D1] = take(wmax * batch)
    info[Z1W] = take(n_models * int(net[0]["n_out"]) * batch)
    info[SAVE] = take(3 * n_params)
    info[ZEROS] = take(wmax)
    info[WS_SIZE] = off
    return at, info


# --------------------------------------------------------------------------
# small helpers (inlined at Numba IR level)
# --------------------------------------------------------------------------


@loop
def _splitmix64(x):
    """One round of SplitMix64 on a uint64 (mirrors ``fusednet.kernels._codes._splitmix64``)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@loop
def dropout_key4(seed, epoch, step, layer):
    """``fusednet.kernels.dropout_key(seed, epoch, step, layer)`` for a uint64 seed."""
    x = _splitmix64(seed)
    x = _splitmix64(x ^ np.uint64(epoch))
    x = _splitmix64(x ^ np.uint64(step))
    return _splitmix64(x ^ np.uint64(layer))


@intrinsic
def _voidptr(typingctx, address):
    """An integer address as a ``void *`` (for :func:`numba.carray`)."""
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.intp), codegen


@loop
def _view(a, off, n, m):
    """The ``(n, m)`` C-ordered block at element ``off`` of the 1-D C-contiguous ``a``, borrowed.

    A plain view (``a[off:off + n * m].reshape(n, m)``) calls into the runtime
    for the reshape and counts a reference of ``a`` with an atomic operation,
    which the threads of a team contend for on the shared workspace; a step makes
    dozens of these views.  The block borrows ``a``'s memory instead: it lives
    only inside the kernel's call, while ``a`` does.
    """
    return carray(_voidptr(a.ctypes.data + off * a.itemsize), (n, m), a.dtype)


@loop
def _borrow(a):
    """The whole C-contiguous ``a``, borrowed (see :func:`_view`): the threads of a team share the arrays
    of a call, and every helper call taking a counted array would count its reference."""
    return carray(_voidptr(a.ctypes.data), a.shape, a.dtype)


@loop
def _slice(a, off, n):
    """``a[off:off + n]`` of a 1-D C-contiguous ``a``, borrowed (see :func:`_view`)."""
    return carray(_voidptr(a.ctypes.data + off * a.itemsize), (n,), a.dtype)


@loop
def _row(a, k):
    """Row ``k`` of a 2-D C-contiguous ``a``, borrowed (see :func:`_view`)."""
    n = a.shape[1]
    return carray(_voidptr(a.ctypes.data + k * n * a.itemsize), (n,), a.dtype)


@loop
def _units(ws, off, n, nb):
    """The ``(n, nb)`` buffer at ``off`` of a workspace row."""
    return _view(ws, off, n, nb)


@loop
def _param(P, off, n_in, n_out):
    """A Dense layer's ``(n_in, n_out)`` weights at ``off`` of a model's arena row."""
    return _view(P, off, n_in, n_out)


@loop
def _vector(P, off, n, zeros):
    """The ``n`` values at ``off`` of an arena row, or ``_slice(zeros, 0, n)`` when ``off`` is -1."""
    if off < 0:
        return _slice(zeros, 0, n)
    return _slice(P, off, n)


@helper
def _product_t(W, A, Z):
    """``Z = W^T A``: W (n_in, n_out) IN, A (n_in, nb) IN, Z (n_out, nb) OUT.

    The loops index the arrays in two dimensions and take no row views: each view
    would count a reference of the workspace, an atomic operation.
    """
    n_in, n_out = W.shape
    nb = A.shape[1]
    if n_in * n_out * nb >= BLAS_MACS:
        np.dot(W.T, A, Z)
        return
    for j in range(n_out):
        w0 = W[0, j]
        for b in range(nb):
            Z[j, b] = w0 * A[0, b]
        for p in range(1, n_in):
            w = W[p, j]
            for b in range(nb):
                Z[j, b] += w * A[p, b]


@helper
def _grad_products(A, dZ, W, dW, dA, need_din):
    """``dW = A dZ^T`` and, when ``need_din``, ``dA = W dZ``: A (n_in, nb), dZ (n_out, nb) IN."""
    n_in, n_out = W.shape
    nb = A.shape[1]
    if n_in * n_out * nb >= BLAS_MACS:
        np.dot(A, dZ.T, dW)
        if need_din:
            np.dot(W, dZ, dA)
        return
    for p in range(n_in):
        for j in range(n_out):
            s = like(A, 0.0)
            for b in range(nb):
                s += A[p, b] * dZ[j, b]
            dW[p, j] = s
    if need_din:
        for p in range(n_in):
            w0 = W[p, 0]
            for b in range(nb):
                dA[p, b] = w0 * dZ[0, b]
            for j in range(1, n_out):
                w = W[p, j]
                for b in range(nb):
                    dA[p, b] += w * dZ[j, b]


@helper
def _bias_act(A, bias, act, slope):
    """``A = g(A + b)`` in place, by unit: A (n, nb) INOUT, b (n,) IN.

    In place on purpose: with a separate output that may alias the input, LLVM
    guards the vector loop with an overlap test, and every in-place call fails
    it and runs the scalar loop.
    """
    n, nb = A.shape
    zero = like(A, 0.0)
    s = like(A, slope)
    for j in range(n):
        bj = bias[j]
        if act == RELU:
            for b in range(nb):
                A[j, b] = relu(A[j, b] + bj, zero)
        elif act == LEAKY_RELU:
            for b in range(nb):
                A[j, b] = leaky_relu(A[j, b] + bj, s, zero)
        else:
            for b in range(nb):
                A[j, b] = A[j, b] + bj
    if act != RELU and act != LEAKY_RELU and act != LINEAR:  # sigmoid, tanh: over the whole buffer
        _activate(A.reshape(A.size), act)


@helper
def _act_backward(D, A, act, slope):
    """``D = D * g'(A)`` in place (derivatives from the output), by unit: D (n, nb) INOUT, A (n, nb) IN."""
    n, nb = D.shape
    s = like(A, slope)
    for j in range(n):
        if act == RELU:
            for b in range(nb):
                D[j, b] = D[j, b] * relu_grad(A[j, b])
        elif act == LEAKY_RELU:
            for b in range(nb):
                D[j, b] = D[j, b] * leaky_relu_grad(A[j, b], s)
        elif act == SIGMOID:
            for b in range(nb):
                D[j, b] = D[j, b] * sigmoid_grad(A[j, b])
        elif act == TANH:
            for b in range(nb):
                D[j, b] = D[j, b] * tanh_grad(A[j, b])


@helper
def _copy_units(A, out):
    """``out = A``: A, out (n, nb), distinct buffers."""
    n, nb = A.shape
    for j in range(n):
        for b in range(nb):
            out[j, b] = A[j, b]


@helper
def _unit_sums(D, out):
    """``out = sum_b D[:, b]`` accumulated in float64: D (n, nb) IN, out (n,) OUT."""
    n, nb = D.shape
    for j in range(n):
        s = 0.0
        for b in range(nb):
            s += D[j, b]
        out[j] = s


@helper
def _dropout(A, key, last_kept, scale, out):
    """Inverted dropout by unit; element ``(j, b)`` has the mask of index ``b * n + j`` of the (nb, n) array.

    A (n, nb) IN, out (n, nb) OUT (may be A).  ``last_kept``: the threshold - 1 (uint32 range), or -1: drop all.
    """
    n, nb = A.shape
    k1 = np.uint32(key & np.uint64(0xFFFFFFFF))
    k2 = np.uint32(key >> np.uint64(32))
    zero = like(A, 0.0)
    c = like(A, scale)
    if last_kept < 0:
        for j in range(n):
            out[j, :] = zero
        return
    last = np.uint32(last_kept)
    for j in range(n):
        for b in range(nb):
            out[j, b] = A[j, b] * c if dropout_hash(b * n + j, k1, k2) <= last else zero


@helper
def _loss(loss, A, bias, Y, scratch):
    """Output activation ``A = g(A + b)`` in place and the summed loss of the batch (float64).

    A (k, nb) INOUT: the logits without bias in, the output out; Y (k, nb) IN;
    scratch: float64, at least 5 nb for softmax.  The formulas of
    ``_numba_dense._mse_rows``, ``_bce_rows`` and ``_cce_rows``: the logits in
    the arrays' dtype and the rest in float64 -- but BCE's sigmoid and per-example
    loss, in the arrays' dtype (:func:`._numba_math.log1p_unit_f32` in float32,
    twice the vector lanes) and summed in float64 -- every loop along the
    examples (a vector loop: in place, as :func:`_bias_act`).
    """
    k, nb = A.shape
    if loss == CCE:
        if 5 * nb > scratch.size:
            return _cce_rows(A.T, bias, Y.T, A.T, 0, nb)
        return _cce_units(A, bias, Y, scratch)
    total = 0.0
    zero = like(A, 0.0)
    for j in range(k):
        bj = bias[j]
        if loss == MSE:
            for b in range(nb):
                zd = A[j, b] + bj
                A[j, b] = zd
                d = np.float64(zd) - np.float64(Y[j, b])
                total += d * d
        else:
            for b in range(nb):
                z = A[j, b] + bj
                e = exp_nonpos(-abs(z))  # sigmoid's own exp(-|z|), shared with the softplus term
                A[j, b] = sigmoid_from_exp(z, e)
                term = (z if z > zero else zero) - z * Y[j, b] + log1p_unit_typed(e)
                total += np.float64(term)
    return 0.5 * total if loss == MSE else total


@helper
def _cce_units(A, bias, Y, scratch):
    """``_numba_dense._cce_rows`` by unit, in place: softmax and its cost from the max-subtracted log-sum-exp.

    A (k, nb) INOUT (logits without bias in, softmax out), Y (k, nb) IN.  Per
    example: ``zmax``, ``rest`` (the other terms' exponentials), ``tops`` (how
    many reach the max), ``ysum`` and ``ygap``, each a float64 vector of the
    scratch, summed over the units in order; then ``lse = log1p(rest)`` and
    ``A = exp((z - zmax) - lse)``.
    """
    k, nb = A.shape
    zmax, rest, tops = _slice(scratch, 0, nb), _slice(scratch, nb, nb), _slice(scratch, 2 * nb, nb)
    ysum, ygap = _slice(scratch, 3 * nb, nb), _slice(scratch, 4 * nb, nb)
    for b in range(nb):
        zmax[b] = -np.inf
        rest[b] = 0.0
        tops[b] = 0.0
        ysum[b] = 0.0
        ygap[b] = 0.0
    for j in range(k):
        bj = bias[j]
        for b in range(nb):
            z = np.float64(A[j, b] + bj)
            zmax[b] = z if z > zmax[b] else zmax[b]
    for j in range(k):
        bj = bias[j]
        for b in range(nb):
            z = np.float64(A[j, b] + bj)
            y = np.float64(Y[j, b])
            top = z == zmax[b]
            rest[b] += 0.0 if top else exp_nonpos(z - zmax[b])
            tops[b] += 1.0 if top else 0.0
            ysum[b] += y
            ygap[b] += y * (zmax[b] - z)
    total = 0.0
    for b in range(nb):
        extra = tops[b] - 1.0
        lse = math.log1p(rest[b] + extra) if extra > 0.0 else math.log1p(rest[b])
        lse = lse if zmax[b] < np.inf else np.nan
        rest[b] = lse
        total += ysum[b] * lse + ygap[b]
    for j in range(k):
        bj = bias[j]
        for b in range(nb):
            A[j, b] = exp_nonpos((np.float64(A[j, b] + bj) - zmax[b]) - rest[b])
    return total


@helper
def _gather(X, Y, order, s, XT, YT):
    """``XT = X[order[s:s + nb]].T``, ``YT = Y[order[s:s + nb]].T``, nb the width of XT."""
    nf, nb = XT.shape
    k = YT.shape[0]
    for b in range(nb):
        r = order[s + b]
        for p in range(nf):
            XT[p, b] = X[r, p]
        for j in range(k):
            YT[j, b] = Y[r, j]


@helper
def _correct(acc, A, Y, ids, order, s):
    """Correct predictions of a batch: argmax against ``ids[order[s + b]]`` (softmax) or ``A > 0.5``
    against ``Y > 0.5``."""
    k, nb = A.shape
    count = 0
    if acc == ACC_ARGMAX:
        for b in range(nb):
            best = 0
            for j in range(1, k):
                if A[j, b] > A[best, b]:
                    best = j
            count += 1 if best == ids[order[s + b]] else 0
    elif acc == ACC_THRESHOLD:
        half = like(A, 0.5)
        for j in range(k):
            for b in range(nb):
                count += 1 if (A[j, b] > half) == (Y[j, b] > half) else 0
    return count


@helper
def _columns_from(S, q, W):
    """``S[:, q n : (q + 1) n] = W``: W (n_in, n) IN, S (n_in, Q n) OUT; row by row, contiguous."""
    n_in, n = W.shape
    for p in range(n_in):
        for j in range(n):
            S[p, q * n + j] = W[p, j]


@helper
def _columns_to(S, q, W):
    """``W = S[:, q n : (q + 1) n]``: the reverse of :func:`_columns_from`."""
    n_in, n = W.shape
    for p in range(n_in):
        for j in range(n):
            W[p, j] = S[p, q * n + j]


@loop
def _sumsq(x, start, stop):
    s = 0.0
    for i in range(start, stop):
        s += np.float64(x[i]) * np.float64(x[i])
    return s


@loop
def _all_finite(x):
    """Whether every element of ``x`` is finite: ``sum(x * 0)`` is 0, or NaN when one is NaN or inf
    (a vector loop without an early exit)."""
    s = 0.0
    for i in range(x.size):
        s += np.float64(x[i]) * 0.0
    return s == 0.0


@loop
def _copy(src, i0, dst, j0, n):
    """``dst[j0:j0 + n] = src[i0:i0 + n]`` of 1-D arrays, as a plain loop (a slice assignment tests the
    two for overlap and copies element by element)."""
    for i in range(n):
        dst[j0 + i] = src[i0 + i]


# --------------------------------------------------------------------------
# one model's passes
# --------------------------------------------------------------------------


@loop
def _out(at, i, off0):
    """The workspace offset of layer ``i``'s output: ``off0`` for layer 0 (the first product's slot)."""
    return off0 if i == 0 else at[i, OUT]


@helper
def _forward(net, at, P, R, ws, scratch, XT, YT, nb, loss, keys, h, epoch, step, train, zeros, off0, sb):
    """Forward from layer 0's product, already at ``off0``; returns the summed loss of the batch.

    ``train``: batch statistics (kept at ``sb``) and dropout (``keys``, ``h``: the model's rows of ``keys``
    and ``hyp``); else running statistics.
    """
    L = net.shape[0]
    A = XT
    total = 0.0
    for i in range(L):
        op, n_in, n = net[i].op, net[i].n_in, net[i].n_out
        out = _units(ws, _out(at, i, off0), n, nb)
        last = i == L - 1
        if op == DENSE:
            W = _param(P, net[i].w_off, n_in, n)
            bias = _vector(P, net[i].b_off, n, zeros)
            if i > 0:
                _product_t(W, A, out)
            if last:
                total = _loss(loss, out, bias, YT, scratch)
            else:
                _bias_act(out, bias, net[i].act, net[i].slope)
        elif op == ACTIVATION:
            _copy_units(A, out)
            if last:
                total = _loss(loss, out, _slice(zeros, 0, n), YT, scratch)
            else:
                _bias_act(out, _slice(zeros, 0, n), net[i].act, net[i].slope)
        elif op == DROPOUT:
            if train:
                key = dropout_key4(keys[0], epoch, step, net[i].index)
                threshold = np.int64(keys[1 + i])
                _dropout(A, key, threshold - 1 if threshold > 0 else -1, 1.0 / h[KEEP + i], out)
            else:
                _copy_units(A, out)
        else:
            gamma = _slice(P, net[i].gamma_off, n)
            beta = _slice(P, net[i].beta_off, n)
            if train:
                st = sb + at[i, STAT]
                xhat = _units(ws, at[i, XHAT], n, nb)
                batchnorm_train_cols(A.T, gamma, beta, net[i].bn_eps, xhat.T, out.T, _slice(ws, st, n),
                                     _slice(ws, st + n, n), _slice(ws, st + 2 * n, n), 0, n, scratch)
            else:
                rm = _slice(R, net[i].rmean_off, n)
                rv = _slice(R, net[i].rvar_off, n)
                batchnorm_infer_block(A.T, gamma, beta, rm, rv, net[i].bn_eps, out.T, 0, nb, 0, n, scratch)
        A = out
    return total


@helper
def _backward(net, at, P, G, ws, scratch, XT, YT, nb, keys, h, epoch, step, d0, d1, off0, sb, dz1):
    """Backward after :func:`_forward`: fills the model's gradient row (no L2 term).

    With ``dz1 >= 0`` the first layer's weight gradient is left to the wide product: its delta is
    copied to ``dz1`` instead.
    """
    L = net.shape[0]
    cur = d0
    nxt = d1
    i = L - 1
    n = net[i].n_out
    d = _units(ws, cur, n, nb)
    A = _units(ws, _out(at, i, off0), n, nb)
    Y = YT
    cm = like(A, nb)
    for j in range(n):
        a, y, dj = A[j], Y[j], d[j]
        for b in range(nb):
            dj[b] = (a[b] - y[b]) / cm
    for i in range(L - 1, -1, -1):
        op, n_in, n = net[i].op, net[i].n_in, net[i].n_out
        d = _units(ws, cur, n, nb)
        A_in = XT if i == 0 else _units(ws, _out(at, i - 1, off0), n_in, nb)
        if op == DENSE:
            if i < L - 1:
                act = net[i].act
                if act != LINEAR:
                    _act_backward(d, _units(ws, _out(at, i, off0), n, nb), act, net[i].slope)
            if net[i].b_off >= 0:
                _unit_sums(d, _slice(G, net[i].b_off, n))
            W = _param(P, net[i].w_off, n_in, n)
            dW = _param(G, net[i].w_off, n_in, n)
            need = at[i, NEED_DIN] != 0
            if i == 0 and dz1 >= 0:
                _copy_units(d, _units(ws, dz1, n, nb))
            else:
                _grad_products(A_in, d, W, dW, _units(ws, nxt, n_in, nb), need)
            cur, nxt = nxt, cur
        elif op == ACTIVATION:
            if i < L - 1:
                _act_backward(d, _units(ws, _out(at, i, off0), n, nb), net[i].act, net[i].slope)
        elif op == DROPOUT:
            key = dropout_key4(keys[0], epoch, step, net[i].index)
            threshold = np.int64(keys[1 + i])
            _dropout(d, key, threshold - 1 if threshold > 0 else -1, 1.0 / h[KEEP + i], d)
        else:
            gamma = _slice(P, net[i].gamma_off, n)
            st = sb + at[i, STAT]
            xhat = _units(ws, at[i, XHAT], n, nb)
            batchnorm_backward_cols(d.T, xhat.T, gamma, _slice(ws, st + 2 * n, n), d.T,
                                    _slice(G, net[i].gamma_off, n), _slice(G, net[i].beta_off, n),
                                    0, n, scratch)
        if at[i, NEED_DIN] == 0:
            break


@helper
def _update(kind, w, g, s1, s2, h, bc1, bc2, l2, n_decay):
    """One model's optimiser step over its arena row (the loops of :mod:`._numba_flat`)."""
    c_lr = like(w, h[LR])
    c_l2 = like(w, l2)
    tv = tiny(w)
    c_b1, c_1mb1 = like(w, h[BETA1]), like(w, 1.0 - h[BETA1])
    c_b2, c_1mb2 = like(w, h[BETA2]), like(w, 1.0 - h[BETA2])
    c_eps, c_bc1, c_bc2 = like(w, h[EPS]), like(w, bc1), like(w, bc2)
    n = w.size
    for part in range(2):
        a = 0 if part == 0 else n_decay
        e = n_decay if part == 0 else n
        decay = part == 0 and l2 != 0.0
        wp, gp = _slice(w, a, e - a), _slice(g, a, e - a)
        if kind == OPT_GD:
            _gd_loop(wp, gp, decay, c_lr, c_l2)
        elif kind == OPT_MOMENTUM:
            _momentum_loop(wp, gp, _slice(s1, a, e - a), decay, c_lr, c_b1, c_1mb1, c_bc1, c_l2, tv)
        elif kind == OPT_ADAM:
            _adam_loop(wp, gp, _slice(s1, a, e - a), _slice(s2, a, e - a), decay, c_lr, c_b1, c_1mb1, c_b2, c_1mb2,
                       c_eps, c_bc1, c_bc2, c_l2, tv)
        else:
            _rmsprop_loop(wp, gp, _slice(s1, a, e - a), decay, c_lr, c_b2, c_1mb2, c_eps, c_l2, tv)


@helper
def _update_running(net, at, ws, R, sb):
    """Fold the step's batch-norm statistics into the model's running averages (``ewa_span``)."""
    for i in range(net.shape[0]):
        if net[i].op == BATCHNORM:
            n = net[i].n_out
            st = sb + at[i, STAT]
            ewa_span(_slice(R, net[i].rmean_off, n), _slice(ws, st, n), net[i].bn_momentum, 0, n)
            ewa_span(_slice(R, net[i].rvar_off, n), _slice(ws, st + n, n), net[i].bn_momentum, 0, n)


def _quarter_max(x):
    """A quarter of the largest finite value of ``x``'s dtype: the bound of the trainer's checks."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(_quarter_max, inline="always")
def _quarter_max_impl(x):
    value = float(np.finfo(as_dtype(x.dtype)).max) / 4.0
    return lambda x: value


@helper
def _bn_bounded(net, at, ws, limit, sb):
    """Whether every batch-norm batch mean and variance of the step is finite and below ``limit``."""
    for i in range(net.shape[0]):
        if net[i].op == BATCHNORM:
            st = sb + at[i, STAT]
            for j in range(st, st + 2 * net[i].n_out):
                if not abs(ws[j]) < limit:
                    return False
    return True


# --------------------------------------------------------------------------
# the kernels
# --------------------------------------------------------------------------


@kernel
def fit_chunk(k0, k1, c, net, at, info, data, dev, arenas, hyp, keys, bc, work, out, status):
    """Epochs ``info[EPOCH0] ..`` for models ``k0 .. k1 - 1``, on workspace row ``c`` of ``work``.

    Parameters
    ----------
    net, at, info : the model's records and the tables of :func:`layout`, with ``info``'s scalars set
        (``EPOCH0``, ``N_EPOCHS``, ``LOSS``, ``OPT``, ``ACC``, ``N_STEPS`` per
        epoch).
    data : (X, Y, ids, perm)
        X (m, n_features), Y (m, k) in the dtype, C-contiguous; ids int64 (m,)
        (class ids, for the softmax accuracy); perm int64 (N_EPOCHS, m): each
        epoch's row order.
    dev : (X_dev, Y_dev, ids_dev, order_dev)
        The same for the dev set (0 rows for none); order_dev = arange(m_dev).
    arenas : (P, G, S1, S2, R)
        Parameters, gradients, optimiser state (``(K, 0)`` when unused) and
        running statistics, one row per model; INOUT.
    hyp, keys : per-model tables (see the module docstring).
    bc : (table, cols)
        The bias corrections of each step of the call: table float64
        (N_EPOCHS * N_STEPS, U, 2), once per distinct pair (1 where none),
        model k's in column ``cols[k]`` (int64 (K,)).
    work : (ws, scratch)
        dtype (n_chunks, info[WS_SIZE]) and float64 (n_chunks, SCRATCH).
    out : float64 (N_EPOCHS, K, 4)  OUT (columns ``TRAIN_SUM`` ...).
    status : int64 (K, 3)  INOUT: (code, epoch, step) of a model that stopped, code 0 while training.
    """
    X, Y, ids, perm = _borrow(data[0]), _borrow(data[1]), _borrow(data[2]), _borrow(data[3])
    Xd, Yd, idsd, dorder = _borrow(dev[0]), _borrow(dev[1]), _borrow(dev[2]), _borrow(dev[3])
    P, G, S1, S2, R = (_borrow(arenas[0]), _borrow(arenas[1]), _borrow(arenas[2]), _borrow(arenas[3]),
                       _borrow(arenas[4]))
    net, at, info, hyp, keys = _borrow(net), _borrow(at), _borrow(info), _borrow(hyp), _borrow(keys)
    bct, bcol = _borrow(bc[0]), _borrow(bc[1])
    out, status = _borrow(out), _borrow(status)
    ws = _row(work[0], c)
    scratch = _row(work[1], c)
    m, nf = X.shape
    k = Y.shape[1]
    md = Xd.shape[0]
    B = info[BATCH]
    loss, kind, acc = info[LOSS], info[OPT], info[ACC]
    L = net.shape[0]
    n1 = net[0].n_out
    n_decay = 0
    for i in range(L):
        if net[i].op == DENSE:
            n_decay += net[i].n_in * net[i].n_out
    n_params = P.shape[1]
    wmax = nf
    for i in range(L):
        wmax = max(wmax, net[i].n_out)
    zeros = ws[info[ZEROS]:info[ZEROS] + wmax]
    zeros[:] = 0.0
    save = ws[info[SAVE]:info[SAVE] + 3 * n_params]
    limit = _quarter_max(P)
    Kc = k1 - k0
    # the first layer's products as one BLAS call each for the chunk, when one model's would go to BLAS (a
    # property of the net and batch, so that a model takes the same path in any chunk and population)
    wide = nf * n1 * B >= BLAS_MACS
    w1s = _units(ws, info[W1S_AT], nf, Kc * n1)  # every model's W1 side by side: model kk's in columns
    dw1s = _units(ws, info[DW1S_AT], nf, Kc * n1)  # (kk - k0) n1 ..., and their gradients
    for kk in range(k0, k1):
        _columns_from(w1s, kk - k0, _param(_row(P, kk), net[0].w_off, nf, n1))
    costs = np.zeros(Kc)
    corrects = np.zeros(Kc, np.int64)
    for ei in range(info[N_EPOCHS]):
        epoch = info[EPOCH0] + ei
        order = _row(perm, ei)
        for kk in range(k0, k1):
            out[ei, kk, :] = 0.0
        for step in range(info[N_STEPS]):
            s = step * B
            nb = min(B, m - s)
            XT = _units(ws, info[XT_AT], nf, nb)
            YT = _units(ws, info[YT_AT], k, nb)
            _gather(X, Y, order, s, XT, YT)
            # the first layer's product for every model of the chunk: one pass over the batch
            if wide:
                np.dot(w1s.T, XT, _units(ws, info[Z1W], Kc * n1, nb))
            else:
                for kk in range(k0, k1):
                    if status[kk, 0] == 0:
                        _product_t(_param(_row(P, kk), net[0].w_off, nf, n1), XT,
                                   _units(ws, info[Z1W] + (kk - k0) * n1 * nb, n1, nb))
            # each model's forward and backward pass
            for kk in range(k0, k1):
                if status[kk, 0] != 0:
                    continue
                h = _row(hyp, kk)
                Pk = _row(P, kk)
                off0 = info[Z1W] + (kk - k0) * n1 * nb
                sb = info[STATS] + (kk - k0) * info[STAT_SIZE]
                cost = _forward(net, at, Pk, _row(R, kk), ws, scratch, XT, YT, nb, loss, _row(keys, kk), h, epoch,
                                step, True, zeros, off0, sb) / nb
                if h[L2] != 0.0:
                    cost += h[L2] / (2.0 * nb) * _sumsq(Pk, 0, n_decay)
                costs[kk - k0] = cost
                if not np.isfinite(cost):
                    status[kk, 0], status[kk, 1], status[kk, 2] = COST, epoch, step
                    continue
                corrects[kk - k0] = _correct(acc, _units(ws, _out(at, L - 1, off0), k, nb), YT, ids, order, s)
                _backward(net, at, Pk, _row(G, kk), ws, scratch, XT, YT, nb, _row(keys, kk), h, epoch, step,
                          info[D0], info[D1], off0, sb, info[DZ1_AT] + (kk - k0) * n1 * nb if wide else -1)
            if wide:  # every model's first-layer weight gradient: X dZ1^T
                np.dot(XT, _units(ws, info[DZ1_AT], Kc * n1, nb).T, dw1s)
            # each model's checks and update
            for kk in range(k0, k1):
                if status[kk, 0] != 0:
                    continue
                h = _row(hyp, kk)
                Pk, Gk, s1, s2 = _row(P, kk), _row(G, kk), _row(S1, kk), _row(S2, kk)
                sb = info[STATS] + (kk - k0) * info[STAT_SIZE]
                if wide:
                    _columns_to(dw1s, kk - k0, _param(Gk, net[0].w_off, nf, n1))
                code = 0
                if not np.isfinite(_sumsq(Gk, 0, n_params)):
                    code = GRADIENT
                elif not _bn_bounded(net, at, ws, limit, sb):
                    code = BN_STATS
                if code == 0:
                    _copy(Pk, 0, save, 0, n_params)
                    _copy(s1, 0, save, n_params, s1.size)
                    _copy(s2, 0, save, 2 * n_params, s2.size)
                    t = ei * info[N_STEPS] + step
                    _update(kind, Pk, Gk, s1, s2, h, bct[t, bcol[kk], 0], bct[t, bcol[kk], 1], h[L2] / nb,
                            n_decay)
                    if not (_all_finite(Pk) and _all_finite(s1) and _all_finite(s2)):
                        _copy(save, 0, Pk, 0, n_params)
                        _copy(save, n_params, s1, 0, s1.size)
                        _copy(save, 2 * n_params, s2, 0, s2.size)
                        code = UPDATE
                if code != 0:
                    status[kk, 0], status[kk, 1], status[kk, 2] = code, epoch, step
                    continue
                _columns_from(w1s, kk - k0, _param(Pk, net[0].w_off, nf, n1))
                _update_running(net, at, ws, _row(R, kk), sb)
                out[ei, kk, TRAIN_SUM] += costs[kk - k0] * nb
                out[ei, kk, TRAIN_CORRECT] += corrects[kk - k0]
        # the dev set, in inference mode, in batches of B rows
        for kk in range(k0, k1):
            if status[kk, 0] != 0 or md == 0:
                continue
            h = _row(hyp, kk)
            Pk = _row(P, kk)
            total = 0.0
            correct = 0
            off0 = at[0, OUT]
            for s in range(0, md, B):
                nb = min(B, md - s)
                XT = _units(ws, info[XT_AT], nf, nb)
                YT = _units(ws, info[YT_AT], k, nb)
                _gather(Xd, Yd, dorder, s, XT, YT)
                _product_t(_param(Pk, net[0].w_off, nf, n1), XT, _units(ws, off0, n1, nb))
                total += _forward(net, at, Pk, _row(R, kk), ws, scratch, XT, YT, nb, loss, _row(keys, kk), h, epoch,
                                  0, False, zeros, off0, info[STATS])
                correct += _correct(acc, _units(ws, _out(at, L - 1, off0), k, nb), YT, idsd, dorder, s)
            dl = total / md
            if h[L2] != 0.0:
                dl += h[L2] / (2.0 * md) * _sumsq(Pk, 0, n_decay)
            out[ei, kk, DEV_LOSS] = dl
            out[ei, kk, DEV_CORRECT] = correct


class Team:
    """A team of threads for the chunk kernels: ``n_workers - 1`` threads started here, and the calling
    thread when it calls :meth:`run`.

    The threads start at once and each finds a CPU of its own (:class:`._placement.Team`) while the
    calling thread prepares the call's arguments: where the system has put an idle CPU to sleep,
    waking it takes milliseconds.  Then they wait for :meth:`run`.  Use as a context manager: leaving
    it stops the threads that ran no chunk and gives every thread its CPUs back.

    Plain threads, not a ``prange``: a parallel kernel around the chunk kernel
    compiled it a second time into its own module (about 20 s a dtype here),
    and Python threads also run in a forked child, where an OpenMP team cannot
    start.
    """

    def __init__(self, n_workers):
        self._cpus = _placement.Team()
        self._go = threading.Event()
        self._cond = threading.Condition()
        self._job = None       # (bounds, args, chunk, the slices' first epochs and the end)
        self._done = []        # per chunk: its slices run
        self._running = []     # per chunk: whether a thread runs one of its slices
        self._stop = False
        self._errors = []
        self._threads = [threading.Thread(target=self._guarded, args=(w,), daemon=True) for w in range(1, n_workers)]
        for t in self._threads:
            t.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._go.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def run(self, bounds, *args, chunk=fit_chunk, slices=1):
        """``chunk`` (:func:`fit_chunk`, or a kernel of its signature) over the chunks of models
        ``bounds[c] .. bounds[c + 1] - 1``, once.

        bounds int64 (n_chunks + 1,), increasing from 0 to K; ``args`` are :func:`fit_chunk`'s after
        the worker index, ``work`` with a row per thread.  With ``slices`` > 1 each chunk's epochs are
        cut into that many calls (:func:`epochs_of`), run in order; a thread takes the slice of the
        chunk that is furthest behind and not running, so a thread that starts late (or is
        descheduled) holds up one slice, not its share of the population.  If this thread is
        interrupted (or a worker raises), no slice is started after that; the workers finish the
        slices they hold before the error propagates, so no thread writes the arenas after the call
        returns.
        """
        n_epochs = int(args[2][N_EPOCHS]) if slices > 1 else 1
        slices = max(1, min(int(slices), n_epochs))
        cuts = [n_epochs * j // slices for j in range(slices + 1)]
        self._job = (bounds, args, chunk, cuts)
        self._done = [0] * (bounds.size - 1)
        self._running = [False] * (bounds.size - 1)
        self._go.set()
        try:
            self._cpus.settle()
            self._work(0)
        finally:
            self.__exit__()
            self._cpus.release()
        if self._errors:
            raise self._errors[0]

    def _take(self):
        """The next ``(chunk, slice)`` to run (marked running), or None when there is none left; waits
        while every chunk left is running on another thread."""
        n_slices = len(self._job[3]) - 1
        with self._cond:
            while not self._stop:
                free = [c for c, d in enumerate(self._done) if d < n_slices and not self._running[c]]
                if free:
                    c = min(free, key=lambda c: self._done[c])  # the furthest behind, the first of those
                    self._running[c] = True
                    return c, self._done[c]
                if all(d == n_slices for d in self._done):
                    return None
                self._cond.wait()
            return None

    def _work(self, w):
        bounds, args, chunk, cuts = self._job
        while True:
            task = self._take()
            if task is None:
                return
            c, j = task
            try:
                part = args if len(cuts) == 2 else epochs_of(args, cuts[j], cuts[j + 1])
                chunk(bounds[c], bounds[c + 1], w, *part)
            except BaseException:
                self._stop = True
                raise
            finally:
                with self._cond:
                    self._running[c] = False
                    self._done[c] += 1
                    self._cond.notify_all()

    def _guarded(self, w):
        try:
            self._cpus.settle()
            self._go.wait()
            if not self._stop:
                self._work(w)
        except BaseException as exc:  # noqa: BLE001  (re-raised by the calling thread)
            self._stop = True
            self._errors.append(exc)
        finally:
            self._cpus.release()


def epochs_of(args, a, b):
    """:func:`fit_chunk`'s arguments (after the worker index) for epochs ``a .. b - 1`` of the call that
    ``args`` describe: the same arrays, their rows of those epochs (``perm``, the bias corrections'
    table, ``out``) and a copy of ``info`` with ``EPOCH0`` and ``N_EPOCHS`` moved.  The kernels keep
    nothing between calls but the arenas, so two calls over consecutive epochs train as one."""
    net, at, info, data, dev, arenas, hyp, keys, bc, work, out, status = args
    n_steps = int(info[N_STEPS])
    part = info.copy()
    part[EPOCH0] += a
    part[N_EPOCHS] = b - a
    X, Y, ids, perm = data
    table, cols = bc
    return (net, at, part, (X, Y, ids, perm[a:b]), dev, arenas, hyp, keys,
            (table[a * n_steps:b * n_steps], cols), work, out[a:b], status)


def scratch(n_workers, ws_size, dtype):
    """``work`` for :func:`fit_chunk`: a workspace row and a float64 scratch row per worker."""
    return np.zeros((n_workers, ws_size), dtype), np.zeros((n_workers, SCRATCH))
