# The per-kernel backend: activations, losses, dropout, optimiser updates, batch norm.
# Included by _ckernels.pyx (one extension module per instruction-set level).

from _point cimport vm_bce_logit, vm_exp, vm_exp_nonpos, vm_log1p   # _vmath.h: the float64 functions of the losses

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
    _tile(b, bt, n, m)
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
    """A and the summed per-element cost of one span; t: TILE scratch.

    MSE: a = v, t = (v - y)^2 in float64 (v = z + b).  BCE: a = sigmoid(v), t = _bce_cost(v, y).
    The sum of t over the span is float64.
    """
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
            v = z[k] + b[k]
            a[k] = <floating>sigmoid(<double>v)
            t[k] = _bce_cost(v, y[k])
    return _sum(t, L)


cdef inline double _bce_cost(floating v, floating y) noexcept nogil:
    """The cross-entropy -(y log a + (1 - y) log(1 - a)) of a = sigmoid(v), written on the logit,
    max(v, 0) - v y + log1p(exp(-|v|)), which never overflows: in float64 whatever the dtype (the
    cost keeps float64's relative precision down to its smallest values, as the output
    <floating>sigmoid(<double>v) is rounded once: tests/kernels/test_transcendental_range.py)."""
    return vm_bce_logit(<double>v, <double>y)


cdef inline double _cce_exp(double d) noexcept nogil:
    """exp(d) of a logit minus its row's maximum (d <= 0, or NaN: a NaN or +inf logit), NaN kept."""
    return vm_exp_nonpos(d) if d == d else d


cdef double _cce_row(const floating* z, const floating* b, const floating* y, floating* a,
                     Py_ssize_t n, double* t) noexcept nogil:
    """Softmax of one row into a and its cross-entropy, via log-sum-exp in float64.

    Relative to the row's maximum: lse = log1p(rest), rest the sum of e_k = exp(z_k - max)
    without each maximum's exact 1 (plus the maxima beyond the first), so the cost of a
    confident right answer keeps its relative precision; A_k = e_k * exp(-lse), one exponential
    per element and one per row.  Mirrors fusednet.kernels.reference.loss_forward.
    """
    cdef Py_ssize_t k, k0, L, tops = 0
    cdef double v, d, mx = -INFINITY, s = 0, lse, w, total = 0
    for k in range(n):
        v = <double>(z[k] + b[k])
        mx = v if v > mx else mx
    k0 = 0
    while k0 < n:
        L = TILE if n - k0 > TILE else n - k0
        for k in range(L):
            d = <double>(z[k0 + k] + b[k0 + k]) - mx
            t[k] = _cce_exp(d) - (1.0 if d == 0.0 else 0.0)
        s += _sum(t, L)
        k0 += L
    for k in range(n):
        if <double>(z[k] + b[k]) == mx:
            tops += 1
    lse = vm_log1p(s + <double>(tops - 1))
    w = vm_exp(-lse)
    for k in range(n):
        d = <double>(z[k] + b[k]) - mx
        total += <double>y[k] * (lse - d)
    for k in range(n):
        a[k] = <floating>(_cce_exp(<double>(z[k] + b[k]) - mx) * w)
    return total


cdef extern from "_cce.h" nogil:
    enum:
        CR "CCE_ROWS"              # rows of a _cce_rows block, one per lane
        CCE_MAXN                   # classes of a row at most
        CCE_SCRATCH                # doubles of a block's scratch
    void cce_rows_f(const float* z, const float* b, const float* y, float* a, long rows, long n,
                    double* scratch, double* cost)
    void cce_rows_d(const double* z, const double* b, const double* y, double* a, long rows, long n,
                    double* scratch, double* cost)


cdef inline void _cce_rows(const floating* z, const floating* b, const floating* y, floating* a,
                           Py_ssize_t rows, Py_ssize_t n, double* t, double* cost) noexcept nogil:
    """_cce_row of `rows` <= CR consecutive rows of n <= CCE_MAXN classes, each row in a lane
    (_cce.h): every row goes through _cce_row's operations in _cce_row's order, so each row's
    cost (into cost[r]) and A have _cce_row's bits; only the lanes make the transcendental
    functions run on vectors, where a row of 10 classes left them scalar.  t: CCE_SCRATCH
    doubles of scratch."""
    if floating is float:
        cce_rows_f(z, b, y, a, rows, n, t, cost)
    else:
        cce_rows_d(z, b, y, a, rows, n, t, cost)


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
    _tile(b, bt, n, m)
    for it in range(i0, i1):
        off = _span(it, m, n, &L, &boff)
        total += _loss_span(Z + off, bb + boff, Y + off, A + off, L, loss, t)
    return total


cdef void _loss_pieces(const floating* Z, const floating* b, const floating* Y, floating* A,
                       Py_ssize_t m, Py_ssize_t n, int loss, Py_ssize_t K, Py_ssize_t c0,
                       Py_ssize_t c1, double* part) noexcept nogil:
    """part[c] = _loss_piece of piece c (of K, over the _spans or, for CCE, the rows) for c in
    c0:c1.  A CCE piece is a few rows (K of up to KMAX pieces for any batch), so with at most
    CCE_MAXN classes the rows of consecutive pieces share the blocks of _cce_rows; each piece's
    rows are still summed in order from 0, so part[c] has _loss_piece's bits."""
    cdef double t[CCE_SCRATCH]  # _cce_rows' logits, exponentials and targets
    cdef double cost[CR]
    cdef Py_ssize_t c = c0, i, last, end, L, r, pieces
    cdef double total = 0
    if loss != CCE or n > CCE_MAXN:
        pieces = m if loss == CCE else _spans(m, n)
        for c in range(c0, c1):
            part[c] = _loss_piece(Z, b, Y, A, m, n, loss, _cut(pieces, K, c), _cut(pieces, K, c + 1))
        return
    i = _cut(m, K, c0)
    last = _cut(m, K, c1)
    end = _cut(m, K, c + 1)
    while i < last:
        L = CR if last - i > CR else last - i
        _cce_rows(Z + i * n, b, Y + i * n, A + i * n, L, n, t, cost)
        for r in range(L):
            total += cost[r]
            while i + r + 1 == end and c < c1:  # the row ends piece c (pieces hold >= 1 row)
                part[c] = total
                total = 0
                c += 1
                end = _cut(m, K, c + 1)
        i += L


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
            _loss_pieces(zp, bp, yp, ap, m, n, loss, K, 0, K, part)
        else:
            for c in prange(nw, num_threads=nw, schedule="static"):
                _loss_pieces(zp, bp, yp, ap, m, n, loss, K, _cut(K, nw, c), _cut(K, nw, c + 1), part)
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
        gp = decayed(g[k], w[k], l2) if decay else g[k]
        w[k] = gd_step(w[k], gp, lr)


cdef void _momentum_span(floating* w, const floating* g, floating* v, Py_ssize_t L,
                         const Hyper* h, bint decay) noexcept nogil:
    cdef floating lr = <floating>h.lr, l2 = <floating>h.l2
    cdef floating b1 = <floating>h.beta1, c1 = <floating>(1.0 - h.beta1), bc = <floating>h.bc1
    cdef floating gp, vk
    cdef Py_ssize_t k
    for k in range(L):
        gp = decayed(g[k], w[k], l2) if decay else g[k]
        vk = flush(ewa(v[k], gp, b1, c1))
        v[k] = vk
        w[k] = momentum_step(w[k], vk, lr, bc)


cdef void _rmsprop_span(floating* w, const floating* g, floating* s, Py_ssize_t L,
                        const Hyper* h, bint decay) noexcept nogil:
    cdef floating lr = <floating>h.lr, l2 = <floating>h.l2, eps = <floating>h.eps
    cdef floating b2 = <floating>h.beta2, c2 = <floating>(1.0 - h.beta2)
    cdef floating gp, sk
    cdef Py_ssize_t k
    for k in range(L):
        gp = decayed(g[k], w[k], l2) if decay else g[k]
        sk = flush(ewa(s[k], gp * gp, b2, c2))
        s[k] = sk
        w[k] = rmsprop_step(w[k], gp, sk, lr, eps)


cdef void _adam_span(floating* w, const floating* g, floating* m, floating* v, Py_ssize_t L,
                     const Hyper* h, bint decay) noexcept nogil:
    cdef floating lr = <floating>h.lr, l2 = <floating>h.l2, eps = <floating>h.eps
    cdef floating b1 = <floating>h.beta1, c1 = <floating>(1.0 - h.beta1), bc1 = <floating>h.bc1
    cdef floating b2 = <floating>h.beta2, c2 = <floating>(1.0 - h.beta2), bc2 = <floating>h.bc2
    cdef floating gp, mk, vk
    cdef Py_ssize_t k
    for k in range(L):
        gp = decayed(g[k], w[k], l2) if decay else g[k]
        mk = flush(ewa(m[k], gp, b1, c1))
        vk = flush(ewa(v[k], gp * gp, b2, c2))
        m[k] = mk
        v[k] = vk
        w[k] = adam_step(w[k], mk, vk, lr, bc1, bc2, eps)


cdef void _ewa_span(floating* v, const floating* x, Py_ssize_t L, const Hyper* h) noexcept nogil:
    cdef floating b = <floating>h.beta1, c = <floating>(1.0 - h.beta1)
    cdef Py_ssize_t k
    for k in range(L):
        v[k] = ewa(v[k], x[k], b, c)


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
