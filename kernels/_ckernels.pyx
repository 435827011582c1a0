# The Cython backend's compiled kernels.
#
# Contract: the module docstring of fusednet.kernels.reference (same positional
# signatures, same meaning); fusednet.kernels._cython picks the float32 or
# float64 specialisation of each fused-type function here.
#
# Every kernel takes typed memoryviews of one floating type, marks its data
# flow (# IN / # OUT), allocates nothing, takes n_threads last and returns None
# (loss_forward returns the cost).
#
# Threads.  Below a size threshold a kernel runs on the calling thread and
# opens no OpenMP region (a launch costs a few microseconds); above it the work
# is cut into contiguous pieces whose boundaries depend on the shape only, never
# on the thread count, and each piece is computed by the same code whichever
# thread runs it.  So every result, reductions included, has the same bits for
# any thread count:
#   * element-wise kernels go through spans of whole rows (or fixed groups of
#     rows / fixed row segments), so vector and scalar code paths always meet
#     the same elements;
#   * column sums (db, batch-norm statistics) either give each thread whole
#     columns, walked top to bottom, or (narrow matrices) add fixed row chunks
#     into partial sums that are combined in chunk order;
#   * the cost of loss_forward is summed in fixed row chunks, combined in order.
# Sums are accumulated in float64 whatever the data type.
#
# The same source is compiled once per instruction-set level (baseline x86-64,
# x86-64-v3 with AVX2, x86-64-v4 with AVX-512); the Python adapter imports the
# best one the CPU runs.

from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.math cimport exp, log, log1p, fabs, sqrt, pow, INFINITY, NAN
from libc.float cimport FLT_MAX, DBL_MAX
from libc.string cimport memcpy
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_GetName, PyCapsule_IsValid
import numpy as np

from fusednet.kernels._memory import empty_aligned

from _point cimport (floating, sigmoid, sigmoid_grad, tanh, tanh_grad, relu, relu_grad,
                     leaky_relu, leaky_relu_grad, fmix32, dropout_hash, exp_, flush,
                     decayed, ewa, gd_step, momentum_step, rmsprop_step, adam_step)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FN_OPENMP 1
    static int fn_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define FN_OPENMP 0
    static int fn_max_threads(void) { return 1; }
    #endif

    #ifndef FUSEDNET_ISA
    #define FUSEDNET_ISA "baseline"
    #endif

    /* 0: baseline, 3: x86-64-v3 (AVX2, FMA, BMI2, ...), 4: x86-64-v4 (AVX-512 F/BW/CD/DQ/VL) */
    static int fn_cpu_level(void) {
    #if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("x86-64-v4")) return 4;
        if (__builtin_cpu_supports("x86-64-v3")) return 3;
        return 0;
    #elif (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
        __builtin_cpu_init();
        int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                 && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2")
                 && __builtin_cpu_supports("f16c");
        int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                 && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq")
                 && __builtin_cpu_supports("avx512vl");
        return v4 ? 4 : (v3 ? 3 : 0);
    #else
        return 0;
    #endif
    }

    /* Flush-to-zero and denormals-are-zero for the duration of an optimiser
       piece, per thread (each OpenMP thread has its own MXCSR): subnormal
       gradients or state never trigger the slow microcode path. */
    #if defined(__x86_64__) || defined(_M_X64)
    #include <xmmintrin.h>
    static inline unsigned int fn_ftz_enter(void) {
        unsigned int old = _mm_getcsr();
        _mm_setcsr(old | 0x8040u);
        return old;
    }
    static inline void fn_ftz_exit(unsigned int old) { _mm_setcsr(old); }
    #else
    static inline unsigned int fn_ftz_enter(void) { return 0; }
    static inline void fn_ftz_exit(unsigned int old) { (void)old; }
    #endif
    """
    int FN_OPENMP
    const char* FUSEDNET_ISA
    int fn_max_threads() noexcept nogil
    int fn_cpu_level() noexcept nogil
    unsigned int fn_ftz_enter() noexcept nogil
    void fn_ftz_exit(unsigned int old) noexcept nogil


# activation and loss codes: must equal fusednet.kernels._codes (a test checks)
cdef enum:
    LINEAR = 0
    SIGMOID = 1
    TANH = 2
    RELU = 3
    LEAKY_RELU = 4
    SOFTMAX = 5

cdef enum:
    MSE = 0
    BCE = 1
    CCE = 2

# element-wise op of a column-sum pass beyond the activation codes: (x1 - x2) / p
cdef enum:
    OP_LOSS = 16

cdef enum:
    TILE = 1024   # elements of a span: a group of short rows or a segment of a long one
    CB = 256      # widest column block of a column reduction
    NSMALL = 64   # matrices narrower than this reduce columns by row chunks
    KMAX = 64     # most row chunks of a reduction

# Sizes (elements) from which a kernel uses more than one thread.  Measured on
# 2 cores with OpenMP launches of 2.4-4.5 us: below these the launch costs more
# than the second core saves.  Never below 32k elements.
cdef Py_ssize_t T_TRANSCENDENTAL = 40000   # sigmoid, tanh, softmax, BCE/CCE
cdef Py_ssize_t T_ELEMENTWISE = 200000     # linear, relu, backward, loss backward, batch norm, ewa, gd
cdef Py_ssize_t T_OPTIMISER = 100000       # momentum, rmsprop, adam
cdef Py_ssize_t T_DROPOUT = 100000

#: name of the instruction-set level this copy of the module was compiled for
ISA = FUSEDNET_ISA.decode()
#: True when the extension was compiled with OpenMP
OPENMP = bool(FN_OPENMP)
#: True when the fused step's float32 products run on the extension's own kernels (AVX2 or AVX-512)
#: (``_gemm.h``; the x86-64-v4 copy) rather than BLAS's sgemm
FUSED_GEMM = bool(FG_AVAILABLE)
#: the activation and loss codes compiled in (tests compare them with _codes)
CODES = {"linear": LINEAR, "sigmoid": SIGMOID, "tanh": TANH, "relu": RELU,
         "leaky_relu": LEAKY_RELU, "softmax": SOFTMAX, "mse": MSE, "bce": BCE, "cce": CCE}


def parallel_thresholds():
    """Element counts from which each kernel family runs on more than one thread."""
    return {"transcendental": T_TRANSCENDENTAL, "elementwise": T_ELEMENTWISE,
            "optimiser": T_OPTIMISER, "dropout": T_DROPOUT}


def set_parallel_thresholds(transcendental=None, elementwise=None, optimiser=None, dropout=None):
    """Change the thresholds of :func:`parallel_thresholds` (for measuring them)."""
    global T_TRANSCENDENTAL, T_ELEMENTWISE, T_OPTIMISER, T_DROPOUT
    if transcendental is not None:
        T_TRANSCENDENTAL = transcendental
    if elementwise is not None:
        T_ELEMENTWISE = elementwise
    if optimiser is not None:
        T_OPTIMISER = optimiser
    if dropout is not None:
        T_DROPOUT = dropout


def max_threads():
    """OpenMP's thread limit in this process (1 without OpenMP)."""
    return fn_max_threads()


def cpu_level():
    """The highest instruction-set level this CPU runs: 0 (baseline), 3 (x86-64-v3) or 4 (x86-64-v4)."""
    return fn_cpu_level()


cdef inline int _workers(Py_ssize_t work, int n_threads, Py_ssize_t threshold,
                         Py_ssize_t pieces) noexcept nogil:
    """Threads for `work` elements cut into `pieces`: 1 below the threshold."""
    if not FN_OPENMP or n_threads <= 1 or work < threshold or pieces < 2:
        return 1
    return <int>(n_threads if n_threads < pieces else pieces)


cdef inline Py_ssize_t _cut(Py_ssize_t total, Py_ssize_t parts, Py_ssize_t c) noexcept nogil:
    """Start of part c of `total` split in `parts` nearly equal contiguous parts."""
    return total * c // parts


cdef inline Py_ssize_t _cut64(Py_ssize_t total, Py_ssize_t parts, Py_ssize_t c) noexcept nogil:
    """As _cut, on a 64-element grid (whole cache lines per thread)."""
    if c >= parts:
        return total
    return (total * c // parts) & ~(<Py_ssize_t>63)


cdef inline Py_ssize_t _spans(Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """Spans of an (m, n) matrix: groups of TILE // n rows, or TILE-long row segments."""
    cdef Py_ssize_t r
    if n > TILE:
        return m * ((n + TILE - 1) // TILE)
    r = TILE // n
    return (m + r - 1) // r


cdef inline Py_ssize_t _span(Py_ssize_t it, Py_ssize_t m, Py_ssize_t n,
                             Py_ssize_t* length, Py_ssize_t* boff) noexcept nogil:
    """Offset of span `it`; its length and the offset of its bias slice in *length, *boff.

    For short rows (n <= TILE) the bias slice is a tile of the bias repeated
    TILE // n times, starting at 0.
    """
    cdef Py_ssize_t r, nseg, i, s
    if n > TILE:
        nseg = (n + TILE - 1) // TILE
        i = it // nseg
        s = (it - i * nseg) * TILE
        length[0] = TILE if n - s > TILE else n - s
        boff[0] = s
        return i * n + s
    r = TILE // n
    length[0] = (r if m - it * r > r else m - it * r) * n
    boff[0] = 0
    return it * r * n


cdef inline void _tile(const floating* b, floating* bt, Py_ssize_t n, Py_ssize_t m) noexcept nogil:
    """bt = b repeated over the rows one span holds, min(TILE // n, m) (b itself is used when
    n > TILE): b once, then the filled part copied onto the rest, doubling."""
    cdef Py_ssize_t have = n, want, w
    if n > TILE:
        return
    want = (TILE // n if TILE // n < m else m) * n
    memcpy(bt, b, n * sizeof(floating))
    while have < want:
        w = have if 2 * have <= want else want - have
        memcpy(bt + have, bt, w * sizeof(floating))
        have += w


cdef inline double _sum(const double* t, Py_ssize_t L) noexcept nogil:
    """Sum in a fixed order with four accumulators (the order depends on L only)."""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t k = 0
    while k + 4 <= L:
        s0 += t[k]
        s1 += t[k + 1]
        s2 += t[k + 2]
        s3 += t[k + 3]
        k += 4
    while k < L:
        s0 += t[k]
        k += 1
    return (s0 + s1) + (s2 + s3)


# The sections, one concern each:
include "_per_kernel.pxi"   # the per-kernel backend (fusednet.kernels.reference's contract)
include "_parity.pxi"       # point functions element-wise, for the parity tests
include "_step.pxi"         # the one-call step and its typed plan (fusednet._fused)
include "_products.pxi"     # the step's own float32 products, for their tests
include "_lanes.pxi"        # the population engine by lanes (fusednet.kernels._population_lanes)
include "_population_steps.pxi"  # the population engine by the step (fusednet.kernels._population_steps)
