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


cdef int _setup(Net* net, Hyper* h, floating* P, floating* G, Py_ssize_t n_params,
                const Py_ssize_t[:, ::1] layers, const double[:, ::1] slopes, const size_t[::1] bufs,
                const floating* Xb, const floating* Yb, Py_ssize_t m, int loss, int kind,
                double beta1, double beta2, double eps, Py_ssize_t n_decay, size_t gemm,
                int n_threads, double[::1] bound) except -1:
    cdef Py_ssize_t L = layers.shape[0], l
    cdef int nt
    if L < 1 or L > MAXL:
        raise ValueError(f"a fused step takes 1 to {MAXL} Dense layers, got {L}")
    if layers.shape[1] != 12 or slopes.shape[0] != L or slopes.shape[1] != 4 or bufs.shape[0] != 10 * L + 5:
        raise ValueError(f"a fused step of {L} layers needs a ({L}, 12) layer table, a ({L}, 4) table of "
                         f"slopes, scales, eps and momenta, and {10 * L + 5} buffers")
    if loss < MSE or loss > CCE or kind < OPT_GD or kind > OPT_ADAM:
        raise ValueError(f"unknown loss {loss} or optimiser {kind}")
    nt = n_threads if FN_OPENMP else 1
    nt = 1 if nt < 1 else (MAXT if nt > MAXT else nt)
    if bound.shape[0] != 3:
        raise ValueError(f"bound must hold 3 values (|w|, |state 1|, |state 2|), got {bound.shape[0]}")
    net.L = <int>L
    net.nt = nt
    net.bound = &bound[0]
    net.limit = (FLT_MAX if sizeof(floating) == sizeof(float) else DBL_MAX) / 4.0
    net.loss = loss
    net.m = m
    net.gemm = gemm
    for l in range(L):
        if layers[l, 2] < LINEAR or layers[l, 2] > SOFTMAX:
            raise ValueError(f"unknown activation code {layers[l, 2]}")
        if (layers[l, 3] < 0 or layers[l, 3] + layers[l, 0] * layers[l, 1] > n_params
                or layers[l, 4] + layers[l, 1] > n_params or (l > 0 and layers[l, 0] != layers[l - 1, 1])):
            raise ValueError(f"layer {l} does not fit the arena of {n_params} parameters")
        net.n[l] = layers[l, 0]
        net.n[l + 1] = layers[l, 1]
        net.act[l] = <int>layers[l, 2]
        net.slope[l] = slopes[l, 0]
        net.W[l] = <void*>(P + layers[l, 3])
        net.dW[l] = <void*>(G + layers[l, 3])
        if layers[l, 4] >= 0:
            net.b[l] = <void*>(P + layers[l, 4])
            net.db[l] = <void*>(G + layers[l, 4])
        else:
            net.b[l] = <void*>bufs[10 * L + 3]
            net.db[l] = <void*>bufs[10 * L + 4]
        net.has_bias[l] = layers[l, 4] >= 0
        net.woff[l] = layers[l, 3]
        net.boff[l] = layers[l, 4]
        net.goff[l] = layers[l, 8] if layers[l, 7] != 0 else -1
        net.betaoff[l] = layers[l, 9] if layers[l, 7] != 0 else -1
        net.Z[l] = <void*>bufs[l]
        net.drop[l] = layers[l, 5] >= 0 and l < L - 1 and bufs[L + l] != 0
        if layers[l, 5] >= 0 and not net.drop[l]:
            raise ValueError(f"layer {l}: dropout needs a hidden layer and an output buffer")
        net.dindex[l] = layers[l, 5]
        net.Dr[l] = <void*>bufs[L + l]
        net.keep_all[l] = layers[l, 6] >= 4294967296
        net.thr[l] = 0 if net.keep_all[l] else <uint32_t>layers[l, 6]
        net.scale[l] = slopes[l, 1]
        net.k1[l] = 0
        net.k2[l] = 0
        net.bn[l] = layers[l, 7] != 0
        net.actnode[l] = layers[l, 10] != 0
        if (net.bn[l] or net.actnode[l]) and (l == L - 1 or net.act[l] == SOFTMAX):
            raise ValueError(f"layer {l}: BatchNorm and Activation layers follow hidden layers only")
        if net.bn[l] and (layers[l, 8] < 0 or layers[l, 9] < 0 or layers[l, 8] + layers[l, 1] > n_params
                          or layers[l, 9] + layers[l, 1] > n_params):
            raise ValueError(f"layer {l}: gamma and beta do not fit the arena")
        net.gamma[l] = <void*>(P + layers[l, 8]) if net.bn[l] else NULL
        net.beta[l] = <void*>(P + layers[l, 9]) if net.bn[l] else NULL
        net.dgamma[l] = <void*>(G + layers[l, 8]) if net.bn[l] else NULL
        net.dbeta[l] = <void*>(G + layers[l, 9]) if net.bn[l] else NULL
        net.xhat[l] = <void*>bufs[2 * L + l]
        net.Bo[l] = <void*>bufs[3 * L + l]
        net.Ao[l] = <void*>bufs[4 * L + l]
        net.mean[l] = <void*>bufs[5 * L + l]
        net.var[l] = <void*>bufs[6 * L + l]
        net.invstd[l] = <void*>bufs[7 * L + l]
        net.rmean[l] = <void*>bufs[8 * L + l]
        net.rvar[l] = <void*>bufs[9 * L + l]
        if (net.bn[l] and (bufs[2 * L + l] == 0 or bufs[3 * L + l] == 0 or bufs[5 * L + l] == 0
                           or bufs[6 * L + l] == 0 or bufs[7 * L + l] == 0 or bufs[8 * L + l] == 0
                           or bufs[9 * L + l] == 0)) or (net.actnode[l] and bufs[4 * L + l] == 0):
            raise ValueError(f"layer {l}: a BatchNorm or Activation buffer is missing")
        net.eps[l] = slopes[l, 2]
        net.momentum[l] = slopes[l, 3]
    net.A = <void*>bufs[10 * L]
    net.D[0] = <void*>bufs[10 * L + 1]
    net.D[1] = <void*>bufs[10 * L + 2]
    net.zeros = <void*>bufs[10 * L + 3]
    net.scratch = <void*>bufs[10 * L + 4]
    net.X = <void*>Xb
    # gathered steps skip copying the batch when both first-layer products read rows in place
    net.in_place = _own(net, Xb, 0) and m <= MAXR and net.n[0] <= FG_MAX_K
    net.Y = <void*>Yb
    h.kind = kind
    h.beta1 = beta1
    h.beta2 = beta2
    h.eps = eps
    h.bc1 = 1.0
    h.bc2 = 1.0
    h.n_decay = _clip(n_decay, n_params)
    return 0


def dense_step(floating[::1] P,                 # IN/OUT (n_params,) the parameter arena
               floating[::1] G,                 # OUT    (n_params,) the gradient arena
               floating[::1] S1,                # IN/OUT optimiser state 1 (or length 0)
               floating[::1] S2,                # IN/OUT optimiser state 2 (or length 0)
               const Py_ssize_t[:, ::1] layers, # IN (L, 12): n_in, n_out, act, W offset, b offset (-1: none),
                                                #   the index of a Dropout after the layer (-1: none), its
                                                #   threshold, BatchNorm (0/1), gamma and beta offsets,
                                                #   Activation layer (0/1), 0
               const double[:, ::1] slopes,     # IN (L, 4): leaky-ReLU slope, dropout scale 1 / keep_prob,
                                                #   BatchNorm eps and momentum
               const size_t[::1] bufs,          # IN addresses, L each (0: none): Z, Dr, xhat, BatchNorm out,
                                                #   Activation out, mean, var, invstd, running mean,
                                                #   running var; then A, D0, D1, zeros, scratch
               const uint64_t[::1] keys,        # IN (L,) the dropout key of each layer followed by one
               const floating[:, ::1] Xb,       # IN (m, n_in) the batch; OUT when idx is given (unless the
                                                #   first layer reads X's rows in place: float32, AVX-512)
               const floating[:, ::1] Yb,       # IN (m, n_out) its targets; OUT when idx is given
               const floating[:, ::1] X,        # IN the data to gather rows from (ignored when idx is empty)
               const floating[:, ::1] Y,        # IN its targets
               const Py_ssize_t[::1] idx,       # IN (m,) rows to gather, or length 0
               int loss, double lam,
               int kind, double lr, double beta1, double beta2, double eps, double bc1, double bc2,
               Py_ssize_t n_decay, size_t gemm,
               double[::1] out,                 # OUT (2,): the cost (L2 included), sum of g^2
               int n_threads,
               double[::1] bound):              # IN/OUT (3,) bounds of |w|, |state 1|, |state 2| (inf: unknown)
    """One training step of a Dense stack; returns 0 (updated), else nothing changed and 1 (cost not
    finite), 2 (gradient), 3 (the update would overflow) or 4 (a batch-norm statistic)."""
    cdef Net net
    cdef Hyper h
    cdef int status
    cdef bint gather = idx.shape[0] > 0
    cdef Py_ssize_t m = Xb.shape[0]
    if m < 1 or Yb.shape[0] != m or (gather and idx.shape[0] != m):
        raise ValueError("a fused step needs m >= 1 rows in Xb, Yb (and idx)")
    if G.shape[0] != P.shape[0] or out.shape[0] < 2 or keys.shape[0] != layers.shape[0]:
        raise ValueError("G must match P, keys must hold one key per layer and out 2 values")
    _setup(&net, &h, &P[0], &G[0], P.shape[0], layers, slopes, bufs, &Xb[0, 0], &Yb[0, 0], m, loss,
           kind, beta1, beta2, eps, n_decay, gemm, n_threads, bound)
    cdef int l
    for l in range(net.L):
        _set_key(&net, l, keys[l])
    h.lr = lr
    h.bc1 = bc1
    h.bc2 = bc2
    cdef const floating* xp = &X[0, 0] if gather else NULL
    cdef const floating* yp = &Y[0, 0] if gather else NULL
    cdef const Py_ssize_t* ip = &idx[0] if gather else NULL
    cdef floating* s1 = &S1[0] if S1.shape[0] > 0 else NULL
    cdef floating* s2 = &S2[0] if S2.shape[0] > 0 else NULL
    with nogil:
        if not (bound[0] < INFINITY):
            _refresh_bounds(&P[0], s1, s2, P.shape[0], &bound[0])
        status = _step_core(&P[0], &G[0], s1, s2, &net, &h, lam, P.shape[0], xp, yp, ip, &out[0])
    return status


def dense_epoch(floating[::1] P,                 # IN/OUT (n_params,) the parameter arena
                floating[::1] G,                 # OUT    (n_params,) the gradient arena
                floating[::1] S1,                # IN/OUT optimiser state 1 (or length 0)
                floating[::1] S2,                # IN/OUT optimiser state 2 (or length 0)
                const Py_ssize_t[:, ::1] layers, # IN (L, 12), as dense_step
                const double[:, ::1] slopes,     # IN (L, 4), as dense_step
                const size_t[::1] bufs,          # IN as dense_step, for batches of up to B rows
                floating[:, ::1] Xb,             # OUT (B, n_in) the batch buffer
                floating[:, ::1] Yb,             # OUT (B, n_out) its targets
                const floating[:, ::1] X,        # IN (M, n_in) the data
                const floating[:, ::1] Y,        # IN (M, n_out) its targets
                const Py_ssize_t[::1] perm,      # IN (M,) the epoch's order of the rows
                const double[::1] lrs,           # IN (steps,) the learning rate of each step
                int loss, double lam,
                int kind, double beta1, double beta2, double eps, int bias_correction,
                Py_ssize_t t0, Py_ssize_t n_decay, size_t gemm,
                uint64_t dseed,                  # IN dropout_key(seed, epoch): step i's dropout key of the
                                                 #    Dropout layer d is splitmix64(splitmix64(dseed ^ i) ^ d)
                double[::1] costs,               # OUT (steps,) the cost of each step
                Py_ssize_t[::1] pred,            # OUT (M,) argmax (softmax) or A > 0.5 (one sigmoid), or length 0
                int n_threads,
                double[::1] bound):              # IN/OUT as dense_step
    """All the mini-batches of one epoch, as dense_step each, with no Python between them.

    Step i takes rows perm[i * B:(i + 1) * B] (the last one may be partial) and the
    optimiser's step count t0 + i + 1; bias_correction: 0 none, 1 beta1 (momentum),
    2 both (Adam).  Returns (steps applied, status of the first step that was not, its cost).
    """
    cdef Net net
    cdef Hyper h
    cdef Py_ssize_t B = Xb.shape[0], M = X.shape[0], n_out, steps, i, s, e, r, j, best
    cdef int status = 0
    cdef double tt
    cdef double res[2]
    cdef uint64_t x
    cdef int l
    cdef const floating* A
    if B < 1 or Yb.shape[0] != B or Y.shape[0] != M or perm.shape[0] != M or M < 1:
        raise ValueError("a fused epoch needs B >= 1 buffer rows, and X, Y, perm of M >= 1 rows")
    steps = (M + B - 1) // B
    if lrs.shape[0] != steps or costs.shape[0] != steps or G.shape[0] != P.shape[0]:
        raise ValueError(f"{M} rows in batches of {B} make {steps} steps: lrs and costs must hold that many")
    if pred.shape[0] != 0 and pred.shape[0] != M:
        raise ValueError("pred must have one entry per row, or none")
    if X.shape[1] != layers[0, 0] or Y.shape[1] != layers[layers.shape[0] - 1, 1]:
        raise ValueError("X and Y must have the model's input and output widths")
    for i in range(M):
        if perm[i] < 0 or perm[i] >= M:
            raise ValueError(f"perm[{i}] = {perm[i]} is not a row of X")
    _setup(&net, &h, &P[0], &G[0], P.shape[0], layers, slopes, bufs, &Xb[0, 0], &Yb[0, 0], B, loss,
           kind, beta1, beta2, eps, n_decay, gemm, n_threads, bound)
    n_out = net.n[net.L]
    A = <floating*>net.A
    cdef floating* s1 = &S1[0] if S1.shape[0] > 0 else NULL
    cdef floating* s2 = &S2[0] if S2.shape[0] > 0 else NULL
    i = 0
    with nogil:
        if not (bound[0] < INFINITY):
            _refresh_bounds(&P[0], s1, s2, P.shape[0], &bound[0])
        while i < steps:
            s = i * B
            e = s + B if s + B < M else M
            net.m = e - s
            h.lr = lrs[i]
            tt = <double>(t0 + i + 1)
            h.bc1 = 1.0 - pow(beta1, tt) if bias_correction >= 1 else 1.0
            h.bc2 = 1.0 - pow(beta2, tt) if bias_correction >= 2 else 1.0
            x = _splitmix64(dseed ^ <uint64_t>i)
            for l in range(net.L):
                if net.drop[l]:
                    _set_key(&net, l, _splitmix64(x ^ <uint64_t>net.dindex[l]))
            status = _step_core(&P[0], &G[0], s1, s2, &net, &h, lam, P.shape[0], &X[0, 0], &Y[0, 0],
                                &perm[s], res)
            costs[i] = res[0]
            if status != 0:
                break
            if pred.shape[0] != 0:
                for r in range(e - s):
                    if loss == CCE:
                        best = 0
                        for j in range(1, n_out):
                            if A[r * n_out + j] > A[r * n_out + best]:
                                best = j
                        pred[s + r] = best
                    else:
                        pred[s + r] = 1 if A[r * n_out] > 0.5 else 0
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
