/* The lane primitives of _lanes.h for one floating type; included once per type with
 *   LN_T  the type (float, double),   LN_V  its vector of LN_GROUP lanes,
 *   LN_M  the integer vector of the same width (comparison masks),   LN_S  the name suffix (f, d),
 *   LN_SIGMOID, LN_TANH, LN_BCE  _vmath.h's functions of the type,   LN_PT(name)  _point.h's of the type.
 * Every pointer is a lane row: LN_GROUP values, model q of the group at [q].  Rows of one
 * buffer lie a row stride apart (in values).  Each primitive keeps its running values in
 * registers and stores once; the arithmetic is the point functions' of _point.pxd. */

#define LN_CAT_(a, b) a##_##b
#define LN_CAT(a, b) LN_CAT_(a, b)
#define LN_FN(name) LN_CAT(name, LN_S)

static inline LN_V LN_FN(ln_load)(const LN_T* p) { LN_V v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void LN_FN(ln_store)(LN_T* p, LN_V v) { __builtin_memcpy(p, &v, sizeof v); }
static inline LN_V LN_FN(ln_splat)(LN_T x) { LN_V zero = {0}; return x - zero; }  /* x - 0 is x, -0 included */
/* m ? a : b lane by lane (m: all bits set or none) */
static inline LN_V LN_FN(ln_select)(LN_M m, LN_V a, LN_V b) { return (LN_V)((m & (LN_M)a) | (~m & (LN_M)b)); }

/* g(v), g a hidden layer's activation code (_ckernels.pyx's; LINEAR: v) */
static inline LN_V LN_FN(ln_act)(LN_V v, int act, LN_T slope)
{
    LN_V zero = LN_FN(ln_splat)(0);
    if (act == 3) {                      /* RELU: 0 if z <= 0 else z (NaN stays) */
        v = LN_FN(ln_select)((LN_M)(v <= zero), zero, v);
    } else if (act == 4) {               /* LEAKY_RELU: z if z > 0 else slope z */
        v = LN_FN(ln_select)((LN_M)(v > zero), v, v * slope);
    } else if (act == 1 || act == 2) {   /* SIGMOID, TANH: lane by lane */
        LN_T t[LN_GROUP];
        LN_FN(ln_store)(t, v);
        for (int q = 0; q < LN_GROUP; q++)
            t[q] = act == 1 ? LN_SIGMOID(t[q]) : LN_TANH(t[q]);
        v = LN_FN(ln_load)(t);
    }
    return v;
}

/* g'(a) from the output a (RELU: 1 if a > 0 else 0; LEAKY_RELU: 1 if a > 0 else slope;
 * SIGMOID: a (1 - a); TANH: 1 - a^2) */
static inline LN_V LN_FN(ln_act_grad)(LN_V a, int act, LN_T slope)
{
    LN_V one = LN_FN(ln_splat)(1), zero = LN_FN(ln_splat)(0);
    if (act == 3)
        return LN_FN(ln_select)((LN_M)(a > zero), one, zero);
    if (act == 4)
        return LN_FN(ln_select)((LN_M)(a > zero), one, LN_FN(ln_splat)(slope));
    if (act == 1)
        return a * (one - a);
    return one - a * a;
}

/* One unit of a Dense layer over one example: out = g(sum_p w[p ws] x_p + b), x_p = x[p] (x
 * scalars: the first layer's inputs) when x is not NULL, else the lane row a[p LN_GROUP]; the sum
 * in p order, b NULL: + 0 */
static inline void LN_FN(ln_dense_unit)(LN_T* out, const LN_T* w, Py_ssize_t ws, const LN_T* x, const LN_T* a,
                                        Py_ssize_t n, const LN_T* b, int act, LN_T slope)
{
    LN_V acc;
    if (x) {
        acc = LN_FN(ln_load)(w) * x[0];
        for (Py_ssize_t p = 1; p < n; p++)
            acc = acc + LN_FN(ln_load)(w + p * ws) * x[p];
    } else {
        acc = LN_FN(ln_load)(w) * LN_FN(ln_load)(a);
        for (Py_ssize_t p = 1; p < n; p++)
            acc = acc + LN_FN(ln_load)(w + p * ws) * LN_FN(ln_load)(a + p * LN_GROUP);
    }
    acc = acc + (b ? LN_FN(ln_load)(b) : LN_FN(ln_splat)(0));
    LN_FN(ln_store)(out, LN_FN(ln_act)(acc, act, slope));
}

/* One input of a Dense layer over one example, backward: out = (sum_j w[j] d[j]) g'(a) (the rows
 * w, d consecutive lane rows; the sum in j order; act LINEAR: no factor) */
static inline void LN_FN(ln_back_unit)(LN_T* out, const LN_T* w, const LN_T* d, Py_ssize_t n, const LN_T* a,
                                       int act, LN_T slope)
{
    LN_V acc = LN_FN(ln_load)(w) * LN_FN(ln_load)(d);
    for (Py_ssize_t j = 1; j < n; j++)
        acc = acc + LN_FN(ln_load)(w + j * LN_GROUP) * LN_FN(ln_load)(d + j * LN_GROUP);
    if (act != 0)
        acc = acc * LN_FN(ln_act_grad)(LN_FN(ln_load)(a), act, slope);
    LN_FN(ln_store)(out, acc);
}

/* gw[(p n + j) LN_GROUP] += a_p d[j LN_GROUP] for p < n_in, j < n: a_p = x[p] (x scalars) when
 * x is not NULL, else the lane row a[p LN_GROUP] (one example's share of a weight gradient) */
static inline void LN_FN(ln_outer_add)(LN_T* gw, const LN_T* x, const LN_T* a, const LN_T* d, Py_ssize_t n_in,
                                       Py_ssize_t n)
{
    for (Py_ssize_t p = 0; p < n_in; p++) {
        LN_V ap = x ? LN_FN(ln_splat)(x[p]) : LN_FN(ln_load)(a + p * LN_GROUP);
        LN_T* g = gw + p * n * LN_GROUP;
        for (Py_ssize_t j = 0; j < n; j++)
            LN_FN(ln_store)(g + j * LN_GROUP, LN_FN(ln_load)(g + j * LN_GROUP) + ap * LN_FN(ln_load)(d + j * LN_GROUP));
    }
}

/* sums[j] += (double)d[j] for j < n: sums float64 lane rows (a bias gradient's sums) */
static inline void LN_FN(ln_sum_rows)(double* sums, const LN_T* d, Py_ssize_t n)
{
    for (Py_ssize_t j = 0; j < n; j++) {
        ln_vd s;
        __builtin_memcpy(&s, sums + j * LN_GROUP, sizeof s);
        s = s + __builtin_convertvector(LN_FN(ln_load)(d + j * LN_GROUP), ln_vd);
        __builtin_memcpy(sums + j * LN_GROUP, &s, sizeof s);
    }
}

/* d = (a - y) / cm, y a scalar (the output delta of every loss) */
static inline void LN_FN(ln_delta_out)(LN_T* d, const LN_T* a, LN_T y, LN_T cm)
{
    LN_FN(ln_store)(d, (LN_FN(ln_load)(a) - y) / cm);
}

/* LN_EB running sums: one per example of a block primitive. */
typedef struct { LN_V e[LN_EB]; } LN_FN(ln_block);

/* sum_p w[p ws] a_e[p LN_GROUP] for the LN_EB examples' lane rows a_e = a + e as, in p order */
static inline LN_FN(ln_block) LN_FN(ln_dot_block)(const LN_T* w, Py_ssize_t ws, const LN_T* a, Py_ssize_t as,
                                                  Py_ssize_t n)
{
    LN_FN(ln_block) c;
    LN_V w0 = LN_FN(ln_load)(w);
    for (int e = 0; e < LN_EB; e++)
        c.e[e] = w0 * LN_FN(ln_load)(a + e * as);
    for (Py_ssize_t p = 1; p < n; p++) {
        LN_V wp = LN_FN(ln_load)(w + p * ws);
        for (int e = 0; e < LN_EB; e++)
            c.e[e] = c.e[e] + wp * LN_FN(ln_load)(a + p * LN_GROUP + e * as);
    }
    return c;
}

/* ln_dense_unit for a block of LN_EB examples: example e's output at out + e os, its inputs x[e]
 * (scalars; x NULL: lane rows a + e as); each weight row is loaded once for the block, and each
 * example's sum runs as in ln_dense_unit (the same bits) */
static inline void LN_FN(ln_dense_block)(LN_T* out, Py_ssize_t os, const LN_T* w, Py_ssize_t ws,
                                         const LN_T* const* x, const LN_T* a, Py_ssize_t as, Py_ssize_t n,
                                         const LN_T* b, int act, LN_T slope)
{
    LN_FN(ln_block) c;
    if (x) {
        LN_V w0 = LN_FN(ln_load)(w);
        for (int e = 0; e < LN_EB; e++)
            c.e[e] = w0 * x[e][0];
        for (Py_ssize_t p = 1; p < n; p++) {
            LN_V wp = LN_FN(ln_load)(w + p * ws);
            for (int e = 0; e < LN_EB; e++)
                c.e[e] = c.e[e] + wp * x[e][p];
        }
    } else {
        c = LN_FN(ln_dot_block)(w, ws, a, as, n);
    }
    LN_V bv = b ? LN_FN(ln_load)(b) : LN_FN(ln_splat)(0);
    for (int e = 0; e < LN_EB; e++)
        LN_FN(ln_store)(out + e * os, LN_FN(ln_act)(c.e[e] + bv, act, slope));
}

/* ln_back_unit for a block of LN_EB examples: example e's output at out + e os, its deltas d + e ds
 * and outputs a + e as; the weight rows loaded once for the block (the same bits as ln_back_unit) */
static inline void LN_FN(ln_back_block)(LN_T* out, Py_ssize_t os, const LN_T* w, const LN_T* d, Py_ssize_t ds,
                                        Py_ssize_t n, const LN_T* a, Py_ssize_t as, int act, LN_T slope)
{
    LN_FN(ln_block) c = LN_FN(ln_dot_block)(w, LN_GROUP, d, ds, n);
    for (int e = 0; e < LN_EB; e++) {
        LN_V v = c.e[e];
        if (act != 0)
            v = v * LN_FN(ln_act_grad)(LN_FN(ln_load)(a + e * as), act, slope);
        LN_FN(ln_store)(out + e * os, v);
    }
}

/* ln_outer_add and ln_sum_rows for a block of LN_EB consecutive examples (example e's delta rows at
 * d + e ds, its inputs x[e] or the lane rows a + e as): each sum adds the block's examples in order,
 * as one call per example would (the same bits), loading and storing it once */
static inline void LN_FN(ln_outer_block)(LN_T* gw, const LN_T* const* x, const LN_T* a, Py_ssize_t as,
                                         const LN_T* d, Py_ssize_t ds, Py_ssize_t n_in, Py_ssize_t n)
{
    for (Py_ssize_t p = 0; p < n_in; p++) {
        LN_V ap[LN_EB];
        for (int e = 0; e < LN_EB; e++)
            ap[e] = x ? LN_FN(ln_splat)(x[e][p]) : LN_FN(ln_load)(a + p * LN_GROUP + e * as);
        LN_T* g = gw + p * n * LN_GROUP;
        for (Py_ssize_t j = 0; j < n; j++) {
            LN_V v = LN_FN(ln_load)(g + j * LN_GROUP);
            for (int e = 0; e < LN_EB; e++)
                v = v + ap[e] * LN_FN(ln_load)(d + j * LN_GROUP + e * ds);
            LN_FN(ln_store)(g + j * LN_GROUP, v);
        }
    }
}

static inline void LN_FN(ln_sum_block)(double* sums, const LN_T* d, Py_ssize_t ds, Py_ssize_t n)
{
    for (Py_ssize_t j = 0; j < n; j++) {
        ln_vd s;
        __builtin_memcpy(&s, sums + j * LN_GROUP, sizeof s);
        for (int e = 0; e < LN_EB; e++)
            s = s + __builtin_convertvector(LN_FN(ln_load)(d + j * LN_GROUP + e * ds), ln_vd);
        __builtin_memcpy(sums + j * LN_GROUP, &s, sizeof s);
    }
}

/* Every lane's sigmoid output of one unit, in place from its logits z, and its cross-entropy
 * added to cost[q] (float64): LN_SIGMOID(z) and LN_BCE(z, y) in the type, sharing exp(-|z|) */
static inline void LN_FN(ln_bce)(LN_T* restrict a, LN_T y, double* restrict cost)
{
    LN_LANES {
        LN_T z = a[q];
        cost[q] += (double)LN_BCE(z, y);
        a[q] = LN_SIGMOID(z);
    }
}

/* ln_bce for the single output unit of four examples (e = 0..3, logits at a + e as, targets y_e):
 * the sigmoid outputs in place, the cross-entropies added to cost[q] in example order, and
 * hits[q] counting the examples whose output > 0.5 agrees with target > 0.5 (the same bits as four
 * calls of ln_bce) */
static inline void LN_FN(ln_bce4)(LN_T* restrict a, Py_ssize_t as, LN_T y0, LN_T y1, LN_T y2, LN_T y3,
                                  double* restrict cost, int64_t* restrict hits)
{
    const LN_T half = (LN_T)0.5;
    const int t0 = y0 > half, t1 = y1 > half, t2 = y2 > half, t3 = y3 > half;
    LN_LANES {
        LN_T z0 = a[q], z1 = a[q + as], z2 = a[q + 2 * as], z3 = a[q + 3 * as];
        double c = cost[q];
        c += (double)LN_BCE(z0, y0);
        c += (double)LN_BCE(z1, y1);
        c += (double)LN_BCE(z2, y2);
        c += (double)LN_BCE(z3, y3);
        cost[q] = c;
        LN_T a0 = LN_SIGMOID(z0), a1 = LN_SIGMOID(z1), a2 = LN_SIGMOID(z2), a3 = LN_SIGMOID(z3);
        a[q] = a0;
        a[q + as] = a1;
        a[q + 2 * as] = a2;
        a[q + 3 * as] = a3;
        hits[q] += ((a0 > half) == t0) + ((a1 > half) == t1) + ((a2 > half) == t2) + ((a3 > half) == t3);
    }
}

/* One parameter row of every lane's optimiser step (_point.h's formulas): w, s1, s2 INOUT, g IN;
 * C the LN_C_ROWS rows of per-lane constants; the gradient decayed (g + l2 w) in the lanes where
 * decay[q] when `decayed`; the averages flushed after each ewa */
static inline void LN_FN(ln_update_row)(LN_T* restrict w, const LN_T* restrict g, LN_T* restrict s1,
                                        LN_T* restrict s2, const LN_T* restrict C, const int* restrict decay,
                                        int decayed, int kind)
{
    const LN_T* lr = C + LN_C_LR * LN_GROUP;
    const LN_T* l2 = C + LN_C_L2 * LN_GROUP;
    LN_T gp[LN_GROUP];
    if (decayed) {
        LN_LANES gp[q] = decay[q] ? LN_PT(decayed)(g[q], w[q], l2[q]) : g[q];
    } else {
        LN_LANES gp[q] = g[q];
    }
    if (kind == LN_OPT_GD) {
        LN_LANES w[q] = LN_PT(gd_step)(w[q], gp[q], lr[q]);
    } else if (kind == LN_OPT_MOMENTUM) {
        LN_LANES {
            LN_T v = LN_PT(flush)(LN_PT(ewa)(LN_PT(flush)(s1[q]), gp[q], C[LN_C_B1 * LN_GROUP + q],
                                             C[LN_C_1MB1 * LN_GROUP + q]));
            s1[q] = v;
            w[q] = LN_PT(momentum_step)(w[q], v, lr[q], C[LN_C_BC1 * LN_GROUP + q]);
        }
    } else if (kind == LN_OPT_ADAM) {
        LN_LANES {
            LN_T m = LN_PT(flush)(LN_PT(ewa)(LN_PT(flush)(s1[q]), gp[q], C[LN_C_B1 * LN_GROUP + q],
                                             C[LN_C_1MB1 * LN_GROUP + q]));
            LN_T v = LN_PT(flush)(LN_PT(ewa)(LN_PT(flush)(s2[q]), gp[q] * gp[q], C[LN_C_B2 * LN_GROUP + q],
                                             C[LN_C_1MB2 * LN_GROUP + q]));
            s1[q] = m;
            s2[q] = v;
            w[q] = LN_PT(adam_step)(w[q], m, v, lr[q], C[LN_C_BC1 * LN_GROUP + q], C[LN_C_BC2 * LN_GROUP + q],
                                    C[LN_C_EPS * LN_GROUP + q]);
        }
    } else {
        LN_LANES {
            LN_T v = LN_PT(flush)(LN_PT(ewa)(LN_PT(flush)(s1[q]), gp[q] * gp[q], C[LN_C_B2 * LN_GROUP + q],
                                             C[LN_C_1MB2 * LN_GROUP + q]));
            s1[q] = v;
            w[q] = LN_PT(rmsprop_step)(w[q], gp[q], v, lr[q], C[LN_C_EPS * LN_GROUP + q]);
        }
    }
}

#undef LN_FN
#undef LN_CAT
#undef LN_CAT_
/* the parameters, for the next type */
#undef LN_T
#undef LN_V
#undef LN_M
#undef LN_S
#undef LN_SIGMOID
#undef LN_TANH
#undef LN_BCE
#undef LN_PT
