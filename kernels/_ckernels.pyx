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
from libc.stdint cimport uint32_t, uint64_t
from libc.math cimport exp, log, log1p, fabs, sqrt, pow, INFINITY, NAN
from libc.float cimport FLT_MAX, DBL_MAX

from _point cimport (floating, sigmoid, sigmoid_grad, tanh, tanh_grad, relu, relu_grad,
                     leaky_relu, leaky_relu_grad, fmix32, dropout_hash, exp_, sqrt_, flush)

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
#: True when the fused step's float32 products run on the extension's own AVX-512 kernels
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


cdef inline void _tile(const floating* b, floating* bt, Py_ssize_t n) noexcept nogil:
    """bt = b repeated over TILE // n rows (b itself is used when n > TILE)."""
    cdef Py_ssize_t q, j
    if n > TILE:
        return
    for q in range(TILE // n):
        for j in range(n):
            bt[q * n + j] = b[j]


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


# ==================================================================================
# bias + activation forward
# ==================================================================================

cdef void _fwd_span(const floating* z, const floating* b, floating* a, Py_ssize_t L,
                    int act, floating slope) noexcept nogil:
    cdef Py_ssize_t k
    if act == SIGMOID:
        for k in range(L):
            a[k] = sigmoid(z[k] + b[k])
    elif act == TANH:
        for k in range(L):
            a[k] = tanh(z[k] + b[k])
    elif act == RELU:
        for k in range(L):
            a[k] = relu(z[k] + b[k])
    elif act == LEAKY_RELU:
        for k in range(L):
            a[k] = leaky_relu(z[k] + b[k], slope)
    else:
        for k in range(L):
            a[k] = z[k] + b[k]


cdef void _softmax_row(const floating* z, const floating* b, floating* a,
                       Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating v, mx = -INFINITY, s
    cdef double acc = 0
    for k in range(n):
        v = z[k] + b[k]
        a[k] = v
        mx = v if v > mx else mx
    for k in range(n):
        a[k] = exp_(a[k] - mx)
    for k in range(n):
        acc += a[k]
    s = <floating>acc
    for k in range(n):
        a[k] = a[k] / s


cdef void _fwd_piece(const floating* Z, const floating* b, floating* A, Py_ssize_t m,
                     Py_ssize_t n, int act, floating slope, Py_ssize_t i0,
                     Py_ssize_t i1) noexcept nogil:
    cdef floating bt[TILE]
    cdef const floating* bb = b if n > TILE else bt
    cdef Py_ssize_t it, off, L, boff
    if act == SOFTMAX:
        for it in range(i0, i1):
            _softmax_row(Z + it * n, b, A + it * n, n)
        return
    _tile(b, bt, n)
    for it in range(i0, i1):
        off = _span(it, m, n, &L, &boff)
        _fwd_span(Z + off, bb + boff, A + off, L, act, slope)


def bias_act_forward(const floating[:, ::1] Z,  # IN  (m, n)
                     const floating[::1] b,     # IN  (n,)
                     int act,
                     double slope,
                     floating[:, ::1] A,        # OUT (m, n), may alias Z
                     int n_threads):
    """A = g(Z + b); softmax row-wise and max-subtracted."""
    if act < LINEAR or act > SOFTMAX:
        raise ValueError(f"unknown activation code {act}")
    cdef Py_ssize_t m = Z.shape[0], n = Z.shape[1], pieces, c
    if m == 0 or n == 0:
        return
    cdef const floating* zp = &Z[0, 0]
    cdef const floating* bp = &b[0]
    cdef floating* ap = &A[0, 0]
    cdef floating sl = <floating>slope
    pieces = m if act == SOFTMAX else _spans(m, n)
    cdef int nw = _workers(m * n, n_threads,
                           T_TRANSCENDENTAL if act in (SIGMOID, TANH, SOFTMAX) else T_ELEMENTWISE,
                           pieces)
    with nogil:
        if nw == 1:
            _fwd_piece(zp, bp, ap, m, n, act, sl, 0, pieces)
        else:
            for c in prange(nw, num_threads=nw, schedule="static"):
                _fwd_piece(zp, bp, ap, m, n, act, sl, _cut(pieces, nw, c), _cut(pieces, nw, c + 1))


# ==================================================================================
# element-wise op + column sums: act_backward, loss_backward
# ==================================================================================

cdef void _ew_span(const floating* x1, const floating* x2, floating* out, double* acc,
                   Py_ssize_t L, int op, floating p) noexcept nogil:
    """out = op(x1, x2); acc += out, element by element."""
    cdef Py_ssize_t k
    cdef floating d
    if op == SIGMOID:
        for k in range(L):
            d = x1[k] * sigmoid_grad(x2[k])
            out[k] = d
            acc[k] += d
    elif op == TANH:
        for k in range(L):
            d = x1[k] * tanh_grad(x2[k])
            out[k] = d
            acc[k] += d
    elif op == RELU:
        for k in range(L):
            d = x1[k] * relu_grad(x2[k])
            out[k] = d
            acc[k] += d
    elif op == LEAKY_RELU:
        for k in range(L):
            d = x1[k] * leaky_relu_grad(x2[k], p)
            out[k] = d
            acc[k] += d
    elif op == OP_LOSS:
        for k in range(L):
            d = (x1[k] - x2[k]) / p
            out[k] = d
            acc[k] += d
    else:
        for k in range(L):
            d = x1[k]
            out[k] = d
            acc[k] += d


cdef void _colsum_block(const floating* x1, const floating* x2, floating* out, floating* db,
                        Py_ssize_t m, Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1, int op,
                        floating p) noexcept nogil:
    """Columns j0:j1 (at most CB), walked top to bottom."""
    cdef double acc[CB]
    cdef Py_ssize_t i, j, w = j1 - j0, o
    for j in range(w):
        acc[j] = 0
    for i in range(m):
        o = i * n + j0
        _ew_span(x1 + o, x2 + o, out + o, acc, w, op, p)
    for j in range(w):
        db[j0 + j] = <floating>acc[j]


cdef void _colsum_chunk(const floating* x1, const floating* x2, floating* out, double* part,
                        Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, int op,
                        floating p) noexcept nogil:
    """Rows r0:r1 of a narrow matrix (n < NSMALL) in groups of TILE // n rows; part[j] = column sums."""
    cdef double acc[TILE]
    cdef Py_ssize_t r = TILE // n, i, j, q, rows
    cdef double s
    for j in range(r * n):
        acc[j] = 0
    i = r0
    while i < r1:
        rows = r if r1 - i > r else r1 - i
        _ew_span(x1 + i * n, x2 + i * n, out + i * n, acc, rows * n, op, p)
        i += r
    for j in range(n):
        s = 0
        for q in range(r):
            s += acc[q * n + j]
        part[j] = s


cdef void _colsum(const floating* x1, const floating* x2, floating* out, floating* db,
                  Py_ssize_t m, Py_ssize_t n, int op, floating p, int n_threads,
                  Py_ssize_t threshold) noexcept nogil:
    """out = op(x1, x2) element-wise and db = column sums of out; m, n >= 1."""
    cdef double part[KMAX * NSMALL]
    cdef Py_ssize_t r, groups, K, c, j, width, blocks
    cdef double s
    cdef int nw
    if n < NSMALL:
        r = TILE // n
        groups = (m + r - 1) // r
        K = KMAX if groups > KMAX else groups
        nw = _workers(m * n, n_threads, threshold, K)
        if nw == 1:
            for c in range(K):
                _colsum_chunk(x1, x2, out, part + c * n, _cut(groups, K, c) * r,
                              min(_cut(groups, K, c + 1) * r, m), n, op, p)
        else:
            for c in prange(K, num_threads=nw, schedule="static"):
                _colsum_chunk(x1, x2, out, part + c * n, _cut(groups, K, c) * r,
                              min(_cut(groups, K, c + 1) * r, m), n, op, p)
        for j in range(n):
            s = 0
            for c in range(K):
                s += part[c * n + j]
            db[j] = <floating>s
        return
    nw = _workers(m * n, n_threads, threshold, (n + 15) // 16)
    width = CB
    if nw > 1:
        width = ((n + nw - 1) // nw + 15) // 16 * 16
        width = CB if width > CB else width
    blocks = (n + width - 1) // width
    if nw == 1:
        for c in range(blocks):
            _colsum_block(x1, x2, out, db, m, n, c * width, min(n, c * width + width), op, p)
    else:
        for c in prange(blocks, num_threads=nw, schedule="static"):
            _colsum_block(x1, x2, out, db, m, n, c * width, min(n, c * width + width), op, p)


cdef void _softmax_bwd_rows(const floating* dA, const floating* A, floating* dZ, Py_ssize_t n,
                            Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t i, k, o
    cdef double s
    cdef floating sr
    for i in range(r0, r1):
        o = i * n
        s = 0
        for k in range(n):
            s += dA[o + k] * A[o + k]
        sr = <floating>s
        for k in range(n):
            dZ[o + k] = A[o + k] * (dA[o + k] - sr)


def act_backward(const floating[:, ::1] dA,  # IN  (m, n)
                 const floating[:, ::1] A,   # IN  (m, n), the cached output g(Z)
                 int act,
                 double slope,
                 floating[:, ::1] dZ,        # OUT (m, n), may alias dA
                 floating[::1] db,           # OUT (n,)
                 int n_threads):
    """dZ = dA * g'(.) read from A; db = sum_rows(dZ)."""
    if act < LINEAR or act > SOFTMAX:
        raise ValueError(f"unknown activation code {act}")
    cdef Py_ssize_t m = dA.shape[0], n = dA.shape[1], j, c
    if n == 0:
        return
    if m == 0:
        for j in range(n):
            db[j] = 0
        return
    cdef const floating* dap = &dA[0, 0]
    cdef const floating* ap = &A[0, 0]
    cdef floating* dzp = &dZ[0, 0]
    cdef floating* dbp = &db[0]
    cdef floating sl = <floating>slope
    cdef int nw
    with nogil:
        if act == SOFTMAX:
            nw = _workers(m * n, n_threads, T_ELEMENTWISE, m)
            if nw == 1:
                _softmax_bwd_rows(dap, ap, dzp, n, 0, m)
            else:
                for c in prange(nw, num_threads=nw, schedule="static"):
                    _softmax_bwd_rows(dap, ap, dzp, n, _cut(m, nw, c), _cut(m, nw, c + 1))
            _colsum(dzp, dzp, dzp, dbp, m, n, LINEAR, sl, n_threads, T_ELEMENTWISE)
        else:
            _colsum(dap, ap, dzp, dbp, m, n, act, sl, n_threads, T_ELEMENTWISE)


def loss_backward(const floating[:, ::1] A,  # IN  (m, k)
                  const floating[:, ::1] Y,  # IN  (m, k)
                  floating[:, ::1] dZ,       # OUT (m, k), may alias A
                  floating[::1] db,          # OUT (k,)
                  int n_threads):
    """dZ = (A - Y) / m; db = sum_rows(dZ)."""
    cdef Py_ssize_t m = A.shape[0], n = A.shape[1], j
    if n == 0:
        return
    if m == 0:
        for j in range(n):
            db[j] = 0
        return
    with nogil:
        _colsum(&A[0, 0], &Y[0, 0], &dZ[0, 0], &db[0], m, n, OP_LOSS, <floating>m,
                n_threads, T_ELEMENTWISE)


# ==================================================================================
# output activation + cost
# ==================================================================================

cdef double _loss_span(const floating* z, const floating* b, const floating* y, floating* a,
                       Py_ssize_t L, int loss, double* t) noexcept nogil:
    """A and the summed per-element cost of one span (MSE or BCE); t: TILE scratch."""
    cdef Py_ssize_t k
    cdef floating v
    cdef double d
    if loss == MSE:
        for k in range(L):
            v = z[k] + b[k]
            a[k] = v
            d = <double>v - <double>y[k]
            t[k] = d * d
    else:
        for k in range(L):
            d = <double>(z[k] + b[k])
            a[k] = <floating>sigmoid(d)
            # -(y log a + (1-y) log(1-a)), written on the logit so it never overflows
            t[k] = (d if d > 0 else 0.0) - d * <double>y[k] + log1p(exp(-fabs(d)))
    return _sum(t, L)


cdef double _cce_row(const floating* z, const floating* b, const floating* y, floating* a,
                     Py_ssize_t n, double* t) noexcept nogil:
    """Softmax of one row into a and its cross-entropy, via log-sum-exp in float64.

    Relative to the row's maximum: lse = log1p(rest), rest the sum of exp(z - max) without each
    maximum's exact 1 (plus the maxima beyond the first), so the cost of a confident right
    answer keeps its relative precision.  Mirrors fusednet.kernels.reference.loss_forward.
    """
    cdef Py_ssize_t k, k0, L, tops = 0
    cdef double v, d, mx = -INFINITY, s = 0, lse, total = 0
    for k in range(n):
        v = <double>(z[k] + b[k])
        mx = v if v > mx else mx
    k0 = 0
    while k0 < n:
        L = TILE if n - k0 > TILE else n - k0
        for k in range(L):
            d = <double>(z[k0 + k] + b[k0 + k]) - mx
            t[k] = exp(d) - (1.0 if d == 0.0 else 0.0)
        s += _sum(t, L)
        k0 += L
    for k in range(n):
        if <double>(z[k] + b[k]) == mx:
            tops += 1
    lse = log1p(s + <double>(tops - 1))
    for k in range(n):
        d = <double>(z[k] + b[k]) - mx
        total += <double>y[k] * (lse - d)
    for k in range(n):
        a[k] = <floating>exp(<double>(z[k] + b[k]) - mx - lse)
    return total


cdef double _loss_piece(const floating* Z, const floating* b, const floating* Y, floating* A,
                        Py_ssize_t m, Py_ssize_t n, int loss, Py_ssize_t i0,
                        Py_ssize_t i1) noexcept nogil:
    cdef double t[TILE]
    cdef floating bt[TILE]
    cdef const floating* bb = b if n > TILE else bt
    cdef Py_ssize_t it, off, L, boff
    cdef double total = 0
    if loss == CCE:
        for it in range(i0, i1):
            total += _cce_row(Z + it * n, b, Y + it * n, A + it * n, n, t)
        return total
    _tile(b, bt, n)
    for it in range(i0, i1):
        off = _span(it, m, n, &L, &boff)
        total += _loss_span(Z + off, bb + boff, Y + off, A + off, L, loss, t)
    return total


def loss_forward(const floating[:, ::1] Z,  # IN  (m, k) logits without bias
                 const floating[::1] b,     # IN  (k,)
                 const floating[:, ::1] Y,  # IN  (m, k) targets
                 int loss,
                 floating[:, ::1] A,        # OUT (m, k)
                 int n_threads):
    """A = g(Z + b); returns the mean cost over the m rows (float64)."""
    if loss < MSE or loss > CCE:
        raise ValueError(f"unknown loss code {loss}")
    cdef Py_ssize_t m = Z.shape[0], n = Z.shape[1], pieces, K, c
    if m == 0 or n == 0:
        return 0.0
    cdef const floating* zp = &Z[0, 0]
    cdef const floating* bp = &b[0]
    cdef const floating* yp = &Y[0, 0]
    cdef floating* ap = &A[0, 0]
    cdef double part[KMAX]
    cdef double total = 0
    pieces = m if loss == CCE else _spans(m, n)
    K = KMAX if pieces > KMAX else pieces
    cdef int nw = _workers(m * n, n_threads,
                           T_ELEMENTWISE if loss == MSE else T_TRANSCENDENTAL, K)
    with nogil:
        if nw == 1:
            for c in range(K):
                part[c] = _loss_piece(zp, bp, yp, ap, m, n, loss,
                                      _cut(pieces, K, c), _cut(pieces, K, c + 1))
        else:
            for c in prange(K, num_threads=nw, schedule="static"):
                part[c] = _loss_piece(zp, bp, yp, ap, m, n, loss,
                                      _cut(pieces, K, c), _cut(pieces, K, c + 1))
        for c in range(K):
            total += part[c]
    if loss == MSE:
        total = 0.5 * total
    return total / m


# ==================================================================================
# inverted dropout from a counter-based hash
# ==================================================================================

cdef void _dropout_piece(const floating* X, floating* out, Py_ssize_t i0, Py_ssize_t i1,
                         uint32_t k1, uint32_t k2, uint32_t thr, bint keep_all,
                         floating scale) noexcept nogil:
    cdef Py_ssize_t i
    if keep_all:
        for i in range(i0, i1):
            out[i] = X[i] * scale
        return
    for i in range(i0, i1):
        out[i] = X[i] * scale if dropout_hash(<uint64_t>i, k1, k2) < thr else 0


def dropout_apply(const floating[::1] X,  # IN  flat (C order)
                  uint64_t key,
                  uint64_t threshold,
                  double scale,
                  floating[::1] out,      # OUT flat, may alias X
                  int n_threads):
    """out = X * scale where hash(i, key) < threshold, else 0; i the flat index."""
    cdef Py_ssize_t n = X.shape[0], c
    if n == 0:
        return
    cdef const floating* xp = &X[0]
    cdef floating* op = &out[0]
    cdef uint32_t k1 = <uint32_t>(key & 0xFFFFFFFFULL)
    cdef uint32_t k2 = <uint32_t>(key >> 32)
    cdef bint keep_all = threshold >= 4294967296ULL
    cdef uint32_t thr = 0 if keep_all else <uint32_t>threshold
    cdef floating sc = <floating>scale
    cdef int nw = _workers(n, n_threads, T_DROPOUT, n // 64)
    with nogil:
        if nw == 1:
            _dropout_piece(xp, op, 0, n, k1, k2, thr, keep_all, sc)
        else:
            for c in prange(nw, num_threads=nw, schedule="static"):
                _dropout_piece(xp, op, _cut64(n, nw, c), _cut64(n, nw, c + 1),
                               k1, k2, thr, keep_all, sc)


# ==================================================================================
# optimiser updates over one flat buffer; L2 on the first n_decay elements
# ==================================================================================

cdef enum:
    OPT_GD = 0
    OPT_MOMENTUM = 1
    OPT_RMSPROP = 2
    OPT_ADAM = 3
    OPT_EWA = 4

cdef struct Hyper:
    int kind
    double lr, beta1, beta2, eps, bc1, bc2, l2
    Py_ssize_t n_decay


cdef void _gd_span(floating* w, const floating* g, Py_ssize_t L, const Hyper* h,
                   bint decay) noexcept nogil:
    cdef floating lr = <floating>h.lr, l2 = <floating>h.l2, gp
    cdef Py_ssize_t k
    for k in range(L):
        gp = g[k]
        if decay:
            gp = gp + l2 * w[k]
        w[k] = w[k] - lr * gp


cdef void _momentum_span(floating* w, const floating* g, floating* v, Py_ssize_t L,
                         const Hyper* h, bint decay) noexcept nogil:
    cdef floating lr = <floating>h.lr, l2 = <floating>h.l2
    cdef floating b1 = <floating>h.beta1, c1 = <floating>(1.0 - h.beta1), bc = <floating>h.bc1
    cdef floating gp, vk
    cdef Py_ssize_t k
    for k in range(L):
        gp = g[k]
        if decay:
            gp = gp + l2 * w[k]
        vk = flush(b1 * v[k] + c1 * gp)
        v[k] = vk
        w[k] = w[k] - lr * (vk / bc)


cdef void _rmsprop_span(floating* w, const floating* g, floating* s, Py_ssize_t L,
                        const Hyper* h, bint decay) noexcept nogil:
    cdef floating lr = <floating>h.lr, l2 = <floating>h.l2, eps = <floating>h.eps
    cdef floating b2 = <floating>h.beta2, c2 = <floating>(1.0 - h.beta2)
    cdef floating gp, sk
    cdef Py_ssize_t k
    for k in range(L):
        gp = g[k]
        if decay:
            gp = gp + l2 * w[k]
        sk = flush(b2 * s[k] + c2 * gp * gp)
        s[k] = sk
        w[k] = w[k] - lr * gp / (sqrt_(sk) + eps)


cdef void _adam_span(floating* w, const floating* g, floating* m, floating* v, Py_ssize_t L,
                     const Hyper* h, bint decay) noexcept nogil:
    cdef floating lr = <floating>h.lr, l2 = <floating>h.l2, eps = <floating>h.eps
    cdef floating b1 = <floating>h.beta1, c1 = <floating>(1.0 - h.beta1), bc1 = <floating>h.bc1
    cdef floating b2 = <floating>h.beta2, c2 = <floating>(1.0 - h.beta2), bc2 = <floating>h.bc2
    cdef floating gp, mk, vk
    cdef Py_ssize_t k
    for k in range(L):
        gp = g[k]
        if decay:
            gp = gp + l2 * w[k]
        mk = flush(b1 * m[k] + c1 * gp)
        vk = flush(b2 * v[k] + c2 * gp * gp)
        m[k] = mk
        v[k] = vk
        w[k] = w[k] - lr * (mk / bc1) / (sqrt_(vk / bc2) + eps)


cdef void _ewa_span(floating* v, const floating* x, Py_ssize_t L, const Hyper* h) noexcept nogil:
    cdef floating b = <floating>h.beta1, c = <floating>(1.0 - h.beta1)
    cdef Py_ssize_t k
    for k in range(L):
        v[k] = b * v[k] + c * x[k]


cdef void _opt_span(floating* w, const floating* g, floating* s1, floating* s2,
                    Py_ssize_t i0, Py_ssize_t i1, const Hyper* h, bint decay) noexcept nogil:
    if i0 >= i1:
        return
    cdef Py_ssize_t L = i1 - i0
    if h.kind == OPT_GD:
        _gd_span(w + i0, g + i0, L, h, decay)
    elif h.kind == OPT_MOMENTUM:
        _momentum_span(w + i0, g + i0, s1 + i0, L, h, decay)
    elif h.kind == OPT_RMSPROP:
        _rmsprop_span(w + i0, g + i0, s1 + i0, L, h, decay)
    elif h.kind == OPT_ADAM:
        _adam_span(w + i0, g + i0, s1 + i0, s2 + i0, L, h, decay)
    else:
        _ewa_span(w + i0, g + i0, L, h)


cdef void _opt_piece(floating* w, const floating* g, floating* s1, floating* s2,
                     Py_ssize_t i0, Py_ssize_t i1, const Hyper* h) noexcept nogil:
    # optimiser state never turns subnormal; plain GD and the EWA keep IEEE semantics
    cdef bint ftz = h.kind == OPT_MOMENTUM or h.kind == OPT_RMSPROP or h.kind == OPT_ADAM
    cdef unsigned int csr = fn_ftz_enter() if ftz else 0
    cdef Py_ssize_t nd = h.n_decay if h.l2 != 0.0 else 0
    _opt_span(w, g, s1, s2, i0, min(i1, nd), h, True)
    _opt_span(w, g, s1, s2, max(i0, nd), i1, h, False)
    if ftz:
        fn_ftz_exit(csr)


cdef void _opt(floating* w, const floating* g, floating* s1, floating* s2, Py_ssize_t n,
               const Hyper* h, int n_threads, Py_ssize_t threshold) noexcept nogil:
    cdef int nw = _workers(n, n_threads, threshold, n // 64)
    cdef Py_ssize_t c
    if nw == 1:
        _opt_piece(w, g, s1, s2, 0, n, h)
    else:
        for c in prange(nw, num_threads=nw, schedule="static"):
            _opt_piece(w, g, s1, s2, _cut64(n, nw, c), _cut64(n, nw, c + 1), h)


cdef inline Py_ssize_t _clip(Py_ssize_t n_decay, Py_ssize_t n) noexcept nogil:
    return 0 if n_decay < 0 else (n if n_decay > n else n_decay)


def gd_update(floating[::1] w,        # IN/OUT (P,)
              const floating[::1] g,  # IN     (P,)
              double lr, double l2, Py_ssize_t n_decay,
              int n_threads):
    """w -= lr * g', g' = g + l2 * w on w[:n_decay]."""
    cdef Py_ssize_t n = w.shape[0]
    if n == 0:
        return
    cdef Hyper h
    h.kind = OPT_GD
    h.lr = lr
    h.l2 = l2
    h.n_decay = _clip(n_decay, n)
    with nogil:
        _opt(&w[0], &g[0], <floating*>NULL, <floating*>NULL, n, &h, n_threads, T_ELEMENTWISE)


def momentum_update(floating[::1] w,        # IN/OUT (P,)
                    const floating[::1] g,  # IN     (P,)
                    floating[::1] v,        # IN/OUT (P,)
                    double lr, double beta, double bc, double l2, Py_ssize_t n_decay,
                    int n_threads):
    """v = beta v + (1 - beta) g'; w -= lr v / bc."""
    cdef Py_ssize_t n = w.shape[0]
    if n == 0:
        return
    cdef Hyper h
    h.kind = OPT_MOMENTUM
    h.lr = lr
    h.beta1 = beta
    h.bc1 = bc
    h.l2 = l2
    h.n_decay = _clip(n_decay, n)
    with nogil:
        _opt(&w[0], &g[0], &v[0], <floating*>NULL, n, &h, n_threads, T_OPTIMISER)


def rmsprop_update(floating[::1] w,        # IN/OUT (P,)
                   const floating[::1] g,  # IN     (P,)
                   floating[::1] s,        # IN/OUT (P,)
                   double lr, double beta, double eps, double l2, Py_ssize_t n_decay,
                   int n_threads):
    """s = beta s + (1 - beta) g'^2; w -= lr g' / (sqrt(s) + eps)."""
    cdef Py_ssize_t n = w.shape[0]
    if n == 0:
        return
    cdef Hyper h
    h.kind = OPT_RMSPROP
    h.lr = lr
    h.beta2 = beta
    h.eps = eps
    h.l2 = l2
    h.n_decay = _clip(n_decay, n)
    with nogil:
        _opt(&w[0], &g[0], &s[0], <floating*>NULL, n, &h, n_threads, T_OPTIMISER)


def adam_update(floating[::1] w,        # IN/OUT (P,)
                const floating[::1] g,  # IN     (P,)
                floating[::1] m,        # IN/OUT (P,)
                floating[::1] v,        # IN/OUT (P,)
                double lr, double beta1, double beta2, double eps, double bc1, double bc2,
                double l2, Py_ssize_t n_decay,
                int n_threads):
    """Bias-corrected Adam, eps outside the square root."""
    cdef Py_ssize_t n = w.shape[0]
    if n == 0:
        return
    cdef Hyper h
    h.kind = OPT_ADAM
    h.lr = lr
    h.beta1 = beta1
    h.beta2 = beta2
    h.eps = eps
    h.bc1 = bc1
    h.bc2 = bc2
    h.l2 = l2
    h.n_decay = _clip(n_decay, n)
    with nogil:
        _opt(&w[0], &g[0], &m[0], &v[0], n, &h, n_threads, T_OPTIMISER)


def ewa_update(floating[::1] v,        # IN/OUT flat
               const floating[::1] x,  # IN     flat
               double beta,
               int n_threads):
    """v = beta v + (1 - beta) x."""
    cdef Py_ssize_t n = v.shape[0]
    if n == 0:
        return
    cdef Hyper h
    h.kind = OPT_EWA
    h.beta1 = beta
    h.l2 = 0.0
    h.n_decay = 0
    with nogil:
        _opt(&v[0], &x[0], <floating*>NULL, <floating*>NULL, n, &h, n_threads, T_ELEMENTWISE)


# ==================================================================================
# batch norm
# ==================================================================================

cdef int _column_blocks(Py_ssize_t m, Py_ssize_t n, int n_threads, Py_ssize_t* width,
                        Py_ssize_t* blocks) noexcept nogil:
    """Threads and column blocks (at most CB wide, 16-aligned) of a column-wise kernel."""
    cdef int nw = _workers(m * n, n_threads, T_ELEMENTWISE, (n + 15) // 16)
    cdef Py_ssize_t w = CB
    if nw > 1:
        w = ((n + nw - 1) // nw + 15) // 16 * 16
        w = CB if w > CB else w
    width[0] = w
    blocks[0] = (n + w - 1) // w
    return nw


cdef void _bn_train_block(const floating* Z, const floating* gamma, const floating* beta,
                          double eps, floating* xhat, floating* out, floating* mean,
                          floating* var, floating* invstd, Py_ssize_t m, Py_ssize_t n,
                          Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    cdef double acc[CB]
    cdef double mu[CB]
    cdef Py_ssize_t i, j, w = j1 - j0
    cdef const floating* z
    cdef const floating* ga = gamma + j0
    cdef const floating* be = beta + j0
    cdef floating* me = mean + j0
    cdef floating* iv = invstd + j0
    cdef floating* xh
    cdef floating* ou
    cdef floating vr, x
    cdef double d
    for j in range(w):
        acc[j] = 0
    for i in range(m):
        z = Z + i * n + j0
        for j in range(w):
            acc[j] += z[j]
    for j in range(w):
        mu[j] = acc[j] / m
        acc[j] = 0
    for i in range(m):
        z = Z + i * n + j0
        for j in range(w):
            d = <double>z[j] - mu[j]
            acc[j] += d * d
    for j in range(w):
        me[j] = <floating>mu[j]
        vr = <floating>(acc[j] / m)
        var[j0 + j] = vr
        iv[j] = <floating>(1.0 / sqrt(<double>vr + eps))
    for i in range(m):
        z = Z + i * n + j0
        xh = xhat + i * n + j0
        ou = out + i * n + j0
        for j in range(w):
            x = (z[j] - me[j]) * iv[j]
            xh[j] = x
            ou[j] = ga[j] * x + be[j]


def batchnorm_forward_train(const floating[:, ::1] Z,   # IN  (m, n), m >= 1
                            const floating[::1] gamma,  # IN  (n,)
                            const floating[::1] beta,   # IN  (n,)
                            double eps,
                            floating[:, ::1] xhat,      # OUT (m, n)
                            floating[:, ::1] out,       # OUT (m, n)
                            floating[::1] mean,         # OUT (n,)
                            floating[::1] var,          # OUT (n,) biased
                            floating[::1] invstd,       # OUT (n,)
                            int n_threads):
    """Batch statistics per column; xhat = (Z - mean) * invstd; out = gamma * xhat + beta."""
    cdef Py_ssize_t m = Z.shape[0], n = Z.shape[1], width, blocks, c, j
    if n == 0:
        return
    if m == 0:  # the mean of nothing, as numpy says
        for j in range(n):
            mean[j] = NAN
            var[j] = NAN
            invstd[j] = NAN
        return
    cdef const floating* zp = &Z[0, 0]
    cdef const floating* gp = &gamma[0]
    cdef const floating* bp = &beta[0]
    cdef floating* xp = &xhat[0, 0]
    cdef floating* op = &out[0, 0]
    cdef floating* mp = &mean[0]
    cdef floating* vp = &var[0]
    cdef floating* ip = &invstd[0]
    cdef int nw = _column_blocks(m, n, n_threads, &width, &blocks)
    with nogil:
        if nw == 1:
            for c in range(blocks):
                _bn_train_block(zp, gp, bp, eps, xp, op, mp, vp, ip, m, n,
                                c * width, min(n, c * width + width))
        else:
            for c in prange(blocks, num_threads=nw, schedule="static"):
                _bn_train_block(zp, gp, bp, eps, xp, op, mp, vp, ip, m, n,
                                c * width, min(n, c * width + width))


cdef void _bn_infer_rows(const floating* Z, const floating* gamma, const floating* beta,
                         const floating* rmean, const floating* rvar, double eps, floating* out,
                         Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef floating inv[CB]
    cdef Py_ssize_t i, j, j0, w
    cdef const floating* z
    cdef floating* o
    j0 = 0
    while j0 < n:
        w = CB if n - j0 > CB else n - j0
        for j in range(w):
            inv[j] = <floating>(1.0 / sqrt(<double>rvar[j0 + j] + eps))
        for i in range(r0, r1):
            z = Z + i * n + j0
            o = out + i * n + j0
            for j in range(w):
                o[j] = gamma[j0 + j] * ((z[j] - rmean[j0 + j]) * inv[j]) + beta[j0 + j]
        j0 += w


def batchnorm_forward_infer(const floating[:, ::1] Z,          # IN  (m, n)
                            const floating[::1] gamma,         # IN  (n,)
                            const floating[::1] beta,          # IN  (n,)
                            const floating[::1] running_mean,  # IN  (n,)
                            const floating[::1] running_var,   # IN  (n,)
                            double eps,
                            floating[:, ::1] out,              # OUT (m, n), may alias Z
                            int n_threads):
    """out = gamma * (Z - running_mean) / sqrt(running_var + eps) + beta."""
    cdef Py_ssize_t m = Z.shape[0], n = Z.shape[1], c
    if m == 0 or n == 0:
        return
    cdef const floating* zp = &Z[0, 0]
    cdef const floating* gp = &gamma[0]
    cdef const floating* bp = &beta[0]
    cdef const floating* rm = &running_mean[0]
    cdef const floating* rv = &running_var[0]
    cdef floating* op = &out[0, 0]
    cdef int nw = _workers(m * n, n_threads, T_ELEMENTWISE, m)
    with nogil:
        if nw == 1:
            _bn_infer_rows(zp, gp, bp, rm, rv, eps, op, n, 0, m)
        else:
            for c in prange(nw, num_threads=nw, schedule="static"):
                _bn_infer_rows(zp, gp, bp, rm, rv, eps, op, n, _cut(m, nw, c), _cut(m, nw, c + 1))


cdef void _bn_backward_block(const floating* dout, const floating* xhat, const floating* gamma,
                             const floating* invstd, floating* dZ, floating* dgamma,
                             floating* dbeta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t j0,
                             Py_ssize_t j1) noexcept nogil:
    cdef double sb[CB]
    cdef double sg[CB]
    cdef floating c1[CB]
    cdef floating mb[CB]
    cdef floating mg[CB]
    cdef Py_ssize_t i, j, w = j1 - j0
    cdef const floating* d
    cdef const floating* x
    cdef floating* dz
    cdef floating mf = <floating>m, db, dg
    for j in range(w):
        sb[j] = 0
        sg[j] = 0
    for i in range(m):
        d = dout + i * n + j0
        x = xhat + i * n + j0
        for j in range(w):
            sb[j] += d[j]
            sg[j] += d[j] * x[j]
    for j in range(w):
        db = <floating>sb[j]
        dg = <floating>sg[j]
        dbeta[j0 + j] = db
        dgamma[j0 + j] = dg
        c1[j] = gamma[j0 + j] * invstd[j0 + j]
        mb[j] = db / mf
        mg[j] = dg / mf
    for i in range(m):
        d = dout + i * n + j0
        x = xhat + i * n + j0
        dz = dZ + i * n + j0
        for j in range(w):
            dz[j] = c1[j] * ((d[j] - mb[j]) - x[j] * mg[j])


def batchnorm_backward(const floating[:, ::1] dout,  # IN  (m, n)
                       const floating[:, ::1] xhat,  # IN  (m, n)
                       const floating[::1] gamma,    # IN  (n,)
                       const floating[::1] invstd,   # IN  (n,)
                       floating[:, ::1] dZ,          # OUT (m, n), may alias dout
                       floating[::1] dgamma,         # OUT (n,)
                       floating[::1] dbeta,          # OUT (n,)
                       int n_threads):
    """dbeta = sum(dout); dgamma = sum(dout xhat); dZ = gamma invstd (dout - dbeta/m - xhat dgamma/m)."""
    cdef Py_ssize_t m = dout.shape[0], n = dout.shape[1], width, blocks, c, j
    if n == 0:
        return
    if m == 0:
        for j in range(n):
            dgamma[j] = 0
            dbeta[j] = 0
        return
    cdef const floating* dp = &dout[0, 0]
    cdef const floating* xp = &xhat[0, 0]
    cdef const floating* gp = &gamma[0]
    cdef const floating* ip = &invstd[0]
    cdef floating* dzp = &dZ[0, 0]
    cdef floating* dgp = &dgamma[0]
    cdef floating* dbp = &dbeta[0]
    cdef int nw = _column_blocks(m, n, n_threads, &width, &blocks)
    with nogil:
        if nw == 1:
            for c in range(blocks):
                _bn_backward_block(dp, xp, gp, ip, dzp, dgp, dbp, m, n,
                                   c * width, min(n, c * width + width))
        else:
            for c in prange(blocks, num_threads=nw, schedule="static"):
                _bn_backward_block(dp, xp, gp, ip, dzp, dgp, dbp, m, n,
                                   c * width, min(n, c * width + width))


# ==================================================================================
# the point functions, applied element-wise: for the parity tests only
# ==================================================================================

def point(str name, const floating[::1] x, double slope, floating[::1] out):
    """out[i] = <name>(x[i]) with the compiled point function of that name."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating s = <floating>slope
    if name == "sigmoid":
        for i in range(n):
            out[i] = sigmoid(x[i])
    elif name == "sigmoid_grad":
        for i in range(n):
            out[i] = sigmoid_grad(x[i])
    elif name == "tanh":
        for i in range(n):
            out[i] = tanh(x[i])
    elif name == "tanh_grad":
        for i in range(n):
            out[i] = tanh_grad(x[i])
    elif name == "relu":
        for i in range(n):
            out[i] = relu(x[i])
    elif name == "relu_grad":
        for i in range(n):
            out[i] = relu_grad(x[i])
    elif name == "leaky_relu":
        for i in range(n):
            out[i] = leaky_relu(x[i], s)
    elif name == "leaky_relu_grad":
        for i in range(n):
            out[i] = leaky_relu_grad(x[i], s)
    elif name == "flush":
        for i in range(n):
            out[i] = flush(x[i])
    else:
        raise ValueError(f"no point function {name!r}")


def point_hash(const uint64_t[::1] i, uint64_t key, uint32_t[::1] out):
    """out = dropout_hash(i, key), the compiled point function."""
    cdef Py_ssize_t k
    cdef uint32_t k1 = <uint32_t>(key & 0xFFFFFFFFULL), k2 = <uint32_t>(key >> 32)
    for k in range(i.shape[0]):
        out[k] = dropout_hash(i[k], k1, k2)


def point_fmix32(const uint32_t[::1] h, uint32_t[::1] out):
    """out = fmix32(h), the compiled point function."""
    cdef Py_ssize_t k
    for k in range(h.shape[0]):
        out[k] = fmix32(h[k])


# ==================================================================================
# one whole training step of a Dense stack, in one OpenMP team
# ==================================================================================
#
# Between two BLAS calls the per-kernel path runs its element-wise kernels on
# the calling thread while BLAS's own worker spins on the other core.  Here the
# team owns every core for the whole step and each thread calls a
# single-threaded BLAS on its share of each product, then runs the element-wise
# work on the block it has just written (still in its cache):
#
#   gather      rows split                       X[idx] -> Xb (or their addresses), Y[idx] -> Yb
#   forward     output units split, per layer    Z[:, J] = A_prev @ W[:, J];  A = g(Z + b)
#   loss        rows split                       A_out, the cost pieces; dZ = (A - Y) / m, db
#   backward    input units split, per layer     dW[J, :] = A_prev[:, J]^T @ dZ
#                                                dA[:, J] = dZ @ W[J, :]^T;  dZ_prev = dA * g'(A_prev), db
#   check       arena split                      sum g^2, sum w^2 (L2 cost)
#   update      arena split, only when the cost and the gradient are finite
#
# Every column sum walks its column top to bottom, every cost piece is summed
# in a fixed order, and each product element is one dot product whatever block
# it falls in, so the step has the same bits for any thread count.  The caller
# passes BLAS's Fortran ?gemm (scipy.linalg.cython_blas) by address and keeps
# that BLAS on one thread while steps run.  In float32 on the AVX-512 copy of
# the extension, the products run on _gemm.h's kernels instead (13-15 %
# faster than sgemm on the large ones), and the first layer reads the gathered
# rows where they lie in X, so the gather copies only the targets.

ctypedef void (*sgemm_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*) noexcept nogil
ctypedef void (*dgemm_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                         double*, double*, int*) noexcept nogil

from libc.string cimport memcpy
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_GetName, PyCapsule_IsValid
import numpy as np

# single-precision products in AVX-512 where the variant is built for it (else FG_AVAILABLE is 0)
cdef extern from "_gemm.h" nogil:
    int FG_AVAILABLE
    int FG_MAX_K
    int fg_nn(Py_ssize_t m, Py_ssize_t n, Py_ssize_t K, const float* A, Py_ssize_t lda,
              const float* const* rows, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc)
    int fg_tn(Py_ssize_t m, Py_ssize_t n, Py_ssize_t K, const float* A, Py_ssize_t lda,
              const float* const* rows, Py_ssize_t col, const float* B, Py_ssize_t ldb, float* C,
              Py_ssize_t ldc)
    int fg_nt(Py_ssize_t m, Py_ssize_t n, Py_ssize_t K, const float* A, Py_ssize_t lda,
              const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc)

cdef enum:
    MAXL = 64        # most Dense layers of a fused step
    MAXT = 64        # most threads of a fused step
    MAXR = 1024      # most batch rows whose addresses a step keeps (the first layer's rows in place)

cdef struct Net:
    int L, nt, loss
    Py_ssize_t m
    Py_ssize_t n[MAXL + 1]       # widths: n[0] inputs, n[l + 1] units of layer l
    int act[MAXL]
    double slope[MAXL]
    void* W[MAXL]
    void* b[MAXL]                # a zero vector for layers without a bias
    void* dW[MAXL]
    void* db[MAXL]               # a scratch vector for layers without a bias
    void* Z[MAXL]                # (m, n[l + 1]); hidden layers hold A = g(Z + b) in place
    void* Dr[MAXL]               # (m, n[l + 1]) A after inverted dropout, for layers followed by one
    bint bn[MAXL]                # a BatchNorm between the product and the activation
    bint actnode[MAXL]           # the activation is an Activation layer of its own (out: Ao)
    void* xhat[MAXL]
    void* Bo[MAXL]               # BatchNorm's output gamma * xhat + beta
    void* Ao[MAXL]               # the Activation layer's output
    void* mean[MAXL]
    void* var[MAXL]
    void* invstd[MAXL]
    void* rmean[MAXL]
    void* rvar[MAXL]
    void* gamma[MAXL]
    void* beta[MAXL]
    void* dgamma[MAXL]
    void* dbeta[MAXL]
    bint has_bias[MAXL]
    Py_ssize_t woff[MAXL]        # arena offsets of W, b, gamma and beta (-1: none)
    Py_ssize_t boff[MAXL]
    Py_ssize_t goff[MAXL]
    Py_ssize_t betaoff[MAXL]
    double eps[MAXL]
    double momentum[MAXL]
    void* zeros
    void* scratch
    bint drop[MAXL]
    Py_ssize_t dindex[MAXL]      # the Dropout layer's index (its dropout_key counter)
    uint32_t k1[MAXL]
    uint32_t k2[MAXL]
    uint32_t thr[MAXL]
    bint keep_all[MAXL]
    double scale[MAXL]
    void* A                      # (m, n[L]) the output activation
    void* D[2]                   # delta ping-pong, (m, widest)
    void* X                      # the batch (m, n[0])
    bint in_place                # gathered steps: the first layer reads X's rows where they are
    const float* xrows[MAXR]     # ... at these addresses (float32 with the AVX-512 kernels)
    void* Y                      # its targets (m, n[L])
    size_t gemm
    double* bound                # (3,) upper bounds of |w|, |state 1|, |state 2| (INFINITY: unknown)
    double limit                 # a quarter of the dtype's largest finite value


cdef inline bint _own(Net* net, const floating* dummy, int l) noexcept nogil:
    """Whether layer l's products run on _gemm.h's kernels (float32 on the AVX-512 copy).

    Decided per layer, never per thread, so every element of a product is computed the
    same way whatever the thread count.  Narrow layers take them too: BLAS runs a
    128x10x128 product in half the time, but through its own buffers, which a
    neighbour's load on the shared cache evicts between steps.
    """
    return floating is float and FG_AVAILABLE


cdef inline void _mm(size_t fp, bint ta, bint tb, int m, int n, int k,
                     const floating* A, int lda, const floating* B, int ldb,
                     floating* C, int ldc, bint own=False) noexcept nogil:
    """Row-major C (m, n) = op(A) @ op(B) through the column-major ?gemm (C^T = op(B)^T op(A)^T).

    own: float32 NN, TN and NT products go to _gemm.h's kernels instead (where they take the shape).
    """
    cdef char ca = b'T' if ta else b'N'
    cdef char cb = b'T' if tb else b'N'
    cdef floating one = 1, zero = 0
    cdef Py_ssize_t i, j
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        for i in range(m):
            for j in range(n):
                C[i * ldc + j] = 0
        return
    if floating is float:
        if own and tb and not ta:
            fg_nt(m, n, k, <const float*>A, lda, <const float*>B, ldb, <float*>C, ldc)
            return
        if own and not tb:
            if ta:
                if fg_tn(m, n, k, <const float*>A, lda, NULL, 0, <const float*>B, ldb, <float*>C, ldc):
                    return
            elif fg_nn(m, n, k, <const float*>A, lda, NULL, <const float*>B, ldb, <float*>C, ldc):
                return
        (<sgemm_t>fp)(&cb, &ca, &n, &m, &k, &one, <float*>B, &ldb, <float*>A, &lda, &zero, C, &ldc)
    else:
        (<dgemm_t>fp)(&cb, &ca, &n, &m, &k, &one, <double*>B, &ldb, <double*>A, &lda, &zero, C, &ldc)


cdef inline uint64_t _splitmix64(uint64_t x) noexcept nogil:
    """One round of SplitMix64 (mirrors fusednet.kernels._codes._splitmix64)."""
    x = x + 0x9E3779B97F4A7C15ULL
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline void _set_key(Net* net, int l, uint64_t key) noexcept nogil:
    net.k1[l] = <uint32_t>(key & 0xFFFFFFFFULL)
    net.k2[l] = <uint32_t>(key >> 32)


cdef inline void* _out(Net* net, int l) noexcept nogil:
    """Layer l's activation: g(Z + b) in place in Z, or BatchNorm's or the Activation layer's output."""
    if net.actnode[l]:
        return net.Ao[l]
    return net.Bo[l] if net.bn[l] else net.Z[l]


cdef inline const void* _input(Net* net, int l) noexcept nogil:
    """What layer l reads: the batch, the layer below's activation, or that after dropout."""
    if l == 0:
        return net.X
    return net.Dr[l - 1] if net.drop[l - 1] else _out(net, l - 1)


cdef inline Py_ssize_t _cut16(Py_ssize_t total, Py_ssize_t parts, Py_ssize_t c) noexcept nogil:
    """As _cut, on a 16-element grid (whole vectors per thread)."""
    if c >= parts:
        return total
    return (total * c // parts) & ~(<Py_ssize_t>15)


cdef inline Py_ssize_t _cut_in(Py_ssize_t k, Py_ssize_t nt, Py_ssize_t c, int l) noexcept nogil:
    """Start of thread c's inputs of layer l in the backward pass and the update.  The first
    layer has no dA columns to keep in whole vectors: an even split (784: 392 each)."""
    return _cut(k, nt, c) if l == 0 else _cut16(k, nt, c)


cdef void _step_gather(const floating* X, const floating* Y, const Py_ssize_t* idx, Net* net,
                       int t) noexcept nogil:
    cdef Py_ssize_t m = net.m, nx = net.n[0], ny = net.n[net.L], i
    cdef floating* xb = <floating*>net.X
    cdef floating* yb = <floating*>net.Y
    for i in range(_cut(m, net.nt, t), _cut(m, net.nt, t + 1)):
        if net.in_place:
            net.xrows[i] = <const float*>(X + idx[i] * nx)
        else:
            memcpy(xb + i * nx, X + idx[i] * nx, nx * sizeof(floating))
        memcpy(yb + i * ny, Y + idx[i] * ny, ny * sizeof(floating))


cdef void _step_forward(const floating* dummy, Net* net, int l, int t) noexcept nogil:
    """Units J_t of layer l: Z[:, J] = A_prev @ W[:, J], then g(Z + b) in place (hidden layers)."""
    cdef Py_ssize_t m = net.m, k = net.n[l], n = net.n[l + 1], i, j, w
    cdef Py_ssize_t j0 = _cut16(n, net.nt, t), j1 = _cut16(n, net.nt, t + 1)
    cdef const floating* Ap = <const floating*>_input(net, l)
    cdef floating* Z = <floating*>net.Z[l]
    cdef const floating* src
    cdef const floating* A
    cdef const floating* b = <floating*>net.b[l]
    if j1 <= j0:
        return
    if l == 0 and net.in_place:
        fg_nn(m, j1 - j0, k, NULL, 0, net.xrows, <float*>net.W[l] + j0, n, <float*>Z + j0, n)
    else:
        _mm(net.gemm, False, False, <int>m, <int>(j1 - j0), <int>k, Ap, <int>k,
            <floating*>net.W[l] + j0, <int>n, Z + j0, <int>n, _own(net, Ap, l))
    if l == net.L - 1:
        return
    if not net.bn[l] and not net.actnode[l]:
        for i in range(m):
            _fwd_span(Z + i * n + j0, b + j0, Z + i * n + j0, j1 - j0, net.act[l],
                      <floating>net.slope[l])
    else:
        if net.has_bias[l]:
            for i in range(m):
                _fwd_span(Z + i * n + j0, b + j0, Z + i * n + j0, j1 - j0, LINEAR, 0)
        src = Z
        if net.bn[l]:
            j = j0
            while j < j1:
                w = CB if j1 - j > CB else j1 - j
                _bn_train_block(Z, <floating*>net.gamma[l], <floating*>net.beta[l], net.eps[l],
                                <floating*>net.xhat[l], <floating*>net.Bo[l], <floating*>net.mean[l],
                                <floating*>net.var[l], <floating*>net.invstd[l], m, n, j, j + w)
                j += w
            src = <floating*>net.Bo[l]
        if net.actnode[l]:
            for i in range(m):
                _fwd_span(src + i * n + j0, <floating*>net.zeros + j0, <floating*>net.Ao[l] + i * n + j0,
                          j1 - j0, net.act[l], <floating>net.slope[l])
    if net.drop[l]:
        A = <floating*>_out(net, l)
        for i in range(m):
            _dropout_piece(A, <floating*>net.Dr[l], i * n + j0, i * n + j1, net.k1[l], net.k2[l],
                           net.thr[l], net.keep_all[l], <floating>net.scale[l])


cdef void _step_loss(const floating* dummy, Net* net, int t, double* part) noexcept nogil:
    """Cost pieces of the rows of thread t (as loss_forward cuts them); A_out."""
    cdef int l = net.L - 1
    cdef Py_ssize_t m = net.m, n = net.n[net.L], pieces, K, c
    pieces = m if net.loss == CCE else _spans(m, n)
    K = KMAX if pieces > KMAX else pieces
    for c in range(_cut(K, net.nt, t), _cut(K, net.nt, t + 1)):
        part[c] = _loss_piece(<floating*>net.Z[l], <floating*>net.b[l], <floating*>net.Y,
                              <floating*>net.A, m, n, net.loss, _cut(pieces, K, c),
                              _cut(pieces, K, c + 1))


cdef void _step_loss_backward(const floating* dummy, Net* net, int t, double* part) noexcept nogil:
    """dZ = (A - Y) / m into D[0] and the output bias gradient (as loss_backward cuts it)."""
    cdef int l = net.L - 1
    cdef Py_ssize_t m = net.m, n = net.n[net.L], r, groups, K, c, blocks
    cdef const floating* A = <floating*>net.A
    cdef const floating* Y = <floating*>net.Y
    cdef floating* D = <floating*>net.D[0]
    if n < NSMALL:
        r = TILE // n
        groups = (m + r - 1) // r
        K = KMAX if groups > KMAX else groups
        for c in range(_cut(K, net.nt, t), _cut(K, net.nt, t + 1)):
            _colsum_chunk(A, Y, D, part + c * n, _cut(groups, K, c) * r,
                          min(_cut(groups, K, c + 1) * r, m), n, OP_LOSS, <floating>m)
        return
    blocks = (n + CB - 1) // CB
    for c in range(_cut(blocks, net.nt, t), _cut(blocks, net.nt, t + 1)):
        _colsum_block(A, Y, D, <floating*>net.db[l], m, n, c * CB, min(n, c * CB + CB), OP_LOSS,
                      <floating>m)


cdef void _step_loss_db(const floating* dummy, Net* net, const double* part) noexcept nogil:
    """Combine the output bias gradient's row chunks in order (narrow outputs)."""
    cdef Py_ssize_t m = net.m, n = net.n[net.L], r, groups, K, c, j
    cdef floating* db = <floating*>net.db[net.L - 1]
    cdef double s
    if n >= NSMALL:
        return
    r = TILE // n
    groups = (m + r - 1) // r
    K = KMAX if groups > KMAX else groups
    for j in range(n):
        s = 0
        for c in range(K):
            s += part[c * n + j]
        db[j] = <floating>s


cdef void _step_backward(const floating* dummy, Net* net, int l, int t) noexcept nogil:
    """Inputs J_t of layer l: dW[J, :], and below the first layer dZ_prev[:, J] and db_prev[J]."""
    cdef Py_ssize_t m = net.m, k = net.n[l], n = net.n[l + 1], j, w
    cdef Py_ssize_t j0 = _cut_in(k, net.nt, t, l), j1 = _cut_in(k, net.nt, t + 1, l)
    cdef int cur = (net.L - 1 - l) & 1
    cdef const floating* dZ = <floating*>net.D[cur]
    cdef floating* dA = <floating*>net.D[1 - cur]
    cdef const floating* In = <const floating*>_input(net, l)
    cdef const floating* Ap
    cdef Py_ssize_t i
    if j1 <= j0:
        return
    if l == 0 and net.in_place:
        fg_tn(j1 - j0, n, m, NULL, 0, net.xrows, j0, <float*>dZ, n, <float*>net.dW[l] + j0 * n, n)
    else:
        _mm(net.gemm, True, False, <int>(j1 - j0), <int>n, <int>m, In + j0, <int>k, dZ, <int>n,
            <floating*>net.dW[l] + j0 * n, <int>n, _own(net, dZ, l))
    if l == 0:
        return
    Ap = <const floating*>_out(net, l - 1)
    _mm(net.gemm, False, True, <int>m, <int>(j1 - j0), <int>n, dZ, <int>n,
        <floating*>net.W[l] + j0 * n, <int>n, dA + j0, <int>k, _own(net, dZ, l))
    if net.drop[l - 1]:
        for i in range(m):
            _dropout_piece(dA, dA, i * k + j0, i * k + j1, net.k1[l - 1], net.k2[l - 1],
                           net.thr[l - 1], net.keep_all[l - 1], <floating>net.scale[l - 1])
    j = j0
    while j < j1:
        w = CB if j1 - j > CB else j1 - j
        if not net.bn[l - 1] and not net.actnode[l - 1]:
            _colsum_block(dA, Ap, dA, <floating*>net.db[l - 1], m, k, j, j + w, net.act[l - 1],
                          <floating>net.slope[l - 1])
        else:
            if net.actnode[l - 1]:  # the Activation layer's column sums are not needed
                _colsum_block(dA, Ap, dA, <floating*>net.scratch, m, k, j, j + w, net.act[l - 1],
                              <floating>net.slope[l - 1])
            if net.bn[l - 1]:
                _bn_backward_block(dA, <floating*>net.xhat[l - 1], <floating*>net.gamma[l - 1],
                                   <floating*>net.invstd[l - 1], dA, <floating*>net.dgamma[l - 1],
                                   <floating*>net.dbeta[l - 1], m, k, j, j + w)
            if net.has_bias[l - 1]:
                _colsum_block(dA, dA, dA, <floating*>net.db[l - 1], m, k, j, j + w, LINEAR, 0)
        j += w


cdef double _sumsq(const floating* x, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """Sum of x^2 over x[i0:i1] in float64, in 32 lanes (vectorised; the order depends on i0, i1 only)."""
    cdef double acc[32]
    cdef double s = 0
    cdef Py_ssize_t i = i0, j
    for j in range(32):
        acc[j] = 0
    while i + 32 <= i1:
        for j in range(32):
            acc[j] += <double>x[i + j] * <double>x[i + j]
        i += 32
    while i < i1:
        s += <double>x[i] * <double>x[i]
        i += 1
    for j in range(32):
        s += acc[j]
    return s


cdef inline Py_ssize_t _sum_chunks(Py_ssize_t n) noexcept nogil:
    """Fixed pieces of the arena sums (their number depends on the arena only)."""
    cdef Py_ssize_t c = n // 4096
    return 1 if c < 1 else (KMAX if c > KMAX else c)


cdef void _step_sums(const floating* P, const floating* G, Py_ssize_t n, Py_ssize_t n_decay,
                     int nt, int t, double* gpart, double* wpart) noexcept nogil:
    """Sums of g^2 and (over the weights, n_decay = 0 without an L2 term) w^2 of the arena
    pieces of thread t; the pieces and their order do not depend on the thread count."""
    cdef Py_ssize_t C = _sum_chunks(n), c, i0, i1
    for c in range(_cut(C, nt, t), _cut(C, nt, t + 1)):
        i0 = _cut64(n, C, c)
        i1 = _cut64(n, C, c + 1)
        gpart[c] = _sumsq(G, i0, i1)
        wpart[c] = _sumsq(P, i0, n_decay if n_decay < i1 else i1) if n_decay > i0 else 0.0


cdef void _step_update(floating* pp, const floating* gp, floating* s1, floating* s2, Net* net,
                       const Hyper* h, int t) noexcept nogil:
    """The optimiser update of what thread t owns: the rows J_t of every W (the inputs whose
    gradient rows it wrote), and its columns of every bias, gamma and beta."""
    cdef int l, nt = net.nt
    cdef Py_ssize_t k, n, j0, j1, c0, c1
    for l in range(net.L):
        k = net.n[l]
        n = net.n[l + 1]
        j0 = _cut_in(k, nt, t, l)
        j1 = _cut_in(k, nt, t + 1, l)
        if j1 > j0:
            _opt_piece(pp, gp, s1, s2, net.woff[l] + j0 * n, net.woff[l] + j1 * n, h)
        c0 = _cut16(n, nt, t)
        c1 = _cut16(n, nt, t + 1)
        if c1 > c0:
            if net.boff[l] >= 0:
                _opt_piece(pp, gp, s1, s2, net.boff[l] + c0, net.boff[l] + c1, h)
            if net.goff[l] >= 0:
                _opt_piece(pp, gp, s1, s2, net.goff[l] + c0, net.goff[l] + c1, h)
                _opt_piece(pp, gp, s1, s2, net.betaoff[l] + c0, net.betaoff[l] + c1, h)


cdef bint _update_bounded(const Hyper* h, double gnorm, const double* b, double limit,
                          double* nb) noexcept nogil:
    """Whether the update of step h cannot overflow, and the bounds after it.

    b: upper bounds of |w|, |s1|, |s2| before the step; gnorm = ||g||_2 >= max |g|.  With
    gm = gnorm + l2 b[0] >= |g + l2 w|, every intermediate of the update is bounded by
    (GD) |w| + lr gm; (momentum) v <= beta1 b[1] + (1 - beta1) gm, |w| + lr v / bc1;
    (RMSProp) s <= beta2 b[1] + (1 - beta2) gm^2, |w| + lr min(gm / eps, 1.01 / sqrt(1 - beta2))
    (since s >= (1 - beta2) g^2); (Adam) m and v as momentum's v and RMSProp's s,
    |w| + lr (m / bc1) / eps.  Writes them to nb and returns True when all stay below
    limit (and gm^2 too, for RMSProp's and Adam's squares).  Mirrors fusednet.optim.update_bound.
    """
    cdef double gm = gnorm + h.l2 * b[0], s1 = b[1], s2 = b[2], dw, r
    if h.kind == OPT_GD:
        dw = h.lr * gm
    elif h.kind == OPT_MOMENTUM:
        s1 = h.beta1 * s1 + (1.0 - h.beta1) * gm
        dw = h.lr * s1 / h.bc1
    elif h.kind == OPT_RMSPROP:
        s1 = h.beta2 * s1 + (1.0 - h.beta2) * gm * gm
        r = 1.01 / sqrt(1.0 - h.beta2)
        dw = h.lr * (gm / h.eps if gm / h.eps < r else r)
    else:
        s1 = h.beta1 * s1 + (1.0 - h.beta1) * gm
        s2 = h.beta2 * s2 + (1.0 - h.beta2) * gm * gm
        dw = h.lr * (s1 / h.bc1) / h.eps
    nb[0] = b[0] + dw
    nb[1] = s1
    nb[2] = s2
    return (nb[0] < limit and s1 < limit and s2 < limit
            and (h.kind == OPT_GD or h.kind == OPT_MOMENTUM or gm * gm < limit))


cdef double _absmax(const floating* x, Py_ssize_t n) noexcept nogil:
    # an initial max of 0: a NaN never wins a comparison; the caller has checked finiteness
    """max |x| (0 for n = 0)."""
    cdef floating hi = 0, lo = 0
    cdef Py_ssize_t i
    for i in range(n):
        if x[i] > hi:
            hi = x[i]
        if x[i] < lo:
            lo = x[i]
    return hi if hi > -lo else -lo


cdef void _refresh_bounds(const floating* P, const floating* s1, const floating* s2, Py_ssize_t n,
                          double* bound) noexcept nogil:
    """The bounds from the arenas themselves (a pass over each)."""
    bound[0] = _absmax(P, n)
    bound[1] = _absmax(s1, n) if s1 != NULL else 0.0
    bound[2] = _absmax(s2, n) if s2 != NULL else 0.0


cdef bint _bn_stats_ok(Net* net, const floating* dummy) noexcept nogil:
    """Whether every batch mean and variance of the step is finite and below net.limit."""
    cdef int l
    cdef Py_ssize_t j
    cdef const floating* mu
    cdef const floating* var
    for l in range(net.L):
        if net.bn[l]:
            mu = <const floating*>net.mean[l]
            var = <const floating*>net.var[l]
            for j in range(net.n[l + 1]):
                if not (fabs(mu[j]) < net.limit and fabs(var[j]) < net.limit):
                    return False
    return True


cdef int _step_result(Net* net, const double* part, Py_ssize_t K, const double* gpart,
                      const double* wpart, Py_ssize_t C, double lam, double* out) noexcept nogil:
    """The cost (L2 included) and sum of g^2 into out; 0 when both are finite, else 1 or 2."""
    cdef double cost = 0, gsq = 0, wsq = 0
    cdef Py_ssize_t c
    for c in range(K):
        cost += part[c]
    if net.loss == MSE:
        cost = 0.5 * cost
    cost = cost / net.m
    for c in range(C):
        gsq += gpart[c]
        wsq += wpart[c]
    if lam != 0.0:
        cost = cost + lam / (2.0 * net.m) * wsq
    out[0] = cost
    out[1] = gsq
    if not (fabs(cost) < INFINITY):
        return 1
    if not (fabs(gsq) < INFINITY):
        return 2
    return 0


cdef int _step_decision(const floating* dummy, Net* net, const Hyper* h, const double* part,
                        Py_ssize_t K, const double* gpart, const double* wpart, Py_ssize_t C,
                        double lam, double* out, double* nb, double gmax) noexcept nogil:
    """_step_result, then 4 when a batch-norm statistic is not finite, 3 when the update might
    overflow with the bounds as they are; 0: apply the update (nb: the bounds after it).
    gmax: max |g| when known (else INFINITY: the norm bounds it)."""
    cdef int status = _step_result(net, part, K, gpart, wpart, C, lam, out)
    cdef double gnorm = sqrt(out[1])
    if status != 0:
        return status
    if not _bn_stats_ok(net, dummy):
        return 4
    if not _update_bounded(h, gmax if gmax < gnorm else gnorm, net.bound, net.limit, nb):
        return 3
    return 0


cdef int _step_core(floating* pp, const floating* gp, floating* s1, floating* s2, Net* net,
                    Hyper* h, double lam, Py_ssize_t n_params, const floating* xp,
                    const floating* yp, const Py_ssize_t* ip, double* out) noexcept nogil:
    """One step on net.m rows (gathered first from xp, yp by ip when ip is not NULL).

    Writes the cost (L2 included) to out[0] and the sum of g^2 to out[1]; returns 0 when the
    update was applied, else (and nothing is updated, running statistics included) 1 when the
    cost, 2 when the gradient, 4 when a batch-norm statistic was not finite and 3 when the
    update would overflow (_update_bounded, with the bounds read off the arenas).
    """
    cdef double part[KMAX]
    cdef double part2[KMAX * NSMALL]
    cdef double gpart[KMAX]
    cdef double wpart[KMAX]
    cdef double res[2]
    cdef double tres[5 * MAXT]
    cdef double nb[3]
    cdef int status
    cdef Py_ssize_t L = net.L, l, m = net.m, pieces, K, c
    cdef Py_ssize_t C = _sum_chunks(n_params)
    cdef Py_ssize_t nd_cost = h.n_decay if lam != 0.0 else 0
    cdef int nt = net.nt, t, i
    cdef Hyper hr
    h.l2 = lam / m
    if ip == NULL:
        net.in_place = False
    pieces = m if net.loss == CCE else _spans(m, net.n[L])
    K = KMAX if pieces > KMAX else pieces
    if nt == 1:
        if ip != NULL:
            _step_gather(xp, yp, ip, net, 0)
        for l in range(L):
            _step_forward(pp, net, <int>l, 0)
        _step_loss(pp, net, 0, part)
        _step_loss_backward(pp, net, 0, part2)
        _step_loss_db(pp, net, part2)
        for l in range(L - 1, -1, -1):
            _step_backward(pp, net, <int>l, 0)
        _step_sums(pp, gp, n_params, nd_cost, 1, 0, gpart, wpart)
        if _step_decision(pp, net, h, part, K, gpart, wpart, C, lam, res, nb, INFINITY) == 0:
            _step_update(pp, gp, s1, s2, net, h, 0)
    else:
        with parallel(num_threads=nt):
            if ip != NULL:
                for t in prange(nt, schedule="static", chunksize=1):
                    _step_gather(xp, yp, ip, net, t)
            for l in range(L):
                for t in prange(nt, schedule="static", chunksize=1):
                    _step_forward(pp, net, <int>l, t)
            for t in prange(nt, schedule="static", chunksize=1):
                _step_loss(pp, net, t, part)
            for t in prange(nt, schedule="static", chunksize=1):
                _step_loss_backward(pp, net, t, part2)
            for l in range(L - 1, -1, -1):
                for t in prange(nt, schedule="static", chunksize=1):
                    if t == 0 and l == L - 1:
                        _step_loss_db(pp, net, part2)
                    _step_backward(pp, net, <int>l, t)
            for t in prange(nt, schedule="static", chunksize=1):
                _step_sums(pp, gp, n_params, nd_cost, nt, t, gpart, wpart)
            # every thread reads the same sums, takes the same decision and updates what it owns
            for t in prange(nt, schedule="static", chunksize=1):
                if _step_decision(pp, net, h, part, K, gpart, wpart, C, lam, tres + 2 * t,
                                  tres + 2 * MAXT + 3 * t, INFINITY) == 0:
                    _step_update(pp, gp, s1, s2, net, h, t)
    status = _step_decision(pp, net, h, part, K, gpart, wpart, C, lam, out, nb, INFINITY)
    if status == 3:
        # the bounds were too loose (or unknown): take them, and max |g|, from the arenas, decide
        # again, and update here, each thread's share in turn (the same elements, the same bits)
        _refresh_bounds(pp, s1, s2, n_params, net.bound)
        status = _step_decision(pp, net, h, part, K, gpart, wpart, C, lam, out, nb,
                                _absmax(gp, n_params))
        if status == 0:
            for t in range(nt):
                _step_update(pp, gp, s1, s2, net, h, t)
    if status != 0:
        return status
    net.bound[0] = nb[0]
    net.bound[1] = nb[1]
    net.bound[2] = nb[2]
    for l in range(L):
        if net.bn[l]:
            hr.beta1 = net.momentum[l]
            _ewa_span(<floating*>net.rmean[l], <floating*>net.mean[l], net.n[l + 1], &hr)
            _ewa_span(<floating*>net.rvar[l], <floating*>net.var[l], net.n[l + 1], &hr)
    return 0


# ----------------------------------------------------------------------------------
# the typed boundary: one plan per (model, batch capacity), small entry points
# ----------------------------------------------------------------------------------

ctypedef struct LayerSpec:       # mirrors fusednet.kernels._plan.LAYER_DTYPE field by field
    Py_ssize_t n_in
    Py_ssize_t n_out
    Py_ssize_t w_off             # arena offsets; -1: none
    Py_ssize_t b_off
    Py_ssize_t gamma_off         # a BatchNorm between the product and the activation
    Py_ssize_t beta_off
    Py_ssize_t drop_index        # the Dropout layer after it (its dropout_key counter); -1: none
    uint64_t drop_threshold      # keep an element when its 32-bit hash is below; 2**32: keep all
    int act                      # fusednet.kernels._codes activation code
    int act_node                 # 1: the activation is an Activation layer of its own
    double slope                 # leaky ReLU
    double drop_scale            # 1 / keep_prob
    double bn_eps
    double bn_momentum


ctypedef struct OptSpec:         # mirrors fusednet.kernels._plan.OPT_DTYPE field by field
    int kind                     # _codes.OPT_*
    int bias_correction          # 0 none, 1 the first moment (momentum), 2 both (Adam)
    double beta1
    double beta2
    double eps
    Py_ssize_t t                 # steps taken before this call


def layouts():
    """``{name: (itemsize, {field: offset})}`` of the C structs the plan's dtypes mirror."""
    cdef LayerSpec ls
    cdef OptSpec os_
    cdef size_t b = <size_t>&ls
    cdef size_t o = <size_t>&os_
    return {
        "LayerSpec": (sizeof(LayerSpec), {
            "n_in": <size_t>&ls.n_in - b, "n_out": <size_t>&ls.n_out - b, "w_off": <size_t>&ls.w_off - b,
            "b_off": <size_t>&ls.b_off - b, "gamma_off": <size_t>&ls.gamma_off - b,
            "beta_off": <size_t>&ls.beta_off - b, "drop_index": <size_t>&ls.drop_index - b,
            "drop_threshold": <size_t>&ls.drop_threshold - b, "act": <size_t>&ls.act - b,
            "act_node": <size_t>&ls.act_node - b, "slope": <size_t>&ls.slope - b,
            "drop_scale": <size_t>&ls.drop_scale - b, "bn_eps": <size_t>&ls.bn_eps - b,
            "bn_momentum": <size_t>&ls.bn_momentum - b}),
        "OptSpec": (sizeof(OptSpec), {
            "kind": <size_t>&os_.kind - o, "bias_correction": <size_t>&os_.bias_correction - o,
            "beta1": <size_t>&os_.beta1 - o, "beta2": <size_t>&os_.beta2 - o, "eps": <size_t>&os_.eps - o,
            "t": <size_t>&os_.t - o}),
    }


def codes():
    """The codes compiled in, by name, for the test that pins them to fusednet.kernels._codes."""
    return {"LINEAR": LINEAR, "SIGMOID": SIGMOID, "TANH": TANH, "RELU": RELU, "LEAKY_RELU": LEAKY_RELU,
            "SOFTMAX": SOFTMAX, "MSE": MSE, "BCE": BCE, "CCE": CCE, "OPT_GD": OPT_GD,
            "OPT_MOMENTUM": OPT_MOMENTUM, "OPT_RMSPROP": OPT_RMSPROP, "OPT_ADAM": OPT_ADAM}


_STRUCTS = None
#: (NumPy kind, bytes) of each field of the structs above
_FIELD_TYPES = {
    "LayerSpec": dict(n_in=("i", sizeof(Py_ssize_t)), n_out=("i", sizeof(Py_ssize_t)),
                      w_off=("i", sizeof(Py_ssize_t)), b_off=("i", sizeof(Py_ssize_t)),
                      gamma_off=("i", sizeof(Py_ssize_t)), beta_off=("i", sizeof(Py_ssize_t)),
                      drop_index=("i", sizeof(Py_ssize_t)), drop_threshold=("u", 8), act=("i", sizeof(int)),
                      act_node=("i", sizeof(int)), slope=("f", 8), drop_scale=("f", 8), bn_eps=("f", 8),
                      bn_momentum=("f", 8)),
    "OptSpec": dict(kind=("i", sizeof(int)), bias_correction=("i", sizeof(int)), beta1=("f", 8),
                    beta2=("f", 8), eps=("f", 8), t=("i", sizeof(Py_ssize_t))),
}
_CHECKED = {}  # struct -> the last dtype found to mirror it (the common case: the same dtype object)


cdef const unsigned char* _records(object table, str struct, str what, Py_ssize_t count) except NULL:
    """The data of a NumPy structured array whose dtype mirrors ``struct``, field by field."""
    global _STRUCTS
    if _STRUCTS is None:
        _STRUCTS = layouts()
    size, offsets = _STRUCTS[struct]
    dtype = getattr(table, "dtype", None)
    if dtype is not None and dtype is _CHECKED.get(struct):
        pass
    elif dtype is None or dtype.names is None:
        raise ValueError(f"{what} must be a structured array mirroring {struct}, got {type(table).__name__}")
    else:
        if tuple(dtype.names) != tuple(offsets):
            raise ValueError(f"{what}: the fields {dtype.names} are not {struct}'s {tuple(offsets)}")
        for name, off in offsets.items():
            if dtype.fields[name][1] != off:
                raise ValueError(f"{what}: field {name!r} is at byte {dtype.fields[name][1]}, "
                                 f"{struct} has it at {off}")
        for name, want in _FIELD_TYPES[struct].items():
            got = dtype.fields[name][0]
            if (got.kind, got.itemsize) != want:
                raise ValueError(f"{what}: field {name!r} is {got}, {struct} has a {want[0]}{want[1] * 8}")
        if dtype.itemsize != size:
            raise ValueError(f"{what}: records of {dtype.itemsize} bytes, {struct} has {size}")
        _CHECKED[struct] = dtype
    if table.ndim != 1 or table.shape[0] != count or not table.flags.c_contiguous:
        raise ValueError(f"{what} must be a contiguous 1-D array of {count} records, got shape {table.shape}")
    cdef const unsigned char[::1] raw = table.view("u1")
    return &raw[0]


cdef void* _data(object arr, object dtype, Py_ssize_t need, str what, bint writable=True) except NULL:
    """The data of ``arr``: an ndarray of ``dtype``, C-contiguous (writable), with >= ``need`` values."""
    cdef float[::1] f32
    cdef double[::1] f64
    cdef const float[::1] c32
    cdef const double[::1] c64
    if getattr(arr, "dtype", None) != dtype or not hasattr(arr, "flags"):
        raise ValueError(f"{what} must be an ndarray of {dtype}, got "
                         f"{getattr(arr, 'dtype', type(arr).__name__)}")
    if not arr.flags.c_contiguous or (writable and not arr.flags.writeable):
        raise ValueError(f"{what} must be C-contiguous{' and writable' if writable else ''}")
    if arr.size < need or arr.size == 0:
        raise ValueError(f"{what} holds {arr.size} values; the plan needs {need}")
    flat = arr.reshape(-1)
    if writable:
        if dtype.itemsize == 4:
            f32 = flat
            return &f32[0]
        f64 = flat
        return &f64[0]
    if dtype.itemsize == 4:
        c32 = flat
        return <void*>&c32[0]
    c64 = flat
    return <void*>&c64[0]


cdef class StepPlan:
    """A Dense stack as the compiled step walks it: layer records, arenas and workspace, checked once.

    Built once per (model, batch capacity) by ``fusednet._fused``.  ``layers`` is a
    structured array of ``LAYER_DTYPE`` (fusednet.kernels._plan), one record per Dense
    layer; the arrays are the model's parameter and gradient arenas, the optimiser's
    state (empty for GD) and the workspace buffers for up to ``rows`` rows, by name:
    per layer (a list, None where the layer has none) ``Z``, ``Dr`` (after dropout),
    ``xhat``, ``Bo`` (BatchNorm's output), ``Ao`` (an Activation layer's output),
    ``mean``, ``var``, ``invstd``, ``rmean``, ``rvar``; and ``A`` (the output),
    ``D0``, ``D1`` (deltas), ``zeros``, ``scratch`` (the widest layer each).  Every
    record and array is checked here; a mismatch raises ValueError naming it.
    """
    cdef Net net
    cdef Hyper h
    cdef double _lam
    cdef readonly object dtype
    cdef readonly Py_ssize_t rows, n_params, n_layers
    cdef int isz                 # 4: float32, 8: float64
    cdef readonly object bound
    cdef public uint64_t dropout_seed
    cdef void* P
    cdef void* G
    cdef void* S1
    cdef void* S2
    cdef object _refs
    cdef object _batch_x, _batch_y
    cdef object _last_xb, _last_yb         # the batch of the last call (views the trainer reuses)
    cdef Py_ssize_t _last_m
    cdef void* _last_xp
    cdef void* _last_yp
    cdef bint _last_in_place

    def __init__(self, layers, *, params, grads, state1, state2, buffers, gemm, Py_ssize_t rows, int loss,
                 double l2, Py_ssize_t n_decay, int n_threads):
        cdef Py_ssize_t L = layers.shape[0] if hasattr(layers, "shape") and len(layers.shape) == 1 else 0
        cdef const LayerSpec* spec
        cdef Py_ssize_t l, n, widest, isz, n_params
        cdef int nt
        cdef Net* net
        cdef char* P
        cdef char* G
        cdef bint bn, drop
        cdef void* ptr
        cdef double[::1] bnd
        if L < 1 or L > MAXL:
            raise ValueError(f"layers: a fused step takes 1 to {MAXL} Dense layers, got {L}")
        spec = <const LayerSpec*>_records(layers, "LayerSpec", "layers", L)
        dtype = getattr(params, "dtype", None)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"params must be a float32 or float64 arena, got {dtype}")
        if rows < 1 or rows > (1 << 40):
            raise ValueError(f"rows must be >= 1, got {rows}")
        if loss < MSE or loss > CCE:
            raise ValueError(f"loss: unknown loss code {loss}")
        self.dtype = dtype
        self.isz = dtype.itemsize
        self.rows = rows
        self.n_layers = L
        self.n_params = params.size
        self._refs = [layers, params, grads, state1, state2, buffers]
        self.P = _data(params, dtype, 1, "params")
        self.G = _data(grads, dtype, params.size, "grads")
        if grads.size != params.size:
            raise ValueError(f"grads holds {grads.size} values, params {params.size}")
        self.S1 = _data(state1, dtype, params.size, "state1") if state1.size else NULL
        self.S2 = _data(state2, dtype, params.size, "state2") if state2.size else NULL
        nt = n_threads if FN_OPENMP else 1
        nt = 1 if nt < 1 else (MAXT if nt > MAXT else nt)
        net = &self.net
        net.L = <int>L
        net.nt = nt
        net.loss = loss
        net.m = rows
        if type(gemm).__name__ != "PyCapsule" or not PyCapsule_IsValid(gemm, PyCapsule_GetName(gemm)):
            raise ValueError(f"gemm must be scipy.linalg.cython_blas's ?gemm capsule, got {type(gemm).__name__}")
        name = PyCapsule_GetName(gemm)
        want = (b"cython_blas_s *" if dtype.itemsize == 4 else b"cython_blas_d *")
        if not name.startswith(b"void (char *, char *, int *, int *, int *, ") or want not in name:
            raise ValueError(f"gemm must be scipy.linalg.cython_blas's {'s' if dtype.itemsize == 4 else 'd'}gemm "
                             f"for {dtype} arrays, got a capsule of {name[:60]!r}")
        net.gemm = <size_t>PyCapsule_GetPointer(gemm, name)
        net.limit = (FLT_MAX if dtype.itemsize == 4 else DBL_MAX) / 4.0
        self.bound = np.full(3, np.inf)
        bnd = self.bound
        net.bound = &bnd[0]
        isz = dtype.itemsize
        n_params = params.size
        P = <char*>self.P
        G = <char*>self.G
        widest = 0

        def per_layer(name, l):
            lst = buffers.get(name)
            arr = None if lst is None or len(lst) <= l else lst[l]
            if arr is None:
                raise ValueError(f"buffers[{name!r}][{l}] is missing: layer {l} needs one")
            return arr

        for l in range(L):
            rec = f"layers[{l}]"
            if spec[l].n_in < 1 or spec[l].n_out < 1:
                raise ValueError(f"{rec}.n_in and n_out must be >= 1, got {spec[l].n_in}, {spec[l].n_out}")
            if l > 0 and spec[l].n_in != spec[l - 1].n_out:
                raise ValueError(f"{rec}.n_in is {spec[l].n_in}, the layer below has n_out {spec[l - 1].n_out}")
            if spec[l].act < LINEAR or spec[l].act > SOFTMAX or (spec[l].act == SOFTMAX and l < L - 1):
                raise ValueError(f"{rec}.act: {spec[l].act} is not an activation code of this layer")
            if spec[l].w_off < 0 or spec[l].w_off + spec[l].n_in * spec[l].n_out > n_params:
                raise ValueError(f"{rec}.w_off: W of {spec[l].n_in} x {spec[l].n_out} at {spec[l].w_off} "
                                 f"does not fit the arena of {n_params}")
            if spec[l].b_off >= 0 and spec[l].b_off + spec[l].n_out > n_params:
                raise ValueError(f"{rec}.b_off: b at {spec[l].b_off} does not fit the arena of {n_params}")
            bn = spec[l].gamma_off >= 0
            if bn and (spec[l].beta_off < 0 or spec[l].gamma_off + spec[l].n_out > n_params
                       or spec[l].beta_off + spec[l].n_out > n_params):
                raise ValueError(f"{rec}.gamma_off/beta_off: gamma and beta do not fit the arena of {n_params}")
            if (bn or spec[l].act_node) and (l == L - 1 or spec[l].act == SOFTMAX):
                raise ValueError(f"{rec}: BatchNorm and Activation layers follow hidden layers only")
            drop = spec[l].drop_index >= 0
            if drop and l == L - 1:
                raise ValueError(f"{rec}.drop_index: dropout follows hidden layers only")
            if drop and not (0.0 < spec[l].drop_scale < INFINITY):
                raise ValueError(f"{rec}.drop_scale must be 1 / keep_prob, got {spec[l].drop_scale}")
            if bn and not (spec[l].bn_eps > 0.0 and 0.0 <= spec[l].bn_momentum < 1.0):
                raise ValueError(f"{rec}.bn_eps / bn_momentum: got {spec[l].bn_eps}, {spec[l].bn_momentum}")
            n = spec[l].n_out
            widest = n if n > widest else widest
            net.n[l] = spec[l].n_in
            net.n[l + 1] = n
            net.act[l] = spec[l].act
            net.slope[l] = spec[l].slope
            net.W[l] = <void*>(P + spec[l].w_off * isz)
            net.dW[l] = <void*>(G + spec[l].w_off * isz)
            net.has_bias[l] = spec[l].b_off >= 0
            net.woff[l] = spec[l].w_off
            net.boff[l] = spec[l].b_off
            if net.has_bias[l]:
                net.b[l] = <void*>(P + spec[l].b_off * isz)
                net.db[l] = <void*>(G + spec[l].b_off * isz)
            net.bn[l] = bn
            net.goff[l] = spec[l].gamma_off if bn else -1
            net.betaoff[l] = spec[l].beta_off if bn else -1
            net.gamma[l] = <void*>(P + spec[l].gamma_off * isz) if bn else NULL
            net.beta[l] = <void*>(P + spec[l].beta_off * isz) if bn else NULL
            net.dgamma[l] = <void*>(G + spec[l].gamma_off * isz) if bn else NULL
            net.dbeta[l] = <void*>(G + spec[l].beta_off * isz) if bn else NULL
            net.actnode[l] = spec[l].act_node != 0
            net.drop[l] = drop
            net.dindex[l] = spec[l].drop_index
            net.keep_all[l] = spec[l].drop_threshold >= 4294967296ULL
            net.thr[l] = 0 if net.keep_all[l] else <uint32_t>spec[l].drop_threshold
            net.scale[l] = spec[l].drop_scale if drop else 1.0
            net.k1[l] = 0
            net.k2[l] = 0
            net.eps[l] = spec[l].bn_eps
            net.momentum[l] = spec[l].bn_momentum
            net.Z[l] = _data(per_layer("Z", l), dtype, rows * n, f"buffers['Z'][{l}]")
            net.Dr[l] = _data(per_layer("Dr", l), dtype, rows * n, f"buffers['Dr'][{l}]") if drop else NULL
            for name, need, cond, target in (("xhat", rows * n, bn, 0), ("Bo", rows * n, bn, 1),
                                             ("mean", n, bn, 2), ("var", n, bn, 3), ("invstd", n, bn, 4),
                                             ("rmean", n, bn, 5), ("rvar", n, bn, 6),
                                             ("Ao", rows * n, spec[l].act_node != 0, 7)):
                ptr = _data(per_layer(name, l), dtype, need, f"buffers[{name!r}][{l}]") if cond else NULL
                if target == 0:
                    net.xhat[l] = ptr
                elif target == 1:
                    net.Bo[l] = ptr
                elif target == 2:
                    net.mean[l] = ptr
                elif target == 3:
                    net.var[l] = ptr
                elif target == 4:
                    net.invstd[l] = ptr
                elif target == 5:
                    net.rmean[l] = ptr
                elif target == 6:
                    net.rvar[l] = ptr
                else:
                    net.Ao[l] = ptr
        net.A = _data(buffers.get("A"), dtype, rows * net.n[L], "buffers['A']")
        net.D[0] = _data(buffers.get("D0"), dtype, rows * widest, "buffers['D0']")
        net.D[1] = _data(buffers.get("D1"), dtype, rows * widest, "buffers['D1']")
        net.zeros = _data(buffers.get("zeros"), dtype, widest, "buffers['zeros']")
        net.scratch = _data(buffers.get("scratch"), dtype, widest, "buffers['scratch']")
        for l in range(L):
            if not net.has_bias[l]:
                net.b[l] = net.zeros
                net.db[l] = net.scratch
        # the batch buffers a whole epoch gathers into (optional for single steps)
        self._batch_x, self._batch_y = buffers.get("X"), buffers.get("Y")
        if self._batch_x is not None or self._batch_y is not None:
            for name, arr, width in (("X", self._batch_x, net.n[0]), ("Y", self._batch_y, net.n[L])):
                if getattr(arr, "shape", None) != (rows, width):
                    raise ValueError(f"buffers[{name!r}] must be ({rows}, {width}), got {getattr(arr, 'shape', None)}")
                _data(arr, dtype, rows * width, f"buffers[{name!r}]")
        if not (l2 >= 0.0 and l2 < INFINITY):
            raise ValueError(f"l2 must be finite and >= 0, got {l2}")
        self.h.l2 = 0.0
        self.h.n_decay = _clip(n_decay, n_params)
        self._lam = l2
        self.dropout_seed = 0

    @property
    def l2(self):
        """The model's L2 coefficient the plan was built for."""
        return self._lam

    def reset_bounds(self):
        """Forget the bounds of |w| and the optimiser state: the next call reads them off the arenas."""
        self.bound.fill(np.inf)


cdef void _bias_corrections(const OptSpec* o, Py_ssize_t t, Hyper* h) noexcept nogil:
    """bc1 = 1 - beta1^t (momentum with correction, Adam), bc2 = 1 - beta2^t (Adam); else 1.

    Mirrors fusednet.optim.bias_correction."""
    h.bc1 = 1.0 - pow(o.beta1, <double>t) if o.bias_correction >= 1 else 1.0
    h.bc2 = 1.0 - pow(o.beta2, <double>t) if o.bias_correction >= 2 else 1.0


cdef const OptSpec* _opt_spec(StepPlan plan, object opt) except NULL:
    cdef const OptSpec* o = <const OptSpec*>_records(opt, "OptSpec", "opt", 1)
    if o.kind < OPT_GD or o.kind > OPT_ADAM:
        raise ValueError(f"opt.kind: unknown optimiser code {o.kind}")
    if o.bias_correction < 0 or o.bias_correction > 2 or o.t < 0:
        raise ValueError(f"opt.bias_correction must be 0, 1 or 2 and opt.t >= 0, got {o.bias_correction}, {o.t}")
    if (o.kind != OPT_GD and plan.S1 == NULL) or (o.kind == OPT_ADAM and plan.S2 == NULL):
        raise ValueError(f"opt.kind {o.kind} needs the optimiser state the plan was built without")
    plan.h.kind = o.kind
    plan.h.beta1 = o.beta1
    plan.h.beta2 = o.beta2
    plan.h.eps = o.eps
    return o


cdef int _batch(StepPlan plan, object Xb, object Yb, Py_ssize_t m) except -1:
    """Point the plan at a batch of m rows (Xb (m, n_in), Yb (m, n_out) of the plan's dtype)."""
    cdef Net* net = &plan.net
    if Xb is plan._last_xb and Yb is plan._last_yb and m == plan._last_m:  # the same views as the last step
        net.X = plan._last_xp
        net.Y = plan._last_yp
        net.m = m
        net.in_place = plan._last_in_place
        return 0
    if m < 1 or m > plan.rows:
        raise ValueError(f"a step takes 1 to {plan.rows} rows (the plan's capacity), got {m}")
    if getattr(Xb, "shape", None) != (m, net.n[0]) or getattr(Yb, "shape", None) != (m, net.n[net.L]):
        raise ValueError(f"Xb and Yb must be ({m}, {net.n[0]}) and ({m}, {net.n[net.L]}), got "
                         f"{getattr(Xb, 'shape', None)} and {getattr(Yb, 'shape', None)}")
    net.X = _data(Xb, plan.dtype, m * net.n[0], "Xb", False)  # written only when gathered into
    net.Y = _data(Yb, plan.dtype, m * net.n[net.L], "Yb", False)
    net.m = m
    if plan.isz == 4:
        net.in_place = _own(net, <const float*>net.X, 0) and m <= MAXR and net.n[0] <= FG_MAX_K
    else:
        net.in_place = False
    plan._last_xb, plan._last_yb, plan._last_m = Xb, Yb, m
    plan._last_xp, plan._last_yp, plan._last_in_place = net.X, net.Y, net.in_place
    return 0


def dense_step(StepPlan plan,               # IN/OUT the model, its arenas and workspace
               opt,                         # IN an OPT_DTYPE record: the optimiser and its step count
               Xb, Yb,                      # IN (m, n_in), (m, n_out) the batch; OUT when gathered
               gather,                      # None, or (X, Y, idx): gather rows idx of X, Y into Xb, Yb
               double lr,
               const uint64_t[::1] keys,    # IN (L,) the dropout key of each layer followed by one
               double[::1] out):            # OUT (2,): the cost (L2 included), sum of g^2
    """One training step of a Dense stack; returns 0 (updated), else nothing changed and 1 (cost not
    finite), 2 (gradient), 3 (the update would overflow) or 4 (a batch-norm statistic)."""
    cdef Net* net = &plan.net
    cdef const OptSpec* o = _opt_spec(plan, opt)
    cdef Py_ssize_t m = getattr(Xb, "shape", (0,))[0], l
    cdef int status
    cdef const void* xp = NULL
    cdef const void* yp = NULL
    cdef const Py_ssize_t[::1] idx
    cdef const Py_ssize_t* ip = NULL
    if out.shape[0] < 2 or keys.shape[0] != net.L:
        raise ValueError(f"keys must hold one key per layer ({net.L}) and out 2 values")
    _batch(plan, Xb, Yb, m)
    if gather is not None:
        X, Y, idx_ = gather
        if getattr(X, "ndim", 0) != 2 or X.shape[1] != net.n[0] or getattr(Y, "shape", (0, 0))[1:] != (net.n[net.L],) \
                or Y.shape[0] != X.shape[0]:
            raise ValueError("gather: X and Y must have the model's input and output widths, and as many rows")
        idx = idx_
        if idx.shape[0] != m:
            raise ValueError(f"gather: idx must hold {m} rows, got {idx.shape[0]}")
        for l in range(m):
            if idx[l] < 0 or idx[l] >= X.shape[0]:
                raise ValueError(f"gather: idx[{l}] = {idx[l]} is not a row of X")
        xp = _data(X, plan.dtype, 1, "gather X", False)
        yp = _data(Y, plan.dtype, 1, "gather Y", False)
        ip = &idx[0]
    for l in range(net.L):
        _set_key(net, <int>l, keys[l])
    plan.h.lr = lr
    _bias_corrections(o, o.t + 1, &plan.h)
    with nogil:
        if not (net.bound[0] < INFINITY):
            _refresh(plan)
        if plan.isz == 4:
            status = _step_core(<float*>plan.P, <float*>plan.G, <float*>plan.S1, <float*>plan.S2, net,
                                &plan.h, plan._lam, plan.n_params, <const float*>xp, <const float*>yp, ip,
                                &out[0])
        else:
            status = _step_core(<double*>plan.P, <double*>plan.G, <double*>plan.S1, <double*>plan.S2, net,
                                &plan.h, plan._lam, plan.n_params, <const double*>xp, <const double*>yp, ip,
                                &out[0])
    return status


cdef void _refresh(StepPlan plan) noexcept nogil:
    if plan.isz == 4:
        _refresh_bounds(<float*>plan.P, <float*>plan.S1, <float*>plan.S2, plan.n_params, plan.net.bound)
    else:
        _refresh_bounds(<double*>plan.P, <double*>plan.S1, <double*>plan.S2, plan.n_params, plan.net.bound)


cdef void _predictions(Net* net, const void* A_, int itemsize, Py_ssize_t[::1] pred, Py_ssize_t s,
                       Py_ssize_t rows) noexcept nogil:
    """pred[s + r] = argmax (softmax) or A > 0.5 (one sigmoid) of the output's rows."""
    cdef Py_ssize_t r, j, best, n_out = net.n[net.L]
    cdef const float* a32 = <const float*>A_
    cdef const double* a64 = <const double*>A_
    for r in range(rows):
        if net.loss == CCE:
            best = 0
            for j in range(1, n_out):
                if (a32[r * n_out + j] > a32[r * n_out + best]) if itemsize == 4 else \
                        (a64[r * n_out + j] > a64[r * n_out + best]):
                    best = j
            pred[s + r] = best
        else:
            pred[s + r] = 1 if ((a32[r * n_out] > 0.5) if itemsize == 4 else (a64[r * n_out] > 0.5)) else 0


def dense_epoch(StepPlan plan,               # IN/OUT as dense_step; its buffers X, Y hold each batch
                opt,                         # IN an OPT_DTYPE record (t: the steps taken before the epoch)
                X, Y,                        # IN (M, n_in), (M, n_out) the data and its targets
                const Py_ssize_t[::1] perm,  # IN (M,) the epoch's order of the rows
                const double[::1] lrs,       # IN (steps,) the learning rate of each step
                double[::1] costs,           # OUT (steps,) the cost of each step
                Py_ssize_t[::1] pred):       # OUT (M,) argmax (softmax) or A > 0.5 (one sigmoid), or length 0
    """All the mini-batches of one epoch, as dense_step each, with no Python between them.

    Step i takes rows perm[i * B:(i + 1) * B] of X, Y (B = the plan's rows; the last batch may be
    partial) into the plan's buffers X, Y, and the optimiser's step count opt.t + i + 1; step i's
    dropout key of the Dropout layer d is splitmix64(splitmix64(plan.dropout_seed ^ i) ^ d).
    Returns (steps applied, status of the first step that was not, its cost).
    """
    cdef Net* net = &plan.net
    cdef const OptSpec* o = _opt_spec(plan, opt)
    cdef Py_ssize_t B = plan.rows, M = getattr(X, "shape", (0,))[0], steps, i, s, e
    cdef int status = 0, l, isz = plan.isz
    cdef double res[2]
    cdef uint64_t x
    cdef const void* xp
    cdef const void* yp
    if M < 1 or getattr(X, "shape", None) != (M, net.n[0]) or getattr(Y, "shape", None) != (M, net.n[net.L]):
        raise ValueError(f"X and Y must be (M, {net.n[0]}) and (M, {net.n[net.L]}) with M >= 1")
    if perm.shape[0] != M:
        raise ValueError(f"perm must hold {M} rows, got {perm.shape[0]}")
    steps = (M + B - 1) // B
    if lrs.shape[0] != steps or costs.shape[0] != steps:
        raise ValueError(f"{M} rows in batches of {B} make {steps} steps: lrs and costs must hold that many")
    if pred.shape[0] != 0 and pred.shape[0] != M:
        raise ValueError("pred must have one entry per row, or none")
    for i in range(M):
        if perm[i] < 0 or perm[i] >= M:
            raise ValueError(f"perm[{i}] = {perm[i]} is not a row of X")
    xp = _data(X, plan.dtype, M * net.n[0], "X", False)
    yp = _data(Y, plan.dtype, M * net.n[net.L], "Y", False)
    if plan._batch_x is None:
        raise ValueError("a whole epoch gathers its batches into buffers['X'] and buffers['Y']: "
                         "build the plan with them")
    _batch(plan, plan._batch_x, plan._batch_y, B)
    i = 0
    with nogil:
        if not (net.bound[0] < INFINITY):
            _refresh(plan)
        while i < steps:
            s = i * B
            e = s + B if s + B < M else M
            net.m = e - s
            plan.h.lr = lrs[i]
            _bias_corrections(o, o.t + i + 1, &plan.h)
            x = _splitmix64(plan.dropout_seed ^ <uint64_t>i)
            for l in range(net.L):
                if net.drop[l]:
                    _set_key(net, l, _splitmix64(x ^ <uint64_t>net.dindex[l]))
            if isz == 4:
                status = _step_core(<float*>plan.P, <float*>plan.G, <float*>plan.S1, <float*>plan.S2, net,
                                    &plan.h, plan._lam, plan.n_params, <const float*>xp, <const float*>yp,
                                    &perm[s], res)
            else:
                status = _step_core(<double*>plan.P, <double*>plan.G, <double*>plan.S1, <double*>plan.S2, net,
                                    &plan.h, plan._lam, plan.n_params, <const double*>xp, <const double*>yp,
                                    &perm[s], res)
            costs[i] = res[0]
            if status != 0:
                break
            if pred.shape[0] != 0:
                _predictions(net, net.A, isz, pred, s, e - s)
            i += 1
    return i, status, res[0]


def gemm_f32(const float[:, :] A, const float[:, :] B, float[:, :] C, bint trans_a=False,
             bint trans_b=False, const Py_ssize_t[::1] idx=None, Py_ssize_t col=0):
    """C = op(A) @ op(B) by the fused step's own float32 kernels (``_gemm.h``).

    op(A) is A, or A.T with ``trans_a``; op(B) is B, or B.T with ``trans_b`` (not
    both).  With ``idx`` the kernels read the rows A[idx] where they lie, as a
    gathered first layer does: op(A) is A[idx], or A[idx][:, col:col + m].T.  Rows
    may be strided, elements within a row must be contiguous.  Returns False,
    leaving C untouched, where this copy of the extension has no such kernel or
    the shape is left to BLAS.
    """
    cdef Py_ssize_t m = C.shape[0], n = C.shape[1], r, i
    cdef Py_ssize_t rows_a = idx.shape[0] if idx is not None else A.shape[0]
    cdef Py_ssize_t k = rows_a if trans_a else A.shape[1]
    cdef Py_ssize_t lda = A.strides[0] // sizeof(float)
    cdef Py_ssize_t ldb = B.strides[0] // sizeof(float), ldc = C.strides[0] // sizeof(float)
    cdef const float* rows[MAXR]
    cdef const float** rp = NULL
    cdef int done
    if (((col + m > A.shape[1]) if trans_a else rows_a != m) or col < 0 or (col and not trans_a)
            or (trans_b and (trans_a or idx is not None))
            or (B.shape[1] != k or B.shape[0] != n if trans_b else B.shape[0] != k or B.shape[1] != n)):
        raise ValueError(f"gemm_f32: op(A) of A ({A.shape[0]}, {A.shape[1]}) with {rows_a} rows, col={col}, "
                         f"trans_a={bool(trans_a)} and B ({B.shape[0]}, {B.shape[1]}), "
                         f"trans_b={bool(trans_b)} do not make C ({m}, {n})")
    for name, view in (("A", A), ("B", B), ("C", C)):
        if view.shape[1] > 1 and view.strides[1] != sizeof(float):
            raise ValueError(f"gemm_f32: the rows of {name} must be contiguous")
    if idx is not None:
        if rows_a > MAXR:
            raise ValueError(f"gemm_f32: at most {MAXR} rows by index, got {rows_a}")
        for r in range(rows_a):
            i = idx[r]
            if i < 0 or i >= A.shape[0]:
                raise ValueError(f"gemm_f32: idx[{r}] = {i} is not a row of A")
            rows[r] = &A[i, 0]
        rp = rows
    if m == 0 or n == 0 or k == 0:
        return False
    with nogil:
        if trans_b:
            done = fg_nt(m, n, k, &A[0, 0], lda, &B[0, 0], ldb, &C[0, 0], ldc)
        elif trans_a:
            done = fg_tn(m, n, k, &A[0, col] if rp == NULL else NULL, lda, rp, col, &B[0, 0], ldb,
                         &C[0, 0], ldc)
        else:
            done = fg_nn(m, n, k, &A[0, 0] if rp == NULL else NULL, lda, rp, &B[0, 0], ldb, &C[0, 0], ldc)
    return bool(done)
