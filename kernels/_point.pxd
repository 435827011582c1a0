# Point functions of the compiled kernels: one scalar formula each.
#
# Every function mirrors the NumPy function of the same name in
# fusednet.kernels.reference, where the formula and its LaTeX live; the parity
# test in tests/kernels/test_cython_specific.py pins each pair together.
# Derivatives are written in terms of the cached output A = g(z), next to
# their forward.  Everything is computed in the arithmetic of the type
# (float stays float), as NumPy does for float32 arrays.

from cython cimport floating
from libc.stdint cimport uint32_t, uint64_t
from libc.math cimport fabs, fabsf, sqrt, sqrtf
from libc.float cimport FLT_MIN, DBL_MIN

# Vectorisable exp, log, log1p, tanh and sigmoid (_vmath.h): branch-free C that gcc inlines
# into the kernels' loops and vectorises in every instruction-set copy, where a libm call
# stays one call per element.  Each states its measured error bound in ulp (at most 2.5;
# tests/kernels/test_vmath.py holds them to it over the whole range).
cdef extern from "_vmath.h" nogil:
    float vm_expf(float x)
    double vm_exp(double x)
    double vm_exp_nonpos(double x)
    float vm_logf(float x)
    double vm_log(double x)
    float vm_log1pf(float x)
    double vm_log1p(double x)
    float vm_tanhf(float x)
    double vm_tanh(double x)
    float vm_sigmoidf(float x)
    double vm_sigmoid(double x)


# mirrors fusednet.kernels.reference.sigmoid
# (on e = exp(-|z|): 1 / (1 + e) for z >= 0, e / (1 + e) below, so subnormal results are kept)
cdef inline floating sigmoid(floating z) noexcept nogil:
    if floating is float:
        return vm_sigmoidf(z)
    else:
        return vm_sigmoid(z)


# mirrors fusednet.kernels.reference.sigmoid_grad
cdef inline floating sigmoid_grad(floating a) noexcept nogil:
    return a * (<floating>1 - a)


# mirrors fusednet.kernels.reference.tanh
cdef inline floating tanh(floating z) noexcept nogil:
    if floating is float:
        return vm_tanhf(z)
    else:
        return vm_tanh(z)


# mirrors fusednet.kernels.reference.tanh_grad
cdef inline floating tanh_grad(floating a) noexcept nogil:
    return <floating>1 - a * a


# mirrors fusednet.kernels.reference.relu
cdef inline floating relu(floating z) noexcept nogil:
    return 0 if z <= 0 else z  # a NaN stays NaN, as with numpy.maximum


# mirrors fusednet.kernels.reference.relu_grad
cdef inline floating relu_grad(floating a) noexcept nogil:
    return 1 if a > 0 else 0


# mirrors fusednet.kernels.reference.leaky_relu
cdef inline floating leaky_relu(floating z, floating slope) noexcept nogil:
    return z if z > 0 else slope * z


# mirrors fusednet.kernels.reference.leaky_relu_grad
cdef inline floating leaky_relu_grad(floating a, floating slope) noexcept nogil:
    return 1 if a > 0 else slope


# mirrors fusednet.kernels.reference.fmix32
cdef inline uint32_t fmix32(uint32_t h) noexcept nogil:
    h = h ^ (h >> 16)
    h = h * <uint32_t>0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * <uint32_t>0xC2B2AE35
    return h ^ (h >> 16)


# mirrors fusednet.kernels.reference.dropout_hash
# (k1, k2: the low and high halves of the 64-bit key, split once per call)
cdef inline uint32_t dropout_hash(uint64_t i, uint32_t k1, uint32_t k2) noexcept nogil:
    return fmix32(fmix32(<uint32_t>i ^ k1) ^ k2)


# helpers in the arithmetic of the type (no round trip through double)

cdef inline floating exp_(floating x) noexcept nogil:
    if floating is float:
        return vm_expf(x)
    else:
        return vm_exp(x)


cdef inline floating sqrt_(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating fabs_(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


# mirrors fusednet.kernels.reference._flush: zero below the smallest normal number
cdef inline floating flush(floating x) noexcept nogil:
    if floating is float:
        return 0 if fabsf(x) < FLT_MIN else x
    else:
        return 0 if fabs(x) < DBL_MIN else x


# the optimisers' updates, one formula each (the kernels flush the averages after ewa)

# mirrors fusednet.kernels.reference.decayed
cdef inline floating decayed(floating g, floating w, floating l2) noexcept nogil:
    return g + l2 * w


# mirrors fusednet.kernels.reference.ewa
cdef inline floating ewa(floating v, floating x, floating beta, floating one_minus_beta) noexcept nogil:
    return beta * v + one_minus_beta * x


# mirrors fusednet.kernels.reference.gd_step
cdef inline floating gd_step(floating w, floating gp, floating lr) noexcept nogil:
    return w - lr * gp


# mirrors fusednet.kernels.reference.momentum_step
cdef inline floating momentum_step(floating w, floating v, floating lr, floating bc) noexcept nogil:
    return w - lr * (v / bc)


# mirrors fusednet.kernels.reference.rmsprop_step
cdef inline floating rmsprop_step(floating w, floating gp, floating s, floating lr,
                                  floating eps) noexcept nogil:
    return w - lr * gp / (sqrt_(s) + eps)


# mirrors fusednet.kernels.reference.adam_step
cdef inline floating adam_step(floating w, floating m, floating v, floating lr, floating bc1,
                               floating bc2, floating eps) noexcept nogil:
    return w - lr * (m / bc1) / (sqrt_(v / bc2) + eps)
