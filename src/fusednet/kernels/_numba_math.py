r"""Scalar point functions for the Numba kernels, written so LLVM vectorises them.

PyPI's llvmlite ships without a vector math library, so ``np.exp`` or
``np.tanh`` inside a Numba loop become one scalar libm call per element, an
order of magnitude slower than NumPy's own SIMD ufuncs.  The functions here
replace those calls with branch-free polynomial and rational approximations
built from ``+ - * /``, ``floor``, comparisons and a bit cast, which the loop
vectoriser turns into SIMD code.

Each function mirrors a point function of :mod:`fusednet.kernels.reference`
(named in its docstring) and is pinned to it by the tests.  Accuracy, measured
in ulp of the exact value rounded to the dtype (the subnormal spacing below
the smallest normal number, so the error is relative down to there) over
dense grids of [-1000, 1000] (``tests/kernels/test_numba_specific.py``):

=================  ===================  ===================
function           float32              float64
=================  ===================  ===================
``exp``            <= 2 ulp             <= 2 ulp
``exp_nonpos``     <= 1 ulp             <= 2 ulp
``tanh``           <= 3 ulp             <= 4 ulp
``sigmoid``        <= 3 ulp             <= 3 ulp
=================  ===================  ===================

Results outside the float range follow NumPy: ``exp`` gives ``inf`` above the
overflow point, subnormal numbers and then 0 below the underflow point, and
NaN propagates through every function.  ``sigmoid`` is written on
``exp(-|z|)``, so ``sigmoid(-80)`` in float32 is 1.8e-35 and subnormal
results are kept, where ``1 / (1 + exp(-z))`` gives 0 once ``exp(-z)``
overflows.

The generic names (``exp``, ``exp_nonpos``, ``tanh``, ``sigmoid``) pick the
float32 or float64 version from the argument's type at compile time, so one
kernel body serves both dtypes without promoting float32 arithmetic to
float64.  The kernels call ``exp_nonpos``: their exponentials have
non-positive arguments (softmax and log-sum-exp after the max subtraction,
``-|z|`` in sigmoid and the BCE loss; float32 tanh takes ``expm1(-2|x|)``),
and on that range the float32 version needs one scaling by ``2**n`` instead
of two.  Only float64 tanh (Cephes' form, on ``exp(2|x|)``) uses ``exp``.

These functions are compiled into the cached kernels of ``_numba_flat`` and
``_numba_dense``, and Numba checks only the kernel's own file to decide whether
its cache is stale: after editing this module, delete the ``_numba_*`` entries
of ``fusednet/kernels/__pycache__``.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# a writable cache directory for the cache=True kernels of every module that
# imports this one, settled before any of them is decorated
from . import _numba_cache  # noqa: F401

#: The fast-math flags of the kernels' element-wise work (FASTMATH): fusednet.kernels._policy
#: says why these.
from ._policy import FASTMATH  # noqa: E402

#: Point functions are ordinary compiled functions that LLVM inlines into the
#: calling kernel's loop (each is small enough), so the loop vectorises;
#: inlining them at Numba IR level instead (``inline="always"``) multiplies
#: compile time.  LLVM keeps each instruction's own flags when it inlines.
#: The two-step range reduction ``(x - n*C1) - n*C2`` of ``exp`` goes through
#: an explicit fused multiply-add, which no flag can merge into one product.
point = njit(fastmath=set(FASTMATH), error_model="numpy", cache=False)
_jit = point


# --------------------------------------------------------------------------
# bit casts (an integer's bits read as a float) for building 2**n
# --------------------------------------------------------------------------


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _f64_from_bits(typingctx, bits):
    """The float64 whose bit pattern is integer ``bits`` (64 bits)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width < 64:
            v = builder.sext(v, ir.IntType(64))
        return builder.bitcast(v, ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (``llvm.fma``), opaque to fast-math rewrites."""
    if not (a == b == c and isinstance(a, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)

    return a(a, b, c), codegen


# --------------------------------------------------------------------------
# exp: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, then a
# polynomial (float32, Cephes expf) or Pade form (float64, Cephes exp) in r,
# scaled by 2**n built from its bits.  Mirrors numpy.exp (and numpy.expm1).
# --------------------------------------------------------------------------


#: Adding this to a float32 below 2**22 in magnitude rounds it to an integer
#: (to nearest) held in the low bits of the sum's mantissa: 1.5 * 2**23.
_ROUND_F32 = 12582912.0


@intrinsic
def _pow2_scale(typingctx, p, t):
    """``p * 2**k`` for ``t = R + k`` (R the ``_ROUND_*`` constant of p's type), by
    adding k to p's exponent field; ``p * 2**k`` must be a normal number.

    ``t``'s bits are R's plus k in its low mantissa bits; shifted up to the
    exponent field they are ``k`` alone (R's own bits leave the word).
    """
    if not (p == t and isinstance(p, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        fty = args[0].type
        width, mant = (32, 23) if isinstance(fty, ir.FloatType) else (64, 52)
        ity = ir.IntType(width)
        k = builder.shl(builder.bitcast(args[1], ity), ir.Constant(ity, mant))
        return builder.bitcast(builder.add(builder.bitcast(args[0], ity), k), fty)

    return p(p, t), codegen


@_jit
def _reduce_f32(x, n):
    """``x - n ln2`` with ln2 in two parts, each product exact through a fused multiply-add."""
    r = fma(n, np.float32(-0.693359375), x)
    return fma(n, np.float32(2.12194440e-4), r)


@_jit
def _expm1_poly_f32(r):
    """``exp(r) - 1`` for |r| <= ln2/2: ``r + r**2 P(r)``, the polynomial of Cephes expf."""
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return p * (r * r) + r


@_jit
def exp_f32(x):
    """``exp(x)`` of a float32, |rel. error| <= 2 ulp; NaN in, NaN out."""
    hi = np.float32(88.72283)
    lo = np.float32(-103.97208)
    xc = x if x < hi else hi  # NaN goes to hi here and is restored below
    xc = xc if xc > lo else lo
    n = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    p = _expm1_poly_f32(_reduce_f32(xc, n)) + np.float32(1.0)
    # 2**n as 2**n1 * 2**n2, each factor a normal number for n in [-150, 128]
    ni = np.int32(n)
    n1 = ni >> 1
    n2 = ni - n1
    y = (p * _f32_from_bits((n1 + 127) << 23)) * _f32_from_bits((n2 + 127) << 23)
    y = y if x < hi else np.float32(np.inf)
    y = y if x > lo else np.float32(0.0)
    return y if x == x else x


@_jit
def exp_nonpos_f32(x):
    """``exp(x)`` of a float32 ``x <= 0``, |rel. error| <= 1 ulp, also for subnormal
    results (0 below -103.97); NaN in, NaN out; ``x > 0`` is read as 0.

    The kernels' float32 exp: every argument they pass is at most 0 (softmax
    after the max subtraction, ``-|z|`` in sigmoid).  That range needs a
    single scaling by ``2**n``: ``p * 2**(n + 64)`` through the exponent bits
    (a normal number for n in [-150, 0]), then one product with ``2**-64``,
    which rounds once, also to a subnormal.  ``n`` is rounded by adding
    :data:`_ROUND_F32`, so it arrives in the bits that the scaling reads.
    """
    lo = np.float32(-103.97208)
    xc = np.float32(0.0) if x > np.float32(0.0) else x  # NaN stays
    t = fma(xc, np.float32(1.44269504088896341), np.float32(_ROUND_F32 + 64.0))
    n = t - np.float32(_ROUND_F32 + 64.0)
    p = _expm1_poly_f32(_reduce_f32(xc, n)) + np.float32(1.0)
    y = _pow2_scale(p, t) * np.float32(2.0 ** -64)
    y = np.float32(0.0) if x < lo else y
    return y if x == x else x


@_jit
def expm1_nonpos_f32(x):
    """``exp(x) - 1`` of a float32 ``x <= 0``, |rel. error| <= 2 ulp; NaN in, NaN out;
    ``x > 0`` is read as 0.

    ``2**n (1 + q) - 1`` as ``fma(2**n, q, 2**n - 1)``, with ``2**n - 1``
    exact; n = 0 (|x| <= ln2/2) leaves ``q`` itself, so tiny ``x`` keep their
    relative precision.  The argument is clamped at -20, where the result is
    already -1 in float32 (so ``2**n`` stays a normal number).
    """
    xc = np.float32(0.0) if x > np.float32(0.0) else x  # NaN stays
    xc = np.float32(-20.0) if xc < np.float32(-20.0) else xc
    t = fma(xc, np.float32(1.44269504088896341), np.float32(_ROUND_F32))
    n = t - np.float32(_ROUND_F32)
    q = _expm1_poly_f32(_reduce_f32(xc, n))
    s = _pow2_scale(np.float32(1.0), t)
    return fma(s, q, s - np.float32(1.0))


@_jit
def exp_f64(x):
    """``exp(x)`` of a float64, |rel. error| <= 2 ulp; NaN in, NaN out."""
    hi = 709.782712893384
    lo = -745.1332191019412
    xc = x if x < hi else hi
    xc = xc if xc > lo else lo
    n = np.floor(xc * 1.4426950408889634073599 + 0.5)
    r = fma(n, -6.93145751953125e-1, xc)
    r = fma(n, -1.42860682030941723212e-6, r)
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
              + 9.99999999999999999910e-1)
    qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
          + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0
    p = 1.0 + 2.0 * (px / (qx - px))
    # 2**n as 2**n1 * 2**n2, each factor a normal number for n in [-1075, 1024]
    ni = np.int64(n)
    n1 = ni >> 1
    n2 = ni - n1
    y = (p * _f64_from_bits((n1 + 1023) << 52)) * _f64_from_bits((n2 + 1023) << 52)
    y = y if x < hi else np.inf
    y = y if x > lo else 0.0
    return y if x == x else x


# --------------------------------------------------------------------------
# tanh.  float32: sign(x) (-em1) / (2 + em1) with em1 = expm1(-2|x|), which
# keeps the relative precision of tiny |x|.  float64: Cephes tanh, a rational
# form below |x| = 0.625 and 1 - 2 / (exp(2|x|) + 1) above.  Mirrors
# reference.tanh.
# --------------------------------------------------------------------------


@_jit
def tanh_from_expm1(x, em1):
    """``tanh(x)`` given ``em1 = expm1(-2|x|)``: ``sign(x) (-em1) / (2 + em1)``.

    Two roundings besides em1's error: |rel. error| <= 3 ulp in float32 (with
    :func:`expm1_nonpos_f32`), the sign of a zero kept; NaN in, NaN out.  Split from the expm1 so each
    part is small enough for LLVM to inline into a vectorised loop;
    :func:`tanh` joins them.
    """
    y = -em1 / (like(em1, 2.0) + em1)
    return math.copysign(y, x)


@_jit
def tanh_f64_from_exp(x, e):
    """``tanh(x)`` of a float64 given ``e = exp(2|x|)``, |rel. error| <= 4 ulp; NaN in, NaN out.

    Split from the exp so each part is small enough for LLVM to inline into
    a vectorised loop; :func:`tanh` joins them.
    """
    ax = abs(x)
    # small |x|: x + x s P(s) / Q(s), s = x**2
    s = x * x
    ps = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s - 1.61468768441708447952e3
    qs = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s + 4.84406305325125486048e3
    small = x + x * s * (ps / qs)
    # large |x|: 1 - 2 / (exp(2|x|) + 1); e is inf for |x| > 355, giving 1
    big = 1.0 - 2.0 / (e + 1.0)
    big = big if x >= 0.0 else -big
    return small if not (ax > 0.625) else big


# --------------------------------------------------------------------------
# sigmoid 1 / (1 + exp(-z)), the formula of reference.sigmoid
# --------------------------------------------------------------------------


@_jit
def sigmoid_from_exp(z, e):
    """``1 / (1 + exp(-z))`` given ``e = exp(-|z|)``: ``1 / (1 + e)`` for z >= 0, ``e / (1 + e)`` below.

    Written on ``exp(-|z|)``, which never overflows, so a tiny result keeps
    its relative precision down to the subnormal numbers (where
    ``1 / (1 + exp(-z))`` would give 0 once ``exp(-z)`` overflows):
    |rel. error| <= 3 ulp in either dtype.  NaN in, NaN out.
    """
    r = like(e, 1.0) / (like(e, 1.0) + e)
    return r if z >= like(e, 0.0) else e * r


# --------------------------------------------------------------------------
# generic names: resolved to the float32 or float64 version at compile time
# --------------------------------------------------------------------------


def _generic(name, impl32, impl64):
    """A name callable from compiled code that picks ``impl32`` or ``impl64`` by argument type."""

    def generic(x):
        raise NotImplementedError("only callable from Numba-compiled code")

    generic.__name__ = generic.__qualname__ = name

    @overload(generic, inline="always")
    def _impl(x):
        if x == types.float32:
            return impl32
        if x == types.float64:
            return impl64
        return None

    return generic


exp = _generic("exp", lambda x: exp_f32(x), lambda x: exp_f64(x))
#: ``exp(x)`` for ``x <= 0``, the kernels' exp (float64: :func:`exp_f64`, whose range covers it)
exp_nonpos = _generic("exp_nonpos", lambda x: exp_nonpos_f32(x), lambda x: exp_f64(x))
tanh = _generic("tanh", lambda x: tanh_from_expm1(x, expm1_nonpos_f32(np.float32(-2.0) * abs(x))),
                lambda x: tanh_f64_from_exp(x, exp_f64(2.0 * abs(x))))
sigmoid = _generic("sigmoid", lambda x: sigmoid_from_exp(x, exp_nonpos_f32(-abs(x))),
                   lambda x: sigmoid_from_exp(x, exp_f64(-abs(x))))


# --------------------------------------------------------------------------
# log1p(t) for t in [0, 1] (the softplus term of the BCE loss, float64):
# log(1 + t) = 2 atanh(s), s = t / (2 + t) in [0, 1/3], by its odd series in
# s, truncated where the next term is below 2**-60 of the sum.  Mirrors
# numpy.log1p on that interval.
# --------------------------------------------------------------------------


@_jit
def log1p_unit(t):
    """``log(1 + t)`` of a float64 ``t`` in [0, 1], |rel. error| <= 2 ulp."""
    s = t / (2.0 + t)
    s2 = s * s
    p = 1.0 / 37.0
    p = p * s2 + 1.0 / 35.0
    p = p * s2 + 1.0 / 33.0
    p = p * s2 + 1.0 / 31.0
    p = p * s2 + 1.0 / 29.0
    p = p * s2 + 1.0 / 27.0
    p = p * s2 + 1.0 / 25.0
    p = p * s2 + 1.0 / 23.0
    p = p * s2 + 1.0 / 21.0
    p = p * s2 + 1.0 / 19.0
    p = p * s2 + 1.0 / 17.0
    p = p * s2 + 1.0 / 15.0
    p = p * s2 + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    return 2.0 * (s + s * (s2 * p))


@_jit
def log1p_unit_f32(t):
    """``log(1 + t)`` of a float32 ``t`` in [0, 1], |rel. error| <= 2 ulp: :func:`log1p_unit`'s series in
    float32, truncated where the next term is below 2**-26 of the sum (s**2 <= 1/9)."""
    s = t / (np.float32(2.0) + t)
    s2 = s * s
    p = np.float32(1.0 / 15.0)
    p = p * s2 + np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    return np.float32(2.0) * (s + s * (s2 * p))


#: ``log(1 + t)`` for ``t`` in [0, 1] in the argument's dtype (the softplus term of the BCE loss)
log1p_unit_typed = _generic("log1p_unit_typed", lambda x: log1p_unit_f32(x), lambda x: log1p_unit(x))


# --------------------------------------------------------------------------
# ReLU family (reference.relu, reference.leaky_relu).  NaN propagates, as
# through numpy.maximum and numpy.where.
# --------------------------------------------------------------------------


@_jit
def relu(z, zero):
    """``max(z, 0)``; ``zero`` is 0 in z's type.  NaN stays NaN."""
    return zero if z < zero else z


@_jit
def leaky_relu(z, slope, zero):
    """``z`` where ``z > 0``, else ``slope * z``."""
    return z if z > zero else slope * z


# mirrors reference.sigmoid_grad
@_jit
def sigmoid_grad(a):
    """``a (1 - a)``: the sigmoid's derivative from its output."""
    return a * (like(a, 1.0) - a)


# mirrors reference.tanh_grad
@_jit
def tanh_grad(a):
    """``1 - a^2``: tanh's derivative from its output."""
    return like(a, 1.0) - a * a


# mirrors reference.relu_grad
@_jit
def relu_grad(a):
    """1 where ``a > 0``, else 0."""
    return like(a, 1.0) if a > like(a, 0.0) else like(a, 0.0)


# mirrors reference.leaky_relu_grad (``slope`` in ``a``'s dtype)
@_jit
def leaky_relu_grad(a, slope):
    """1 where ``a > 0``, else ``slope``."""
    return like(a, 1.0) if a > like(a, 0.0) else slope


# --------------------------------------------------------------------------
# optimiser point functions: mirrors of reference.decayed, ewa, gd_step,
# momentum_step, rmsprop_step and adam_step (scalars in the parameters' dtype)
# --------------------------------------------------------------------------


# mirrors reference.decayed
@_jit
def decayed(g, w, l2):
    """``g + l2 w``."""
    return g + l2 * w


# mirrors reference.ewa
@_jit
def ewa(v, x, beta, one_minus_beta):
    """``beta v + (1 - beta) x``."""
    return beta * v + one_minus_beta * x


# mirrors reference.gd_step
@_jit
def gd_step(w, gp, lr):
    """``w - lr g'``."""
    return w - lr * gp


# mirrors reference.momentum_step
@_jit
def momentum_step(w, v, lr, bc):
    """``w - lr v / bc``."""
    return w - lr * (v / bc)


# mirrors reference.rmsprop_step
@_jit
def rmsprop_step(w, gp, s, lr, eps):
    """``w - lr g' / (sqrt(s) + eps)``."""
    return w - lr * gp / (np.sqrt(s) + eps)


# mirrors reference.adam_step
@_jit
def adam_step(w, m, v, lr, bc1, bc2, eps):
    """``w - lr (m / bc1) / (sqrt(v / bc2) + eps)``."""
    return w - lr * (m / bc1) / (np.sqrt(v / bc2) + eps)


# --------------------------------------------------------------------------
# dropout hash: reference.fmix32 / reference.dropout_hash in 32-bit
# arithmetic.  Numba widens uint32 arithmetic to 64 bits, so every step is
# cut back to uint32 (LLVM then emits 32-bit vector multiplies).
# --------------------------------------------------------------------------


@_jit
def fmix32(h):
    """MurmurHash3's 32-bit finaliser of a uint32 ``h``."""
    h = np.uint32(h ^ (h >> np.uint32(16)))
    h = np.uint32(h * np.uint32(0x85EBCA6B))
    h = np.uint32(h ^ (h >> np.uint32(13)))
    h = np.uint32(h * np.uint32(0xC2B2AE35))
    return np.uint32(h ^ (h >> np.uint32(16)))


@_jit
def dropout_hash(i, k1, k2):
    """``fmix32(fmix32(uint32(i) ^ k1) ^ k2)`` with k1, k2 the key's low and high halves (uint32)."""
    return fmix32(np.uint32(fmix32(np.uint32(np.uint32(i) ^ k1)) ^ k2))


# --------------------------------------------------------------------------
# dtype helpers, resolved at compile time from an array argument
# --------------------------------------------------------------------------


def like(arr, value):
    """``value`` as a scalar of ``arr``'s (float32 or float64) dtype; ``arr`` may be a scalar."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(like, inline="always")
def _like_impl(arr, value):
    dtype = arr.dtype if isinstance(arr, types.Array) else arr
    if dtype == types.float32:
        return lambda arr, value: np.float32(value)
    if dtype == types.float64:
        return lambda arr, value: np.float64(value)
    return None


def tiny(arr):
    """The smallest normal number of ``arr``'s dtype (``numpy.finfo(dtype).tiny``)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(tiny, inline="always")
def _tiny_impl(arr):
    if isinstance(arr, types.Array):
        if arr.dtype == types.float32:
            value32 = np.float32(np.finfo(np.float32).tiny)
            return lambda arr: value32
        if arr.dtype == types.float64:
            value64 = float(np.finfo(np.float64).tiny)
            return lambda arr: value64
    return None


@_jit
def flush(x, tiny_value):
    """``x``, or 0 where ``|x|`` is below the smallest normal number (NaN is kept)."""
    return like(x, 0.0) if abs(x) < tiny_value else x
