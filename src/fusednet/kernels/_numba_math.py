r"""Scalar point functions for the Numba kernels, written so LLVM vectorises them.

PyPI's llvmlite ships without a vector math library, so ``np.exp`` or
``np.tanh`` inside a Numba loop become one scalar libm call per element, an
order of magnitude slower than NumPy's own SIMD ufuncs.  The functions here
replace those calls with branch-free polynomial and rational approximations
built from ``+ - * /``, ``floor``, comparisons and a bit cast, which the loop
vectoriser turns into SIMD code.

Each function mirrors a point function of :mod:`fusednet.kernels.reference`
(named in its docstring) and is pinned to it by the tests.  Accuracy, measured
against float64 NumPy over dense grids (see ``tests/kernels/test_numba_specific.py``):

=================  ===========================  ============================
function           float32                      float64
=================  ===========================  ============================
``exp``            rel. error <= 2 ulp          rel. error <= 2 ulp
``tanh``           abs. error <= 3e-7           rel. error <= 4 ulp
``sigmoid``        abs. error <= 2e-7           rel. error <= 4 ulp
=================  ===========================  ============================

Results outside the float range follow NumPy: ``exp`` gives ``inf`` above the
overflow point, subnormal numbers and then 0 below the underflow point (a
subnormal result may differ from NumPy's in its last bits), and NaN propagates
through every function.

The generic names (``exp``, ``tanh``, ``sigmoid``) pick the float32 or float64
version from the argument's type at compile time, so one kernel body serves
both dtypes without promoting float32 arithmetic to float64.

These functions are compiled into the cached kernels of ``_numba_flat`` and
``_numba_dense``, and Numba checks only the kernel's own file to decide whether
its cache is stale: after editing this module, delete the ``_numba_*`` entries
of ``fusednet/kernels/__pycache__``.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# a writable cache directory for the cache=True kernels of every module that
# imports this one, settled before any of them is decorated
from . import _numba_cache  # noqa: F401

#: The fast-math flags of the kernels' elementwise work.  No ``nnan``/``ninf``,
#: so NaN and inf tests still work and NaN propagates.  No ``reassoc`` either:
#: with ``reassoc`` and ``contract`` together LLVM fuses differently in a
#: loop's vector body and in its scalar remainder, so an element's bits would
#: depend on where a thread's chunk starts (measured: a third of the elements
#: of a sigmoid backward differed by 1 ulp between 1 and 2 threads).
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn"})

#: Flags of loops that reduce along one row (softmax and loss sums, row dot
#: products), which need ``reassoc`` to vectorise.  A row is never split
#: between threads, so its reduction order does not depend on the thread count.
REDUCTION_FASTMATH = FASTMATH | {"reassoc"}

#: Point functions are ordinary compiled functions that LLVM inlines into the
#: calling kernel's loop (each is small enough), so the loop vectorises;
#: inlining them at Numba IR level instead (``inline="always"``) multiplies
#: compile time.  LLVM keeps each instruction's own flags when it inlines.
#: The two-step range reduction ``(x - n*C1) - n*C2`` of ``exp`` goes through
#: an explicit fused multiply-add, which no flag can merge into one product.
point = njit(fastmath=set(FASTMATH), error_model="numpy", cache=False)
#: the same for helpers whose loops reduce along a row
row_point = njit(fastmath=set(REDUCTION_FASTMATH), error_model="numpy", cache=False)
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
# scaled by 2**n built from its bits.  Mirrors numpy.exp.
# --------------------------------------------------------------------------


@_jit
def exp_f32(x):
    """``exp(x)`` of a float32, |rel. error| <= 2 ulp; NaN in, NaN out."""
    hi = np.float32(88.72283)
    lo = np.float32(-103.97208)
    xc = x if x < hi else hi  # NaN goes to hi here and is restored below
    xc = xc if xc > lo else lo
    n = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    r = fma(n, np.float32(-0.693359375), xc)
    r = fma(n, np.float32(2.12194440e-4), r)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    # 2**n as 2**n1 * 2**n2, each factor a normal number for n in [-150, 128]
    ni = np.int32(n)
    n1 = ni >> 1
    n2 = ni - n1
    y = (p * _f32_from_bits((n1 + 127) << 23)) * _f32_from_bits((n2 + 127) << 23)
    y = y if x < hi else np.float32(np.inf)
    y = y if x > lo else np.float32(0.0)
    return y if x == x else x


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
# tanh.  float32: the odd rational minimax approximation of Eigen / XLA
# (degree 13 over 6), clamped at +-7.9988 where it reaches exactly 1.
# float64: Cephes tanh, a rational form below |x| = 0.625 and
# 1 - 2 / (exp(2|x|) + 1) above.  Mirrors reference.tanh.
# --------------------------------------------------------------------------


@_jit
def tanh_f32(x):
    """``tanh(x)`` of a float32, |abs. error| <= 3e-7, exactly +-1 beyond |x| = 7.9988; NaN in, NaN out."""
    # clamp at the smallest |x| where the rational form gives exactly 1 with
    # fused multiply-adds (Eigen's constant); written so NaN passes through
    c = np.float32(7.99881172180175781)
    xc = c if x > c else x
    xc = -c if xc < -c else xc
    x2 = xc * xc
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return (xc * p) / q


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
# sigmoid 1 / (1 + exp(-z)), the formula of reference.sigmoid (float32: through tanh)
# --------------------------------------------------------------------------


@_jit
def sigmoid_f32(z):
    """``1 / (1 + exp(-z))`` of a float32 as ``0.5 + 0.5 tanh(z / 2)``, |abs. error| <= 2e-7.

    Twice as fast as through :func:`exp_f32`; exactly 0 and 1 beyond |z| = 16.
    The error is absolute: below about 1e-7 the result has no relative accuracy
    (the loss never uses it: it works on the logits in float64).
    """
    h = np.float32(0.5)
    return h + h * tanh_f32(h * z)


@_jit
def sigmoid_f64(z):
    """``1 / (1 + exp(-z))`` of a float64, |rel. error| <= 4 ulp."""
    return 1.0 / (1.0 + exp_f64(-z))


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
tanh = _generic("tanh", lambda x: tanh_f32(x), lambda x: tanh_f64_from_exp(x, exp_f64(2.0 * abs(x))))
sigmoid = _generic("sigmoid", lambda x: sigmoid_f32(x), lambda x: sigmoid_f64(x))


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
