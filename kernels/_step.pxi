# The one-call training step: a whole mini-batch step (or epoch) of a Dense stack, and its typed plan.
# Included by _ckernels.pyx (one extension module per instruction-set level).

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
# that BLAS on one thread while steps run.  In float32 on the AVX2 and AVX-512 copies of
# the extension, the products run on _gemm.h's kernels instead (13-15 %
# faster than sgemm on the large ones), and the first layer reads the gathered
# rows where they lie in X, so the gather copies only the targets.

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


# NumPy's np.random.default_rng([seed, epoch]).shuffle(arange(m)), reproduced: SeedSequence's
# hash of the two integers' 32-bit words into PCG64's state (XSL-RR output, 128-bit LCG) and
# Generator.shuffle's Fisher-Yates with random_interval's masked rejection (32-bit draws, two per
# 64-bit output, below 2**32).  tests/test_whole_fit.py holds it to NumPy's permutations, and the
# trainer checks it against NumPy once per process before it relies on it.
cdef extern from *:
    """
    #include <stdint.h>
    typedef struct { unsigned __int128 state, inc; int has; uint32_t u; } fn_pcg64;
    #define FN_PCG_MUL ((((unsigned __int128)2549297995355413924ULL) << 64) + 4865540595714422341ULL)

    static inline uint32_t fn_hashmix(uint32_t v, uint32_t *h) {
        v ^= *h; *h *= 0x931e8875u; v *= *h; v ^= v >> 16; return v;
    }
    static inline uint32_t fn_mix(uint32_t x, uint32_t y) {
        uint32_t r = 0xca01f9ddu * x - 0x4973f715u * y; r ^= r >> 16; return r;
    }
    static inline int fn_words(uint64_t n, uint32_t *w) {
        int k = 0;
        if (n == 0) { w[0] = 0; return 1; }
        while (n) { w[k++] = (uint32_t)n; n >>= 32; }
        return k;
    }
    static inline void fn_pcg64_step(fn_pcg64 *g) { g->state = g->state * FN_PCG_MUL + g->inc; }
    static void fn_pcg64_seed(fn_pcg64 *g, uint64_t seed, uint64_t epoch) {
        uint32_t ent[4], pool[4], st[8], h = 0x43b0d7e5u, hb = 0x8b51f9ddu, v;
        uint64_t w[4];
        int n = fn_words(seed, ent), i, s, d;
        n += fn_words(epoch, ent + n);
        for (i = 0; i < 4; i++) pool[i] = fn_hashmix(i < n ? ent[i] : 0, &h);
        for (s = 0; s < 4; s++)
            for (d = 0; d < 4; d++)
                if (s != d) pool[d] = fn_mix(pool[d], fn_hashmix(pool[s], &h));
        for (i = 0; i < 8; i++) {
            v = pool[i % 4] ^ hb; hb *= 0x58f38dedu; v *= hb; v ^= v >> 16; st[i] = v;
        }
        for (i = 0; i < 4; i++) w[i] = (uint64_t)st[2 * i] | ((uint64_t)st[2 * i + 1] << 32);
        g->inc = ((((unsigned __int128)w[2] << 64) | w[3]) << 1) | 1u;
        g->state = 0;
        fn_pcg64_step(g);
        g->state += ((unsigned __int128)w[0] << 64) | w[1];
        fn_pcg64_step(g);
        g->has = 0;
        g->u = 0;
    }
    static inline uint64_t fn_pcg64_next64(fn_pcg64 *g) {
        uint64_t x;
        unsigned r;
        fn_pcg64_step(g);
        x = (uint64_t)(g->state >> 64) ^ (uint64_t)g->state;
        r = (unsigned)(g->state >> 122);
        return (x >> r) | (x << ((64u - r) & 63u));
    }
    static inline uint32_t fn_pcg64_next32(fn_pcg64 *g) {
        uint64_t x;
        if (g->has) { g->has = 0; return g->u; }
        x = fn_pcg64_next64(g);
        g->has = 1;
        g->u = (uint32_t)(x >> 32);
        return (uint32_t)x;
    }
    static inline uint64_t fn_interval(fn_pcg64 *g, uint64_t max) {
        uint64_t mask = max, v;
        if (max == 0) return 0;
        mask |= mask >> 1; mask |= mask >> 2; mask |= mask >> 4;
        mask |= mask >> 8; mask |= mask >> 16; mask |= mask >> 32;
        if (max <= 0xffffffffULL) { while ((v = (fn_pcg64_next32(g) & mask)) > max) {} }
        else { while ((v = (fn_pcg64_next64(g) & mask)) > max) {} }
        return v;
    }
    /* p = numpy.random.default_rng([seed, epoch]).permutation-by-shuffle of arange(m) */
    static void fn_epoch_order(uint64_t seed, uint64_t epoch, Py_ssize_t *p, Py_ssize_t m) {
        fn_pcg64 g;
        Py_ssize_t i, j, t;
        fn_pcg64_seed(&g, seed, epoch);
        for (i = 0; i < m; i++) p[i] = i;
        for (i = m - 1; i >= 1; i--) {
            j = (Py_ssize_t)fn_interval(&g, (uint64_t)i);
            t = p[j]; p[j] = p[i]; p[i] = t;
        }
    }
    """
    void fn_epoch_order(uint64_t seed, uint64_t epoch, Py_ssize_t* p, Py_ssize_t m) nogil


def epoch_order(uint64_t seed, uint64_t epoch, Py_ssize_t[::1] out):
    """out = numpy.random.default_rng([seed, epoch]).shuffle(arange(len(out))), as the trainer
    draws an epoch's order (for the test that holds the two together)."""
    if out.shape[0] > 0:
        fn_epoch_order(seed, epoch, &out[0], out.shape[0])

def epoch_orders(uint64_t seed, uint64_t e0, Py_ssize_t[:, ::1] out):
    """Row i of out: :func:`epoch_order` of epoch ``e0 + i`` (a whole fit's orders in one call)."""
    cdef Py_ssize_t i
    if out.shape[1] > 0:
        for i in range(out.shape[0]):
            fn_epoch_order(seed, e0 + <uint64_t>i, &out[i, 0], out.shape[1])


ctypedef void (*sgemm_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*) noexcept nogil
ctypedef void (*dgemm_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                         double*, double*, int*) noexcept nogil


# single-precision products in AVX-512 or AVX2 where the variant is built for it (else FG_AVAILABLE is 0)
cdef extern from "_gemm.h" nogil:
    int FG_AVAILABLE
    int fg_nn(Py_ssize_t m, Py_ssize_t n, Py_ssize_t K, const float* A, Py_ssize_t lda,
              const float* const* rows, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc)
    int fg_nn_relu(Py_ssize_t m, Py_ssize_t n, Py_ssize_t K, const float* A, Py_ssize_t lda,
                   const float* const* rows, const float* B, Py_ssize_t ldb, const float* bias, float* C,
                   Py_ssize_t ldc)
    int fg_tn(Py_ssize_t m, Py_ssize_t n, Py_ssize_t K, const float* A, Py_ssize_t lda,
              const float* const* rows, Py_ssize_t col, const float* B, Py_ssize_t ldb, float* C,
              Py_ssize_t ldc)
    int fg_nt(Py_ssize_t m, Py_ssize_t n, Py_ssize_t K, const float* A, Py_ssize_t lda,
              const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc)
    int fg_pack_pays(Py_ssize_t m, Py_ssize_t n)
    Py_ssize_t fg_pack_size(Py_ssize_t m, Py_ssize_t K)
    void fg_pack_t(Py_ssize_t m, Py_ssize_t K, const float* A, Py_ssize_t lda, float* P)
    void fg_nn_packed(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t n, Py_ssize_t K, const float* P, const float* B,
                      Py_ssize_t ldb, float* C, Py_ssize_t ldc)

cdef enum:
    NARROW_WIDTH = 8     # widest layer, inputs included, of a narrow net
    NARROW_LAYERS = 4    # most Dense layers of a narrow net
    NARROW_BLOCK = 128   # rows of a narrow block: each unit's values in a row of this many
    LANES = 16           # partial sums of each weight gradient element (one vector of floats)
    NARROW_SPLIT = 128   # rows from which a narrow pass runs as two ranges of rows (_narrow_grads)


cdef struct NarrowPart:  # one range of a narrow pass's rows, summed (_narrow_part)
    double aw[NARROW_LAYERS * NARROW_WIDTH * NARROW_WIDTH * 8]  # 8 float64 partial sums of each dW element
    double ab[NARROW_LAYERS * NARROW_WIDTH * 8]                 # ... and of each db element
    double cost                                                 # the summed loss
    double pad[7]                                               # the next part on its own cache lines


# Two threads of a standing team hand each other a narrow pass's second range of rows: the caller
# posts a task count, the helper runs the range and posts the same count back.  Each side spins for
# a while (the other answers within microseconds while both work), then sleeps on a futex, so a
# thread that waits for a descheduled one, or for a Python callback between epochs, gives its core
# back.  A post wakes a sleeper only when one registered: that store-then-load pairs with the
# waiter's register-then-load (both sequentially consistent), so one of them sees the other.
cdef extern from *:
    """
    #include <limits.h>
    #if defined(__linux__)
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #endif
    #define FN_SIGNAL_SPINS 10000
    typedef struct { _Alignas(64) unsigned value; unsigned sleepers; char pad[56]; } fn_signal;

    static inline void fn_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #endif
    }
    static void fn_signal_post(fn_signal *s, unsigned v) {
        __atomic_store_n(&s->value, v, __ATOMIC_SEQ_CST);
    #if defined(__linux__)
        if (__atomic_load_n(&s->sleepers, __ATOMIC_SEQ_CST))
            syscall(SYS_futex, &s->value, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    #endif
    }
    /* returns once s->value == v */
    static void fn_signal_wait(fn_signal *s, unsigned v) {
        unsigned cur;
        int i;
        for (i = 0; i < FN_SIGNAL_SPINS; i++) {
            if (__atomic_load_n(&s->value, __ATOMIC_ACQUIRE) == v) return;
            fn_pause();
        }
    #if defined(__linux__)
        __atomic_fetch_add(&s->sleepers, 1u, __ATOMIC_SEQ_CST);
        while ((cur = __atomic_load_n(&s->value, __ATOMIC_SEQ_CST)) != v)
            syscall(SYS_futex, &s->value, FUTEX_WAIT_PRIVATE, cur, NULL, NULL, 0);
        __atomic_fetch_sub(&s->sleepers, 1u, __ATOMIC_SEQ_CST);
    #else
        while (__atomic_load_n(&s->value, __ATOMIC_ACQUIRE) != v) fn_pause();
    #endif
    }
    #ifdef _OPENMP
    static int fn_thread_num(void) { return omp_get_thread_num(); }
    static int fn_num_threads(void) { return omp_get_num_threads(); }
    #else
    static int fn_thread_num(void) { return 0; }
    static int fn_num_threads(void) { return 1; }
    #endif
    """
    ctypedef struct fn_signal:
        unsigned value
        unsigned sleepers
    void fn_signal_post(fn_signal* s, unsigned v) nogil
    void fn_signal_wait(fn_signal* s, unsigned v) nogil
    int fn_thread_num() nogil
    int fn_num_threads() nogil


#: rows from which a narrow net's step runs as two ranges of rows (and a whole fit on two threads)
NARROW_SPLIT_ROWS = NARROW_SPLIT


cdef struct NarrowTeam:  # a whole-fit call's two threads for the narrow pass (_fit_on_team)
    fn_signal go         # tasks posted by thread 0 (the count)
    fn_signal done       # tasks thread 1 finished
    unsigned posted      # thread 0's count
    bint quit            # set before the last post: thread 1 returns


cdef enum:
    MAXL = 64        # most Dense layers of a fused step
    MAXT = 64        # most threads of a fused step
    MAXR = 1024      # most batch rows whose addresses a step keeps (the first layer's rows in place)
    COPY_ROW = 256   # inputs up to which a serial step copies its batch's rows (_batch)

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
    const float* xrows[MAXR]     # ... at these addresses (float32 with the own kernels)
    const float* xpack           # a fit's X, the same batch every step, as fg_pack_t's panels (or NULL):
                                 # the first layer's forward product reads it (_packs_input)
    const void* xpad             # ... and X with its rows ldpad apart (or NULL): the first layer's dW reads it
    Py_ssize_t ldpad
    void* Y                      # its targets (m, n[L])
    size_t gemm
    double* bound                # (3,) upper bounds of |w|, |state 1|, |state 2| (INFINITY: unknown)
    double limit                 # a quarter of the dtype's largest finite value
    NarrowPart* parts            # a narrow net's two ranges of rows (_narrow_grads); NULL otherwise
    NarrowTeam* team             # inside a whole fit on two threads: the helper that takes the second


cdef inline bint _own(Net* net, const floating* dummy, int l) noexcept nogil:
    """Whether layer l's products run on _gemm.h's kernels (float32 on the AVX2 and AVX-512 copies).

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
    cdef Py_ssize_t m = net.m, nx = net.n[0], ny = net.n[net.L], i, j
    cdef floating* xb = <floating*>net.X
    cdef floating* yb = <floating*>net.Y
    cdef const floating* row
    for i in range(_cut(m, net.nt, t), _cut(m, net.nt, t + 1)):
        if net.in_place:
            net.xrows[i] = <const float*>(X + idx[i] * nx)
        elif nx <= COPY_ROW:  # a short row: a loop the compiler vectorises, not a call
            row = X + idx[i] * nx
            for j in range(nx):
                xb[i * nx + j] = row[j]
        else:
            memcpy(xb + i * nx, X + idx[i] * nx, nx * sizeof(floating))
        row = Y + idx[i] * ny
        for j in range(ny):  # the targets: a few classes (or one) per row
            yb[i * ny + j] = row[j]


cdef inline void _fwd_cols(const floating* src, const floating* b, floating* dst, Py_ssize_t m,
                           Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1, int act,
                           floating slope) noexcept nogil:
    """dst[:, j0:j1] = g(src[:, j0:j1] + b[j0:j1]) (dst may be src).  A thread that owns every
    column (a narrow layer) runs them in spans of whole rows, as bias_act_forward does, so the
    vectorised transcendental functions see long spans however few units the layer has."""
    cdef Py_ssize_t i
    if j0 == 0 and j1 == n:
        _fwd_piece(src, b, dst, m, n, act, slope, 0, _spans(m, n))
        return
    for i in range(m):
        _fwd_span(src + i * n + j0, b + j0, dst + i * n + j0, j1 - j0, act, slope)


cdef enum:
    ROWS_WORK = 1048576   # m * k * n of a product from which a narrow layer splits it by rows


cdef inline bint _rows_split(Net* net, int l) noexcept nogil:
    """Whether the team splits layer l's forward product by rows instead of by units: when a
    split of its units on 16-column boundaries would leave a thread without any (a narrow layer,
    such as a first layer of many inputs and few units) and the product is large.  Every element
    of a product is computed the same way whatever block it falls in, so the split changes which
    thread computes it, not its bits; the element-wise work stays split by units."""
    if l == 0 and net.xpack != NULL:
        return net.nt > 1
    return (net.nt > 1 and net.n[l + 1] < 16 * net.nt and net.m >= 16 * net.nt
            and net.m * net.n[l] * net.n[l + 1] >= ROWS_WORK)


cdef inline bint _by_rows(Net* net, const floating* dummy, int l) noexcept nogil:
    """Whether the team splits all of layer l's work by rows instead of by units: its forward
    (product, bias, activation, dropout) and, from the layer above, the product of its dA and the
    activation's derivative (the bias sums, over rows, stay split by units).  For a layer whose
    rows do not start on cache lines (n[l + 1] not a multiple of 16, as digits' 100 units), where
    two threads writing the two ends of every row took turns owning its lines: 200 x 64 @ 64 x 100
    on two threads took about as long as on one.  And for a narrow output layer, whose units
    would leave a thread idle.  Plain Dense layers on the own products only (batch norm and
    Activation layers keep the split by units, and BLAS, whose blocking may follow a call's
    shape).  Which thread computes an element changes, not its bits."""
    cdef Py_ssize_t n = net.n[l + 1]
    if not _own(net, dummy, l) or net.nt <= 1 or net.bn[l] or net.actnode[l] or _rows_split(net, l):
        return False
    if l == net.L - 1 and n < 16 * net.nt:
        return net.m >= 16 * net.nt
    return n % 16 != 0 and n >= 16 * net.nt


cdef inline Py_ssize_t _cut16_near(Py_ssize_t total, Py_ssize_t parts, Py_ssize_t c) noexcept nogil:
    """As _cut16, rounded to the nearest multiple of 16 (209 rows in two: 112 and 97)."""
    cdef Py_ssize_t r = (total * c // parts + 8) & ~(<Py_ssize_t>15)
    return total if c >= parts or r > total else r


cdef void _step_forward_rows(const floating* dummy, Net* net, int l, int t) noexcept nogil:
    """Rows R_t of layer l's product, every unit: Z[R, :] = A_prev[R, :] @ W (_rows_split layers)."""
    cdef Py_ssize_t m = net.m, k = net.n[l], n = net.n[l + 1]
    cdef Py_ssize_t r0 = _cut(m, net.nt, t), r1 = _cut(m, net.nt, t + 1)
    cdef const floating* Ap = <const floating*>_input(net, l)
    cdef floating* Z = <floating*>net.Z[l]
    if l == 0 and net.xpack != NULL:
        r0 = _cut16_near(m, net.nt, t)
        r1 = _cut16_near(m, net.nt, t + 1)
        if r1 > r0:
            fg_nn_packed(r0, r1, n, k, net.xpack, <float*>net.W[l], n, <float*>Z, n)
        return
    if r1 <= r0:
        return
    if l == 0 and net.in_place:
        fg_nn(r1 - r0, n, k, NULL, 0, net.xrows + r0, <float*>net.W[l], n, <float*>Z + r0 * n, n)
    else:
        _mm(net.gemm, False, False, <int>(r1 - r0), <int>n, <int>k, Ap + r0 * k, <int>k,
            <floating*>net.W[l], <int>n, Z + r0 * n, <int>n, _own(net, Ap, l))


cdef void _step_forward_by_rows(const floating* dummy, Net* net, int l, int t) noexcept nogil:
    """Rows R_t of layer l, every unit (_by_rows layers): Z[R, :] = A_prev[R, :] @ W, then
    g(Z + b) in place below the output and dropout, as _step_forward computes them by units."""
    cdef Py_ssize_t m = net.m, k = net.n[l], n = net.n[l + 1], i
    cdef Py_ssize_t r0 = _cut(m, net.nt, t), r1 = _cut(m, net.nt, t + 1)
    cdef const floating* Ap = <const floating*>_input(net, l)
    cdef floating* Z = <floating*>net.Z[l] + r0 * n
    cdef const floating* b = <floating*>net.b[l]
    cdef bint rows = l == 0 and net.in_place
    if r1 <= r0:
        return
    if _relu_in_product(net, Ap, l):
        fg_nn_relu(r1 - r0, n, k, NULL if rows else <const float*>Ap + r0 * k, k,
                   net.xrows + r0 if rows else NULL, <float*>net.W[l], n, <const float*>b,
                   <float*>Z, n)
    else:
        if rows:
            fg_nn(r1 - r0, n, k, NULL, 0, net.xrows + r0, <float*>net.W[l], n, <float*>Z, n)
        else:
            _mm(net.gemm, False, False, <int>(r1 - r0), <int>n, <int>k, Ap + r0 * k, <int>k,
                <floating*>net.W[l], <int>n, Z, <int>n, _own(net, Ap, l))
        if l == net.L - 1:
            return
        _fwd_cols(Z, b, Z, r1 - r0, n, 0, n, net.act[l], <floating>net.slope[l])
    if net.drop[l]:
        for i in range(r0, r1):
            _dropout_piece(<floating*>net.Z[l], <floating*>net.Dr[l], i * n, i * n + n, net.k1[l],
                           net.k2[l], net.thr[l], net.keep_all[l], <floating>net.scale[l])


cdef inline bint _relu_in_product(Net* net, const floating* dummy, int l) noexcept nogil:
    """Whether layer l's forward stores relu(Z + b) from its product (fg_nn_relu): a hidden Dense
    ReLU layer with no batch norm or Activation layer after it, float32 on the own kernels."""
    return (_own(net, dummy, l) and l < net.L - 1 and net.act[l] == RELU and not net.bn[l]
            and not net.actnode[l])


cdef void _step_forward(const floating* dummy, Net* net, int l, int t) noexcept nogil:
    """Units J_t of layer l: Z[:, J] = A_prev @ W[:, J] (unless _rows_split computed Z), then
    g(Z + b) in place (hidden layers; a ReLU layer's as its product stores Z)."""
    cdef Py_ssize_t m = net.m, k = net.n[l], n = net.n[l + 1], j, w
    cdef Py_ssize_t j0 = _cut16(n, net.nt, t), j1 = _cut16(n, net.nt, t + 1)
    cdef const floating* Ap = <const floating*>_input(net, l)
    cdef floating* Z = <floating*>net.Z[l]
    cdef const floating* src
    cdef const floating* b = <floating*>net.b[l]
    if _by_rows(net, dummy, l):
        _step_forward_by_rows(dummy, net, l, t)
        return
    if j1 <= j0:
        return
    if _rows_split(net, l):
        pass
    elif l == 0 and net.xpack != NULL:
        fg_nn_packed(0, m, n, k, net.xpack, <float*>net.W[l], n, <float*>Z, n)
    elif _relu_in_product(net, Ap, l):  # A = relu(Z + b) as the product stores Z: no pass of its own
        fg_nn_relu(m, j1 - j0, k, NULL if net.in_place and l == 0 else <const float*>Ap, k,
                   net.xrows if net.in_place and l == 0 else NULL, <float*>net.W[l] + j0, n,
                   <const float*>b + j0, <float*>Z + j0, n)
        if net.drop[l]:
            _step_dropout(dummy, net, l, j0, j1)
        return
    elif l == 0 and net.in_place:
        fg_nn(m, j1 - j0, k, NULL, 0, net.xrows, <float*>net.W[l] + j0, n, <float*>Z + j0, n)
    else:
        _mm(net.gemm, False, False, <int>m, <int>(j1 - j0), <int>k, Ap, <int>k,
            <floating*>net.W[l] + j0, <int>n, Z + j0, <int>n, _own(net, Ap, l))
    if l == net.L - 1:
        return
    if not net.bn[l] and not net.actnode[l]:
        _fwd_cols(Z, b, Z, m, n, j0, j1, net.act[l], <floating>net.slope[l])
    else:
        if net.has_bias[l]:
            _fwd_cols(Z, b, Z, m, n, j0, j1, LINEAR, 0)
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
            _fwd_cols(src, <floating*>net.zeros, <floating*>net.Ao[l], m, n, j0, j1, net.act[l],
                      <floating>net.slope[l])
    if net.drop[l]:
        _step_dropout(dummy, net, l, j0, j1)


cdef void _step_dropout(const floating* dummy, Net* net, int l, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """Dropout on units j0:j1 of layer l's output, its mask into Dr."""
    cdef Py_ssize_t i, m = net.m, n = net.n[l + 1]
    cdef floating* A = <floating*>_out(net, l)
    for i in range(m):
        _dropout_piece(A, <floating*>net.Dr[l], i * n + j0, i * n + j1, net.k1[l], net.k2[l],
                       net.thr[l], net.keep_all[l], <floating>net.scale[l])


cdef void _step_loss(const floating* dummy, Net* net, int t, double* part) noexcept nogil:
    """Cost pieces of the rows of thread t (as loss_forward cuts them); A_out."""
    cdef int l = net.L - 1
    cdef Py_ssize_t m = net.m, n = net.n[net.L], pieces, K, c
    pieces = m if net.loss == CCE else _spans(m, n)
    K = KMAX if pieces > KMAX else pieces
    _loss_pieces(<floating*>net.Z[l], <floating*>net.b[l], <floating*>net.Y, <floating*>net.A, m, n,
                 net.loss, K, _cut(K, net.nt, t), _cut(K, net.nt, t + 1), part)


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


cdef void _colsum_cols(const floating* x1, const floating* x2, floating* out, floating* db,
                       Py_ssize_t m, Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1, int op,
                       floating p) noexcept nogil:
    """_colsum_block's sums, element for element and in its order (columns j0:j1, at most CB,
    each walked top to bottom), with the choice of op made once instead of once per row: a
    narrow layer (the course's 4 or 5 units) paid a call and the op's branches per row."""
    cdef double acc[CB]
    cdef Py_ssize_t i, j, w = j1 - j0
    cdef const floating* a
    cdef const floating* z
    cdef floating* o
    cdef floating d
    for j in range(w):
        acc[j] = 0
    for i in range(m):
        a = x1 + i * n + j0
        z = x2 + i * n + j0
        o = out + i * n + j0
        if op == TANH:
            for j in range(w):
                d = a[j] * tanh_grad(z[j])
                o[j] = d
                acc[j] += d
        elif op == RELU:
            for j in range(w):
                d = a[j] * relu_grad(z[j])
                o[j] = d
                acc[j] += d
        elif op == SIGMOID:
            for j in range(w):
                d = a[j] * sigmoid_grad(z[j])
                o[j] = d
                acc[j] += d
        elif op == LEAKY_RELU:
            for j in range(w):
                d = a[j] * leaky_relu_grad(z[j], p)
                o[j] = d
                acc[j] += d
        else:
            for j in range(w):
                d = a[j]
                o[j] = d
                acc[j] += d
    for j in range(w):
        db[j0 + j] = <floating>acc[j]


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


cdef void _grad_rows(floating* d, const floating* a, Py_ssize_t L, int op, floating p) noexcept nogil:
    """d = d * g'(a) over L elements: _colsum_cols's element-wise part, without its sums."""
    cdef Py_ssize_t i
    if op == TANH:
        for i in range(L):
            d[i] = d[i] * tanh_grad(a[i])
    elif op == RELU:
        for i in range(L):
            d[i] = d[i] * relu_grad(a[i])
    elif op == SIGMOID:
        for i in range(L):
            d[i] = d[i] * sigmoid_grad(a[i])
    elif op == LEAKY_RELU:
        for i in range(L):
            d[i] = d[i] * leaky_relu_grad(a[i], p)


cdef void _colsums(const floating* x, floating* db, Py_ssize_t m, Py_ssize_t n, Py_ssize_t j0,
                   Py_ssize_t j1) noexcept nogil:
    """db[j0:j1] = the sums of x[:, j0:j1] (at most CB columns) in float64, each column top to
    bottom: _colsum_cols's sums, reading x only."""
    cdef double acc[CB]
    cdef Py_ssize_t i, j, w = j1 - j0
    cdef const floating* r
    for j in range(w):
        acc[j] = 0
    for i in range(m):
        r = x + i * n + j0
        for j in range(w):
            acc[j] += r[j]
    for j in range(w):
        db[j0 + j] = <floating>acc[j]


cdef void _step_backward(const floating* dummy, Net* net, int l, int t) noexcept nogil:
    """Inputs J_t of layer l: dW[J, :], and below the first layer dZ_prev[:, J] and db_prev[J]
    (a _by_rows layer below: dZ_prev[R_t, :] of rows R_t, and its db_prev in its own phase)."""
    cdef Py_ssize_t m = net.m, k = net.n[l], n = net.n[l + 1], j, w
    cdef Py_ssize_t j0 = _cut_in(k, net.nt, t, l), j1 = _cut_in(k, net.nt, t + 1, l)
    cdef int cur = (net.L - 1 - l) & 1
    cdef const floating* dZ = <floating*>net.D[cur]
    cdef floating* dA = <floating*>net.D[1 - cur]
    cdef const floating* In = <const floating*>_input(net, l)
    cdef const floating* Ap
    cdef Py_ssize_t i, r0, r1, c0, c1
    if l < net.L - 1 and _by_rows(net, dummy, l) and net.has_bias[l]:  # dZ came by rows: db here
        c0 = _cut16(n, net.nt, t)
        c1 = _cut16(n, net.nt, t + 1)
        while c0 < c1:
            w = CB if c1 - c0 > CB else c1 - c0
            _colsums(dZ, <floating*>net.db[l], m, n, c0, c0 + w)
            c0 += w
    if j1 <= j0:
        pass  # no inputs of this thread's (the rows of a _by_rows layer below it still are)
    elif l == 0 and net.in_place:
        fg_tn(j1 - j0, n, m, NULL, 0, net.xrows, j0, <float*>dZ, n, <float*>net.dW[l] + j0 * n, n)
    elif l == 0 and net.xpad != NULL:
        _mm(net.gemm, True, False, <int>(j1 - j0), <int>n, <int>m, <const floating*>net.xpad + j0,
            <int>net.ldpad, dZ, <int>n, <floating*>net.dW[l] + j0 * n, <int>n, _own(net, dZ, l))
    else:
        _mm(net.gemm, True, False, <int>(j1 - j0), <int>n, <int>m, In + j0, <int>k, dZ, <int>n,
            <floating*>net.dW[l] + j0 * n, <int>n, _own(net, dZ, l))
    if l == 0:
        return
    Ap = <const floating*>_out(net, l - 1)
    if _by_rows(net, dummy, l - 1):  # dA and dZ_prev of rows R_t, every input
        r0 = _cut(m, net.nt, t)
        r1 = _cut(m, net.nt, t + 1)
        if r1 <= r0:
            return
        _mm(net.gemm, False, True, <int>(r1 - r0), <int>k, <int>n, dZ + r0 * n, <int>n,
            <floating*>net.W[l], <int>n, dA + r0 * k, <int>k, _own(net, dZ, l))
        if net.drop[l - 1]:
            for i in range(r0, r1):
                _dropout_piece(dA, dA, i * k, i * k + k, net.k1[l - 1], net.k2[l - 1],
                               net.thr[l - 1], net.keep_all[l - 1], <floating>net.scale[l - 1])
        _grad_rows(dA + r0 * k, Ap + r0 * k, (r1 - r0) * k, net.act[l - 1],
                   <floating>net.slope[l - 1])
        return
    if j1 <= j0:
        return
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
            _colsum_cols(dA, Ap, dA, <floating*>net.db[l - 1], m, k, j, j + w, net.act[l - 1],
                         <floating>net.slope[l - 1])
        else:
            if net.actnode[l - 1]:  # the Activation layer's column sums are not needed
                _colsum_cols(dA, Ap, dA, <floating*>net.scratch, m, k, j, j + w, net.act[l - 1],
                             <floating>net.slope[l - 1])
            if net.bn[l - 1]:
                _bn_backward_block(dA, <floating*>net.xhat[l - 1], <floating*>net.gamma[l - 1],
                                   <floating*>net.invstd[l - 1], dA, <floating*>net.dgamma[l - 1],
                                   <floating*>net.dbeta[l - 1], m, k, j, j + w)
            if net.has_bias[l - 1]:
                _colsum_cols(dA, dA, dA, <floating*>net.db[l - 1], m, k, j, j + w, LINEAR, 0)
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
    """max |x| (0 for n = 0), the largest and smallest values kept in 16 lanes (a maximum does not
    depend on the order its elements are compared in), so the loop runs on vectors."""
    cdef floating hi[16]
    cdef floating lo[16]
    cdef floating h, o
    cdef Py_ssize_t i = 0, j
    for j in range(16):
        hi[j] = 0
        lo[j] = 0
    while i + 16 <= n:
        for j in range(16):
            hi[j] = x[i + j] if x[i + j] > hi[j] else hi[j]
            lo[j] = x[i + j] if x[i + j] < lo[j] else lo[j]
        i += 16
    while i < n:
        hi[0] = x[i] if x[i] > hi[0] else hi[0]
        lo[0] = x[i] if x[i] < lo[0] else lo[0]
        i += 1
    h = hi[0]
    o = lo[0]
    for j in range(1, 16):
        h = hi[j] if hi[j] > h else h
        o = lo[j] if lo[j] < o else o
    return h if h > -o else -o


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


# ----------------------------------------------------------------------------------
# narrow nets: a whole forward and backward pass with the batch's rows along the vectors
# ----------------------------------------------------------------------------------

cdef bint _narrow(Net* net) noexcept nogil:
    """Whether the step runs as _narrow_grads: at most NARROW_LAYERS plain Dense layers (no batch
    norm, Activation layer or dropout), none wider than NARROW_WIDTH, a sigmoid (BCE) or linear
    (MSE) output.  Decided by the net's shape alone, never by the thread count."""
    cdef int l
    if net.L > NARROW_LAYERS or net.loss == CCE:
        return False
    for l in range(net.L + 1):
        if net.n[l] > NARROW_WIDTH:
            return False
    for l in range(net.L):
        if net.bn[l] or net.actnode[l] or net.drop[l] or (l < net.L - 1 and net.act[l] == SOFTMAX):
            return False
    return True


cdef inline double _sum8(const double* a) noexcept nogil:
    """((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))."""
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))


cdef inline void _scaled_rows(floating* dst, const floating* src, floating w, Py_ssize_t rr,
                              bint first) noexcept nogil:
    """dst = src w (first: a sum's first term, 0 + a w = a w) or dst + src w, over rr values (whole
    vectors of LANES)."""
    cdef Py_ssize_t c = 0, r
    if first:
        while c < rr:
            for r in range(LANES):
                dst[c + r] = src[c + r] * w
            c += LANES
    else:
        while c < rr:
            for r in range(LANES):
                dst[c + r] = dst[c + r] + src[c + r] * w
            c += LANES


cdef inline void _narrow_cols(const floating* x, Py_ssize_t n0, Py_ssize_t rows,
                              floating* act) noexcept nogil:
    """act[k * NARROW_BLOCK + r] = x[r * n0 + k] (r < rows, k < n0): a block of rows of X (n0
    columns) unit by unit.  One and two columns (the course's planar and moons inputs) have
    their own loops, of constant strides that vectorise."""
    cdef Py_ssize_t r, k
    if n0 == 1:
        for r in range(rows):
            act[r] = x[r]
    elif n0 == 2:
        for r in range(rows):
            act[r] = x[2 * r]
            act[NARROW_BLOCK + r] = x[2 * r + 1]
    else:
        for k in range(n0):
            for r in range(rows):
                act[k * NARROW_BLOCK + r] = x[r * n0 + k]


cdef inline Py_ssize_t _narrow_cut(Py_ssize_t m) noexcept nogil:
    """Where a narrow pass of m rows splits into two ranges of rows: m from NARROW_SPLIT on (about
    half, a whole number of vectors of rows), else none (m: one range)."""
    return ((m + 1) // 2 + LANES - 1) // LANES * LANES if m >= NARROW_SPLIT else m


cdef void _narrow_part(const floating* dummy, Net* net, Py_ssize_t r0, Py_ssize_t r1,
                       NarrowPart* out) noexcept nogil:
    """Forward, cost and backward of a narrow net (_narrow) on the batch's rows r0 .. r1 - 1, into
    the partial sums of out (_narrow_grads says how they are summed).

    The layers are too narrow to fill a vector along the units (the course's planar net, 2-4-1,
    fills 4 and 1 of 16 lanes), so the rows go through the whole net in blocks of NARROW_BLOCK
    rows held unit by unit, a[l][k] = the block's values of unit k of layer l's input, the rows
    along the vectors: a[l + 1][j] = g(sum_k a[l][k] W[k, j] + b[j]) (the sum in k order), the
    output and its cost by _loss_span, dZ = (A - Y) / m, dA[k] = sum_j dZ[j] W[k, j] (j in
    order), dZ_prev = dA g'(a) by _ew_span -- the step's own element-wise formulas, one source
    each.  Sums over the range's rows: dW[k, j] = sum_r a[k] dZ[j] in LANES partial sums (partial
    sum q: the rows r0 + q, r0 + q + LANES, ... in order, in the dtype), then in float64 the
    partial sums q and q + 8 of each (q < 8) into out.aw; db in NARROW_BLOCK partial sums
    (float64) likewise, then the running sums of its partial sums q, q + 8, q + 16, ... into
    out.ab (8 of each element, so the two ranges' threads exchange a few cache lines); the cost
    into out.cost per block and output unit in _loss_span's order, the blocks in order.  Writes
    A's rows r0 .. r1 - 1 (the predictions read it) and out; reads only the parameters and the
    batch, so two ranges can run at once.
    """
    cdef floating act[(NARROW_LAYERS + 1) * NARROW_WIDTH * NARROW_BLOCK]   # a[l][k][r]; a[L]: A
    cdef floating gw[NARROW_LAYERS * NARROW_WIDTH * NARROW_WIDTH * LANES]   # dW's partial sums
    cdef double gb[NARROW_LAYERS * NARROW_WIDTH * NARROW_BLOCK]             # db's partial sums
    cdef floating dzs[2 * NARROW_WIDTH * NARROW_BLOCK]                      # dZ ping-pong
    cdef floating z[NARROW_BLOCK]
    cdef floating bb[NARROW_BLOCK]
    cdef floating da[NARROW_BLOCK]
    cdef double t[TILE]
    cdef Py_ssize_t woff[NARROW_LAYERS + 1]
    cdef Py_ssize_t m = net.m, n0 = net.n[0], ny = net.n[net.L], i0, rows, rr, r, k, j, kn, nn, q, c
    cdef int L = net.L, l, cur
    cdef const floating* X = <const floating*>net.X
    cdef const floating* Y = <const floating*>net.Y
    cdef floating* A = <floating*>net.A
    cdef const floating* W
    cdef const floating* b
    cdef const floating* xr
    cdef const floating* ain
    cdef const floating* ak
    cdef const floating* dj
    cdef floating* aout
    cdef floating* dz
    cdef floating* dzp
    cdef floating* g
    cdef double* gbj
    cdef double* acc
    cdef double total = 0
    woff[0] = 0
    for l in range(L):
        woff[l + 1] = woff[l] + net.n[l] * net.n[l + 1] * LANES
    for q in range(woff[L]):
        gw[q] = 0
    for l in range(L):  # the partial sums of the units there are
        for q in range(l * NARROW_WIDTH * NARROW_BLOCK, (l * NARROW_WIDTH + net.n[l + 1]) * NARROW_BLOCK):
            gb[q] = 0
    i0 = r0
    while i0 < r1:
        rows = NARROW_BLOCK if r1 - i0 > NARROW_BLOCK else r1 - i0
        if floating is float and net.in_place:
            for r in range(rows):
                xr = <const floating*>net.xrows[i0 + r]
                for k in range(n0):
                    act[k * NARROW_BLOCK + r] = xr[k]
        else:
            _narrow_cols(X + i0 * n0, n0, rows, act)
        rr = (rows + LANES - 1) // LANES * LANES  # whole vectors of rows; those past the range: zeros
        for k in range(n0):
            for r in range(rows, rr):
                act[k * NARROW_BLOCK + r] = 0
        # forward, the cost and dZ of the output
        for l in range(L):
            kn = net.n[l]
            nn = net.n[l + 1]
            ain = act + l * NARROW_WIDTH * NARROW_BLOCK
            aout = act + (l + 1) * NARROW_WIDTH * NARROW_BLOCK
            W = <const floating*>net.W[l]
            b = <const floating*>net.b[l]
            for j in range(nn):
                for k in range(kn):
                    _scaled_rows(z, ain + k * NARROW_BLOCK, W[k * nn + j], rr, k == 0)
                for r in range(rows):
                    bb[r] = b[j]
                if l < L - 1:
                    _fwd_span(z, bb, aout + j * NARROW_BLOCK, rows, net.act[l], <floating>net.slope[l])
                    for r in range(rows, rr):
                        aout[j * NARROW_BLOCK + r] = 0
                else:
                    if ny == 1:
                        for r in range(rows):
                            da[r] = Y[i0 + r]
                    else:
                        for r in range(rows):
                            da[r] = Y[(i0 + r) * ny + j]
                    total += _loss_span(z, bb, da, aout + j * NARROW_BLOCK, rows, net.loss, t)
                    if ny == 1:
                        for r in range(rows):
                            A[i0 + r] = aout[r]
                    else:
                        for r in range(rows):
                            A[(i0 + r) * ny + j] = aout[j * NARROW_BLOCK + r]
                    _ew_span(aout + j * NARROW_BLOCK, da, dzs + j * NARROW_BLOCK,
                             gb + (l * NARROW_WIDTH + j) * NARROW_BLOCK, rows, OP_LOSS, <floating>m)
                    for r in range(rows, rr):
                        dzs[j * NARROW_BLOCK + r] = 0
        # backward: dW's partial sums, then dZ of the layer below
        cur = 0
        for l in range(L - 1, -1, -1):
            kn = net.n[l]
            nn = net.n[l + 1]
            ain = act + l * NARROW_WIDTH * NARROW_BLOCK
            dz = dzs + cur * NARROW_WIDTH * NARROW_BLOCK
            for k in range(kn):
                for j in range(nn):
                    g = gw + woff[l] + (k * nn + j) * LANES
                    ak = ain + k * NARROW_BLOCK
                    dj = dz + j * NARROW_BLOCK
                    c = 0
                    while c < rr:
                        for r in range(LANES):
                            g[r] = g[r] + ak[c + r] * dj[c + r]
                        c += LANES
            if l == 0:
                break
            W = <const floating*>net.W[l]
            dzp = dzs + (1 - cur) * NARROW_WIDTH * NARROW_BLOCK
            for k in range(kn):
                for j in range(nn):
                    _scaled_rows(da, dz + j * NARROW_BLOCK, W[k * nn + j], rr, j == 0)
                _ew_span(da, ain + k * NARROW_BLOCK, dzp + k * NARROW_BLOCK,
                         gb + ((l - 1) * NARROW_WIDTH + k) * NARROW_BLOCK, rows, net.act[l - 1],
                         <floating>net.slope[l - 1])
                for r in range(rows, rr):
                    dzp[k * NARROW_BLOCK + r] = 0
            cur = 1 - cur
        i0 += rows
    # the range's sums: 8 of each element, float64 (out.aw: the dW elements of every layer in turn)
    for q in range(woff[L] // LANES):
        for r in range(8):
            out.aw[q * 8 + r] = <double>gw[q * LANES + r] + <double>gw[q * LANES + 8 + r]
    for l in range(L):
        for j in range(net.n[l + 1]):
            gbj = gb + (l * NARROW_WIDTH + j) * NARROW_BLOCK
            acc = out.ab + (l * NARROW_WIDTH + j) * 8
            for r in range(8):
                acc[r] = gbj[r]
            for c in range(8, NARROW_BLOCK, 8):
                for r in range(8):
                    acc[r] = acc[r] + gbj[c + r]
    out.cost = total


cdef void _narrow_grads(const floating* dummy, Net* net, double* cost) noexcept nogil:
    """Forward, cost, backward and the gradients of a narrow net (_narrow) on the batch's m rows:
    _narrow_part over rows 0 .. h - 1 and h .. m - 1 (h = _narrow_cut(m); one range below
    NARROW_SPLIT rows), the second on the whole fit's helper thread when there is one
    (net.team), else after the first.  The ranges' 8 sums of each element are added, the
    first's plus the second's, and each element's eight by _sum8 (short chains: the sums do not
    wait on one adder's latency).  The ranges depend on m alone, so the step has the same bits
    on one thread or two.  Writes A, dW, db and cost[0] = the summed loss (as _step_loss's
    pieces).
    """
    cdef NarrowPart* p0 = &net.parts[0]
    cdef NarrowPart* p1 = &net.parts[1]
    cdef Py_ssize_t m = net.m, h = _narrow_cut(m), q, j, nw = 0
    cdef int L = net.L, l
    for l in range(L):
        nw += net.n[l] * net.n[l + 1]
    cdef floating* dW
    cdef floating* db
    cdef const double* aw = p0.aw
    if h < m and net.team != NULL:
        net.team.posted += 1
        fn_signal_post(&net.team.go, net.team.posted)
        _narrow_part(dummy, net, 0, h, p0)
        fn_signal_wait(&net.team.done, net.team.posted)
    else:
        _narrow_part(dummy, net, 0, h, p0)
        if h < m:
            _narrow_part(dummy, net, h, m, p1)
    if h < m:
        for q in range(nw * 8):
            p0.aw[q] = p0.aw[q] + p1.aw[q]
        for l in range(L):
            for q in range(l * NARROW_WIDTH * 8, (l * NARROW_WIDTH + net.n[l + 1]) * 8):
                p0.ab[q] = p0.ab[q] + p1.ab[q]
        p0.cost = p0.cost + p1.cost
    for l in range(L):
        dW = <floating*>net.dW[l]
        db = <floating*>net.db[l]
        for q in range(net.n[l] * net.n[l + 1]):
            dW[q] = <floating>_sum8(aw)
            aw += 8
        for j in range(net.n[l + 1]):
            db[j] = <floating>_sum8(p0.ab + (l * NARROW_WIDTH + j) * 8)
    cost[0] = p0.cost


cdef void _narrow_helper(Net* net, NarrowTeam* team, bint isf) noexcept nogil:
    """Thread 1 of a whole fit's narrow team: each task posted, the second range of rows of the
    step's narrow pass (_narrow_grads), until the last post says quit."""
    cdef unsigned k = 0
    cdef Py_ssize_t m
    while True:
        k += 1
        fn_signal_wait(&team.go, k)
        if team.quit:
            return
        m = net.m
        if isf:
            _narrow_part(<const float*>NULL, net, _narrow_cut(m), m, &net.parts[1])
        else:
            _narrow_part(<const double*>NULL, net, _narrow_cut(m), m, &net.parts[1])
        fn_signal_post(&team.done, k)


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
    if _narrow(net):
        if ip != NULL:
            for t in range(nt):
                _step_gather(xp, yp, ip, net, t)
        _narrow_grads(pp, net, part)
        K = 1
        _step_sums(pp, gp, n_params, nd_cost, 1, 0, gpart, wpart)
        if _step_decision(pp, net, h, part, K, gpart, wpart, C, lam, res, nb, INFINITY) == 0:
            for t in range(nt):
                _step_update(pp, gp, s1, s2, net, h, t)
    elif nt == 1:
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
                if _rows_split(net, <int>l):
                    for t in prange(nt, schedule="static", chunksize=1):
                        _step_forward_rows(pp, net, <int>l, t)
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


ctypedef struct FitSpec:         # mirrors fusednet.kernels._plan.FIT_DTYPE field by field
    Py_ssize_t epoch0            # the number of the call's first epoch
    Py_ssize_t epochs            # the epochs of the call
    Py_ssize_t patience          # early stopping: stop after this many epochs without improvement (0 as 1)
    Py_ssize_t wait              # IN/OUT epochs in a row without improvement so far
    uint64_t seed_key            # splitmix64(seed): epoch e's dropout seed is splitmix64(seed_key ^ e)
    uint64_t shuffle_seed        # FIT_ORDER_DRAWN: epoch e's order is default_rng([shuffle_seed, e])'s
    double min_delta             # the smallest change that counts as an improvement
    double best                  # IN/OUT the best monitored value so far
    int monitor                  # FIT_MONITOR_*: what early stopping watches (0: no early stopping)
    int maximize                 # 1: higher is better
    int restore                  # 1: keep the best epoch's parameters and statistics in the snapshot
    int stop                     # OUT 1: early stopping ended the fit after the call's last epoch
    int order                    # FIT_ORDER_*: how each epoch orders the rows


ctypedef struct HistRow:         # mirrors fusednet.kernels._plan.HIST_DTYPE field by field
    double train_loss            # sum over the epoch's batches of cost x rows, / M
    double seconds               # the epoch's wall time
    double dev_loss              # the dev set's cost and accuracy after the epoch (NaN: none)
    double dev_accuracy
    Py_ssize_t correct           # rows whose training prediction equals their class id


cdef enum:                       # what FitSpec.monitor watches (fusednet.kernels._codes)
    FIT_MONITOR_NONE = 0
    FIT_MONITOR_TRAIN_LOSS = 1
    FIT_MONITOR_TRAIN_ACCURACY = 2
    FIT_MONITOR_DEV_LOSS = 3
    FIT_MONITOR_DEV_ACCURACY = 4

cdef enum:                       # how a whole fit orders each epoch's rows (FitSpec.order)
    FIT_ORDER_BATCH = 0          # no gather: X is every epoch's one batch
    FIT_ORDER_FIXED = 1          # perms[0] every epoch
    FIT_ORDER_GIVEN = 2          # perms[e] in epoch e
    FIT_ORDER_DRAWN = 3          # drawn into perms[0] as NumPy's shuffle (fn_epoch_order)


def layouts():
    """``{name: (itemsize, {field: offset})}`` of the C structs the plan's dtypes mirror."""
    cdef LayerSpec ls
    cdef OptSpec os_
    cdef size_t b = <size_t>&ls
    cdef size_t o = <size_t>&os_
    cdef FitSpec fs
    cdef HistRow hs
    cdef size_t fb = <size_t>&fs
    cdef size_t hb = <size_t>&hs
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
        "FitSpec": (sizeof(FitSpec), {
            "epoch0": <size_t>&fs.epoch0 - fb, "epochs": <size_t>&fs.epochs - fb,
            "patience": <size_t>&fs.patience - fb, "wait": <size_t>&fs.wait - fb,
            "seed_key": <size_t>&fs.seed_key - fb, "shuffle_seed": <size_t>&fs.shuffle_seed - fb,
            "min_delta": <size_t>&fs.min_delta - fb,
            "best": <size_t>&fs.best - fb, "monitor": <size_t>&fs.monitor - fb,
            "maximize": <size_t>&fs.maximize - fb, "restore": <size_t>&fs.restore - fb,
            "stop": <size_t>&fs.stop - fb, "order": <size_t>&fs.order - fb}),
        "HistRow": (sizeof(HistRow), {
            "train_loss": <size_t>&hs.train_loss - hb, "seconds": <size_t>&hs.seconds - hb,
            "dev_loss": <size_t>&hs.dev_loss - hb, "dev_accuracy": <size_t>&hs.dev_accuracy - hb,
            "correct": <size_t>&hs.correct - hb}),
    }


def codes():
    """The codes compiled in, by name, for the test that pins them to fusednet.kernels._codes."""
    return {"LINEAR": LINEAR, "SIGMOID": SIGMOID, "TANH": TANH, "RELU": RELU, "LEAKY_RELU": LEAKY_RELU,
            "SOFTMAX": SOFTMAX, "MSE": MSE, "BCE": BCE, "CCE": CCE, "OPT_GD": OPT_GD,
            "OPT_MOMENTUM": OPT_MOMENTUM, "OPT_RMSPROP": OPT_RMSPROP, "OPT_ADAM": OPT_ADAM,
            "FIT_MONITOR_NONE": FIT_MONITOR_NONE, "FIT_MONITOR_TRAIN_LOSS": FIT_MONITOR_TRAIN_LOSS,
            "FIT_MONITOR_TRAIN_ACCURACY": FIT_MONITOR_TRAIN_ACCURACY, "FIT_MONITOR_DEV_LOSS": FIT_MONITOR_DEV_LOSS,
            "FIT_MONITOR_DEV_ACCURACY": FIT_MONITOR_DEV_ACCURACY, "FIT_ORDER_BATCH": FIT_ORDER_BATCH,
            "FIT_ORDER_FIXED": FIT_ORDER_FIXED, "FIT_ORDER_GIVEN": FIT_ORDER_GIVEN, "FIT_ORDER_DRAWN": FIT_ORDER_DRAWN}


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
    "FitSpec": dict(epoch0=("i", sizeof(Py_ssize_t)), epochs=("i", sizeof(Py_ssize_t)),
                    patience=("i", sizeof(Py_ssize_t)), wait=("i", sizeof(Py_ssize_t)), seed_key=("u", 8),
                    shuffle_seed=("u", 8), min_delta=("f", 8), best=("f", 8), monitor=("i", sizeof(int)),
                    maximize=("i", sizeof(int)), restore=("i", sizeof(int)), stop=("i", sizeof(int)),
                    order=("i", sizeof(int))),
    "HistRow": dict(train_loss=("f", 8), seconds=("f", 8), dev_loss=("f", 8), dev_accuracy=("f", 8),
                    correct=("i", sizeof(Py_ssize_t))),
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
    cdef readonly bint copied_input        # whether the last dense_fit copied X for the first layer
    cdef object _parts                     # a narrow net's NarrowPart pair (net.parts)
    cdef int _narrow_threads               # the threads of a whole fit's narrow pass (narrow_threads)

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
        cdef double[::1] parts
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
        net.xpack = NULL
        net.xpad = NULL
        net.zeros = _data(buffers.get("zeros"), dtype, widest, "buffers['zeros']")
        net.scratch = _data(buffers.get("scratch"), dtype, widest, "buffers['scratch']")
        for l in range(L):
            if not net.has_bias[l]:
                net.b[l] = net.zeros
                net.db[l] = net.scratch
        net.team = NULL
        net.parts = NULL
        self._narrow_threads = 1
        if _narrow(net):
            self._parts = empty_aligned(2 * sizeof(NarrowPart) // sizeof(double), np.float64)
            parts = self._parts
            net.parts = <NarrowPart*>&parts[0]
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

    @property
    def narrow(self):
        """Whether each step runs as one pass with the batch's rows along the vectors (a narrow
        net: every layer at most NARROW_WIDTH wide, see _narrow_grads)."""
        return bool(_narrow(&self.net))

    @property
    def narrow_threads(self):
        """The threads of a whole fit's narrow pass (dense_fit): 2 runs the second range of rows of
        each step of NARROW_SPLIT rows or more on a thread of its own (_narrow_grads), 1 runs both in
        turn.  The same bits either way; settable to 1 or 2 on a narrow net."""
        return self._narrow_threads

    @narrow_threads.setter
    def narrow_threads(self, int n):
        if n not in (1, 2):
            raise ValueError(f"narrow_threads must be 1 or 2, got {n}")
        if n == 2 and not _narrow(&self.net):
            raise ValueError("narrow_threads: the net is not narrow (see StepPlan.narrow)")
        self._narrow_threads = n if FN_OPENMP else 1

    def reset_bounds(self):
        """Forget the bounds of |w| and the optimiser state: the next call reads them off the arenas."""
        self.bound.fill(np.inf)


cdef void _bias_corrections(const OptSpec* o, Py_ssize_t t, Hyper* h) noexcept nogil:
    """bc1 = 1 - beta1^t (momentum with correction, Adam), bc2 = 1 - beta2^t (Adam); else 1.

    Mirrors fusednet.optim.bias_correction (the tests hold the compiled step to the per-kernel path)."""
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
        # rows of at most COPY_ROW inputs: a serial step copies them, as the first layer's weight
        # gradient, which reads every row once per few units, runs faster on rows side by side
        # than on rows spread over X (docs/PERFORMANCE.md, "The digits step, faster")
        net.in_place = (_own(net, <const float*>net.X, 0) and m <= MAXR
                        and (net.nt > 1 or net.n[0] > COPY_ROW))
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


# ----------------------------------------------------------------------------------
# a whole fit in one call: every epoch's steps, its history and early stopping
# ----------------------------------------------------------------------------------

cdef inline Py_ssize_t _first_max(const floating* a, Py_ssize_t n) noexcept nogil:
    """The index of a[0:n]'s first maximum, as a walk that keeps the best so far and moves on
    a strictly greater value finds it (a NaN is never greater), without branches: a row's
    comparisons depend on its data, and mispredicted branches cost more than they do."""
    cdef floating v = a[0]
    cdef Py_ssize_t best = 0, j
    cdef bint c
    for j in range(1, n):
        c = a[j] > v
        best = j if c else best
        v = a[j] if c else v
    return best


cdef Py_ssize_t _n_correct(Net* net, int itemsize, const Py_ssize_t* ids, const Py_ssize_t* rows,
                           Py_ssize_t s, Py_ssize_t n) noexcept nogil:
    """How many of the batch's n rows (rows[s:s + n] of the data, or rows s:s + n when rows is NULL)
    have the prediction of _predictions equal to their class id (one sigmoid: A > 0.5 == (id != 0))."""
    cdef Py_ssize_t r, best, n_out = net.n[net.L], row, hits = 0
    cdef const float* a32 = <const float*>net.A
    cdef const double* a64 = <const double*>net.A
    cdef bint p
    if net.loss != CCE and rows == NULL:  # one sigmoid over rows in order: a loop that vectorises
        if itemsize == 4:
            for r in range(n):
                hits += (a32[r * n_out] > 0.5) == (ids[s + r] != 0)
        else:
            for r in range(n):
                hits += (a64[r * n_out] > 0.5) == (ids[s + r] != 0)
        return hits
    for r in range(n):
        row = rows[s + r] if rows != NULL else s + r
        if net.loss == CCE:
            best = _first_max(a32 + r * n_out, n_out) if itemsize == 4 else _first_max(a64 + r * n_out, n_out)
            hits += best == ids[row]
        else:
            p = (a32[r * n_out] > 0.5) if itemsize == 4 else (a64[r * n_out] > 0.5)
            hits += p == (ids[row] != 0)
    return hits


cdef inline double _seconds() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + 1e-9 * <double>ts.tv_nsec


cdef bint _stopping(FitSpec* f, double value) noexcept nogil:
    """One epoch's early-stopping decision (mirrors fusednet.callbacks.EarlyStopping.observe):
    whether the value improved on f.best; f.best, f.wait and f.stop updated."""
    cdef bint better
    if not (fabs(value) < INFINITY):
        better = False
    elif f.maximize:
        better = value > f.best + f.min_delta
    else:
        better = value < f.best - f.min_delta
    if better:
        f.best = value
        f.wait = 0
    else:
        f.wait += 1
        if f.wait >= (f.patience if f.patience > 1 else 1):
            f.stop = 1
    return better


cdef enum:
    PACK_EPOCHS = 16         # a fit of fewer epochs reads X as it is (the copies cost two to three steps)
    PACK_MAX = 1 << 26       # most elements of an X that is copied (256 MB)


cdef bint _packs_input(Net* net, Py_ssize_t epochs) noexcept nogil:
    """Whether a fit of `epochs` epochs that takes the whole of X (net.m rows, float32 on the own
    kernels) as every step's batch copies X once for its first layer (_input_copies): a layer of
    at most FG_PACK_MAXN units, which fill its vectors less than X's rows would (20 units: 20 of
    32 lanes), and a product large enough to be split by rows."""
    cdef Py_ssize_t m = net.m, k = net.n[0], n = net.n[1]
    return (FG_AVAILABLE and epochs >= PACK_EPOCHS and m * k <= PACK_MAX and m * k * n >= ROWS_WORK
            and fg_pack_pays(m, n))


cdef tuple _input_copies(StepPlan plan):
    """The batch X (m, k) of the plan's net as fg_pack_t's panels, for the first layer's forward
    product (fg_nn_packed), and, where X's rows lie a multiple of 1 KiB apart, a copy with its rows
    16 floats further apart, for its dW: rows at such a stride share a few sets of the L1 and L2
    caches, and the product's prefetches, one line per row, evict each other.  Both are set on the
    net (xpack, xpad); the caller keeps the arrays alive and clears the pointers."""
    cdef Net* net = &plan.net
    cdef Py_ssize_t m = net.m, k = net.n[0], ld = k + 16, panel = fg_pack_size(1, k), panels, t, p0, p1, r
    cdef Py_ssize_t rp = panel // k  # rows per panel
    cdef int nt = net.nt
    cdef const float* X = <const float*>net.X
    cdef bint padded = k >= 1024 and k % 256 == 0
    cdef float[::1] pack = empty_aligned(fg_pack_size(m, k), np.float32)  # whole vectors per cache line
    cdef float[::1] pad = empty_aligned(m * ld if padded else 0, np.float32)
    panels = pack.shape[0] // panel
    with nogil, parallel(num_threads=nt):  # each thread its share of the panels and of the rows
        for t in prange(nt, schedule="static", chunksize=1):
            p0 = _cut(panels, nt, t)
            p1 = _cut(panels, nt, t + 1)
            fg_pack_t((m if m < p1 * rp else p1 * rp) - p0 * rp, k, X + p0 * rp * k, k, &pack[p0 * panel])
            if padded:
                for r in range(_cut(m, nt, t), _cut(m, nt, t + 1)):
                    memcpy(&pad[r * ld], X + r * k, k * sizeof(float))
    net.xpack = &pack[0]
    if not padded:
        return pack.base, None
    net.xpad = &pad[0]
    net.ldpad = ld
    return pack.base, pad.base


# A team's threads on CPUs of their own for the time of a whole-fit call (the one-call step's
# counterpart of fusednet.kernels._placement.Team).  On a virtual machine the scheduler tends to
# wake a thread on its waker's CPU, as the other one's virtual processor was descheduled by the
# host during a pause; the two threads then take turns on one CPU, meeting at every barrier, until
# the load balancer moves one of them tens of milliseconds later.  Each thread keeps the CPU it runs
# on, or, when another thread of the team holds that one, the lowest allowed CPU none holds, and
# gets the allowed CPUs back at the end of the call.  Where the user binds OpenMP's threads
# (OMP_PROC_BIND, OMP_PLACES, GOMP_CPU_AFFINITY) nothing is set.
cdef extern from *:
    """
    #include <sched.h>
    #include <stdlib.h>
    #include <string.h>
    typedef struct { cpu_set_t allowed; unsigned char taken[CPU_SETSIZE]; int ok; } fn_team_cpus;

    /* nothing is set where the user binds OpenMP's threads, or where there is one CPU */
    static void fn_team_cpus_init(fn_team_cpus *t) {
        memset(t->taken, 0, sizeof t->taken);
        t->ok = !getenv("OMP_PROC_BIND") && !getenv("OMP_PLACES") && !getenv("GOMP_CPU_AFFINITY")
            && sched_getaffinity(0, sizeof(cpu_set_t), &t->allowed) == 0 && CPU_COUNT(&t->allowed) > 1;
    }
    static int fn_team_cpus_claim(fn_team_cpus *t, int cpu) {
        return cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &t->allowed)
            && !__atomic_exchange_n(&t->taken[cpu], (unsigned char)1, __ATOMIC_ACQ_REL);
    }
    /* keep the calling thread on a CPU of its own; -1 when nothing was set */
    static int fn_team_cpus_settle(fn_team_cpus *t) {
        int cpu, c;
        cpu_set_t one;
        if (!t->ok) return -1;
        cpu = sched_getcpu();
        if (!fn_team_cpus_claim(t, cpu)) {
            for (cpu = -1, c = 0; c < CPU_SETSIZE && cpu < 0; c++)
                if (fn_team_cpus_claim(t, c)) cpu = c;
            if (cpu < 0) return -1;
        }
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        return sched_setaffinity(0, sizeof one, &one) == 0 ? cpu : -1;
    }
    static void fn_team_cpus_release(fn_team_cpus *t) {
        if (t->ok) sched_setaffinity(0, sizeof(cpu_set_t), &t->allowed);
    }
    """
    ctypedef struct fn_team_cpus:
        pass
    void fn_team_cpus_init(fn_team_cpus* t) nogil
    int fn_team_cpus_settle(fn_team_cpus* t) nogil
    void fn_team_cpus_release(fn_team_cpus* t) nogil


cdef void _team_cpus(fn_team_cpus* cpus, int nt, bint settle) noexcept nogil:
    """Each of the ``nt`` threads of the step's team settles on a CPU of its own, or gets the allowed
    CPUs back (the same threads: consecutive regions of one size run on the same pool threads)."""
    cdef int t
    if nt < 2:
        return
    if settle:
        fn_team_cpus_init(cpus)
    with parallel(num_threads=nt):
        for t in prange(nt, schedule="static", chunksize=1):
            if settle:
                fn_team_cpus_settle(cpus)
            else:
                fn_team_cpus_release(cpus)


cdef struct FitLoop:             # a whole-fit call (dense_fit): what its epochs read, and how far they got
    Net* net
    Hyper* h
    const OptSpec* o
    FitSpec* f
    HistRow* hr
    void* P
    void* G
    void* S1
    void* S2
    double lam
    Py_ssize_t n_params
    int isz
    const void* xp                # gathered fits: X and Y, the batches gathered from them; else NULL
    const void* yp
    const Py_ssize_t* ids         # class ids (M,), or NULL
    Py_ssize_t* perms             # the orders (fit.order), or NULL
    const double* lrs             # (E, steps)
    Py_ssize_t M, B, E, steps
    bint gathered, has_dev
    void* snap_p                  # fit.restore: the snapshot's parameters and statistics, and the arena
    void* stats
    void* snap_s
    Py_ssize_t n_stats
    uint64_t dropout_seed         # OUT the last epoch's
    Py_ssize_t ep                 # OUT the epochs run
    Py_ssize_t i                  # OUT the step of the epoch that stopped (status != 0)
    Py_ssize_t done               # OUT the steps applied
    int status                    # OUT 0, or the status of the step that was not applied
    double res[2]                 # OUT the last step's cost and sum of g^2
    double t0                     # the epoch's start


cdef void _fit_steps(FitLoop* s) noexcept nogil:
    """The steps of epoch s.ep (stopping at one that is not applied: s.status), then the epoch's
    train loss and hits in its history row."""
    cdef Net* net = s.net
    cdef Py_ssize_t epoch = s.f.epoch0 + s.ep, i = 0, b0, b1, hits = 0
    cdef const Py_ssize_t* row = NULL
    cdef const Py_ssize_t* ip
    cdef double total = 0.0
    cdef uint64_t x
    cdef int l
    s.t0 = _seconds()
    s.dropout_seed = _splitmix64(s.f.seed_key ^ <uint64_t>epoch)
    if s.f.order == FIT_ORDER_DRAWN:
        fn_epoch_order(s.f.shuffle_seed, <uint64_t>epoch, s.perms, s.M)
    if s.gathered:
        row = s.perms + (s.ep * s.M if s.f.order == FIT_ORDER_GIVEN else 0)
    while i < s.steps:
        b0 = i * s.B
        b1 = b0 + s.B if b0 + s.B < s.M else s.M
        net.m = b1 - b0
        s.h.lr = s.lrs[s.ep * s.steps + i]
        _bias_corrections(s.o, s.o.t + s.done + 1, s.h)
        x = _splitmix64(s.dropout_seed ^ <uint64_t>i)
        for l in range(net.L):
            if net.drop[l]:
                _set_key(net, l, _splitmix64(x ^ <uint64_t>net.dindex[l]))
        ip = row + b0 if s.gathered else NULL
        if s.isz == 4:
            s.status = _step_core(<float*>s.P, <float*>s.G, <float*>s.S1, <float*>s.S2, net, s.h, s.lam,
                                  s.n_params, <const float*>s.xp, <const float*>s.yp, ip, s.res)
        else:
            s.status = _step_core(<double*>s.P, <double*>s.G, <double*>s.S1, <double*>s.S2, net, s.h, s.lam,
                                  s.n_params, <const double*>s.xp, <const double*>s.yp, ip, s.res)
        if s.status != 0:
            s.i = i
            return
        s.done += 1
        total = total + s.res[0] * <double>(b1 - b0)
        if s.ids != NULL:
            hits += _n_correct(net, s.isz, s.ids, row, b0, b1 - b0)
        i += 1
    s.i = i
    s.hr[s.ep].train_loss = total / <double>s.M
    s.hr[s.ep].correct = hits
    s.hr[s.ep].dev_loss = NAN
    s.hr[s.ep].dev_accuracy = NAN


cdef void _fit_epoch_end(FitLoop* s) noexcept nogil:
    """Early stopping's decision on epoch s.ep (its history row complete), the snapshot at an
    improvement, the epoch's wall time; s.ep moves on."""
    cdef FitSpec* f = s.f
    cdef HistRow* hr = &s.hr[s.ep]
    cdef double value
    if f.monitor != FIT_MONITOR_NONE:
        if f.monitor == FIT_MONITOR_TRAIN_LOSS:
            value = hr.train_loss
        elif f.monitor == FIT_MONITOR_TRAIN_ACCURACY:
            value = <double>hr.correct / <double>s.M
        elif f.monitor == FIT_MONITOR_DEV_LOSS:
            value = hr.dev_loss
        else:
            value = hr.dev_accuracy
        if _stopping(f, value) and f.restore:
            memcpy(s.snap_p, s.P, s.n_params * s.isz)
            if s.n_stats:
                memcpy(s.snap_s, s.stats, s.n_stats * s.isz)
    hr.seconds = _seconds() - s.t0
    s.ep += 1


cdef void _fit_run(FitLoop* s) noexcept nogil:
    """Epochs from s.ep on, until the last, a step not applied, early stopping, or, with a dev set,
    the end of one epoch's steps (the caller evaluates the dev set, then calls _fit_epoch_end)."""
    while s.ep < s.E:
        _fit_steps(s)
        if s.status != 0 or s.has_dev:
            return
        _fit_epoch_end(s)
        if s.f.stop:
            return


cdef void _fit_thread(FitLoop* s, NarrowTeam* team) noexcept nogil:
    """One thread of _fit_on_team: thread 0 runs the epochs, handing each step's second range of
    rows to thread 1; a runtime that gave one thread runs them alone (the same bits)."""
    if fn_num_threads() < 2:
        _fit_run(s)
    elif fn_thread_num() == 0:
        s.net.team = team
        _fit_run(s)
        s.net.team = NULL
        team.quit = True
        fn_signal_post(&team.go, team.posted + 1)
    elif fn_thread_num() == 1:
        _narrow_helper(s.net, team, s.isz == 4)


cdef void _fit_on_team(FitLoop* s) noexcept nogil:
    """_fit_run with a narrow net's passes on two threads (StepPlan.narrow_threads): one parallel
    region for all the epochs it runs, not one per step (a region costs microseconds to start,
    as much as a small step)."""
    cdef NarrowTeam team
    team.go.value = 0
    team.go.sleepers = 0
    team.done.value = 0
    team.done.sleepers = 0
    team.posted = 0
    team.quit = False
    with parallel(num_threads=2):
        _fit_thread(s, &team)


def dense_fit(StepPlan plan,                    # IN/OUT as dense_epoch
              opt,                              # IN an OPT_DTYPE record (t: the steps taken before the call)
              data,                             # IN (X, Y, ids, dev): (M, n_in), (M, n_out), class ids (M,) or
                                                #    (0,), and None or dev() -> (dev loss, dev accuracy)
              fit,                              # IN/OUT a FIT_DTYPE record: the epochs, dropout, early stopping
              Py_ssize_t[:, ::1] perms,         # IN the rows' orders as fit.order says: (0, M) none (X is
                                                #    every epoch's batch), (1, M) one for all, (epochs, M) one
                                                #    per epoch; OUT (1, M) each drawn order in turn
              const double[:, ::1] lrs,         # IN (epochs, steps) the learning rate of each step
              hist,                             # OUT (epochs,) HIST_DTYPE records, one per epoch run
              snapshot):                        # OUT None, or (params copy, stats arena, stats copy)
    """Epochs fit.epoch0 .. fit.epoch0 + fit.epochs - 1 of a fit, each as dense_epoch (or, without
    perms, as one dense_step on the whole of X), with no Python between them.

    The call starts with the update bounds read off the arenas; epoch e with the dropout seed
    splitmix64(fit.seed_key ^ e); step i of the call (counting across epochs) takes the optimiser's
    step count opt.t + i + 1.  Each epoch writes its train loss, training-prediction hits and wall
    time to hist, and with dev, what dev() returns: it is called with the GIL after each epoch (the
    trainer passes the model's own inference-mode evaluation, so the numbers are those of the
    per-epoch path; an exception it raises ends the call and propagates).  With fit.monitor, early stopping decides after each epoch as EarlyStopping does
    (fit.best and fit.wait carry between calls), copies the parameters and the statistics arena into
    snapshot at each improvement when fit.restore, and ends the call (fit.stop = 1) when patience
    runs out.  Returns (epochs run, status, step, cost, steps applied): status 0, or the status of
    the step that was not applied (as dense_step), its index within its epoch and its cost; that
    epoch is not counted as run.
    """
    cdef Net* net = &plan.net
    cdef FitLoop st
    cdef FitSpec* f
    cdef Py_ssize_t M, B, E, steps, ep, r
    cdef fn_team_cpus cpus
    cdef const Py_ssize_t[::1] ids
    cdef bint gathered, team, failed = False
    cdef int nt
    st.o = _opt_spec(plan, opt)
    error = None
    if not (isinstance(data, tuple) and len(data) == 4):
        raise ValueError("data must be a tuple (X, Y, ids, dev)")
    X, Y, ids_, dev = data
    if dev is not None and not callable(dev):
        raise ValueError(f"data: dev must be None or a callable, got {type(dev).__name__}")
    M = getattr(X, "shape", (0,))[0]
    if M < 1 or getattr(X, "shape", None) != (M, net.n[0]) or getattr(Y, "shape", None) != (M, net.n[net.L]):
        raise ValueError(f"data: X and Y must be (M, {net.n[0]}) and (M, {net.n[net.L]}) with M >= 1")
    ids = ids_
    if ids.shape[0] != 0 and ids.shape[0] != M:
        raise ValueError(f"data: ids must hold one class id per row ({M}) or none, got {ids.shape[0]}")
    for fld in ("fit", "hist"):
        arr = fit if fld == "fit" else hist
        if not getattr(getattr(arr, "flags", None), "writeable", False):
            raise ValueError(f"{fld} must be a writable structured array")
    f = <FitSpec*>_records(fit, "FitSpec", "fit", 1)
    E = f.epochs
    if E < 1 or f.epoch0 < 0:
        raise ValueError(f"fit.epochs must be >= 1 and fit.epoch0 >= 0, got {E}, {f.epoch0}")
    if f.monitor < FIT_MONITOR_NONE or f.monitor > FIT_MONITOR_DEV_ACCURACY:
        raise ValueError(f"fit.monitor: unknown code {f.monitor}")
    if f.monitor >= FIT_MONITOR_DEV_LOSS and dev is None:
        raise ValueError("fit.monitor: the dev set's values need dev (data[3])")
    if f.monitor == FIT_MONITOR_TRAIN_ACCURACY and ids.shape[0] == 0:
        raise ValueError("fit.monitor: train accuracy needs the class ids (data[2])")
    if f.patience < 0 or f.wait < 0 or not (f.min_delta >= 0.0):
        raise ValueError(f"fit.patience, fit.wait and fit.min_delta must be >= 0, got {f.patience}, {f.wait}, "
                         f"{f.min_delta}")
    st.hr = <HistRow*>_records(hist, "HistRow", "hist", E)
    if f.order < FIT_ORDER_BATCH or f.order > FIT_ORDER_DRAWN:
        raise ValueError(f"fit.order: unknown code {f.order}")
    want = {FIT_ORDER_BATCH: 0, FIT_ORDER_FIXED: 1, FIT_ORDER_GIVEN: E, FIT_ORDER_DRAWN: 1}[f.order]
    if perms.shape[0] != want or perms.shape[1] != M:
        raise ValueError(f"perms must be ({want}, {M}) for fit.order {f.order}, got ({perms.shape[0]}, "
                         f"{perms.shape[1]})")
    gathered = f.order != FIT_ORDER_BATCH
    if gathered:
        B = plan.rows
        if f.order != FIT_ORDER_DRAWN:
            for ep in range(perms.shape[0]):
                for r in range(M):
                    if perms[ep, r] < 0 or perms[ep, r] >= M:
                        raise ValueError(f"perms[{ep}, {r}] = {perms[ep, r]} is not a row of X")
        if plan._batch_x is None:
            raise ValueError("a gathered fit gathers its batches into buffers['X'] and buffers['Y']: "
                             "build the plan with them")
    else:
        B = M
        if M > plan.rows:
            raise ValueError(f"without perms X is the batch: at most {plan.rows} rows (the plan's), got {M}")
    steps = (M + B - 1) // B
    if lrs.shape[0] != E or lrs.shape[1] != steps:
        raise ValueError(f"lrs must be ({E}, {steps}): {M} rows in batches of {B} make {steps} steps per epoch")
    st.snap_p = NULL
    st.stats = NULL
    st.snap_s = NULL
    st.n_stats = 0
    if f.restore:
        if not (isinstance(snapshot, tuple) and len(snapshot) == 3):
            raise ValueError("fit.restore: snapshot must be a tuple (params copy, stats arena, stats copy)")
        st.snap_p = _data(snapshot[0], plan.dtype, plan.n_params, "snapshot[0]")
        st.n_stats = getattr(snapshot[1], "size", -1)
        if st.n_stats < 0 or getattr(snapshot[2], "size", -2) != st.n_stats:
            raise ValueError("snapshot[1] and snapshot[2] must be arrays of one size")
        if st.n_stats:
            st.stats = _data(snapshot[1], plan.dtype, st.n_stats, "snapshot[1]", False)
            st.snap_s = _data(snapshot[2], plan.dtype, st.n_stats, "snapshot[2]")
    st.xp = _data(X, plan.dtype, M * net.n[0], "data X", False)
    st.yp = _data(Y, plan.dtype, M * net.n[net.L], "data Y", False)
    if gathered:
        _batch(plan, plan._batch_x, plan._batch_y, B)
    else:
        _batch(plan, X, Y, M)
        st.xp = NULL
        st.yp = NULL
    st.net = net
    st.h = &plan.h
    st.f = f
    st.P = plan.P
    st.G = plan.G
    st.S1 = plan.S1
    st.S2 = plan.S2
    st.lam = plan._lam
    st.n_params = plan.n_params
    st.isz = plan.isz
    st.ids = &ids[0] if ids.shape[0] != 0 else NULL
    st.perms = &perms[0, 0] if perms.shape[0] != 0 else NULL
    st.lrs = &lrs[0, 0]
    st.M = M
    st.B = B
    st.E = E
    st.steps = steps
    st.gathered = gathered
    st.has_dev = dev is not None
    st.dropout_seed = plan.dropout_seed
    st.ep = 0
    st.i = 0
    st.done = 0
    st.status = 0
    st.res[0] = 0.0
    st.res[1] = 0.0
    f.stop = 0
    # a narrow net's steps of NARROW_SPLIT rows or more take a second thread, standing for the call
    team = plan._narrow_threads == 2 and B >= NARROW_SPLIT and _narrow(net)
    nt = 2 if team else net.nt
    copies = _input_copies(plan) if not gathered and plan.isz == 4 and _packs_input(net, E) else None
    plan.copied_input = copies is not None
    _team_cpus(&cpus, nt, True)  # released below: nothing raises in between
    with nogil:
        # the call starts from the arenas (the per-epoch path, each epoch: a callback may have
        # changed them); inside it, only its steps change them, and each step carries the bounds
        # on (a bound only decides whether a step must check its update against the arenas)
        _refresh(plan)
        while st.ep < E:
            if team:
                _fit_on_team(&st)
            else:
                _fit_run(&st)
            if st.status != 0 or not st.has_dev:
                break
            with gil:  # the dev set after the epoch's steps, as the per-epoch path evaluates it
                try:
                    st.hr[st.ep].dev_loss, st.hr[st.ep].dev_accuracy = dev()
                except BaseException as exc:
                    error = exc
                    failed = True
            if failed:
                break
            _fit_epoch_end(&st)
            if f.stop:
                break
    _team_cpus(&cpus, nt, False)
    plan.dropout_seed = st.dropout_seed
    net.xpack = NULL  # the copies are the call's (nothing in the loop raises: dev()'s error waits below)
    net.xpad = NULL
    if failed:
        raise error
    return st.ep, st.status, st.i, st.res[0], st.done
