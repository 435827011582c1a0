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
from libc.math cimport exp, expf, tanh as c_tanh, tanhf, fabs, fabsf, sqrt, sqrtf
from libc.float cimport FLT_MIN, DBL_MIN

# glibc ships vector versions of these functions (libmvec) but only declares
# them as such under -ffast-math.  Declaring them here lets gcc vectorise the
# kernels' loops with -fno-math-errno alone, so NaN and inf keep their meaning.
# (tanh, log1p: glibc >= 2.35; exp, log: >= 2.22.)
cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) \
        && defined(__GLIBC__) && !defined(__FAST_MATH__) && !defined(FUSEDNET_NO_LIBMVEC)
    #  if __GLIBC_PREREQ(2, 22)
    __attribute__((__simd__("notinbranch"))) extern float expf(float);
    __attribute__((__simd__("notinbranch"))) extern double exp(double);
    __attribute__((__simd__("notinbranch"))) extern float logf(float);
    __attribute__((__simd__("notinbranch"))) extern double log(double);
    #  endif
    #  if __GLIBC_PREREQ(2, 35)
    __attribute__((__simd__("notinbranch"))) extern float tanhf(float);
    __attribute__((__simd__("notinbranch"))) extern double tanh(double);
    __attribute__((__simd__("notinbranch"))) extern double log1p(double);
    #  endif
    #endif
    """


# mirrors fusednet.kernels.reference.sigmoid
cdef inline floating sigmoid(floating z) noexcept nogil:
    cdef floating e
    if floating is float:
        e = expf(-fabsf(z))
    else:
        e = exp(-fabs(z))
    return (<floating>1 if z >= 0 else e) / (<floating>1 + e)


# mirrors fusednet.kernels.reference.sigmoid_grad
cdef inline floating sigmoid_grad(floating a) noexcept nogil:
    return a * (<floating>1 - a)


# mirrors fusednet.kernels.reference.tanh
cdef inline floating tanh(floating z) noexcept nogil:
    if floating is float:
        return tanhf(z)
    else:
        return c_tanh(z)


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
        return expf(x)
    else:
        return exp(x)


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
