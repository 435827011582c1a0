# The population engine by lanes (fusednet.kernels._population_lanes): a group of GROUP models of
# one small Dense net trained side by side, model q of the group in lane q of every buffer.
#
# Every buffer of a group is a block of rows of GROUP values: the parameters, gradients and
# optimiser state (row i: parameter i of each model), their copy from before the step, the
# per-lane update constants, every layer's activations (row b * n_out + j: example b, unit j)
# and two deltas of the widest layer.  The products, activations and deltas run on _lanes.h's
# primitives, whose running values stay in vector registers; the rest loops over the lanes
# (GROUP of them, a bound the compiler does not know: it vectorises the loop instead of
# unrolling it into scalar code).  Each lane runs the same instructions, so a model's result
# does not depend on its group, the population or the threads.
#
# The formulas are the backends': the point functions of _point.h / _point.pxd and _vmath.h
# (activations and their derivatives from the output in _lanes_t.h's vector form, the
# optimiser updates, the sigmoid output's cross-entropy on the logit in the dtype), the
# softmax and its cost by the log-sum-exp of _cce_row, and the sums in order over the batch
# (weight gradients in the dtype, bias gradients and costs in float64).  A call runs with
# flush-to-zero and denormals-are-zero (fn_ftz_enter), as the step's optimiser pieces do.

cdef enum:
    GROUP = 16          # models per group, one per lane (fusednet.kernels._population_lanes.V)
    LANE_LAYERS = 16    # most Dense layers of a net the lanes take
    LANE_CHUNK = 16     # examples whose activations and deltas the buffers hold (forward, then backward)
    LANE_BLOCK = 8      # examples per block primitive (_lanes.h's LN_EB)

cdef enum:              # columns of the population's hyp table (fusednet.kernels._population)
    LH_LR = 0
    LH_BETA1 = 1
    LH_BETA2 = 2
    LH_EPS = 3
    LH_L2 = 4

cdef enum:              # accuracy modes and status codes (fusednet.kernels._population)
    LACC_NONE = 0
    LACC_ARGMAX = 1
    LACC_THRESHOLD = 2
    LS_COST = 1
    LS_GRADIENT = 2
    LS_UPDATE = 3


cdef extern from "_lanes.h" nogil:
    int LN_GROUP
    enum:
        LN_C_LR, LN_C_B1, LN_C_1MB1, LN_C_B2, LN_C_1MB2, LN_C_EPS, LN_C_BC1, LN_C_BC2, LN_C_L2, LN_C_ROWS
    void ln_bce4_f(float* a, Py_ssize_t as_, float y0, float y1, float y2, float y3, double* cost, int64_t* hits)
    void ln_bce4_d(double* a, Py_ssize_t as_, double y0, double y1, double y2, double y3, double* cost,
                   int64_t* hits)
    void ln_bce_f(float* a, float y, double* cost)
    void ln_bce_d(double* a, double y, double* cost)
    void ln_update_row_f(float* w, const float* g, float* s1, float* s2, const float* C, const int* decay,
                         int decayed, int kind)
    void ln_update_row_d(double* w, const double* g, double* s1, double* s2, const double* C, const int* decay,
                         int decayed, int kind)
    void ln_dense_unit_f(float* out, const float* w, Py_ssize_t ws, const float* x, const float* a, Py_ssize_t n,
                         const float* b, int act, float slope)
    void ln_dense_unit_d(double* out, const double* w, Py_ssize_t ws, const double* x, const double* a,
                         Py_ssize_t n, const double* b, int act, double slope)
    void ln_back_unit_f(float* out, const float* w, const float* d, Py_ssize_t n, const float* a, int act,
                        float slope)
    void ln_back_unit_d(double* out, const double* w, const double* d, Py_ssize_t n, const double* a, int act,
                        double slope)
    int LN_EB
    void ln_dense_block_f(float* out, Py_ssize_t os, const float* w, Py_ssize_t ws, const float** x, const float* a,
                          Py_ssize_t as_, Py_ssize_t n, const float* b, int act, float slope)
    void ln_dense_block_d(double* out, Py_ssize_t os, const double* w, Py_ssize_t ws, const double** x,
                          const double* a, Py_ssize_t as_, Py_ssize_t n, const double* b, int act, double slope)
    void ln_back_block_f(float* out, Py_ssize_t os, const float* w, const float* d, Py_ssize_t ds, Py_ssize_t n,
                         const float* a, Py_ssize_t as_, int act, float slope)
    void ln_back_block_d(double* out, Py_ssize_t os, const double* w, const double* d, Py_ssize_t ds, Py_ssize_t n,
                         const double* a, Py_ssize_t as_, int act, double slope)
    void ln_outer_block_f(float* gw, const float** x, const float* a, Py_ssize_t as_, const float* d, Py_ssize_t ds,
                          Py_ssize_t n_in, Py_ssize_t n)
    void ln_outer_block_d(double* gw, const double** x, const double* a, Py_ssize_t as_, const double* d,
                          Py_ssize_t ds, Py_ssize_t n_in, Py_ssize_t n)
    void ln_sum_block_f(double* sums, const float* d, Py_ssize_t ds, Py_ssize_t n)
    void ln_sum_block_d(double* sums, const double* d, Py_ssize_t ds, Py_ssize_t n)
    void ln_outer_add_f(float* gw, const float* x, const float* a, const float* d, Py_ssize_t n_in, Py_ssize_t n)
    void ln_outer_add_d(double* gw, const double* x, const double* a, const double* d, Py_ssize_t n_in,
                        Py_ssize_t n)
    void ln_sum_rows_f(double* sums, const float* d, Py_ssize_t n)
    void ln_sum_rows_d(double* sums, const double* d, Py_ssize_t n)
    void ln_delta_out_f(float* d, const float* a, float y, float cm)
    void ln_delta_out_d(double* d, const double* a, double y, double cm)


# the primitives of _lanes.h by the fused type

cdef inline void _dense_unit(floating* out, const floating* w, Py_ssize_t ws, const floating* x,
                             const floating* a, Py_ssize_t n, const floating* b, int act,
                             floating slope) noexcept nogil:
    if floating is float:
        ln_dense_unit_f(out, w, ws, x, a, n, b, act, slope)
    else:
        ln_dense_unit_d(out, w, ws, x, a, n, b, act, slope)


cdef inline void _back_unit(floating* out, const floating* w, const floating* d, Py_ssize_t n, const floating* a,
                            int act, floating slope) noexcept nogil:
    if floating is float:
        ln_back_unit_f(out, w, d, n, a, act, slope)
    else:
        ln_back_unit_d(out, w, d, n, a, act, slope)


cdef inline void _dense_block(floating* out, Py_ssize_t os, const floating* w, Py_ssize_t ws,
                              const floating** x, const floating* a, Py_ssize_t as_, Py_ssize_t n,
                              const floating* b, int act, floating slope) noexcept nogil:
    if floating is float:
        ln_dense_block_f(out, os, w, ws, x, a, as_, n, b, act, slope)
    else:
        ln_dense_block_d(out, os, w, ws, x, a, as_, n, b, act, slope)


cdef inline void _back_block(floating* out, Py_ssize_t os, const floating* w, const floating* d, Py_ssize_t ds,
                             Py_ssize_t n, const floating* a, Py_ssize_t as_, int act, floating slope) noexcept nogil:
    if floating is float:
        ln_back_block_f(out, os, w, d, ds, n, a, as_, act, slope)
    else:
        ln_back_block_d(out, os, w, d, ds, n, a, as_, act, slope)


cdef inline void _outer_block(floating* gw, const floating** x, const floating* a, Py_ssize_t as_,
                              const floating* d, Py_ssize_t ds, Py_ssize_t n_in, Py_ssize_t n) noexcept nogil:
    if floating is float:
        ln_outer_block_f(gw, x, a, as_, d, ds, n_in, n)
    else:
        ln_outer_block_d(gw, x, a, as_, d, ds, n_in, n)


cdef inline void _sum_block(double* sums, const floating* d, Py_ssize_t ds, Py_ssize_t n) noexcept nogil:
    if floating is float:
        ln_sum_block_f(sums, d, ds, n)
    else:
        ln_sum_block_d(sums, d, ds, n)


cdef inline void _outer_add(floating* gw, const floating* x, const floating* a, const floating* d,
                            Py_ssize_t n_in, Py_ssize_t n) noexcept nogil:
    if floating is float:
        ln_outer_add_f(gw, x, a, d, n_in, n)
    else:
        ln_outer_add_d(gw, x, a, d, n_in, n)


cdef inline void _sum_rows(double* sums, const floating* d, Py_ssize_t n) noexcept nogil:
    if floating is float:
        ln_sum_rows_f(sums, d, n)
    else:
        ln_sum_rows_d(sums, d, n)


cdef inline void _bce(floating* a, floating y, double* cost) noexcept nogil:
    if floating is float:
        ln_bce_f(a, y, cost)
    else:
        ln_bce_d(a, y, cost)


cdef inline void _bce4(floating* a, Py_ssize_t as_, const floating* Y, Py_ssize_t k, const int64_t* rows,
                       double* cost, int64_t* hits) noexcept nogil:
    if floating is float:
        ln_bce4_f(a, as_, Y[rows[0] * k], Y[rows[1] * k], Y[rows[2] * k], Y[rows[3] * k], cost, hits)
    else:
        ln_bce4_d(a, as_, Y[rows[0] * k], Y[rows[1] * k], Y[rows[2] * k], Y[rows[3] * k], cost, hits)


cdef inline void _update_row(floating* w, const floating* g, floating* s1, floating* s2, const floating* C,
                             const int* decay, int decayed, int kind) noexcept nogil:
    if floating is float:
        ln_update_row_f(w, g, s1, s2, C, decay, decayed, kind)
    else:
        ln_update_row_d(w, g, s1, s2, C, decay, decayed, kind)


cdef inline void _delta_out(floating* d, const floating* a, floating y, floating cm) noexcept nogil:
    if floating is float:
        ln_delta_out_f(d, a, y, cm)
    else:
        ln_delta_out_d(d, a, y, cm)


cdef struct LaneNet:
    Py_ssize_t L, nf, k, n_params, n1, n2, n_decay, B, CB, act_rows, wmax, units
    Py_ssize_t at_s1, at_s2, at_g, at_save, at_c, at_acts, rows   # the group's buffers: first rows, total
    Py_ssize_t lanes                # GROUP, as a value the compiler does not know (see _lane_net)
    Py_ssize_t n_in[LANE_LAYERS]
    Py_ssize_t n_out[LANE_LAYERS]
    Py_ssize_t w_off[LANE_LAYERS]
    Py_ssize_t b_off[LANE_LAYERS]
    Py_ssize_t offs[LANE_LAYERS]    # the layer's first activation row
    Py_ssize_t sum_at[LANE_LAYERS]  # the layer's first bias sum (rows of GROUP float64 values)
    int act[LANE_LAYERS]
    double slope[LANE_LAYERS]
    int loss, kind, acc


cdef struct LaneState:              # a group's per-lane bookkeeping
    double cost[GROUP]
    double sq[GROUP]
    double fin[GROUP]
    int alive[GROUP]
    int decay[GROUP]
    Py_ssize_t correct[GROUP]


def lane_layout():
    """``(GROUP, LANE_LAYERS)``: the models of a group and the most Dense layers a net may have."""
    return GROUP, LANE_LAYERS


cdef void _ln_loss_row(const LaneNet* net, floating* a, const floating* y, Py_ssize_t cls,
                       LaneState* st) noexcept nogil:
    """One example's output activation in place (its k logits with their bias at ``a``, row by
    row), its cost added to ``st.cost`` and its correct predictions to ``st.correct``; ``y``: its
    k targets, ``cls`` its class id (softmax)."""
    cdef Py_ssize_t nq = net.lanes
    cdef Py_ssize_t j, q, k = net.k
    cdef double d, mx[GROUP]
    cdef double rest[GROUP]
    cdef double lse[GROUP]
    cdef double scale[GROUP]
    cdef double tot[GROUP]
    cdef int tops[GROUP]
    cdef int best[GROUP]
    cdef floating top[GROUP]
    cdef floating out[GROUP]
    cdef floating half = <floating>0.5
    cdef floating* row
    if net.loss == CCE:
        for q in range(nq):
            mx[q] = -INFINITY
            rest[q] = 0.0
            tops[q] = 0
            tot[q] = 0.0
        for j in range(k):
            row = a + j * GROUP
            for q in range(nq):
                d = <double>row[q]
                mx[q] = d if d > mx[q] else mx[q]
        for j in range(k):
            row = a + j * GROUP
            for q in range(nq):
                d = <double>row[q] - mx[q]
                rest[q] += _cce_exp(d) - (1.0 if d == 0.0 else 0.0)
                tops[q] += 1 if d == 0.0 else 0
        for q in range(nq):
            lse[q] = vm_log1p(rest[q] + <double>(tops[q] - 1))
            scale[q] = vm_exp(-lse[q])
        for j in range(k):
            row = a + j * GROUP
            for q in range(nq):
                tot[q] += <double>y[j] * (lse[q] - (<double>row[q] - mx[q]))
        for j in range(k):
            row = a + j * GROUP
            for q in range(nq):
                out[q] = <floating>(_cce_exp(<double>row[q] - mx[q]) * scale[q])
            for q in range(nq):
                row[q] = out[q]
        for q in range(nq):
            st.cost[q] += tot[q]
    elif net.loss == MSE:
        for j in range(k):
            row = a + j * GROUP
            for q in range(nq):
                d = <double>row[q] - <double>y[j]
                st.cost[q] += 0.5 * (d * d)
    else:
        for j in range(k):
            _bce(a + j * GROUP, y[j], st.cost)
    if net.acc == LACC_ARGMAX:
        for q in range(nq):
            best[q] = 0
            top[q] = a[q]
        for j in range(1, k):
            row = a + j * GROUP
            for q in range(nq):
                best[q] = <int>j if row[q] > top[q] else best[q]
                top[q] = row[q] if row[q] > top[q] else top[q]
        for q in range(nq):
            st.correct[q] += 1 if best[q] == cls else 0
    elif net.acc == LACC_THRESHOLD:
        for j in range(k):
            row = a + j * GROUP
            for q in range(nq):
                st.correct[q] += 1 if (row[q] > half) == (y[j] > half) else 0


cdef void _ln_forward(const LaneNet* net, const floating* Pl, floating* acts, const floating* X,
                      const floating* Y, const int64_t* order, const int64_t* ids, Py_ssize_t s,
                      Py_ssize_t nb, LaneState* st) noexcept nogil:
    """Every lane's forward pass over rows ``order[s:s + nb]`` of X (Y, ids: their targets), the
    summed cost into ``st.cost`` and the correct predictions into ``st.correct``; LANE_BLOCK examples
    at a time, then one."""
    cdef Py_ssize_t i, b, e, j, r, n, n_in, L = net.L
    cdef const floating* bias
    cdef const floating* xs[LANE_BLOCK]
    cdef const floating* ain
    cdef int act
    cdef bint block
    for i in range(L):
        n = net.n_out[i]
        n_in = net.n_in[i]
        act = net.act[i] if i < L - 1 else LINEAR
        b = 0
        while b < nb:
            block = nb - b >= LANE_BLOCK
            ain = acts + (net.offs[i - 1] + b * n_in) * GROUP if i > 0 else NULL
            for e in range(LANE_BLOCK):
                xs[e] = X + order[s + b + e] * net.nf if i == 0 and b + e < nb else NULL
            for j in range(n):
                bias = Pl + (net.b_off[i] + j) * GROUP if net.b_off[i] >= 0 else NULL
                if block:
                    _dense_block(acts + (net.offs[i] + b * n + j) * GROUP, n * GROUP, Pl + (net.w_off[i] + j) * GROUP,
                                 n * GROUP, xs if i == 0 else NULL, ain, n_in * GROUP, n_in, bias, act,
                                 <floating>net.slope[i])
                else:
                    _dense_unit(acts + (net.offs[i] + b * n + j) * GROUP, Pl + (net.w_off[i] + j) * GROUP, n * GROUP,
                                xs[0], ain, n_in, bias, act, <floating>net.slope[i])
            e = LANE_BLOCK if block else 1
            if i == L - 1 and block and n == 1 and net.loss == BCE and net.acc == LACC_THRESHOLD:
                for j in range(b, b + e, 4):
                    _bce4(acts + (net.offs[i] + j) * GROUP, GROUP, Y, 1, order + s + j, st.cost, <int64_t*>st.correct)
            elif i == L - 1:
                for j in range(b, b + e):
                    r = order[s + j]
                    _ln_loss_row(net, acts + (net.offs[i] + j * n) * GROUP, Y + r * net.k, ids[r], st)
            b += e


cdef void _ln_backward(const LaneNet* net, const floating* Pl, floating* Gl, floating* acts,
                       const floating* X, const floating* Y, const int64_t* order, Py_ssize_t s,
                       Py_ssize_t nb, floating cm, double* sums, bint first, bint last) noexcept nogil:
    """Every lane's share of the gradient (no L2 term) of rows ``order[s:s + nb]``, after
    :func:`_ln_forward` of those rows, added into ``Gl``: the batch's first rows (``first``) start
    the sums from 0, its last (``last``) write the bias gradients from their float64 ``sums`` (a row
    of GROUP per unit); ``cm``: the batch's size.

    A layer's pass runs example by example: the example's share of the bias and weight gradients
    (each sum over the batch in example order), then its delta of the layer below, times that
    layer's activation derivative."""
    cdef Py_ssize_t i, b, e, j, p, r, n, n_in, L = net.L, k = net.k
    cdef bint block
    cdef const floating* xs[LANE_BLOCK]
    cdef floating* cur = acts + net.act_rows * GROUP
    cdef floating* nxt = cur + net.CB * net.wmax * GROUP
    cdef floating* tmp
    cdef floating* gw
    cdef floating* gb
    cdef floating* d
    cdef floating* below
    cdef double* bs
    cdef const floating* a_below
    cdef int act
    if first:
        for j in range(net.n_decay * GROUP):   # the weights come first in the arena
            Gl[j] = 0
        for j in range(net.units * GROUP):
            sums[j] = 0.0
    i = L - 1
    for b in range(nb):
        r = order[s + b]
        for j in range(k):
            _delta_out(cur + (b * k + j) * GROUP, acts + (net.offs[i] + b * k + j) * GROUP, Y[r * k + j], cm)
    for i in range(L - 1, -1, -1):
        n = net.n_out[i]
        n_in = net.n_in[i]
        gw = Gl + net.w_off[i] * GROUP
        bs = sums + net.sum_at[i] * GROUP
        act = net.act[i - 1] if i > 0 else LINEAR
        b = 0
        while b < nb:                   # LANE_BLOCK examples at a time, then one
            d = cur + b * n * GROUP
            block = nb - b >= LANE_BLOCK
            for e in range(LANE_BLOCK):
                xs[e] = X + order[s + b + e] * net.nf if i == 0 and b + e < nb else NULL
            if net.b_off[i] >= 0:
                if block:
                    _sum_block(bs, d, n * GROUP, n)
                else:
                    _sum_rows(bs, d, n)
            a_below = acts + (net.offs[i - 1] + b * n_in) * GROUP if i > 0 else NULL
            if block:
                _outer_block(gw, xs if i == 0 else NULL, a_below, n_in * GROUP, d, n * GROUP, n_in, n)
            else:
                _outer_add(gw, xs[0], a_below, d, n_in, n)
            if i > 0:
                below = nxt + b * n_in * GROUP
                for p in range(n_in):
                    if block:
                        _back_block(below + p * GROUP, n_in * GROUP, Pl + (net.w_off[i] + p * n) * GROUP, d, n * GROUP,
                                    n, a_below + p * GROUP, n_in * GROUP, act, <floating>net.slope[i - 1])
                    else:
                        _back_unit(below + p * GROUP, Pl + (net.w_off[i] + p * n) * GROUP, d, n, a_below + p * GROUP,
                                   act, <floating>net.slope[i - 1])
            b += LANE_BLOCK if block else 1
        if last and net.b_off[i] >= 0:
            gb = Gl + net.b_off[i] * GROUP
            for j in range(n * GROUP):
                gb[j] = <floating>bs[j]
        tmp = cur
        cur = nxt
        nxt = tmp


cdef void _ln_sumsq(const floating* x, Py_ssize_t rows, double* out, Py_ssize_t nq) noexcept nogil:
    """``out[q] = sum over the rows of x[., q]^2`` (float64)."""
    cdef Py_ssize_t row, q
    cdef double v
    for q in range(nq):
        out[q] = 0.0
    for row in range(rows):
        for q in range(nq):
            v = <double>x[row * GROUP + q]
            out[q] += v * v


cdef void _ln_finite(const floating* x, Py_ssize_t rows, double* out, Py_ssize_t nq) noexcept nogil:
    """``out[q] += sum over the rows of x[., q] * 0``: stays 0 in a lane with no NaN or inf."""
    cdef Py_ssize_t row, q
    for row in range(rows):
        for q in range(nq):
            out[q] += <double>x[row * GROUP + q] * 0.0


cdef void _ln_costs(const LaneNet* net, const floating* Pl, const double* hyp, Py_ssize_t hcols, Py_ssize_t g,
                    Py_ssize_t m, LaneState* st) noexcept nogil:
    """The first ``g`` lanes' summed losses over ``m`` examples (``st.cost``) turned into costs in place:
    ``J = sum / m + lambda / (2 m) sum ||W||^2`` (``hyp``: their rows); the weights' squares summed
    only when a lane has an L2 term."""
    cdef Py_ssize_t q
    cdef bint any_l2 = False
    for q in range(g):
        any_l2 = any_l2 or hyp[q * hcols + LH_L2] != 0.0
    if any_l2:
        _ln_sumsq(Pl, net.n_decay, st.sq, net.lanes)
    for q in range(g):
        st.cost[q] = st.cost[q] / m
        if hyp[q * hcols + LH_L2] != 0.0:
            st.cost[q] += hyp[q * hcols + LH_L2] / (2.0 * m) * st.sq[q]


cdef void _ln_update(const LaneNet* net, floating* Pl, const floating* Gl, floating* S1l, floating* S2l,
                     const floating* C, const LaneState* st) noexcept nogil:
    """Every lane's optimiser step; the decayed rows (``< n_decay``) where the lane's L2 is not 0.
    S1l, S2l: one row at least (unused by the optimisers without them)."""
    cdef Py_ssize_t row
    cdef Py_ssize_t r1 = GROUP if net.n1 > 0 else 0, r2 = GROUP if net.n2 > 0 else 0
    for row in range(net.n_params):
        _update_row(Pl + row * GROUP, Gl + row * GROUP, S1l + row * r1, S2l + row * r2, C, st.decay,
                    row < net.n_decay, net.kind)


cdef void _ln_keep(floating* x, const floating* saved, Py_ssize_t rows, const LaneState* st,
                   Py_ssize_t nq) noexcept nogil:
    """``x`` keeps its values in the lanes still training and takes ``saved``'s in the others."""
    cdef Py_ssize_t row, q
    cdef floating v[GROUP]
    for row in range(rows):
        for q in range(nq):
            v[q] = x[row * GROUP + q] if st.alive[q] else saved[row * GROUP + q]
        for q in range(nq):
            x[row * GROUP + q] = v[q]


cdef void _ln_group(const LaneNet* net, Py_ssize_t g0, Py_ssize_t g1, const floating* X, const floating* Y,
                    const int64_t* ids, const int64_t* perm, Py_ssize_t m, const floating* Xd,
                    const floating* Yd, const int64_t* idsd, const int64_t* dorder, Py_ssize_t md,
                    floating* P, floating* G, floating* S1, floating* S2, const double* hyp, Py_ssize_t hcols,
                    const double* bc, const int64_t* bcol, Py_ssize_t n_bc, Py_ssize_t K, double* out,
                    int64_t* status, Py_ssize_t epoch0,
                    Py_ssize_t n_epochs, Py_ssize_t n_steps, floating* lw, double* sums) noexcept nogil:
    """Epochs ``epoch0 ..`` of models ``g0 .. g1 - 1`` (at most GROUP) on the lane buffers ``lw`` and the
    float64 scratch ``sums``."""
    cdef Py_ssize_t nq = net.lanes
    cdef Py_ssize_t n_params = net.n_params, n1 = net.n1, n2 = net.n2, B = net.B
    cdef Py_ssize_t n1r = n1 if n1 > 0 else 1, n2r = n2 if n2 > 0 else 1
    cdef floating* Pl = lw              # Pl, S1l, S2l in a row: their copy is one memcpy
    cdef floating* S1l = lw + net.at_s1 * GROUP
    cdef floating* S2l = lw + net.at_s2 * GROUP
    cdef floating* Gl = lw + net.at_g * GROUP
    cdef floating* save = lw + net.at_save * GROUP
    cdef floating* C = lw + net.at_c * GROUP
    cdef floating* acts = lw + net.at_acts * GROUP
    cdef LaneState st
    cdef Py_ssize_t q, kk, row, ei, epoch, step, s, nb, t, c0, cb, n_alive, g = g1 - g0
    cdef const int64_t* order
    cdef const double* h
    cdef double cost
    for q in range(nq):
        kk = g0 + q if q < g else g0
        for row in range(n_params):
            Pl[row * GROUP + q] = P[kk * n_params + row]
            Gl[row * GROUP + q] = G[kk * n_params + row]
        for row in range(n1):
            S1l[row * GROUP + q] = S1[kk * n1 + row]
        for row in range(n2):
            S2l[row * GROUP + q] = S2[kk * n2 + row]
        h = hyp + kk * hcols
        C[LN_C_LR * GROUP + q] = <floating>h[LH_LR]
        C[LN_C_B1 * GROUP + q] = <floating>h[LH_BETA1]
        C[LN_C_1MB1 * GROUP + q] = <floating>(1.0 - h[LH_BETA1])
        C[LN_C_B2 * GROUP + q] = <floating>h[LH_BETA2]
        C[LN_C_1MB2 * GROUP + q] = <floating>(1.0 - h[LH_BETA2])
        C[LN_C_EPS * GROUP + q] = <floating>h[LH_EPS]
        st.decay[q] = 1 if h[LH_L2] != 0.0 else 0
        st.alive[q] = 1 if q < g and status[kk * 3] == 0 else 0
    for ei in range(n_epochs):
        epoch = epoch0 + ei
        order = perm + ei * m
        for kk in range(g0, g1):
            for t in range(4):
                out[(ei * K + kk) * 4 + t] = 0.0
        for step in range(n_steps):
            s = step * B
            nb = B if m - s > B else m - s
            t = ei * n_steps + step
            for q in range(nq):
                kk = g0 + q if q < g else g0
                st.cost[q] = 0.0
                st.correct[q] = 0
                C[LN_C_BC1 * GROUP + q] = <floating>bc[(t * n_bc + bcol[kk]) * 2]
                C[LN_C_BC2 * GROUP + q] = <floating>bc[(t * n_bc + bcol[kk]) * 2 + 1]
                C[LN_C_L2 * GROUP + q] = <floating>(hyp[kk * hcols + LH_L2] / nb)
            c0 = 0                      # forward and backward, LANE_CHUNK examples at a time
            while c0 < nb:
                cb = net.CB if nb - c0 > net.CB else nb - c0
                _ln_forward(net, Pl, acts, X, Y, order, ids, s + c0, cb, &st)
                _ln_backward(net, Pl, Gl, acts, X, Y, order, s + c0, cb, <floating>nb, sums, c0 == 0, c0 + cb == nb)
                c0 += cb
            _ln_costs(net, Pl, hyp + g0 * hcols, hcols, g, nb, &st)
            for q in range(g):
                cost = st.cost[q]
                if st.alive[q] and not (cost - cost == 0.0):
                    st.alive[q] = 0
                    _ln_stop(status, g0 + q, LS_COST, epoch, step)
            _ln_sumsq(Gl, n_params, st.sq, nq)
            for q in range(g):
                if st.alive[q] and not (st.sq[q] - st.sq[q] == 0.0):
                    st.alive[q] = 0
                    _ln_stop(status, g0 + q, LS_GRADIENT, epoch, step)
            memcpy(save, Pl, (n_params + n1r + n2r) * GROUP * sizeof(floating))
            _ln_update(net, Pl, Gl, S1l, S2l, C, &st)
            for q in range(nq):
                st.fin[q] = 0.0
            _ln_finite(Pl, n_params, st.fin, nq)
            _ln_finite(S1l, n1, st.fin, nq)
            _ln_finite(S2l, n2, st.fin, nq)
            for q in range(g):
                if st.alive[q] and not (st.fin[q] == 0.0):
                    st.alive[q] = 0
                    _ln_stop(status, g0 + q, LS_UPDATE, epoch, step)
            n_alive = 0
            for q in range(nq):
                n_alive += st.alive[q]
            if n_alive < nq:           # a lane stopped (or past the group's models): it keeps its values
                _ln_keep(Pl, save, n_params, &st, nq)
                _ln_keep(S1l, save + n_params * GROUP, n1, &st, nq)
                _ln_keep(S2l, save + (n_params + n1r) * GROUP, n2, &st, nq)
            for q in range(g):
                if st.alive[q]:
                    out[(ei * K + g0 + q) * 4 + 0] += st.cost[q] * nb
                    out[(ei * K + g0 + q) * 4 + 1] += <double>st.correct[q]
        if md == 0:
            continue
        for q in range(nq):
            st.cost[q] = 0.0
            st.correct[q] = 0
        s = 0
        while s < md:
            _ln_forward(net, Pl, acts, Xd, Yd, dorder, idsd, s, net.CB if md - s > net.CB else md - s, &st)
            s += net.CB
        _ln_costs(net, Pl, hyp + g0 * hcols, hcols, g, md, &st)
        for q in range(g):
            if st.alive[q]:
                out[(ei * K + g0 + q) * 4 + 2] = st.cost[q]
                out[(ei * K + g0 + q) * 4 + 3] = <double>st.correct[q]
    for q in range(g):
        kk = g0 + q
        for row in range(n_params):
            P[kk * n_params + row] = Pl[row * GROUP + q]
            G[kk * n_params + row] = Gl[row * GROUP + q]
        for row in range(n1):
            S1[kk * n1 + row] = S1l[row * GROUP + q]
        for row in range(n2):
            S2[kk * n2 + row] = S2l[row * GROUP + q]


cdef inline void _ln_stop(int64_t* status, Py_ssize_t kk, int code, Py_ssize_t epoch, Py_ssize_t step) noexcept nogil:
    status[kk * 3] = code
    status[kk * 3 + 1] = epoch
    status[kk * 3 + 2] = step


cdef int _lane_net(LaneNet* ln, object net, Py_ssize_t B, Py_ssize_t nf, Py_ssize_t k, Py_ssize_t n_params,
                   Py_ssize_t n1, Py_ssize_t n2, object info) except -1:
    """The LaneNet of a population's net (``Sequential.plan()["layers"]``, Dense layers only) and call."""
    cdef Py_ssize_t i, L = len(net), rows = 0
    if LN_GROUP != GROUP or LN_EB != LANE_BLOCK:
        raise RuntimeError(f"_lanes.h: {LN_GROUP} models a group and {LN_EB} examples a block, _lanes.pxi: "
                           f"{GROUP} and {LANE_BLOCK}")
    if L < 1 or L > LANE_LAYERS:
        raise ValueError(f"net: the lanes take 1 to {LANE_LAYERS} Dense layers, got {L}")
    ln.L = L
    ln.lanes = int(lane_layout()[0])  # through Python: a loop bound the compiler cannot unroll
    ln.nf = nf
    ln.k = k
    ln.n_params = n_params
    ln.n1 = n1
    ln.n2 = n2
    ln.B = B
    ln.CB = B if B < LANE_CHUNK else LANE_CHUNK
    ln.n_decay = 0
    ln.wmax = 0
    ln.units = 0
    for i in range(L):
        if int(net[i]["op"]) != 0:
            raise ValueError(f"net: layer {i} is not Dense; the lanes take Dense layers only")
        ln.n_in[i] = int(net[i]["n_in"])
        ln.n_out[i] = int(net[i]["n_out"])
        ln.w_off[i] = int(net[i]["w_off"])
        ln.b_off[i] = int(net[i]["b_off"])
        ln.act[i] = int(net[i]["act"])
        ln.slope[i] = float(net[i]["slope"])
        ln.offs[i] = rows
        rows += ln.CB * ln.n_out[i]
        ln.sum_at[i] = ln.units
        ln.units += ln.n_out[i]
        ln.n_decay += ln.n_in[i] * ln.n_out[i]
        ln.wmax = max(ln.wmax, ln.n_in[i], ln.n_out[i])
    if ln.n_in[0] != nf or ln.n_out[L - 1] != k:
        raise ValueError(f"net: {ln.n_in[0]} inputs and {ln.n_out[L - 1]} outputs, the data {nf} and {k}")
    ln.act_rows = rows
    # the group's buffers (lane rows): parameters, optimiser state (one row at least each), gradients,
    # the copy of the first three, the update constants, the activations and two deltas of the widest layer
    # (LANE_CHUNK examples)
    ln.at_s1 = n_params
    ln.at_s2 = ln.at_s1 + max(n1, 1)
    ln.at_g = ln.at_s2 + max(n2, 1)
    ln.at_save = ln.at_g + n_params
    ln.at_c = ln.at_save + n_params + max(n1, 1) + max(n2, 1)
    ln.at_acts = ln.at_c + LN_C_ROWS
    ln.rows = ln.at_acts + rows + 2 * ln.CB * ln.wmax
    ln.loss = int(info[3])
    ln.kind = int(info[4])
    ln.acc = int(info[5])
    return 0


def lane_sums(net):
    """The float64 scratch values per worker of :func:`population_lanes` (``work[1]``'s rows): a row of
    GROUP per unit (the bias gradients' sums)."""
    return int(net["n_out"].sum()) * GROUP


def lane_rows(net, Py_ssize_t n_params, Py_ssize_t n_s1, Py_ssize_t n_s2, Py_ssize_t batch):
    """The rows of GROUP values of one group's buffers (``lw`` of :func:`population_lanes` holds
    ``lane_rows(...) * GROUP`` values per worker): ``LaneNet.rows``."""
    cdef LaneNet ln
    _lane_net(&ln, net, batch, int(net[0]["n_in"]), int(net[len(net) - 1]["n_out"]), n_params, n_s1, n_s2,
              np.zeros(7, np.int64))
    return ln.rows


cdef void _lanes_run(const LaneNet* net, Py_ssize_t k0, Py_ssize_t k1, const floating[:, ::1] X,
                     const floating[:, ::1] Y, const int64_t[::1] ids, const int64_t[:, ::1] perm,
                     const floating[:, ::1] Xd, const floating[:, ::1] Yd, const int64_t[::1] idsd,
                     const int64_t[::1] dorder, floating[:, ::1] P, floating[:, ::1] G, floating[:, ::1] S1,
                     floating[:, ::1] S2, const double[:, ::1] hyp, const double[:, :, ::1] bc,
                     const int64_t[::1] bcol,
                     double[:, :, ::1] out, int64_t[:, ::1] status, floating[::1] lw, double[::1] sums,
                     Py_ssize_t epoch0, Py_ssize_t n_epochs, Py_ssize_t n_steps) noexcept nogil:
    cdef Py_ssize_t g0
    cdef const floating* dummy = NULL
    cdef unsigned int csr = fn_ftz_enter()     # subnormal values count as 0 (see the module comment)
    g0 = k0
    while g0 < k1:
        _ln_group(net, g0, min(g0 + GROUP, k1), &X[0, 0], &Y[0, 0], &ids[0], &perm[0, 0], X.shape[0],
                  &Xd[0, 0] if Xd.shape[0] > 0 else dummy, &Yd[0, 0] if Yd.shape[0] > 0 else dummy,
                  &idsd[0] if idsd.shape[0] > 0 else NULL, &dorder[0] if dorder.shape[0] > 0 else NULL,
                  Xd.shape[0], &P[0, 0], &G[0, 0], &S1[0, 0] if S1.shape[1] > 0 else <floating*>dummy,
                  &S2[0, 0] if S2.shape[1] > 0 else <floating*>dummy, &hyp[0, 0], hyp.shape[1], &bc[0, 0, 0],
                  &bcol[0], bc.shape[1],
                  P.shape[0], &out[0, 0, 0], &status[0, 0], epoch0, n_epochs, n_steps, &lw[0], &sums[0])
        g0 += GROUP
    fn_ftz_exit(csr)


def population_lanes(Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t c, net, at, info, data, dev, arenas, hyp, keys,
                     bc, work, out, status):
    """``fusednet.kernels._population.fit_chunk`` for a net of Dense layers, by lanes: models ``k0 ..
    k1 - 1`` in groups of GROUP, each group every epoch of the call, with the GIL released.

    The arguments are ``fit_chunk``'s (``at`` and ``keys`` unused: no batch norm, no dropout);
    ``work``: ``(lw, sums)``, one row per worker (``c``): ``lw`` of the dtype with ``lane_rows(...) *
    GROUP`` values, ``sums`` float64 with ``lane_sums(net)``.  IN/OUT as there: the arenas, ``out`` and ``status``.
    """
    cdef LaneNet ln
    X, Y, ids, perm = data
    Xd, Yd, idsd, dorder = dev
    P, G, S1, S2 = arenas[0], arenas[1], arenas[2], arenas[3]
    bc_table, bc_cols = bc
    _lane_net(&ln, net, int(info[2]), X.shape[1], Y.shape[1], P.shape[1], S1.shape[1], S2.shape[1], info)
    if not (0 <= k0 <= k1 <= P.shape[0]):
        raise ValueError(f"k0, k1: models {k0} .. {k1} of {P.shape[0]}")
    lw = work[0][c]
    sums = work[1][c]
    if sums.shape[0] < ln.units * GROUP:
        raise ValueError(f"work: {sums.shape[0]} float64 values per worker, the lanes need {ln.units * GROUP}")
    if lw.shape[0] < ln.rows * GROUP:
        raise ValueError(f"work: {lw.shape[0]} values per worker, the lanes need {ln.rows * GROUP}")
    if X.dtype == np.float32:
        _lanes_f32(&ln, k0, k1, X, Y, ids, perm, Xd, Yd, idsd, dorder, P, G, S1, S2, hyp, bc_table, bc_cols, out,
                   status, lw,
                   sums, int(info[0]), int(info[1]), int(info[6]))
    else:
        _lanes_f64(&ln, k0, k1, X, Y, ids, perm, Xd, Yd, idsd, dorder, P, G, S1, S2, hyp, bc_table, bc_cols, out,
                   status, lw,
                   sums, int(info[0]), int(info[1]), int(info[6]))


cdef void _lanes_f32(const LaneNet* ln, Py_ssize_t k0, Py_ssize_t k1, const float[:, ::1] X,
                     const float[:, ::1] Y, const int64_t[::1] ids, const int64_t[:, ::1] perm,
                     const float[:, ::1] Xd, const float[:, ::1] Yd, const int64_t[::1] idsd,
                     const int64_t[::1] dorder, float[:, ::1] P, float[:, ::1] G, float[:, ::1] S1,
                     float[:, ::1] S2, const double[:, ::1] hyp, const double[:, :, ::1] bc,
                     const int64_t[::1] bcol,
                     double[:, :, ::1] out, int64_t[:, ::1] status, float[::1] lw, double[::1] sums,
                     Py_ssize_t epoch0, Py_ssize_t n_epochs, Py_ssize_t n_steps) except *:
    with nogil:
        _lanes_run(ln, k0, k1, X, Y, ids, perm, Xd, Yd, idsd, dorder, P, G, S1, S2, hyp, bc, bcol, out, status, lw,
                   sums,
                   epoch0, n_epochs, n_steps)


cdef void _lanes_f64(const LaneNet* ln, Py_ssize_t k0, Py_ssize_t k1, const double[:, ::1] X,
                     const double[:, ::1] Y, const int64_t[::1] ids, const int64_t[:, ::1] perm,
                     const double[:, ::1] Xd, const double[:, ::1] Yd, const int64_t[::1] idsd,
                     const int64_t[::1] dorder, double[:, ::1] P, double[:, ::1] G, double[:, ::1] S1,
                     double[:, ::1] S2, const double[:, ::1] hyp, const double[:, :, ::1] bc,
                     const int64_t[::1] bcol,
                     double[:, :, ::1] out, int64_t[:, ::1] status, double[::1] lw, double[::1] sums,
                     Py_ssize_t epoch0, Py_ssize_t n_epochs, Py_ssize_t n_steps) except *:
    with nogil:
        _lanes_run(ln, k0, k1, X, Y, ids, perm, Xd, Yd, idsd, dorder, P, G, S1, S2, hyp, bc, bcol, out, status, lw,
                   sums,
                   epoch0, n_epochs, n_steps)
