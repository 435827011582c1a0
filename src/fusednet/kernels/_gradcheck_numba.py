r"""The batched gradient check, compiled: the 2P perturbed costs in one ``prange``.

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
  ``Z' = Z + W[j, :] (A'_in[j] - A_in[j])``; from there on every layer is
  recomputed in full (batch norm with the perturbed batch's statistics);
* the loss is taken on the logits: the tape's, with the one changed unit
  replaced when no Dense came between the perturbation and the output.

Values are stored by unit, ``(n_units, m)`` (the course's layout), so every
inner loop runs over the m examples of one unit, contiguous.  Each coordinate
returns ``sum_r (loss_r(theta + d+) - loss_r(theta + d-))``: the two costs go
through the same instructions with only the perturbation changed, and they are
differenced example by example, before the sum over the examples, so that sum
adds no rounding of its own to a difference of two nearly equal totals.  The
perturbations are those the course's loop applies, ``fl(theta_i +- eps) -
theta_i``, computed by the caller.

Tables (plain data built by :mod:`fusednet.gradcheck` from
:meth:`fusednet.Sequential.plan`):

``net`` int64 (L, 11)
    per layer: ``op`` (0 Dense, 1 Activation, 2 Dropout, 3 BatchNorm),
    ``n_in, n_out, act``, arena offsets ``w_off, b_off, gamma_off, beta_off``
    (-1 when absent) and tape offsets ``t_in, t_out, t_pre`` of the layer's
    input, output and pre-activation (Dense: ``Z``; BatchNorm: ``xhat``).  The
    output layer's ``t_out`` holds the logits (its input when it is an
    Activation, ``Z`` when a Dense); a Dropout's ``t_out`` is its ``t_in``.
``netf`` float64 (L, 2)
    per layer: leaky-ReLU ``slope``, batch-norm ``eps``.
``coords`` int64 (n, 4)
    per checked coordinate: layer, role (:data:`ROLE_W`, :data:`ROLE_B`,
    :data:`ROLE_GAMMA`, :data:`ROLE_BETA`), row ``r`` (W only) and unit ``c``.

Precision: float64 throughout.  The fast-math flags are :data:`FASTMATH`:
``reassoc`` lets the sums over examples vectorise and ``contract`` fuses
multiply-adds; neither approximates a function or a reciprocal, and each
coordinate runs on one thread through a fixed instruction sequence, so the
results are the same for any thread count.  The transcendental functions are
the float64 point functions of :mod:`._numba_math` (within 4 ulp of libm),
the ones the model's own Numba forward pass uses.
"""

import math

import numpy as np
from numba import njit, prange

from ._codes import BCE, LEAKY_RELU, LINEAR, MSE, RELU, SIGMOID, SOFTMAX, TANH
from ._numba_math import exp, leaky_relu, log1p_unit, relu, sigmoid, tanh

#: layer ops (the codes of :meth:`fusednet.Sequential.plan`)
DENSE, ACTIVATION, DROPOUT, BATCHNORM = 0, 1, 2, 3
#: columns of ``net``
OP, N_IN, N_OUT, ACT, W_OFF, B_OFF, G_OFF, BETA_OFF, T_IN, T_OUT, T_PRE = range(11)
#: the parameter a coordinate belongs to
ROLE_W, ROLE_B, ROLE_GAMMA, ROLE_BETA = 0, 1, 2, 3
#: float64 vectors of length m per thread, beside its two (wmax, m) buffers
N_VECTORS = 5

#: No ``nnan``/``ninf`` (NaN propagates into the difference and reads "wrong"),
#: no ``afn``/``arcp`` (no approximate functions or reciprocals).
FASTMATH = frozenset({"nsz", "contract", "reassoc"})

_OPTIONS = dict(nogil=True, fastmath=set(FASTMATH), error_model="numpy", boundscheck=False)
#: helpers, compiled into the kernel that calls them
_helper = njit(cache=False, **_OPTIONS)
#: the kernel
parallel_kernel = njit(cache=True, parallel=True, **_OPTIONS)


# --------------------------------------------------------------------------
# layers on (n_units, m) buffers: every span below is one unit's m examples
# --------------------------------------------------------------------------


@_helper
def _copy(src, dst):
    """``dst[:] = src`` (an explicit loop compiles far faster than a slice assignment)."""
    for r in range(dst.size):
        dst[r] = src[r]


@_helper
def _activate(a, act, slope):
    """``a = g(a)`` in place, element-wise (not softmax)."""
    if act == SIGMOID:
        for r in range(a.size):
            a[r] = sigmoid(a[r])
    elif act == TANH:
        for r in range(a.size):
            a[r] = tanh(a[r])
    elif act == RELU:
        for r in range(a.size):
            a[r] = relu(a[r], 0.0)
    elif act == LEAKY_RELU:
        for r in range(a.size):
            a[r] = leaky_relu(a[r], slope, 0.0)


@_helper
def _softmax_units(buf, n, m, mx, s):
    """Softmax over the ``n`` units of each example, in place on ``buf`` (n * m,); mx, s (m,) scratch."""
    for r in range(m):
        mx[r] = -np.inf
        s[r] = 0.0
    for c in range(n):
        a = buf[c * m:(c + 1) * m]
        for r in range(m):
            mx[r] = a[r] if a[r] > mx[r] else mx[r]
    for c in range(n):
        a = buf[c * m:(c + 1) * m]
        for r in range(m):
            e = exp(a[r] - mx[r])
            a[r] = e
            s[r] += e
    for c in range(n):
        a = buf[c * m:(c + 1) * m]
        for r in range(m):
            a[r] = a[r] / s[r]


@_helper
def _layer_activation(buf, n, m, act, slope, mx, s):
    """A layer's activation on ``n`` units of ``m`` examples, in place."""
    if act == SOFTMAX:
        _softmax_units(buf, n, m, mx, s)
    elif act != LINEAR:
        _activate(buf[:n * m], act, slope)


@_helper
def _bn_unit(x, out, gamma, beta, eps):
    """``out = gamma * xhat + beta`` of one unit with its batch statistics; out may be x.

    Mean and biased variance in two passes, ``xhat = (x - mean) / sqrt(var + eps)``,
    as the batch-norm kernels.
    """
    m = x.size
    t = 0.0
    for r in range(m):
        t += x[r]
    mean = t / m
    v = 0.0
    for r in range(m):
        d = x[r] - mean
        v += d * d
    inv = 1.0 / np.sqrt(v / m + eps)
    for r in range(m):
        out[r] = gamma * ((x[r] - mean) * inv) + beta


@_helper
def _dense(P, w_off, b_off, n_in, n_out, src, out, m):
    """``out[c] = b[c] + sum_k W[k, c] src[k]`` for every unit c; src (n_in * m,), out (n_out * m,).

    Four input units per pass over an output unit, so each output element
    is loaded and stored once per four multiply-adds.
    """
    k4 = n_in - n_in % 4
    for c in range(n_out):
        o = out[c * m:(c + 1) * m]
        bc = P[b_off + c] if b_off >= 0 else 0.0
        for r in range(m):
            o[r] = bc
        for k in range(0, k4, 4):
            w = w_off + k * n_out + c
            w0, w1, w2, w3 = P[w], P[w + n_out], P[w + 2 * n_out], P[w + 3 * n_out]
            x0 = src[k * m:(k + 1) * m]
            x1 = src[(k + 1) * m:(k + 2) * m]
            x2 = src[(k + 2) * m:(k + 3) * m]
            x3 = src[(k + 3) * m:(k + 4) * m]
            for r in range(m):
                o[r] += (w0 * x0[r] + w1 * x1[r]) + (w2 * x2[r] + w3 * x3[r])
        for k in range(k4, n_in):
            w = P[w_off + k * n_out + c]
            x = src[k * m:(k + 1) * m]
            for r in range(m):
                o[r] += w * x[r]


@_helper
def _example_losses(L, Y, k, m, loss, ell, mx, s):
    """``ell[r]`` = the loss of example r, from the logits.

    L, Y (k * m,) logits and targets by unit; ell OUT, mx, s scratch (m,).
    MSE ``sum_c (a - y)**2 / 2``; BCE on the logits, ``sum_c max(z, 0) - z y +
    log1p(exp(-|z|))``; CCE ``sum_c y (lse - z)`` with the max-subtracted
    log-sum-exp over the k classes: the formulas of the loss kernels.
    """
    for r in range(m):
        ell[r] = 0.0
    if loss == MSE:
        for c in range(k):
            z = L[c * m:(c + 1) * m]
            y = Y[c * m:(c + 1) * m]
            for r in range(m):
                d = z[r] - y[r]
                ell[r] += 0.5 * (d * d)
    elif loss == BCE:
        for c in range(k):
            z = L[c * m:(c + 1) * m]
            y = Y[c * m:(c + 1) * m]
            for r in range(m):
                zr = z[r]
                ell[r] += (zr if zr > 0.0 else 0.0) - zr * y[r] + log1p_unit(exp(-abs(zr)))
    else:
        for r in range(m):
            mx[r] = -np.inf
            s[r] = 0.0
        for c in range(k):
            z = L[c * m:(c + 1) * m]
            for r in range(m):
                mx[r] = z[r] if z[r] > mx[r] else mx[r]
        for c in range(k):
            z = L[c * m:(c + 1) * m]
            for r in range(m):
                s[r] += exp(z[r] - mx[r])
        for r in range(m):
            mx[r] = mx[r] + math.log(s[r])  # log-sum-exp of example r
        for c in range(k):
            z = L[c * m:(c + 1) * m]
            y = Y[c * m:(c + 1) * m]
            for r in range(m):
                ell[r] += y[r] * (mx[r] - z[r])


# --------------------------------------------------------------------------
# one perturbed cost, and all of them
# --------------------------------------------------------------------------


@_helper
def _perturbed_losses(net, netf, P, tape, Y, loss, m, p, role, rr, j, delta, ell, buf0, buf1, col, mx, s):
    """``ell[r]``: example r's loss with parameter (layer p, role, row rr, unit j) moved by ``delta``.

    ell (m,) OUT; buf0, buf1 (wmax * m,) and col, mx, s (m,) are this
    thread's scratch.  While ``full`` is False only unit j of the current
    layer's output differs from the tape, and ``col`` holds it; after that
    the current output is ``cur`` (n_out * m).  Each layer routine has one
    call site, which keeps the compiled code (and its compile time) small.
    """
    L = net.shape[0]
    last = L - 1
    full = False
    cur = buf0
    nxt = buf1
    for q in range(p, L):
        op, n_in, n_out, act = net[q, OP], net[q, N_IN], net[q, N_OUT], net[q, ACT]
        if op == DROPOUT:
            continue
        if op == BATCHNORM:
            g0, b0, eps = net[q, G_OFF], net[q, BETA_OFF], netf[q, 1]
            if q == p:  # gamma[j] or beta[j] moved: unit j is gamma xhat + beta
                xh = tape[net[q, T_PRE] + j * m:net[q, T_PRE] + (j + 1) * m]
                g = P[g0 + j] + (delta if role == ROLE_GAMMA else 0.0)
                b = P[b0 + j] + (delta if role == ROLE_BETA else 0.0)
                for r in range(m):
                    col[r] = g * xh[r] + b
            else:  # the batch statistics of the changed units
                c0 = 0 if full else j
                c1 = n_out if full else j + 1
                for c in range(c0, c1):
                    u = cur[c * m:(c + 1) * m] if full else col
                    _bn_unit(u, u, P[g0 + c], P[b0 + c], eps)
            continue
        if op == DENSE:
            if q == p:  # W[rr, j] or b[j] moved: unit j of Z moves by delta * A_in[rr], or by delta
                z = tape[net[q, T_PRE] + j * m:net[q, T_PRE] + (j + 1) * m]
                x = tape[net[q, T_IN] + rr * m:net[q, T_IN] + (rr + 1) * m]
                if role == ROLE_W:
                    for r in range(m):
                        col[r] = z[r] + delta * x[r]
                else:
                    for r in range(m):
                        col[r] = z[r] + delta
            elif full:
                _dense(P, net[q, W_OFF], net[q, B_OFF], n_in, n_out, cur, nxt, m)
                cur, nxt = nxt, cur
            else:  # rank one: Z' = Z + W[j, :] (A'_in[j] - A_in[j])
                base = tape[net[q, T_IN] + j * m:net[q, T_IN] + (j + 1) * m]
                for r in range(m):
                    col[r] = col[r] - base[r]
                w0 = net[q, W_OFF] + j * n_out
                for c in range(n_out):
                    z = tape[net[q, T_PRE] + c * m:net[q, T_PRE] + (c + 1) * m]
                    o = cur[c * m:(c + 1) * m]
                    w = P[w0 + c]
                    for r in range(m):
                        o[r] = z[r] + w * col[r]
                full = True
        # the activation of a Dense or Activation layer (the output layer's belongs to the loss)
        if q == last or act == LINEAR:
            continue
        if act == SOFTMAX and not full:  # couples the units: unit j's change reaches them all
            t = net[q, T_PRE] if op == DENSE else net[q, T_IN]
            _copy(tape[t:t + n_out * m], cur[:n_out * m])
            _copy(col, cur[j * m:(j + 1) * m])
            full = True
        target = cur[:n_out * m] if full else col
        _layer_activation(target, n_out if full else 1, m, act, netf[q, 0], mx, s)
    k = net[last, N_OUT]
    if not full:
        _copy(tape[net[last, T_OUT]:net[last, T_OUT] + k * m], cur[:k * m])
        _copy(col, cur[j * m:(j + 1) * m])
    _example_losses(cur[:k * m], Y, k, m, loss, ell, mx, s)


@parallel_kernel
def perturbed_losses(net, netf, P, tape, Y, loss, m, coords, deltas, out, scratch, n_threads):
    """``out[i] = sum_r (loss_r(theta + d+) - loss_r(theta + d-))`` for every coordinate i.

    net (L, 11), netf (L, 2), P (n_params,), tape, Y (k * m,) by unit, IN;
    coords (n, 4), deltas (n, 2) IN (``d+, d-``: the perturbations of the
    coordinate); out (n,) OUT; scratch (n_threads, 2 * wmax * m + N_VECTORS *
    m) OUT, one row per thread, allocated once per check.

    Thread t takes coordinates t, t + n_threads, ...: interleaving spreads
    the expensive ones (low layers) evenly, and each coordinate is computed
    whole by one thread, so the result does not depend on n_threads.
    """
    n = coords.shape[0]
    wm = (scratch.shape[1] - N_VECTORS * m) // 2
    for t in prange(n_threads):
        sc = scratch[t]
        buf0 = sc[:wm]
        buf1 = sc[wm:2 * wm]
        v = sc[2 * wm:]
        col, mx, s, lp, lm = v[:m], v[m:2 * m], v[2 * m:3 * m], v[3 * m:4 * m], v[4 * m:5 * m]
        for i in range(np.int64(t), n, n_threads):
            p, role, rr, j = coords[i, 0], coords[i, 1], coords[i, 2], coords[i, 3]
            for h in range(2):  # one call site: the walk is compiled once
                ell = lp if h == 0 else lm
                _perturbed_losses(net, netf, P, tape, Y, loss, m, p, role, rr, j, deltas[i, h], ell,
                                  buf0, buf1, col, mx, s)
            total = 0.0
            for r in range(m):
                total += lp[r] - lm[r]
            out[i] = total


def warmup():
    """Compile (or load from the on-disk cache) the kernel for the types gradcheck passes."""
    m = 4
    # Dense(2, tanh) -> BatchNorm -> Dense(2, softmax) on 3 features, and a tape for it
    net = np.array([[DENSE, 3, 2, TANH, 0, 10, -1, -1, 0, 20, 12],
                    [BATCHNORM, 2, 2, LINEAR, -1, -1, 12, 14, 20, 36, 28],
                    [DENSE, 2, 2, SOFTMAX, 6, 16, -1, -1, 36, 44, 44]], np.int64)
    netf = np.array([[0.01, 0.0], [0.01, 1e-5], [0.01, 0.0]])
    P = np.linspace(-0.5, 0.5, 18)
    tape = np.linspace(-1.0, 1.0, 52)
    Y = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    scratch = np.zeros((2, 2 * 2 * m + N_VECTORS * m))
    coords = np.array([[0, ROLE_W, 1, 1], [2, ROLE_B, 0, 0]], np.int64)
    deltas = np.array([[1e-7, -1e-7], [1e-7, -1e-7]])
    out = np.zeros(2)
    perturbed_losses(net, netf, P, tape, Y, 2, m, coords, deltas, out, scratch, 2)
