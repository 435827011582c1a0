r"""The batched gradient check, compiled: the 2P perturbed costs, in parallel over the coordinates.

Gradient checking needs :math:`J(\theta \pm \varepsilon e_i)` for every checked
coordinate ``i``.  One call of :func:`perturbed_losses` evaluates all of them,
in parallel over the coordinates, each from the flat parameter arena and a
*tape* of the unperturbed forward pass, so no layer below the perturbed one is
ever recomputed and the layers at and just above it are updated, not redone:

* a weight ``W[r, c]`` of a Dense layer moves its pre-activation in one unit
  only, ``Z[c] += delta * A_in[r]``, and a bias ``b[c]`` by ``delta``; a
  batch-norm ``gamma[c]`` or ``beta[c]`` moves one output unit;
* a single changed unit stays a single unit through element-wise activations,
  dropout (the identity while checking) and batch norm (its statistics are per
  unit, so only that unit's batch mean and variance are recomputed);
* the next Dense turns it into a rank-one update of all its units,
  ``Z' = Z + W[j, :] (A'_in[j] - A_in[j])``.  The unit-wise layers right above
  it (activations, dropout, batch norm) are applied to each unit's row as soon
  as it is formed, while it is in L1; a batch norm directly on a linear Dense
  takes its input centred, ``Z'_c - mean = (Z_c - mean Z_c) + W[j, c] (d -
  mean d)`` with ``d = A'_in[j] - A_in[j]`` and ``Z_c - mean Z_c`` from the
  tape, so its mean costs nothing, its variance is one pass and the
  normalisation shares its pass with the activation on it;
* from the next Dense on every layer is recomputed in full (batch norm with the
  perturbed batch's statistics);
* the loss is taken on the logits: the tape's, with the one changed unit
  replaced when no Dense came between the perturbation and the output.

The two perturbations of a coordinate go through the same loops together.
Values are stored by unit, and a unit's *row* holds ``2 m`` values: its m
examples under ``theta + d+``, then its m examples under ``theta + d-``.  Every
inner loop runs over contiguous examples, shares its loads (tape values,
weights, targets) between the two halves and keeps one accumulator per half;
batch norm takes each half's own statistics.  Each coordinate returns
``sum_r (loss_r(theta + d+) - loss_r(theta + d-))``: the two costs go through
the same instructions with only the perturbation changed, and they are
differenced example by example, before the sum over the examples, so that sum
adds no rounding of its own to a difference of two nearly equal totals.  The
perturbations are those the course's loop applies, ``fl(theta_i +- eps) -
theta_i``, computed by the caller.

Tables (built by :mod:`fusednet.gradcheck` from :meth:`fusednet.Sequential.plan`):

``net`` :data:`~fusednet.kernels._plan.NODE_DTYPE` (L,)
    the model's plan itself: per layer its ``op``, ``n_in``, ``n_out``,
    ``act``, ``slope``, arena offsets ``w_off``, ``b_off``, ``gamma_off``,
    ``beta_off`` (-1 when absent) and ``bn_eps``.
``tape_at`` int64 (L, 5)
    per layer, offsets into the tape: ``t_in, t_out, t_pre, t_cen, t_prob``
    of the layer's input, output, pre-activation (Dense: ``Z``; BatchNorm:
    ``xhat``), for a BatchNorm its input minus its batch mean, and for the
    output layer under the softmax loss the softmax of the logits (-1 where
    absent).  The output layer's ``t_out`` holds the logits (its input when it
    is an Activation, ``Z`` when a Dense); a Dropout's ``t_out`` is its
    ``t_in``.
``coords`` int64 (n, 4)
    per checked coordinate: layer, role (:data:`ROLE_W`, :data:`ROLE_B`,
    :data:`ROLE_GAMMA`, :data:`ROLE_BETA`), row ``r`` (W only) and unit ``c``.

Transcendental functions near the tape.  A perturbation of size eps moves
every value above it by a tiny ``d``, and the tape holds each activation's
unperturbed input ``y0`` and output ``g(y0)``.  So ``tanh``, ``sigmoid`` and
the softmax loss are evaluated from there, by exact identities and short
series in ``d`` (:func:`tanh_near`, :func:`sigmoid_near`,
:func:`_pair_cce_near`): a few multiply-adds and at most one division per
value instead of an exponential.  This is not a linearisation: the series
are exact to float64 for |d| <= :data:`NEAR`, the change from the tape's
value is formed to full relative precision, and the result differs from the
function's own value by a rounding of the final addition (the tape's own
error is common to both perturbations and cancels in their difference).  A
row, or the logits, with any larger deviation (a large eps, NaN, inf) takes
the functions themselves, so the finite difference stays that of the
course's loop, kinks and all.

The functions themselves are the Numba backend's point functions
(``exp``, ``tanh``, ``sigmoid``, ``log1p_unit`` of :mod:`._numba_math`, the
formulas of :mod:`.reference`), so the check computes a cost with the
formulas training uses; a check that used its own division-light copies
measured no faster (within the machine's noise, under 10 %).  Only the log
of the log-sum-exp is its own (:func:`log_pos`): the backend has no log
point function, it takes one per column, not per value.

Precision: float64 throughout.  The fast-math flags are :data:`FASTMATH`:
``reassoc`` lets the sums over examples vectorise and ``contract`` fuses
multiply-adds; each coordinate runs on one thread through a fixed
instruction sequence, so the results are the same for any thread count.
"""

import threading
import types as pytypes

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._codes import (
    ACTIVATION,
    ACTIVATION_NAMES,
    BATCHNORM,
    BCE,
    CCE,
    DENSE,
    DROPOUT,
    LEAKY_RELU,
    LINEAR,
    MSE,
    RELU,
    SIGMOID,
    SOFTMAX,
    TANH,
)
from ._numba_math import _f64_from_bits, exp, fma, leaky_relu, log1p_unit, relu, sigmoid, tanh
from ._plan import node_table
from ._policy import GRADCHECK_FASTMATH

#: columns of ``tape_at``
T_IN, T_OUT, T_PRE, T_CEN, T_PROB = range(5)
#: the parameter a coordinate belongs to
ROLE_W, ROLE_B, ROLE_GAMMA, ROLE_BETA = 0, 1, 2, 3
#: float64 vectors of length 2 m per thread, beside its two (wmax, 2 m) buffers
N_VECTORS = 4
#: coordinates a thread takes at a time from the shared counter
CHUNK = 8

#: No ``nnan``/``ninf`` (NaN propagates into the difference and reads "wrong"),
#: no ``afn``/``arcp`` (no approximate functions or reciprocals): see fusednet.kernels._policy.
FASTMATH = GRADCHECK_FASTMATH

_OPTIONS = dict(nogil=True, fastmath=set(FASTMATH), error_model="numpy", boundscheck=False)
#: only ever called from compiled code: no Python or C entry point to build
_INNER = dict(cache=False, no_cpython_wrapper=True, no_cfunc_wrapper=True, **_OPTIONS)
#: helpers, compiled into the kernel that calls them
_helper = njit(**_INNER)
#: point functions, always inlined (LLVM ``alwaysinline``): a loop vectorises
#: only if no call is left in its body, and LLVM's own size threshold declines
#: to inline ``tanh`` (with its exp) into the loop
_point = njit(forceinline=True, **_INNER)
#: helpers with one call site, inlined into it at Numba IR level (no compiled module of their own)
_inline = njit(inline="always")
#: the kernel: one thread's share of the coordinates (see :func:`perturbed_losses`)
kernel = njit(cache=True, **_OPTIONS)

#: What a model can hold that the walker has code for: its loss, batch norm, and
#: the activations of its hidden layers (the output layer's belongs to the loss).
FEATURES = ("mse", "bce", "cce", "batchnorm", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")
# Compile-time switches, one per feature, read as ``if _TANH and act == TANH:``.  The
# functions below, as written, have every switch on; :func:`walker` compiles copies of
# them with the switches of one model's features, and Numba drops the branches of the
# other features before it types them (the kernel of ``fusednet gradcheck``'s default
# network, tanh and the softmax loss, then compiles in about 60% of the time).
_MSE = _BCE = _CCE = _BATCHNORM = _SIGMOID = _TANH = _RELU = _LEAKY_RELU = _SOFTMAX = True


def scratch(n_threads, wmax, m):
    """:func:`perturbed_losses`'s scratch, a row per thread in each: two layer buffers and the vectors.

    The two buffers a Dense reads and writes are separate arrays, not parts
    of one: LLVM then vectorises the Dense's loops behind one runtime alias
    check, where within one array it cannot tell the rows apart.
    """
    w = 2 * m
    return np.zeros((n_threads, wmax * w)), np.zeros((n_threads, wmax * w)), np.zeros((n_threads, N_VECTORS * w))


# --------------------------------------------------------------------------
# float64 point functions with at most one division, for vectorised rows
# --------------------------------------------------------------------------


@intrinsic
def _bits_of(typingctx, x):
    """The bit pattern of a float64 as an int64."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@intrinsic
def _fetch_add(typingctx, counter, inc):
    """``old = counter[0]; counter[0] += inc; return old`` as one atomic operation (int64 array)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and inc == types.int64):
        return None

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [context.get_constant(types.intp, 0)])
        return builder.atomic_rmw("add", ptr, args[1], "monotonic")

    return types.int64(counter, inc), codegen


#: ln 2 in two parts: the first has few enough bits that ``n * _LN2_HI`` is exact
_LN2_HI = 6.93145751953125e-1
_LN2_LO = 1.42860682030941723212e-6


@_point
def log_pos(x):
    """``log(x)`` of a float64, |rel. error| <= 2 ulp for x >= 2**-1022 (normal numbers).

    ``x = 2**k f`` with f in [sqrt(1/2), sqrt(2)) from the bits, then
    ``log f = 2 atanh(s)``, ``s = (f - 1) / (f + 1)``, |s| <= 0.1716, by its odd
    series to s**25 (the next term is below 1e-19), and ``k ln2`` in two
    parts.  inf gives inf, 0 gives -inf, a negative number or NaN gives NaN;
    subnormal inputs are outside its domain (the loss takes the log of a sum
    of exponentials that is at least 1).
    """
    b = _bits_of(x)
    k = (b >> 52) - 1023
    f = _f64_from_bits((b & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)
    up = f > 1.4142135623730951
    f = 0.5 * f if up else f
    k = k + 1 if up else k
    t = f - 1.0  # exact
    s = t / (2.0 + t)
    s2 = s * s
    p = 0.04
    p = p * s2 + 0.043478260869565216
    p = p * s2 + 0.047619047619047616
    p = p * s2 + 0.05263157894736842
    p = p * s2 + 0.058823529411764705
    p = p * s2 + 0.06666666666666667
    p = p * s2 + 0.07692307692307693
    p = p * s2 + 0.09090909090909091
    p = p * s2 + 0.1111111111111111
    p = p * s2 + 0.14285714285714285
    p = p * s2 + 0.2
    p = p * s2 + 0.3333333333333333
    two_s = s + s
    kf = np.float64(k)
    y = kf * _LN2_HI + (kf * _LN2_LO + (two_s + two_s * (s2 * p)))
    y = y if x < np.inf else x
    y = y if x > 0.0 else (-np.inf if x == 0.0 else np.nan)
    return y if x == x else x


# --------------------------------------------------------------------------
# near the tape: f(y0 + d) from the tape's f(y0), for |d| <= NEAR (no exp)
# --------------------------------------------------------------------------

#: The largest deviation ``|d|`` from the tape for which the series below are
#: exact to float64 (their first omitted term is below 1e-19 of the result).
#: A row takes them when the sum of its squared deviations is at most
#: ``NEAR ** 2``, which bounds every one of them; NaN or inf fails that test.
NEAR = 1e-3


@_point
def expm1_near(d):
    """``exp(d) - 1`` for |d| <= :data:`NEAR`: its Taylor series to d**5 (next term < 2e-19 relative)."""
    p = 1.0 / 120.0
    p = p * d + 1.0 / 24.0
    p = p * d + 1.0 / 6.0
    p = p * d + 0.5
    return d + d * (d * p)


@_point
def log1p_near(x):
    """``log(1 + x)`` for |x| <= :data:`NEAR`: its series to x**6 (next term < 2e-19 relative)."""
    p = -1.0 / 6.0
    p = p * x + 0.2
    p = p * x - 0.25
    p = p * x + 1.0 / 3.0
    p = p * x - 0.5
    return x + x * (x * p)


@_point
def tanh_near(t0, d):
    """``tanh(y0 + d)`` from ``t0 = tanh(y0)``, for |d| <= :data:`NEAR`.

    ``tanh(a + b) = tanh a + (1 - tanh**2 a) tanh b / (1 + tanh a tanh b)``
    with ``tanh d = d - d**3/3 + 2 d**5/15`` (next term < 6e-20 relative):
    the change from the tape's value is formed to full relative precision,
    so the result's only new rounding is the final addition.
    """
    d2 = d * d
    td = d + d * (d2 * (-1.0 / 3.0 + d2 * (2.0 / 15.0)))
    return t0 + ((1.0 - t0 * t0) * td) / (1.0 + t0 * td)


@_point
def sigmoid_near(s0, d):
    """``sigmoid(y0 + d)`` from ``s0 = sigmoid(y0)``, for |d| <= :data:`NEAR`.

    ``sigmoid(a + b) = s + s (1 - s) u / (1 + s u)``, ``s = sigmoid a``,
    ``u = exp(b) - 1``.
    """
    u = expm1_near(d)
    return s0 + (s0 * (1.0 - s0) * u) / (1.0 + s0 * u)


# --------------------------------------------------------------------------
# layers on rows of 2m values (the m examples under d+, then under d-)
# --------------------------------------------------------------------------


@_helper
def _activate(a, act, slope):
    """``a = g(a)`` in place, element-wise (not softmax; LINEAR leaves it)."""
    if _SIGMOID and act == SIGMOID:
        for r in range(a.size):
            a[r] = sigmoid(a[r])
    elif _TANH and act == TANH:
        for r in range(a.size):
            a[r] = tanh(a[r])
    elif _RELU and act == RELU:
        for r in range(a.size):
            a[r] = relu(a[r], 0.0)
    elif _LEAKY_RELU and act == LEAKY_RELU:
        for r in range(a.size):
            a[r] = leaky_relu(a[r], slope, 0.0)


@_helper
def _activate_near(a, y0, a0, act, slope, m):
    """``a = g(a)`` in place on a row (2m) of one unit, given the tape's input ``y0`` and output ``a0`` (m,).

    tanh and sigmoid take :func:`tanh_near` / :func:`sigmoid_near` when the
    whole row is within :data:`NEAR` of the tape (the usual case: a
    gradient-check perturbation moves every value by about eps), else the
    functions themselves; the other activations are exact and cheap anyway.
    """
    if (_TANH and act == TANH) or (_SIGMOID and act == SIGMOID):
        dd = 0.0
        for r in range(m):
            d0 = a[r] - y0[r]
            d1 = a[m + r] - y0[r]
            dd += d0 * d0 + d1 * d1
        if dd <= NEAR * NEAR:
            if _TANH and act == TANH:
                for r in range(m):
                    a[r] = tanh_near(a0[r], a[r] - y0[r])
                    a[m + r] = tanh_near(a0[r], a[m + r] - y0[r])
            elif _SIGMOID:
                for r in range(m):
                    a[r] = sigmoid_near(a0[r], a[r] - y0[r])
                    a[m + r] = sigmoid_near(a0[r], a[m + r] - y0[r])
            return
    _activate(a, act, slope)


@_helper
def _softmax_units(buf, n, w, mx, s):
    """Softmax over the ``n`` units of each column, in place on ``buf`` (n * w,); mx, s (w,) scratch."""
    for r in range(w):
        mx[r] = -np.inf
        s[r] = 0.0
    for c in range(n):
        a = buf[c * w:(c + 1) * w]
        for r in range(w):
            mx[r] = a[r] if a[r] > mx[r] else mx[r]
    for c in range(n):
        a = buf[c * w:(c + 1) * w]
        for r in range(w):
            e = exp(a[r] - mx[r])
            a[r] = e
            s[r] += e
    for c in range(n):
        a = buf[c * w:(c + 1) * w]
        for r in range(w):
            a[r] = a[r] / s[r]


@_helper
def _bn_pair(x, gamma, beta, eps, m):
    """Batch norm of one unit's row in place, ``gamma * xhat + beta``, each half with its own statistics.

    Mean and biased variance in two passes, ``xhat = (x - mean) / sqrt(var + eps)``,
    as the batch-norm kernels.  The scale ``gamma / sqrt(var + eps)`` is one
    scalar per half and the row is ``fma(x - mean, scale, beta)``: written as
    a product with ``1 / sqrt(..)``, ``reassoc`` would turn it back into a
    division per element (LLVM sinks ``x * (1 / y)`` into ``x / y``), and an
    explicit fused multiply-add is out of reach of that rewrite.
    """
    t0 = 0.0
    t1 = 0.0
    for r in range(m):
        t0 += x[r]
        t1 += x[m + r]
    mean0 = t0 / m
    mean1 = t1 / m
    v0 = 0.0
    v1 = 0.0
    for r in range(m):
        d0 = x[r] - mean0
        d1 = x[m + r] - mean1
        v0 += d0 * d0
        v1 += d1 * d1
    g0 = gamma * (1.0 / np.sqrt(v0 / m + eps))
    g1 = gamma * (1.0 / np.sqrt(v1 / m + eps))
    for r in range(m):
        x[r] = fma(x[r] - mean0, g0, beta)
        x[m + r] = fma(x[m + r] - mean1, g1, beta)


@_helper
def _bn_centered_pair(out, cen, w, dc, gamma, beta, eps, m):
    """Batch norm of ``Z_c + w d`` from its centred parts: ``out = gamma * xhat + beta``, each half apart.

    cen (m,) is ``Z_c - mean Z_c`` (tape), dc (2m,) is ``d - mean d`` (one
    mean per half), so ``cen + w dc`` is the centred input: one pass forms it
    and its sum of squares, one normalises.
    """
    v0 = 0.0
    v1 = 0.0
    for r in range(m):
        x0 = cen[r] + w * dc[r]
        x1 = cen[r] + w * dc[m + r]
        out[r] = x0
        out[m + r] = x1
        v0 += x0 * x0
        v1 += x1 * x1
    g0 = gamma * (1.0 / np.sqrt(v0 / m + eps))
    g1 = gamma * (1.0 / np.sqrt(v1 / m + eps))
    for r in range(m):
        out[r] = fma(out[r], g0, beta)
        out[m + r] = fma(out[m + r], g1, beta)


@_helper
def _bn_centered_act_pair(out, stash, cen, w, dc, gamma, beta, eps, m, y0, a0, act, slope):
    """:func:`_bn_centered_pair` then the activation ``act`` (tanh or sigmoid) near the tape, in one pass.

    y0, a0 (m,) are the tape's batch-norm output and activation of the unit.
    The centred input is formed twice, in the variance pass and in the
    normalising pass, rather than stored and loaded back.  The normalising
    pass keeps the batch-norm output in ``stash`` (2m) and
    writes the activation near the tape while it sums the squared
    deviations; should they exceed :data:`NEAR` (see :func:`_activate_near`)
    the row is redone from ``stash`` by the functions themselves.
    """
    v0 = 0.0
    v1 = 0.0
    for r in range(m):
        x0 = cen[r] + w * dc[r]
        x1 = cen[r] + w * dc[m + r]
        v0 += x0 * x0
        v1 += x1 * x1
    g0 = gamma * (1.0 / np.sqrt(v0 / m + eps))
    g1 = gamma * (1.0 / np.sqrt(v1 / m + eps))
    dd = 0.0
    if _TANH and act == TANH:
        for r in range(m):
            y0r = fma(cen[r] + w * dc[r], g0, beta)
            y1r = fma(cen[r] + w * dc[m + r], g1, beta)
            stash[r] = y0r
            stash[m + r] = y1r
            d0 = y0r - y0[r]
            d1 = y1r - y0[r]
            dd += d0 * d0 + d1 * d1
            out[r] = tanh_near(a0[r], d0)
            out[m + r] = tanh_near(a0[r], d1)
    elif _SIGMOID:
        for r in range(m):
            y0r = fma(cen[r] + w * dc[r], g0, beta)
            y1r = fma(cen[r] + w * dc[m + r], g1, beta)
            stash[r] = y0r
            stash[m + r] = y1r
            d0 = y0r - y0[r]
            d1 = y1r - y0[r]
            dd += d0 * d0 + d1 * d1
            out[r] = sigmoid_near(a0[r], d0)
            out[m + r] = sigmoid_near(a0[r], d1)
    if not dd <= NEAR * NEAR:
        for r in range(2 * m):
            out[r] = stash[r]
        _activate(out, act, slope)


@_helper
def _dense(P, w_off, b_off, n_in, n_out, src, out, w):
    """``out[c] = b[c] + sum_k W[k, c] src[k]`` for every unit c; src (n_in * w,), out (n_out * w,).

    Eight input rows at a time (then one), and for them a pass over every
    output row: an output element is loaded and stored once per eight
    multiply-adds, and the eight input rows (16 KB for m = 128) and the
    outputs of a narrow layer stay in L1 while they are used, where with
    the output row outermost each output row streams all the input from L2.
    One output row per pass: each further output row would cost LLVM more
    runtime alias checks (rows of one array at a run-time stride cannot be
    told apart), and past eight checks it does not vectorise the loop.
    """
    k8 = n_in - n_in % 8
    for c in range(n_out):
        o = out[c * w:(c + 1) * w]
        bc = P[b_off + c] if b_off >= 0 else 0.0
        for r in range(w):
            o[r] = bc
    for k in range(0, k8, 8):
        x0 = src[k * w:(k + 1) * w]
        x1 = src[(k + 1) * w:(k + 2) * w]
        x2 = src[(k + 2) * w:(k + 3) * w]
        x3 = src[(k + 3) * w:(k + 4) * w]
        x4 = src[(k + 4) * w:(k + 5) * w]
        x5 = src[(k + 5) * w:(k + 6) * w]
        x6 = src[(k + 6) * w:(k + 7) * w]
        x7 = src[(k + 7) * w:(k + 8) * w]
        for c in range(n_out):
            o = out[c * w:(c + 1) * w]
            a = w_off + k * n_out + c
            w0, w1, w2, w3 = P[a], P[a + n_out], P[a + 2 * n_out], P[a + 3 * n_out]
            w4, w5, w6, w7 = P[a + 4 * n_out], P[a + 5 * n_out], P[a + 6 * n_out], P[a + 7 * n_out]
            for r in range(w):
                o[r] += ((w0 * x0[r] + w1 * x1[r]) + (w2 * x2[r] + w3 * x3[r])) + (
                    (w4 * x4[r] + w5 * x5[r]) + (w6 * x6[r] + w7 * x7[r]))
    for k in range(k8, n_in):
        x = src[k * w:(k + 1) * w]
        for c in range(n_out):
            o = out[c * w:(c + 1) * w]
            wk = P[w_off + k * n_out + c]
            for r in range(w):
                o[r] += wk * x[r]


@_helper
def _pair_loss(L, Y, k, m, loss, ell, mx, s):
    """``sum_r (loss_r under d+ - loss_r under d-)`` from the logits.

    L (k * 2m,) logits by unit in rows of 2m, Y (k * m,) targets by unit;
    ell, mx, s (2m,) scratch.  MSE ``sum_c (a - y)**2 / 2``; BCE on the
    logits, ``sum_c max(z, 0) - z y + log1p(exp(-|z|))``; CCE ``sum_c y (lse
    - z)`` with the max-subtracted log-sum-exp over the k classes: the
    formulas of the loss kernels.  Each example's two losses are formed
    apart and differenced before the sum over the examples.  The softmax
    loss comes here only when :func:`_pair_cce_near` does not apply.
    """
    w = 2 * m
    for r in range(w):
        ell[r] = 0.0
    if _MSE and loss == MSE:
        for c in range(k):
            z = L[c * w:(c + 1) * w]
            y = Y[c * m:(c + 1) * m]
            for r in range(m):
                d0 = z[r] - y[r]
                d1 = z[m + r] - y[r]
                ell[r] += 0.5 * (d0 * d0)
                ell[m + r] += 0.5 * (d1 * d1)
    elif _BCE and loss == BCE:
        for c in range(k):
            z = L[c * w:(c + 1) * w]
            y = Y[c * m:(c + 1) * m]
            for r in range(m):
                z0 = z[r]
                z1 = z[m + r]
                ell[r] += (z0 if z0 > 0.0 else 0.0) - z0 * y[r] + log1p_unit(exp(-abs(z0)))
                ell[m + r] += (z1 if z1 > 0.0 else 0.0) - z1 * y[r] + log1p_unit(exp(-abs(z1)))
    elif _CCE:
        for r in range(w):
            mx[r] = -np.inf
            s[r] = 0.0
        for c in range(k):
            z = L[c * w:(c + 1) * w]
            for r in range(w):
                mx[r] = z[r] if z[r] > mx[r] else mx[r]
        for c in range(k):
            z = L[c * w:(c + 1) * w]
            for r in range(w):
                s[r] += exp(z[r] - mx[r])
        for r in range(w):
            mx[r] = mx[r] + log_pos(s[r])  # log-sum-exp of the column
        for c in range(k):
            z = L[c * w:(c + 1) * w]
            y = Y[c * m:(c + 1) * m]
            for r in range(m):
                ell[r] += y[r] * (mx[r] - z[r])
                ell[m + r] += y[r] * (mx[m + r] - z[m + r])
    total = 0.0
    for r in range(m):
        total += ell[r] - ell[m + r]
    return total


@_helper
def _pair_cce_near(L, Z0, P0, Y, k, m, s):
    """``(ok, sum_r (loss_r under d+ - loss_r under d-))`` of the softmax loss, from the tape's softmax.

    L (k * 2m,) logits in rows of 2m; Z0, P0, Y (k * m,) the tape's logits,
    its softmax probabilities and the targets; s (2m,) scratch.  With
    ``delta_c = z_c - Z0_c`` the log-sum-exp is ``lse0 + log1p(S)``, ``S =
    sum_c P0_c expm1(delta_c)``, so an example's two losses differ by ``sum_c
    y_c ((log1p S+ - log1p S-) - (z+_c - z-_c))``: no exp or log, and every
    term a small number to full relative precision.  ``ok`` is False (and
    the sum is not taken) unless every ``|delta_c|`` is within :data:`NEAR`.
    """
    w = 2 * m
    for r in range(w):
        s[r] = 0.0
    dd = 0.0
    for c in range(k):
        z = L[c * w:(c + 1) * w]
        z0 = Z0[c * m:(c + 1) * m]
        p0 = P0[c * m:(c + 1) * m]
        for r in range(m):
            d0 = z[r] - z0[r]
            d1 = z[m + r] - z0[r]
            dd += d0 * d0 + d1 * d1
            s[r] += p0[r] * expm1_near(d0)
            s[m + r] += p0[r] * expm1_near(d1)
    if not dd <= NEAR * NEAR:
        return False, 0.0
    for r in range(w):
        s[r] = log1p_near(s[r])
    total = 0.0
    for c in range(k):
        z = L[c * w:(c + 1) * w]
        y = Y[c * m:(c + 1) * m]
        for r in range(m):
            total += y[r] * ((s[r] - s[m + r]) - (z[r] - z[m + r]))
    return True, total


# --------------------------------------------------------------------------
# one coordinate's two perturbed costs, and all of them
# --------------------------------------------------------------------------


@_helper
def _unitwise(net, q, last):
    """Whether layer q acts on each unit apart (Dropout, BatchNorm, an element-wise hidden Activation)."""
    op = net[q].op
    if q == last:  # the output layer's activation belongs to the loss
        return False
    return op == DROPOUT or op == BATCHNORM or (op == ACTIVATION and net[q].act != SOFTMAX)


@_helper
def _rank_one(net, tape_at, P, tape, m, q, j, col, cur, mx, s):
    """Dense layer q with only unit j of its input changed (``col``, 2m): all its units, and the layers above.

    ``Z'_c = Z_c + W[j, c] d``, ``d = col - A_in[j]``, for every unit c
    (``col`` becomes d); each row is at once carried through the unit-wise
    layers above q (its activation, then Dropout, BatchNorm and element-wise
    Activations up to the next Dense), while it is in L1.  A BatchNorm
    directly on a linear Dense takes the centred form of the module
    docstring, in one pass with a tanh or sigmoid Activation on it
    (:func:`_bn_centered_act_pair`).  Leaves the result in ``cur`` (n_units *
    2m) and returns the index of the next layer to walk.
    """
    L = net.shape[0]
    last = L - 1
    w = 2 * m
    n_out, act = net[q].n_out, net[q].act
    base = tape[tape_at[q, T_IN] + j * m:tape_at[q, T_IN] + (j + 1) * m]
    for r in range(m):
        col[r] = col[r] - base[r]
        col[m + r] = col[m + r] - base[r]
    w0 = net[q].w_off + j * n_out
    zt = tape_at[q, T_PRE]
    if q == last or act == SOFTMAX:  # no unit-wise layers: the rows, then (hidden softmax) the activation
        for c in range(n_out):
            z = tape[zt + c * m:zt + (c + 1) * m]
            o = cur[c * w:(c + 1) * w]
            wc = P[w0 + c]
            for r in range(m):
                o[r] = z[r] + wc * col[r]
                o[m + r] = z[r] + wc * col[m + r]
        if q == last:
            return L
        if _SOFTMAX:
            _softmax_units(cur[:n_out * w], n_out, w, mx, s)
        return q + 1
    qe = q + 1  # the unit-wise layers above q are q + 1 .. qe - 1
    while qe < L and _unitwise(net, qe, last):
        qe += 1
    qb = q + 1  # the first of them that is not a Dropout
    while qb < qe and net[qb].op == DROPOUT:
        qb += 1
    centred = _BATCHNORM and act == LINEAR and qb < qe and net[qb].op == BATCHNORM and tape_at[qb, T_CEN] >= 0
    qa = qb + 1  # an activation on that batch norm, done in the same pass
    while qa < qe and net[qa].op == DROPOUT:
        qa += 1
    fused = centred and qa < qe and net[qa].op == ACTIVATION and (
        (_TANH and net[qa].act == TANH) or (_SIGMOID and net[qa].act == SIGMOID))
    start = q  # the Dense's own activation first
    if centred:  # d - mean d, per half
        t0 = 0.0
        t1 = 0.0
        for r in range(m):
            t0 += col[r]
            t1 += col[m + r]
        t0 = t0 / m
        t1 = t1 / m
        for r in range(m):
            col[r] = col[r] - t0
            col[m + r] = col[m + r] - t1
        start = qa + 1 if fused else qb + 1
    for c in range(n_out):
        o = cur[c * w:(c + 1) * w]
        wc = P[w0 + c]
        if _BATCHNORM and fused:
            ct = tape_at[qb, T_CEN] + c * m
            ti, ta = tape_at[qa, T_IN] + c * m, tape_at[qa, T_OUT] + c * m
            _bn_centered_act_pair(o, mx, tape[ct:ct + m], wc, col, P[net[qb].gamma_off + c], P[net[qb].beta_off + c],
                                  net[qb].bn_eps, m, tape[ti:ti + m], tape[ta:ta + m], net[qa].act, net[qa].slope)
        elif _BATCHNORM and centred:
            ct = tape_at[qb, T_CEN] + c * m
            _bn_centered_pair(o, tape[ct:ct + m], wc, col, P[net[qb].gamma_off + c], P[net[qb].beta_off + c],
                              net[qb].bn_eps, m)
        else:
            z = tape[zt + c * m:zt + (c + 1) * m]
            for r in range(m):
                o[r] = z[r] + wc * col[r]
                o[m + r] = z[r] + wc * col[m + r]
        for q2 in range(start, qe):  # (one call site per layer routine keeps the compiled code small)
            op2 = net[q2].op
            if _BATCHNORM and op2 == BATCHNORM:
                _bn_pair(o, P[net[q2].gamma_off + c], P[net[q2].beta_off + c], net[q2].bn_eps, m)
            elif op2 != DROPOUT and net[q2].act != LINEAR:  # the Dense's activation, or an Activation's
                ti = (tape_at[q2, T_PRE] if op2 == DENSE else tape_at[q2, T_IN]) + c * m
                ta = tape_at[q2, T_OUT] + c * m
                _activate_near(o, tape[ti:ti + m], tape[ta:ta + m], net[q2].act, net[q2].slope, m)
    return qe


@_inline
def _perturbed_pair(net, tape_at, P, tape, Y, loss, m, p, role, rr, j, dp, dm, buf0, buf1, col, mx, s, ell):
    """``sum_r (loss_r(theta + dp e) - loss_r(theta + dm e))`` for parameter (layer p, role, row rr, unit j).

    buf0, buf1 (wmax * 2m,) and col, mx, s, ell (2m,) are this thread's
    scratch.  While ``full`` is False only unit j of the current layer's
    output differs from the tape, and ``col`` holds its row; after that the
    current output is ``cur`` (n_out rows).
    """
    L = net.shape[0]
    last = L - 1
    w = 2 * m
    full = False
    cur = buf0
    nxt = buf1
    q = p
    while q < L:
        op, n_in, n_out, act = net[q].op, net[q].n_in, net[q].n_out, net[q].act
        if op == DROPOUT:
            q += 1
            continue
        if _BATCHNORM and op == BATCHNORM:
            g0, b0, eps = net[q].gamma_off, net[q].beta_off, net[q].bn_eps
            if q == p:  # gamma[j] or beta[j] moved: unit j is gamma xhat + beta
                xh = tape[tape_at[q, T_PRE] + j * m:tape_at[q, T_PRE] + (j + 1) * m]
                g, b = P[g0 + j], P[b0 + j]
                gp = g + (dp if role == ROLE_GAMMA else 0.0)
                gm = g + (dm if role == ROLE_GAMMA else 0.0)
                bp = b + (dp if role == ROLE_BETA else 0.0)
                bm = b + (dm if role == ROLE_BETA else 0.0)
                for r in range(m):
                    col[r] = gp * xh[r] + bp
                    col[m + r] = gm * xh[r] + bm
            else:  # the batch statistics of the changed units
                c0 = 0 if full else j
                c1 = n_out if full else j + 1
                for c in range(c0, c1):
                    u = cur[c * w:(c + 1) * w] if full else col
                    _bn_pair(u, P[g0 + c], P[b0 + c], eps, m)
            q += 1
            continue
        if op == DENSE:
            if q == p:  # W[rr, j] or b[j] moved: unit j of Z moves by delta * A_in[rr], or by delta
                z = tape[tape_at[q, T_PRE] + j * m:tape_at[q, T_PRE] + (j + 1) * m]
                if role == ROLE_W:
                    x = tape[tape_at[q, T_IN] + rr * m:tape_at[q, T_IN] + (rr + 1) * m]
                    for r in range(m):
                        col[r] = z[r] + dp * x[r]
                        col[m + r] = z[r] + dm * x[r]
                else:
                    for r in range(m):
                        col[r] = z[r] + dp
                        col[m + r] = z[r] + dm
            elif full:
                _dense(P, net[q].w_off, net[q].b_off, n_in, n_out, cur, nxt, w)
                cur, nxt = nxt, cur
            else:
                q = _rank_one(net, tape_at, P, tape, m, q, j, col, cur, mx, s)
                full = True
                continue
        # the activation of a Dense or Activation layer (the output layer's belongs to the loss)
        if q == last or act == LINEAR:
            q += 1
            continue
        if _SOFTMAX and act == SOFTMAX and not full:  # couples the units: unit j's change reaches them all
            t = tape_at[q, T_PRE] if op == DENSE else tape_at[q, T_IN]
            for c in range(n_out):
                a = tape[t + c * m:t + (c + 1) * m]
                o = cur[c * w:(c + 1) * w]
                for r in range(m):
                    o[r] = a[r]
                    o[m + r] = a[r]
            o = cur[j * w:(j + 1) * w]
            for r in range(w):
                o[r] = col[r]
            full = True
        ti = tape_at[q, T_PRE] if op == DENSE else tape_at[q, T_IN]  # the tape's input and output of g
        ta = tape_at[q, T_OUT]
        if _SOFTMAX and act == SOFTMAX:
            _softmax_units(cur[:n_out * w], n_out, w, mx, s)
        else:
            c0 = 0 if full else j
            c1 = n_out if full else j + 1
            for c in range(c0, c1):
                u = cur[c * w:(c + 1) * w] if full else col
                _activate_near(u, tape[ti + c * m:ti + (c + 1) * m], tape[ta + c * m:ta + (c + 1) * m], act,
                               net[q].slope, m)
        q += 1
    k = net[last].n_out
    if not full:  # the tape's logits in both halves, unit j replaced
        t = tape_at[last, T_OUT]
        for c in range(k):
            a = tape[t + c * m:t + (c + 1) * m]
            o = cur[c * w:(c + 1) * w]
            if c == j:
                for r in range(w):
                    o[r] = col[r]
            else:
                for r in range(m):
                    o[r] = a[r]
                    o[m + r] = a[r]
    if _CCE and loss == CCE and tape_at[last, T_PROB] >= 0:
        t, tp = tape_at[last, T_OUT], tape_at[last, T_PROB]
        ok, total = _pair_cce_near(cur[:k * w], tape[t:t + k * m], tape[tp:tp + k * m], Y, k, m, s)
        if ok:
            return total
    return _pair_loss(cur[:k * w], Y, k, m, loss, ell, mx, s)


@kernel
def perturbed_losses_share(net, tape_at, P, tape, Y, loss, m, coords, deltas, out, buf0, buf1, vectors, counter):
    """One thread's share of :func:`perturbed_losses`: coordinates taken :data:`CHUNK` at a time.

    buf0, buf1, vectors: this thread's rows of the :func:`scratch` arrays;
    counter (1,) int64 INOUT, shared by the threads: the next coordinate to take.
    """
    n = coords.shape[0]
    w = 2 * m
    col, mx, s, ell = vectors[:w], vectors[w:2 * w], vectors[2 * w:3 * w], vectors[3 * w:4 * w]
    while True:
        i0 = _fetch_add(counter, np.int64(CHUNK))
        if i0 >= n:
            break
        i1 = i0 + CHUNK if i0 + CHUNK < n else n
        for i in range(i0, i1):
            out[i] = _perturbed_pair(net, tape_at, P, tape, Y, loss, m, coords[i, 0], coords[i, 1], coords[i, 2],
                                     coords[i, 3], deltas[i, 0], deltas[i, 1], buf0, buf1, col, mx, s, ell)


#: the functions that read the switches or call one that does, callees first, and their decorators
_SWITCHED = (("_activate", _helper), ("_activate_near", _helper), ("_bn_centered_act_pair", _helper),
             ("_rank_one", _helper), ("_pair_loss", _helper), ("_perturbed_pair", _inline),
             ("perturbed_losses_share", kernel))
_walkers = {}
_walkers_lock = threading.Lock()


def features_of(net, loss):
    """The :data:`FEATURES` a model's plan (``net``) and loss code use, as a frozenset."""
    found = {("mse", "bce", "cce")[loss]}
    last = net.shape[0] - 1
    for q in range(net.shape[0]):
        op, act = int(net[q]["op"]), int(net[q]["act"])
        if op == BATCHNORM:
            found.add("batchnorm")
        elif op in (DENSE, ACTIVATION) and q != last and act != LINEAR:
            found.add(ACTIVATION_NAMES[act])
    return frozenset(found)


def walker(features):
    """:func:`perturbed_losses_share` compiled for models with these features only (a frozenset).

    A copy of each function of :data:`_SWITCHED`, with the switches of
    ``features`` on and the others off, each calling the others' copies; the
    kernel's copy has a name of its own (its own entry in Numba's cache).
    Built once per feature set, compiled on its first call.
    """
    features = frozenset(features)
    unknown = features - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; known: {FEATURES}")
    with _walkers_lock:
        if features not in _walkers:
            names = {"_" + f.upper(): f in features for f in FEATURES}
            tag = "_".join(f for f in FEATURES if f in features)
            for name, decorator in _SWITCHED:
                f = globals()[name].py_func
                copy = pytypes.FunctionType(f.__code__, dict(f.__globals__, **names), f"{name}__{tag}",
                                            f.__defaults__, f.__closure__)
                copy.__qualname__ = copy.__name__
                names[name] = decorator(copy)
            _walkers[features] = names["perturbed_losses_share"]
        return _walkers[features]


def perturbed_losses(net, tape_at, P, tape, Y, loss, m, coords, deltas, out, bufs0, bufs1, vectors, n_threads):
    """``out[i] = sum_r (loss_r(theta + d+) - loss_r(theta + d-))`` for every coordinate i.

    net (L,) records, tape_at (L, 5), P (n_params,), tape, Y (k * m,) by unit, IN;
    coords (n, 4), deltas (n, 2) IN (``d+, d-``: the perturbations of the
    coordinate); out (n,) OUT; bufs0, bufs1, vectors (:func:`scratch`)
    OUT, one row per thread, allocated once per check.

    ``n_threads`` threads (this one and ``n_threads - 1`` started here) run
    :func:`perturbed_losses_share`, compiled for the model's features
    (:func:`walker`), which releases the GIL, and take
    :data:`CHUNK` coordinates at a time from a shared atomic counter until
    none is left.  Coordinates cost very different amounts (one of the first
    layer is recomputed through every layer above it, one of the output layer
    is little more than the loss), and they come in parameter order, the
    expensive first: taken on demand, the cheap ones at the end even out the
    threads' shares, also when a thread loses its core for a while.  Each
    coordinate is computed whole by one thread through the same instructions,
    so the result does not depend on the thread count or on which thread took
    it.

    Plain threads, not a ``prange``: one call runs for milliseconds at least,
    so starting threads costs nothing that shows, and a parallel kernel would
    compile the whole walker twice more (its loop body, then the function
    around it), which more than doubled the cold start of ``fusednet
    gradcheck``; Python threads also run in a forked child, where an OpenMP
    team cannot start (see ``fusednet.kernels``).
    """
    share_kernel = walker(features_of(net, loss))
    counter = np.zeros(1, np.int64)
    errors = []

    def share(t):
        try:
            share_kernel(net, tape_at, P, tape, Y, loss, m, coords, deltas, out, bufs0[t], bufs1[t],
                                   vectors[t], counter)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    workers = [threading.Thread(target=share, args=(t,), daemon=True) for t in range(1, n_threads)]
    for worker in workers:
        worker.start()
    share(0)
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


#: the feature sets of the networks ``fusednet gradcheck`` builds: one hidden activation,
#: with or without batch norm, and a softmax (CCE) or sigmoid (BCE) output
CLI_FEATURES = tuple(frozenset({loss, act, *(("batchnorm",) if bn else ())})
                     for loss in ("cce", "bce") for act in ("relu", "leaky_relu", "tanh", "sigmoid")
                     for bn in (False, True))


def warmup(feature_sets=None, progress=None):
    """Compile (or load from the on-disk cache) the kernel of each feature set, for the types gradcheck passes.

    ``feature_sets`` defaults to :data:`CLI_FEATURES`.  ``progress``, if given,
    is called as ``progress(done, total)`` after each.
    """
    m = 4
    net = node_table(3)
    tape_at = np.zeros((3, 5), np.int64)
    P, tape, Y, out = np.zeros(18), np.zeros(68), np.zeros(8), np.zeros(0)
    coords, deltas = np.zeros((0, 4), np.int64), np.zeros((0, 2))  # no coordinates: compile, run nothing
    bufs0, bufs1, vectors = scratch(1, 2, m)
    counter = np.zeros(1, np.int64)
    feature_sets = CLI_FEATURES if feature_sets is None else tuple(feature_sets)
    for done, features in enumerate(feature_sets, 1):
        walker(features)(net, tape_at, P, tape, Y, CCE, m, coords, deltas, out, bufs0[0], bufs1[0], vectors[0], counter)
        if progress is not None:
            progress(done, len(feature_sets))
