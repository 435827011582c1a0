# The Cython backend's compiled kernels.
#
# Contract: fusednet.kernels.reference (same positional signatures and meaning).
# Each public kernel takes typed memoryviews of one floating type, marks its data
# flow (# IN / # OUT), takes n_threads last, allocates nothing and returns None
# (loss_forward returns the cost).  Work is split into contiguous chunks, one per
# thread, with OpenMP; below a size threshold it runs serially, because an
# OpenMP launch costs a few microseconds.  Column reductions (db, batch-norm
# statistics) give each thread whole columns and walk rows in order, so results
# are bit-identical for any thread count.

from cython.parallel cimport prange
from libc.math cimport log, log1p, exp, fabs, sqrt, INFINITY

from _point cimport (real, sigmoid, sigmoid_grad, tanh_, tanh_grad, relu, relu_grad,
                     leaky_relu, leaky_relu_grad, dropout_hash, exp_, sqrt_, fabs_)

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
    #include <float.h>
    """
    int FN_OPENMP
    int fn_max_threads() noexcept nogil
    float FLT_MIN
    double DBL_MIN

#: True when the extension was compiled with OpenMP
OPENMP = bool(FN_OPENMP)

cdef enum:
    LINEAR = 0
    SIGMOID = 1
    TANH = 2
    RELU = 3
    LEAKY_RELU = 4
    SOFTMAX = 5
    MSE = 0
    BCE = 1
    CCE = 2

#: below this many elements a kernel runs on the calling thread only
SERIAL_THRESHOLD = 65536
cdef Py_ssize_t _SERIAL = SERIAL_THRESHOLD


def max_threads():
    """OpenMP's thread limit in this process (1 without OpenMP)."""
    return fn_max_threads()


cdef inline int _threads(Py_ssize_t work, int n_threads) noexcept nogil:
    if n_threads <= 1 or work < _SERIAL:
        return 1
    return n_threads


cdef inline Py_ssize_t _per(Py_ssize_t n, int chunks, Py_ssize_t align) noexcept nogil:
    """Chunk length: n split in `chunks`, rounded up to a multiple of `align`."""
    cdef Py_ssize_t per = (n + chunks - 1) // chunks
    return ((per + align - 1) // align) * align


# --------------------------------------------------------------------------------
# bias + activation forward
# --------------------------------------------------------------------------------

cdef void _fwd_rows(const real* Z, const real* b, int act, real slope, real* A,
                    Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef const real* z
    cdef real* a
    cdef real mx, v, s, inv
    for i in range(r0, r1):
        z = Z + i * n
        a = A + i * n
        if act == SIGMOID:
            for j in range(n):
                a[j] = sigmoid(z[j] + b[j])
        elif act == TANH:
            for j in range(n):
                a[j] = tanh_(z[j] + b[j])
        elif act == RELU:
            for j in range(n):
                a[j] = relu(z[j] + b[j])
        elif act == LEAKY_RELU:
            for j in range(n):
                a[j] = leaky_relu(z[j] + b[j], slope)
        elif act == SOFTMAX:
            mx = -INFINITY
            for j in range(n):
                v = z[j] + b[j]
                a[j] = v
                mx = v if v > mx else mx
            s = 0
            for j in range(n):
                v = exp_(a[j] - mx)
                a[j] = v
                s = s + v
            inv = 1 / s
            for j in range(n):
                a[j] = a[j] * inv
        else:
            for j in range(n):
                a[j] = z[j] + b[j]


def bias_act_forward(const real[:, ::1] Z,  # IN  (m, n)
                     const real[::1] b,      # IN  (n,)
                     int act, double slope,
                     real[:, ::1] A,         # OUT (m, n), may alias Z
                     int n_threads):
    cdef Py_ssize_t m = Z.shape[0], n = Z.shape[1], per, c, r0, r1
    if m == 0 or n == 0:
        return
    cdef const real* zp = &Z[0, 0]
    cdef const real* bp = &b[0]
    cdef real* ap = &A[0, 0]
    cdef real sl = <real>slope
    cdef int nt = _threads(m * n, n_threads)
    if nt == 1 or m < 2:
        with nogil:
            _fwd_rows(zp, bp, act, sl, ap, 0, m, n)
        return
    per = _per(m, nt, 1)
    for c in prange(nt, nogil=True, num_threads=nt, schedule="static"):
        r0 = c * per
        r1 = min(m, r0 + per)
        if r0 < r1:
            _fwd_rows(zp, bp, act, sl, ap, r0, r1, n)


# --------------------------------------------------------------------------------
# activation backward + bias gradient
# --------------------------------------------------------------------------------

cdef void _bwd_cols(const real* dA, const real* A, int act, real slope, real* dZ, real* db,
                    Py_ssize_t m, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef const real* da
    cdef const real* a
    cdef real* dz
    cdef real d
    for j in range(c0, c1):
        db[j] = 0
    for i in range(m):
        da = dA + i * n
        a = A + i * n
        dz = dZ + i * n
        if act == SIGMOID:
            for j in range(c0, c1):
                d = da[j] * sigmoid_grad(a[j])
                dz[j] = d
                db[j] += d
        elif act == TANH:
            for j in range(c0, c1):
                d = da[j] * tanh_grad(a[j])
                dz[j] = d
                db[j] += d
        elif act == RELU:
            for j in range(c0, c1):
                d = da[j] * relu_grad(a[j])
                dz[j] = d
                db[j] += d
        elif act == LEAKY_RELU:
            for j in range(c0, c1):
                d = da[j] * leaky_relu_grad(a[j], slope)
                dz[j] = d
                db[j] += d
        else:
            for j in range(c0, c1):
                d = da[j]
                dz[j] = d
                db[j] += d


cdef void _softmax_bwd(const real* dA, const real* A, real* dZ, real* db, Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef real s, d
    for j in range(n):
        db[j] = 0
    for i in range(m):
        s = 0
        for j in range(n):
            s = s + dA[i * n + j] * A[i * n + j]
        for j in range(n):
            d = A[i * n + j] * (dA[i * n + j] - s)
            dZ[i * n + j] = d
            db[j] += d


def act_backward(const real[:, ::1] dA,  # IN  (m, n)
                 const real[:, ::1] A,   # IN  (m, n), the cached output g(Z)
                 int act, double slope,
                 real[:, ::1] dZ,        # OUT (m, n), may alias dA
                 real[::1] db,           # OUT (n,)
                 int n_threads):
    cdef Py_ssize_t m = dA.shape[0], n = dA.shape[1], per, c, c0, c1, j
    if n == 0:
        return
    if m == 0:
        for j in range(n):
            db[j] = 0
        return
    cdef const real* dap = &dA[0, 0]
    cdef const real* ap = &A[0, 0]
    cdef real* dzp = &dZ[0, 0]
    cdef real* dbp = &db[0]
    cdef real sl = <real>slope
    if act == SOFTMAX:
        with nogil:
            _softmax_bwd(dap, ap, dzp, dbp, m, n)
        return
    cdef int nt = _threads(m * n, n_threads)
    if nt == 1 or n < 32:
        with nogil:
            _bwd_cols(dap, ap, act, sl, dzp, dbp, m, n, 0, n)
        return
    per = _per(n, nt, 16)
    for c in prange(nt, nogil=True, num_threads=nt, schedule="static"):
        c0 = c * per
        c1 = min(n, c0 + per)
        if c0 < c1:
            _bwd_cols(dap, ap, act, sl, dzp, dbp, m, n, c0, c1)


# --------------------------------------------------------------------------------
# output activation + cost, and dZ = (A - Y) / m
# --------------------------------------------------------------------------------

def loss_forward(const real[:, ::1] Z,  # IN  (m, k) logits without bias
                 const real[::1] b,     # IN  (k,)
                 const real[:, ::1] Y,  # IN  (m, k) targets
                 int loss,
                 real[:, ::1] A,        # OUT (m, k)
                 int n_threads):
    cdef Py_ssize_t m = Z.shape[0], k = Z.shape[1], i, j
    cdef double total = 0, v, mx, s, lse, d
    if m == 0:
        return 0.0
    if k == 0:
        return 0.0
    with nogil:
        for i in range(m):
            if loss == MSE:
                for j in range(k):
                    v = <double>(Z[i, j] + b[j])
                    A[i, j] = <real>v
                    d = v - Y[i, j]
                    total += d * d
            elif loss == BCE:
                for j in range(k):
                    v = <double>(Z[i, j] + b[j])
                    A[i, j] = sigmoid(<real>v)
                    # -(y log a + (1-y) log(1-a)) written on the logit: never overflows
                    total += (v if v > 0 else 0) - v * Y[i, j] + log1p(exp(-fabs(v)))
            else:
                mx = -INFINITY
                for j in range(k):
                    v = <double>(Z[i, j] + b[j])
                    mx = v if v > mx else mx
                s = 0
                for j in range(k):
                    s += exp(<double>(Z[i, j] + b[j]) - mx)
                lse = mx + log(s)
                for j in range(k):
                    v = <double>(Z[i, j] + b[j])
                    A[i, j] = <real>exp(v - lse)
                    total += Y[i, j] * (lse - v)
    if loss == MSE:
        total = 0.5 * total
    return total / m


cdef void _lossb_cols(const real* A, const real* Y, real* dZ, real* db, real inv_m,
                      Py_ssize_t m, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef real d
    for j in range(c0, c1):
        db[j] = 0
    for i in range(m):
        for j in range(c0, c1):
            d = (A[i * n + j] - Y[i * n + j]) * inv_m
            dZ[i * n + j] = d
            db[j] += d


def loss_backward(const real[:, ::1] A,  # IN  (m, k)
                  const real[:, ::1] Y,  # IN  (m, k)
                  real[:, ::1] dZ,       # OUT (m, k)
                  real[::1] db,          # OUT (k,)
                  int n_threads):
    cdef Py_ssize_t m = A.shape[0], n = A.shape[1], per, c, c0, c1, j
    if n == 0:
        return
    if m == 0:
        for j in range(n):
            db[j] = 0
        return
    cdef const real* ap = &A[0, 0]
    cdef const real* yp = &Y[0, 0]
    cdef real* dzp = &dZ[0, 0]
    cdef real* dbp = &db[0]
    cdef real inv_m = <real>(1.0 / m)
    cdef int nt = _threads(m * n, n_threads)
    if nt == 1 or n < 32:
        with nogil:
            _lossb_cols(ap, yp, dzp, dbp, inv_m, m, n, 0, n)
        return
    per = _per(n, nt, 16)
    for c in prange(nt, nogil=True, num_threads=nt, schedule="static"):
        c0 = c * per
        c1 = min(n, c0 + per)
        if c0 < c1:
            _lossb_cols(ap, yp, dzp, dbp, inv_m, m, n, c0, c1)


# --------------------------------------------------------------------------------
# inverted dropout from a counter-based hash
# --------------------------------------------------------------------------------

cdef void _dropout(const real* X, unsigned int k1, unsigned int k2, unsigned int thr, int keep_all,
                   real scale, real* out, Py_ssize_t s0, Py_ssize_t s1) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned int h
    if keep_all:
        for i in range(s0, s1):
            out[i] = X[i] * scale
        return
    for i in range(s0, s1):
        h = dropout_hash(<unsigned long long>i, k1, k2)
        out[i] = X[i] * scale if h < thr else 0


def dropout_apply(const real[::1] X,              # IN  flat
                  unsigned long long key,
                  unsigned long long threshold,
                  double scale,
                  real[::1] out,                  # OUT flat, may alias X
                  int n_threads):
    cdef Py_ssize_t n = X.shape[0], per, c, s0, s1
    if n == 0:
        return
    cdef const real* xp = &X[0]
    cdef real* op = &out[0]
    cdef unsigned int k1 = <unsigned int>(key & 0xFFFFFFFFULL)
    cdef unsigned int k2 = <unsigned int>(key >> 32)
    cdef int keep_all = threshold >= 4294967296ULL
    cdef unsigned int thr = <unsigned int>(threshold if not keep_all else 0)
    cdef real sc = <real>scale
    cdef int nt = _threads(n, n_threads)
    if nt == 1:
        with nogil:
            _dropout(xp, k1, k2, thr, keep_all, sc, op, 0, n)
        return
    per = _per(n, nt, 64)
    for c in prange(nt, nogil=True, num_threads=nt, schedule="static"):
        s0 = c * per
        s1 = min(n, s0 + per)
        if s0 < s1:
            _dropout(xp, k1, k2, thr, keep_all, sc, op, s0, s1)


# --------------------------------------------------------------------------------
# optimiser updates over one flat buffer; L2 folded into the first n_decay elements
# --------------------------------------------------------------------------------

cdef inline real _tiny(real x) noexcept nogil:
    if real is float:
        return FLT_MIN
    else:
        return DBL_MIN


cdef inline real _flush(real x, real tiny) noexcept nogil:
    """Zero below the smallest normal number: subnormal state never slows the update."""
    return 0 if fabs_(x) < tiny else x


cdef void _gd(real* w, const real* g, real lr, real l2, Py_ssize_t s0, Py_ssize_t s1) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(s0, s1):
        w[i] = w[i] - lr * (g[i] + l2 * w[i])


cdef void _momentum(real* w, const real* g, real* v, real lr, real beta, real ibc, real l2,
                    Py_ssize_t s0, Py_ssize_t s1) noexcept nogil:
    cdef Py_ssize_t i
    cdef real vi, tiny = _tiny(lr)
    for i in range(s0, s1):
        vi = _flush(beta * v[i] + (1 - beta) * (g[i] + l2 * w[i]), tiny)
        v[i] = vi
        w[i] = w[i] - lr * (vi * ibc)


cdef void _rmsprop(real* w, const real* g, real* s, real lr, real beta, real eps, real l2,
                   Py_ssize_t s0, Py_ssize_t s1) noexcept nogil:
    cdef Py_ssize_t i
    cdef real gp, si, tiny = _tiny(lr)
    for i in range(s0, s1):
        gp = g[i] + l2 * w[i]
        si = _flush(beta * s[i] + (1 - beta) * gp * gp, tiny)
        s[i] = si
        w[i] = w[i] - lr * gp / (sqrt_(si) + eps)


cdef void _adam(real* w, const real* g, real* mm, real* v, real lr, real b1, real b2, real eps,
                real ibc1, real ibc2, real l2, Py_ssize_t s0, Py_ssize_t s1) noexcept nogil:
    cdef Py_ssize_t i
    cdef real gp, mi, vi, tiny = _tiny(lr)
    for i in range(s0, s1):
        gp = g[i] + l2 * w[i]
        mi = _flush(b1 * mm[i] + (1 - b1) * gp, tiny)
        vi = _flush(b2 * v[i] + (1 - b2) * gp * gp, tiny)
        mm[i] = mi
        v[i] = vi
        w[i] = w[i] - lr * (mi * ibc1) / (sqrt_(vi * ibc2) + eps)


cdef enum:
    OPT_GD = 0
    OPT_MOMENTUM = 1
    OPT_RMSPROP = 2
    OPT_ADAM = 3


cdef void _opt_range(int kind, real* w, const real* g, real* s1_, real* s2_, real* hp, real l2,
                     Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """hp: lr, beta1, beta2, eps, 1/bc1, 1/bc2."""
    if a >= b:
        return
    if kind == OPT_GD:
        _gd(w, g, hp[0], l2, a, b)
    elif kind == OPT_MOMENTUM:
        _momentum(w, g, s1_, hp[0], hp[1], hp[4], l2, a, b)
    elif kind == OPT_RMSPROP:
        _rmsprop(w, g, s1_, hp[0], hp[1], hp[3], l2, a, b)
    else:
        _adam(w, g, s1_, s2_, hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], l2, a, b)


cdef void _opt_chunk(int kind, real* w, const real* g, real* s1_, real* s2_, real* hp, real l2,
                     Py_ssize_t n_decay, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    _opt_range(kind, w, g, s1_, s2_, hp, l2, a, min(b, n_decay))
    _opt_range(kind, w, g, s1_, s2_, hp, 0, max(a, n_decay), b)


cdef void _opt(int kind, real* w, const real* g, real* s1_, real* s2_, real* hp, real l2,
               Py_ssize_t n_decay, Py_ssize_t n, int n_threads) noexcept nogil:
    cdef int nt = _threads(n, n_threads)
    cdef Py_ssize_t per, c, a, b
    if nt == 1:
        _opt_chunk(kind, w, g, s1_, s2_, hp, l2, n_decay, 0, n)
        return
    per = _per(n, nt, 64)
    for c in prange(nt, num_threads=nt, schedule="static"):
        a = c * per
        b = min(n, a + per)
        if a < b:
            _opt_chunk(kind, w, g, s1_, s2_, hp, l2, n_decay, a, b)


def gd_update(real[::1] w, const real[::1] g, double lr, double l2, Py_ssize_t n_decay, int n_threads):
    """w -= lr * (g + l2 w[:n_decay]); w IN/OUT, g IN."""
    cdef Py_ssize_t n = w.shape[0]
    cdef real hp[6]
    if n == 0:
        return
    hp[0] = <real>lr
    with nogil:
        _opt(OPT_GD, &w[0], &g[0], NULL, NULL, hp, <real>l2, n_decay, n, n_threads)


def momentum_update(real[::1] w, const real[::1] g, real[::1] v, double lr, double beta, double bc,
                    double l2, Py_ssize_t n_decay, int n_threads):
    """v = beta v + (1-beta) g'; w -= lr v / bc; w, v IN/OUT, g IN."""
    cdef Py_ssize_t n = w.shape[0]
    cdef real hp[6]
    if n == 0:
        return
    hp[0] = <real>lr
    hp[1] = <real>beta
    hp[4] = <real>(1.0 / bc)
    with nogil:
        _opt(OPT_MOMENTUM, &w[0], &g[0], &v[0], NULL, hp, <real>l2, n_decay, n, n_threads)


def rmsprop_update(real[::1] w, const real[::1] g, real[::1] s, double lr, double beta, double eps,
                   double l2, Py_ssize_t n_decay, int n_threads):
    """s = beta s + (1-beta) g'^2; w -= lr g' / (sqrt(s) + eps); w, s IN/OUT, g IN."""
    cdef Py_ssize_t n = w.shape[0]
    cdef real hp[6]
    if n == 0:
        return
    hp[0] = <real>lr
    hp[1] = <real>beta
    hp[3] = <real>eps
    with nogil:
        _opt(OPT_RMSPROP, &w[0], &g[0], &s[0], NULL, hp, <real>l2, n_decay, n, n_threads)


def adam_update(real[::1] w, const real[::1] g, real[::1] m, real[::1] v, double lr, double beta1,
                double beta2, double eps, double bc1, double bc2, double l2, Py_ssize_t n_decay,
                int n_threads):
    """Bias-corrected Adam, eps outside the sqrt; w, m, v IN/OUT, g IN."""
    cdef Py_ssize_t n = w.shape[0]
    cdef real hp[6]
    if n == 0:
        return
    hp[0] = <real>lr
    hp[1] = <real>beta1
    hp[2] = <real>beta2
    hp[3] = <real>eps
    hp[4] = <real>(1.0 / bc1)
    hp[5] = <real>(1.0 / bc2)
    with nogil:
        _opt(OPT_ADAM, &w[0], &g[0], &m[0], &v[0], hp, <real>l2, n_decay, n, n_threads)


# --------------------------------------------------------------------------------
# exponentially weighted average
# --------------------------------------------------------------------------------

def ewa_update(real[::1] v, const real[::1] x, double beta, int n_threads):
    """v = beta v + (1 - beta) x; v IN/OUT, x IN."""
    cdef Py_ssize_t n = v.shape[0], i
    cdef real bt = <real>beta, om = <real>(1.0 - beta)
    with nogil:
        for i in range(n):
            v[i] = bt * v[i] + om * x[i]


# --------------------------------------------------------------------------------
# batch norm
# --------------------------------------------------------------------------------

cdef void _bn_stats(const real* Z, double eps, real* mean, real* var, real* invstd,
                    Py_ssize_t m, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double s, q, mu, d
    for j in range(c0, c1):
        s = 0
        for i in range(m):
            s += Z[i * n + j]
        mu = s / m
        q = 0
        for i in range(m):
            d = Z[i * n + j] - mu
            q += d * d
        mean[j] = <real>mu
        var[j] = <real>(q / m)
        invstd[j] = <real>(1.0 / sqrt(q / m + eps))


cdef void _bn_apply(const real* Z, const real* gamma, const real* beta, const real* mean,
                    const real* invstd, real* xhat, real* out, Py_ssize_t r0, Py_ssize_t r1,
                    Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef real xh
    for i in range(r0, r1):
        for j in range(n):
            xh = (Z[i * n + j] - mean[j]) * invstd[j]
            xhat[i * n + j] = xh
            out[i * n + j] = gamma[j] * xh + beta[j]


def batchnorm_forward_train(const real[:, ::1] Z,      # IN  (m, n), m >= 1
                            const real[::1] gamma,     # IN  (n,)
                            const real[::1] beta,      # IN  (n,)
                            double eps,
                            real[:, ::1] xhat,         # OUT (m, n)
                            real[:, ::1] out,          # OUT (m, n)
                            real[::1] mean,            # OUT (n,)
                            real[::1] var,             # OUT (n,) biased
                            real[::1] invstd,          # OUT (n,)
                            int n_threads):
    cdef Py_ssize_t m = Z.shape[0], n = Z.shape[1], per, c, a, b
    if m == 0 or n == 0:
        return
    cdef const real* zp = &Z[0, 0]
    cdef real* mp = &mean[0]
    cdef real* vp = &var[0]
    cdef real* ip = &invstd[0]
    cdef int nt = _threads(m * n, n_threads)
    if nt == 1 or n < 32:
        with nogil:
            _bn_stats(zp, eps, mp, vp, ip, m, n, 0, n)
    else:
        per = _per(n, nt, 16)
        for c in prange(nt, nogil=True, num_threads=nt, schedule="static"):
            a = c * per
            b = min(n, a + per)
            if a < b:
                _bn_stats(zp, eps, mp, vp, ip, m, n, a, b)
    if nt == 1 or m < 2:
        with nogil:
            _bn_apply(zp, &gamma[0], &beta[0], mp, ip, &xhat[0, 0], &out[0, 0], 0, m, n)
        return
    per = _per(m, nt, 1)
    for c in prange(nt, nogil=True, num_threads=nt, schedule="static"):
        a = c * per
        b = min(m, a + per)
        if a < b:
            _bn_apply(zp, &gamma[0], &beta[0], mp, ip, &xhat[0, 0], &out[0, 0], a, b, n)


def batchnorm_forward_infer(const real[:, ::1] Z,            # IN  (m, n)
                            const real[::1] gamma,           # IN
                            const real[::1] beta,            # IN
                            const real[::1] running_mean,    # IN
                            const real[::1] running_var,     # IN
                            double eps,
                            real[:, ::1] out,                # OUT (m, n), may alias Z
                            int n_threads):
    cdef Py_ssize_t m = Z.shape[0], n = Z.shape[1], i, j
    cdef real inv
    with nogil:
        for i in range(m):
            for j in range(n):
                inv = <real>(1.0 / sqrt(<double>running_var[j] + eps))
                out[i, j] = gamma[j] * ((Z[i, j] - running_mean[j]) * inv) + beta[j]


cdef void _bn_grad_cols(const real* dout, const real* xhat, real* dgamma, real* dbeta,
                        Py_ssize_t m, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double sb, sg
    for j in range(c0, c1):
        sb = 0
        sg = 0
        for i in range(m):
            sb += dout[i * n + j]
            sg += dout[i * n + j] * xhat[i * n + j]
        dbeta[j] = <real>sb
        dgamma[j] = <real>sg


cdef void _bn_dz_rows(const real* dout, const real* xhat, const real* gamma, const real* invstd,
                      const real* dgamma, const real* dbeta, real* dZ, real inv_m,
                      Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(r0, r1):
        for j in range(n):
            dZ[i * n + j] = (gamma[j] * invstd[j]) * (
                dout[i * n + j] - dbeta[j] * inv_m - xhat[i * n + j] * (dgamma[j] * inv_m))


def batchnorm_backward(const real[:, ::1] dout,    # IN  (m, n)
                       const real[:, ::1] xhat,    # IN  (m, n)
                       const real[::1] gamma,      # IN  (n,)
                       const real[::1] invstd,     # IN  (n,)
                       real[:, ::1] dZ,            # OUT (m, n), may alias dout
                       real[::1] dgamma,           # OUT (n,)
                       real[::1] dbeta,            # OUT (n,)
                       int n_threads):
    cdef Py_ssize_t m = dout.shape[0], n = dout.shape[1], per, c, a, b
    if m == 0 or n == 0:
        return
    cdef const real* dp = &dout[0, 0]
    cdef const real* xp = &xhat[0, 0]
    cdef real* dgp = &dgamma[0]
    cdef real* dbp = &dbeta[0]
    cdef real inv_m = <real>(1.0 / m)
    cdef int nt = _threads(m * n, n_threads)
    if nt == 1 or n < 32:
        with nogil:
            _bn_grad_cols(dp, xp, dgp, dbp, m, n, 0, n)
    else:
        per = _per(n, nt, 16)
        for c in prange(nt, nogil=True, num_threads=nt, schedule="static"):
            a = c * per
            b = min(n, a + per)
            if a < b:
                _bn_grad_cols(dp, xp, dgp, dbp, m, n, a, b)
    if nt == 1 or m < 2:
        with nogil:
            _bn_dz_rows(dp, xp, &gamma[0], &invstd[0], dgp, dbp, &dZ[0, 0], inv_m, 0, m, n)
        return
    per = _per(m, nt, 1)
    for c in prange(nt, nogil=True, num_threads=nt, schedule="static"):
        a = c * per
        b = min(m, a + per)
        if a < b:
            _bn_dz_rows(dp, xp, &gamma[0], &invstd[0], dgp, dbp, &dZ[0, 0], inv_m, a, b, n)
