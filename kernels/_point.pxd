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
    double vm_bce_logit(double d, double y)


# The optimisers' point functions in C (_point.h), shared with the population engine by lanes.
cdef extern from "_point.h" nogil:
    float pt_flush_f(float x)
    double pt_flush_d(double x)
    float pt_decayed_f(float g, float w, float l2)
    double pt_decayed_d(double g, double w, double l2)
    float pt_ewa_f(float v, float x, float beta, float omb)
    double pt_ewa_d(double v, double x, double beta, double omb)
    float pt_gd_step_f(float w, float gp, float lr)
    double pt_gd_step_d(double w, double gp, double lr)
    float pt_momentum_step_f(float w, float v, float lr, float bc)
    double pt_momentum_step_d(double w, double v, double lr, double bc)
    float pt_rmsprop_step_f(float w, float gp, float s, float lr, float eps)
    double pt_rmsprop_step_d(double w, double gp, double s, double lr, double eps)
    float pt_adam_step_f(float w, float m, float v, float lr, float bc1, float bc2, float eps)
    double pt_adam_step_d(double w, double m, double v, double lr, double bc1, double bc2, double eps)


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
        return pt_flush_f(x)
    else:
        return pt_flush_d(x)


# the optimisers' updates, one formula each (the kernels flush the averages after ewa): _point.h's

# mirrors fusednet.kernels.reference.decayed
cdef inline floating decayed(floating g, floating w, floating l2) noexcept nogil:
    if floating is float:
        return pt_decayed_f(g, w, l2)
    else:
        return pt_decayed_d(g, w, l2)


# mirrors fusednet.kernels.reference.ewa
cdef inline floating ewa(floating v, floating x, floating beta, floating one_minus_beta) noexcept nogil:
    if floating is float:
        return pt_ewa_f(v, x, beta, one_minus_beta)
    else:
        return pt_ewa_d(v, x, beta, one_minus_beta)


# mirrors fusednet.kernels.reference.gd_step
cdef inline floating gd_step(floating w, floating gp, floating lr) noexcept nogil:
    if floating is float:
        return pt_gd_step_f(w, gp, lr)
    else:
        return pt_gd_step_d(w, gp, lr)


# mirrors fusednet.kernels.reference.momentum_step
cdef inline floating momentum_step(floating w, floating v, floating lr, floating bc) noexcept nogil:
    if floating is float:
        return pt_momentum_step_f(w, v, lr, bc)
    else:
        return pt_momentum_step_d(w, v, lr, bc)


# mirrors fusednet.kernels.reference.rmsprop_step
cdef inline floating rmsprop_step(floating w, floating gp, floating s, floating lr,
                                  floating eps) noexcept nogil:
    if floating is float:
        return pt_rmsprop_step_f(w, gp, s, lr, eps)
    else:
        return pt_rmsprop_step_d(w, gp, s, lr, eps)


# mirrors fusednet.kernels.reference.adam_step
cdef inline floating adam_step(floating w, floating m, floating v, floating lr, floating bc1,
                               floating bc2, floating eps) noexcept nogil:
    if floating is float:
        return pt_adam_step_f(w, m, v, lr, bc1, bc2, eps)
    else:
        return pt_adam_step_d(w, m, v, lr, bc1, bc2, eps)
