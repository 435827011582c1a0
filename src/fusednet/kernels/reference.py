r"""The pure-NumPy reference backend: the readable contract of every kernel.

Every backend (``numpy`` here, ``numba``, ``cython``) exposes the same raw
kernels with the same positional signatures.  Raw kernels do no checking (the
checked wrappers in :mod:`fusednet.kernels` do); they

* work in place on C-contiguous float32/float64 arrays of one dtype,
* write only their ``OUT`` arguments (an ``OUT`` may alias an ``IN`` where noted),
* take ``n_threads`` last and return ``None`` (the loss forward returns the cost),
* compute in the arrays' dtype, accumulating every sum in float64 (the
  column sums ``db``, ``dgamma``, ``dbeta``, the batch statistics, softmax's row
  sums; the loss is float64 throughout).

Shapes: ``m`` rows (examples) by ``n`` columns (units).  ``act`` is an activation
code and ``loss`` a loss code from :mod:`fusednet.kernels._codes`.

Kernels
-------
``bias_act_forward(Z, b, act, slope, A, n_threads)``
    ``A = g(Z + b)``; Z (m, n) IN, b (n,) IN, A (m, n) OUT (may alias Z).
    Softmax is row-wise and max-subtracted.
``act_backward(dA, A, act, slope, dZ, db, n_threads)``
    ``dZ = dA * g'(.)`` read from the cached output A; ``db = sum_rows(dZ)``.
    dA, A (m, n) IN; dZ (m, n) OUT (may alias dA); db (n,) OUT.
``loss_forward(Z, b, Y, loss, A, n_threads) -> float``
    Z (m, k) logits without bias IN, b (k,) IN, Y (m, k) targets IN, A (m, k) OUT.
    ``A = g(Z + b)`` and returns the mean cost over the m rows (float64).
``loss_backward(A, Y, dZ, db, n_threads)``
    ``dZ = (A - Y) / m``; ``db = sum_rows(dZ)``.
``dropout_apply(X, key, threshold, scale, out, n_threads)``
    ``out = X * scale`` where ``hash(i, key) < threshold`` else 0, i the flat
    C-order index; out may alias X.  The same call on dA is the backward pass.
``gd_update(w, g, lr, l2, n_decay, n_threads)``
``momentum_update(w, g, v, lr, beta, bc, l2, n_decay, n_threads)``
``rmsprop_update(w, g, s, lr, beta, eps, l2, n_decay, n_threads)``
``adam_update(w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, n_threads)``
    Flat 1-D buffers; w and the state are IN/OUT, g IN.  The gradient read is
    ``g + l2 * w`` on ``w[:n_decay]`` and ``g`` beyond it.  ``bc`` are the
    bias-correction divisors ``1 - beta**t`` (1.0 for none).  Optimiser state
    that decays below the dtype's smallest normal number is flushed to zero.
``batchnorm_forward_train(Z, gamma, beta, eps, xhat, out, mean, var, invstd, n_threads)``
    Batch mean and biased variance per column; ``xhat = (Z - mean) * invstd``,
    ``out = gamma * xhat + beta``.  Z IN (m >= 1); xhat, out (m, n) OUT; mean,
    var, invstd (n,) OUT.
``batchnorm_forward_infer(Z, gamma, beta, running_mean, running_var, eps, out, n_threads)``
``batchnorm_backward(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_threads)``
    ``dbeta = sum(dout)``, ``dgamma = sum(dout * xhat)``,
    ``dZ = gamma * invstd * (dout - dbeta/m - xhat * dgamma/m)``; dZ may alias dout.
``ewa_update(v, x, beta, n_threads)``
    ``v = beta * v + (1 - beta) * x``, the exponentially weighted average step.
"""

import numpy as np

from ._codes import BCE, CCE, LEAKY_RELU, LINEAR, MSE, RELU, SIGMOID, SOFTMAX, TANH

# --------------------------------------------------------------------------
# point functions: plain arithmetic, valid on whole arrays and on scalars.
# Each derivative sits next to its forward and is written in terms of A = g(z).
# --------------------------------------------------------------------------


def sigmoid(z):
    r""":math:`\sigma(z) = 1 / (1 + e^{-z})`, computed from :math:`e = e^{-|z|}`.

    :math:`1 / (1 + e)` for :math:`z \ge 0` and :math:`e / (1 + e)` below, so
    nothing overflows and a result in the subnormal range is not flushed to 0.
    """
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0, e) / (1.0 + e)


def sigmoid_grad(a):
    r""":math:`\sigma'(z) = a (1 - a)`."""
    return a * (1.0 - a)


def tanh(z):
    r""":math:`\tanh(z)`."""
    return np.tanh(z)


def tanh_grad(a):
    r""":math:`\tanh'(z) = 1 - a^2`."""
    return 1.0 - a * a


def relu(z):
    r""":math:`\max(0, z)`."""
    return np.maximum(z, 0.0)


def relu_grad(a):
    r"""1 where :math:`a > 0`, else 0 (0 at z = 0, as the course's exercises and PyTorch)."""
    return (a > 0.0) * 1.0


def leaky_relu(z, slope):
    r""":math:`\max(slope \cdot z, z)` for ``0 <= slope < 1``."""
    return np.where(z > 0.0, z, slope * z)


def leaky_relu_grad(a, slope):
    r"""1 where :math:`a > 0`, else ``slope`` (``slope`` at z = 0)."""
    return np.where(a > 0.0, 1.0, slope)


def fmix32(h):
    """MurmurHash3's 32-bit finaliser on uint32 values (arrays or scalars)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def dropout_hash(i, key):
    """The counter-based hash of flat index ``i`` under a 64-bit ``key``: uint32.

    ``fmix32(fmix32(uint32(i) ^ k1) ^ k2)`` with ``k1, k2`` the low and high
    halves of the key.  All arithmetic is modulo 2**32.
    """
    k1 = np.uint32(key & 0xFFFFFFFF)
    k2 = np.uint32((key >> 32) & 0xFFFFFFFF)
    h = fmix32(np.asarray(i).astype(np.uint32) ^ k1)
    return fmix32(h ^ k2)


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------


def _act(Z, act, slope):
    if act == LINEAR:
        return Z
    if act == SIGMOID:
        return sigmoid(Z)
    if act == TANH:
        return tanh(Z)
    if act == RELU:
        return relu(Z)
    if act == LEAKY_RELU:
        return leaky_relu(Z, slope)
    if act == SOFTMAX:
        with np.errstate(over="ignore", invalid="ignore"):  # a NaN or +inf makes the row NaN
            e = np.exp(Z - Z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True, dtype=np.float64)
    raise ValueError(f"unknown activation code {act}")


def bias_act_forward(Z, b, act, slope, A, n_threads):
    dtype = A.dtype
    A[...] = _act(Z + b, act, dtype.type(slope)).astype(dtype, copy=False)


def act_backward(dA, A, act, slope, dZ, db, n_threads):
    if act == LINEAR:
        d = dA.copy()
    elif act == SIGMOID:
        d = dA * sigmoid_grad(A)
    elif act == TANH:
        d = dA * tanh_grad(A)
    elif act == RELU:
        d = dA * relu_grad(A)
    elif act == LEAKY_RELU:
        d = dA * leaky_relu_grad(A, A.dtype.type(slope))
    elif act == SOFTMAX:
        d = A * (dA - (dA * A).sum(axis=1, keepdims=True, dtype=np.float64).astype(A.dtype))
    else:
        raise ValueError(f"unknown activation code {act}")
    dZ[...] = d
    db[...] = dZ.sum(axis=0, dtype=np.float64)


def loss_forward(Z, b, Y, loss, A, n_threads):
    m = Z.shape[0]
    if m == 0:
        return 0.0
    z = (Z + b).astype(np.float64)
    y = Y.astype(np.float64)
    if loss == MSE:
        a = z
        total = 0.5 * np.sum((a - y) ** 2)
    elif loss == BCE:
        a = sigmoid(z)
        # -(y log a + (1-y) log(1-a)), written on the logits so it never overflows
        total = np.sum(np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z))))
    elif loss == CCE:
        # log-sum-exp minus the row's max, as log1p of the terms other than the
        # maximum's exp(0) = 1 (each maximum's 1 is taken out exactly), so the
        # cost of a confident right answer (below eps) keeps its relative precision
        zmax = z.max(axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):  # a NaN or +inf makes the row NaN
            d = z - zmax
            top = z == zmax
            rest = (np.exp(d) - top).sum(axis=1, keepdims=True) + (top.sum(axis=1, keepdims=True) - 1.0)
            lse = np.log1p(rest)
            a = np.exp(d - lse)
            total = np.sum(y * (lse - d))
    else:
        raise ValueError(f"unknown loss code {loss}")
    A[...] = a
    return float(total / m)


def loss_backward(A, Y, dZ, db, n_threads):
    m = A.shape[0]
    if m == 0:
        db[...] = 0
        return
    dZ[...] = (A - Y) / A.dtype.type(m)
    db[...] = dZ.sum(axis=0, dtype=np.float64)


def dropout_apply(X, key, threshold, scale, out, n_threads):
    i = np.arange(X.size, dtype=np.uint64).reshape(X.shape)
    keep = dropout_hash(i, key).astype(np.uint64) < np.uint64(threshold)
    out[...] = np.where(keep, X * X.dtype.type(scale), X.dtype.type(0))


# --------------------------------------------------------------------------
# optimiser point functions: each update's formula, once.  Scalars come in the
# parameters' dtype (``one_minus_beta`` is ``1 - beta`` rounded to it); the
# bias corrections ``bc = 1 - beta**t`` come from fusednet.optim.bias_correction.
# --------------------------------------------------------------------------


def decayed(g, w, l2):
    r"""The gradient with the L2 term: :math:`g' = g + \frac{\lambda}{m} w` (``l2`` is :math:`\lambda / m`)."""
    return g + l2 * w


def ewa(v, x, beta, one_minus_beta):
    r"""An exponentially weighted average: :math:`v \leftarrow \beta v + (1 - \beta) x`."""
    return beta * v + one_minus_beta * x


def gd_step(w, gp, lr):
    r"""Gradient descent: :math:`w - \alpha g'`."""
    return w - lr * gp


def momentum_step(w, v, lr, bc):
    r"""Momentum, after :math:`v = \beta v + (1 - \beta) g'`: :math:`w - \alpha \, v / bc`."""
    return w - lr * (v / bc)


def rmsprop_step(w, gp, s, lr, eps):
    r"""RMSProp, after :math:`s = \beta s + (1 - \beta) g'^2`: :math:`w - \alpha g' / (\sqrt{s} + \varepsilon)`."""
    return w - lr * gp / (np.sqrt(s) + eps)


def adam_step(w, m, v, lr, bc1, bc2, eps):
    r"""Adam, after both averages: :math:`w - \alpha \, (m / bc_1) / (\sqrt{v / bc_2} + \varepsilon)`.

    Each bias correction divides as a product by its reciprocal (``1 / bc`` rounded once in the
    scalars' dtype), as the compiled kernels compute it: one division per parameter, not three.
    """
    return w - lr * (m * np.reciprocal(bc1)) / (np.sqrt(v * np.reciprocal(bc2)) + eps)


def _flush(x):
    x[np.abs(x) < np.finfo(x.dtype).tiny] = 0


def _decayed(w, g, l2, n_decay):
    gp = g.copy()
    if l2 != 0.0:
        gp[:n_decay] = decayed(g[:n_decay], w[:n_decay], w.dtype.type(l2))
    return gp


def gd_update(w, g, lr, l2, n_decay, n_threads):
    gp = _decayed(w, g, l2, n_decay)
    w[...] = gd_step(w, gp, w.dtype.type(lr))


def momentum_update(w, g, v, lr, beta, bc, l2, n_decay, n_threads):
    t = w.dtype.type
    gp = _decayed(w, g, l2, n_decay)
    v[...] = ewa(v, gp, t(beta), t(1.0 - beta))
    _flush(v)
    w[...] = momentum_step(w, v, t(lr), t(bc))


def rmsprop_update(w, g, s, lr, beta, eps, l2, n_decay, n_threads):
    t = w.dtype.type
    gp = _decayed(w, g, l2, n_decay)
    s[...] = ewa(s, gp * gp, t(beta), t(1.0 - beta))
    _flush(s)
    w[...] = rmsprop_step(w, gp, s, t(lr), t(eps))


def adam_update(w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, n_threads):
    t = w.dtype.type
    gp = _decayed(w, g, l2, n_decay)
    m[...] = ewa(m, gp, t(beta1), t(1.0 - beta1))
    v[...] = ewa(v, gp * gp, t(beta2), t(1.0 - beta2))
    _flush(m)
    _flush(v)
    w[...] = adam_step(w, m, v, t(lr), t(bc1), t(bc2), t(eps))


def batchnorm_forward_train(Z, gamma, beta, eps, xhat, out, mean, var, invstd, n_threads):
    mean[...] = Z.mean(axis=0, dtype=np.float64)
    var[...] = Z.var(axis=0, dtype=np.float64)
    invstd[...] = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    xhat[...] = (Z - mean) * invstd
    out[...] = gamma * xhat + beta


def batchnorm_forward_infer(Z, gamma, beta, running_mean, running_var, eps, out, n_threads):
    inv = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(Z.dtype)
    out[...] = gamma * ((Z - running_mean) * inv) + beta


def batchnorm_backward(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_threads):
    m = dout.shape[0]
    dbeta[...] = dout.sum(axis=0, dtype=np.float64)
    dgamma[...] = (dout * xhat).sum(axis=0, dtype=np.float64)
    dZ[...] = (gamma * invstd) * (dout - dbeta / m - xhat * (dgamma / m))


def ewa_update(v, x, beta, n_threads):
    t = v.dtype.type
    v[...] = ewa(v, x, t(beta), t(1.0 - beta))
