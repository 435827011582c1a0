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
