# Point functions of the compiled kernels: one scalar formula each.
# Every function mirrors the NumPy reference of the same name in
# fusednet.kernels.reference; tests/kernels/test_cython_specific.py pins them together.

from libc.math cimport exp, expf, tanh, tanhf, fabs, fabsf, sqrt, sqrtf

ctypedef fused real:
    float
    double

cdef extern from *:
    """
    #include <stdint.h>
    static inline uint32_t fn_fmix32(uint32_t h) {
        h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
        return h;
    }
    """
    unsigned int fn_fmix32(unsigned int h) noexcept nogil


# mirrors fusednet.kernels.reference.sigmoid
cdef inline real sigmoid(real z) noexcept nogil:
    if real is float:
        return 1.0 / (1.0 + expf(-z))
    else:
        return 1.0 / (1.0 + exp(-z))


# mirrors fusednet.kernels.reference.sigmoid_grad
cdef inline real sigmoid_grad(real a) noexcept nogil:
    return a * (1 - a)


# mirrors fusednet.kernels.reference.tanh
cdef inline real tanh_(real z) noexcept nogil:
    if real is float:
        return tanhf(z)
    else:
        return tanh(z)


# mirrors fusednet.kernels.reference.tanh_grad
cdef inline real tanh_grad(real a) noexcept nogil:
    return 1 - a * a


# mirrors fusednet.kernels.reference.relu
cdef inline real relu(real z) noexcept nogil:
    return 0 if z < 0 else z  # NaN propagates


# mirrors fusednet.kernels.reference.relu_grad
cdef inline real relu_grad(real a) noexcept nogil:
    return 1 if a > 0 else 0


# mirrors fusednet.kernels.reference.leaky_relu
cdef inline real leaky_relu(real z, real slope) noexcept nogil:
    return slope * z if z < 0 else z  # NaN propagates


# mirrors fusednet.kernels.reference.leaky_relu_grad
cdef inline real leaky_relu_grad(real a, real slope) noexcept nogil:
    return 1 if a > 0 else slope


# mirrors fusednet.kernels.reference.dropout_hash
cdef inline unsigned int dropout_hash(unsigned long long i, unsigned int k1, unsigned int k2) noexcept nogil:
    return fn_fmix32(fn_fmix32(<unsigned int>i ^ k1) ^ k2)


# exp in the arithmetic of the type (expf for float)
cdef inline real exp_(real x) noexcept nogil:
    if real is float:
        return expf(x)
    else:
        return exp(x)


# sqrt and |x| in the arithmetic of the type (no round trip through double)
cdef inline real sqrt_(real x) noexcept nogil:
    if real is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline real fabs_(real x) noexcept nogil:
    if real is float:
        return fabsf(x)
    else:
        return fabs(x)
