/* Softmax and categorical cross-entropy of CCE_ROWS rows at a time, one row per lane (the
 * per-kernel backend's _cce_rows, _per_kernel.pxi).
 *
 * For each row of n <= CCE_MAXN classes, with v_k = z_k + b_k (in the dtype, then float64),
 * mx = max_k v_k and e_k = exp(v_k - mx):
 *     rest = sum_k (e_k - [v_k == mx])     as four running sums by k mod 4 (a last n mod 4
 *                                          classes on the first), added (s0 + s1) + (s2 + s3)
 *     lse  = log1p(rest + ties - 1)        ties: how many v_k equal mx
 *     cost = sum_k y_k (lse - (v_k - mx))  in k order
 *     A_k  = e_k exp(-lse)                 rounded once to the dtype
 * which are _cce_row's operations in _cce_row's order, so every row has its bits; the lanes
 * only make the exponentials run on vectors where one row of 10 classes left them scalar.
 *
 * The rows come in and go out row by row (z, y, a: rows x n, row-major); inside, a block is
 * held class by class, t[k * CCE_ROWS + r].  With AVX-512 the block is turned around by
 * gathers and scatters (a scalar store per element was most of the time for 10 classes);
 * elsewhere by loops, and the costs are summed over the lanes, class by class, from y where it
 * lies. */
#ifndef FUSEDNET_CCE_H
#define FUSEDNET_CCE_H

#include <math.h>
#include "_vmath.h"
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define CCE_AVX512 1
#include <immintrin.h>
#endif

#define CCE_ROWS 16
/* classes of a row at most: a block's scratch arrays hold CCE_ROWS x CCE_MAXN values */
#define CCE_MAXN 64
/* doubles of scratch a call needs: logits, exponentials (then A), targets (AVX-512) */
#define CCE_SCRATCH (3 * CCE_ROWS * CCE_MAXN)

/* Every loop over the lanes.  With AVX-512, vectorised whole (a constant trip count would have gcc
 * unroll it into scalar code first, as in _lanes.h).  Elsewhere a plain loop, which gcc unrolls
 * and then vectorises: with 16 vector registers the vectorised loop reloaded an exponential's
 * constants from the stack, and measured slower. */
#if defined(CCE_AVX512)
#define CCE_LANES _Pragma("GCC unroll 1") _Pragma("GCC ivdep") for (long r = 0; r < CCE_ROWS; r++)
#else
#define CCE_LANES for (long r = 0; r < CCE_ROWS; r++)
#endif

/* exp(d) of a logit minus its row's maximum (d <= 0, or NaN: a NaN or +inf logit), NaN kept */
static inline double cce_exp(double d) { return d == d ? vm_exp_nonpos(d) : d; }

/* The block's rows after the turn: t (logits v) in; each row's mx and lse, and et (A, before its
 * rounding to the dtype) out; et also holds the exponentials on the way. */
static inline __attribute__((always_inline)) void cce_block(long n, const double *restrict t, double *restrict et, double *restrict mx,
                             double *restrict lse)
{
    double s0[CCE_ROWS], s1[CCE_ROWS], s2[CCE_ROWS], s3[CCE_ROWS], tops[CCE_ROWS], w[CCE_ROWS];
    long k;
    CCE_LANES {
        mx[r] = -INFINITY;
        s0[r] = 0; s1[r] = 0; s2[r] = 0; s3[r] = 0;
        tops[r] = 0;
    }
    for (k = 0; k < n; k++) {
        const double *tk = t + k * CCE_ROWS;
        CCE_LANES mx[r] = tk[r] > mx[r] ? tk[r] : mx[r];
    }
    for (k = 0; k < n; k++) {
        const double *tk = t + k * CCE_ROWS;
        double *ek = et + k * CCE_ROWS;
        CCE_LANES ek[r] = cce_exp(tk[r] - mx[r]);
    }
    for (k = 0; k + 4 <= n; k += 4) {
        const double *tk = t + k * CCE_ROWS;
        const double *ek = et + k * CCE_ROWS;
        CCE_LANES {
            s0[r] += ek[r] - (tk[r] == mx[r] ? 1.0 : 0.0);
            s1[r] += ek[CCE_ROWS + r] - (tk[CCE_ROWS + r] == mx[r] ? 1.0 : 0.0);
            s2[r] += ek[2 * CCE_ROWS + r] - (tk[2 * CCE_ROWS + r] == mx[r] ? 1.0 : 0.0);
            s3[r] += ek[3 * CCE_ROWS + r] - (tk[3 * CCE_ROWS + r] == mx[r] ? 1.0 : 0.0);
        }
    }
    for (; k < n; k++) {
        const double *tk = t + k * CCE_ROWS;
        const double *ek = et + k * CCE_ROWS;
        CCE_LANES s0[r] += ek[r] - (tk[r] == mx[r] ? 1.0 : 0.0);
    }
    for (k = 0; k < n; k++) {
        const double *tk = t + k * CCE_ROWS;
        CCE_LANES tops[r] += tk[r] == mx[r] ? 1.0 : 0.0;
    }
    CCE_LANES {
        lse[r] = vm_log1p(((s0[r] + s1[r]) + (s2[r] + s3[r])) + (tops[r] - 1.0));
        w[r] = vm_exp(-lse[r]);
    }
    for (k = 0; k < n; k++) {
        double *ek = et + k * CCE_ROWS;
        CCE_LANES ek[r] = ek[r] * w[r];
    }
}

/* cost[r] = sum_k y_k (lse - (v_k - mx)) of each lane, the targets turned into yt */
static inline void cce_cost_lanes(long n, const double *restrict t, const double *restrict yt,
                                  const double *restrict mx, const double *restrict lse, double *restrict cost)
{
    double tot[CCE_ROWS];
    CCE_LANES tot[r] = 0;
    for (long k = 0; k < n; k++) {
        const double *tk = t + k * CCE_ROWS;
        const double *yk = yt + k * CCE_ROWS;
        CCE_LANES tot[r] += yk[r] * (lse[r] - (tk[r] - mx[r]));
    }
    CCE_LANES cost[r] = tot[r];
}

/* The turns, by loops (any dtype): rows z + b into t, lanes past `rows` 0; et's lanes back into
 * a's rows, rounded to a's dtype.  The cost as cce_cost_lanes, from y where it lies: the classes
 * outside and the lanes inside, so the lanes' sums run side by side rather than one row's chain
 * of adds at a time. */
#define CCE_IN_LOOPS(z, b, rows, n, t)                                         \
    for (long k = 0; k < (n); k++)                                             \
        for (long r = 0; r < CCE_ROWS; r++)                                    \
            (t)[k * CCE_ROWS + r] = r < (rows) ? (double)((z)[r * (n) + k] + (b)[k]) : 0.0;
#define CCE_OUT_LOOPS(et, rows, n, a)                                          \
    for (long r = 0; r < (rows); r++)                                          \
        for (long k = 0; k < (n); k++)                                         \
            (a)[r * (n) + k] = (et)[k * CCE_ROWS + r];
#define CCE_COST_LOOPS(y, rows, n, t, mx, lse, cost)                           \
    {                                                                          \
        double tot[CCE_ROWS];                                                  \
        for (long r = 0; r < CCE_ROWS; r++)                                    \
            tot[r] = 0;                                                        \
        for (long k = 0; k < (n); k++)                                         \
            for (long r = 0; r < (rows); r++)                                  \
                tot[r] += (double)(y)[r * (n) + k] * ((lse)[r] - ((t)[k * CCE_ROWS + r] - (mx)[r])); \
        for (long r = 0; r < (rows); r++)                                      \
            (cost)[r] = tot[r];                                                \
    }

/* The whole block by loops, any dtype. */
#define CCE_ROWS_LOOPS(z, b, y, a, rows, n, scratch, cost)                    \
    {                                                                          \
        double *t = (scratch), *et = (scratch) + CCE_ROWS * CCE_MAXN;          \
        double mx[CCE_ROWS], lse[CCE_ROWS];                                    \
        CCE_IN_LOOPS(z, b, rows, n, t)                                         \
        cce_block(n, t, et, mx, lse);                                          \
        CCE_COST_LOOPS(y, rows, n, t, mx, lse, cost)                           \
        CCE_OUT_LOOPS(et, rows, n, a)                                          \
    }

#if defined(CCE_AVX512)
/* element r * n of each of the block's 16 rows, and the block's rows */
static inline __m512i cce_index(long n)
{
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32((int)n));
}
static inline __mmask16 cce_mask(long rows) { return (__mmask16)((1u << rows) - 1u); }

/* float32 rows in: a gather per class of the logits (plus the bias) and of the targets */
static inline void cce_in_f(const float *z, const float *b, const float *y, long rows, long n,
                            double *t, double *yt)
{
    __mmask16 m = cce_mask(rows);
    __m512i idx = cce_index(n);
    for (long k = 0; k < n; k++) {
        __m512 v = _mm512_add_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, z + k, 4),
                                 _mm512_set1_ps(b[k]));
        __m512 u = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, y + k, 4);
        _mm512_storeu_pd(t + k * CCE_ROWS, _mm512_maskz_mov_pd((__mmask8)m, _mm512_cvtps_pd(_mm512_castps512_ps256(v))));
        _mm512_storeu_pd(t + k * CCE_ROWS + 8, _mm512_maskz_mov_pd((__mmask8)(m >> 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))));
        _mm512_storeu_pd(yt + k * CCE_ROWS, _mm512_cvtps_pd(_mm512_castps512_ps256(u)));
        _mm512_storeu_pd(yt + k * CCE_ROWS + 8, _mm512_cvtps_pd(_mm512_extractf32x8_ps(u, 1)));
    }
}

/* float32 A out: a scatter per class */
static inline void cce_out_f(const double *et, long rows, long n, float *a)
{
    __mmask16 m = cce_mask(rows);
    __m512i idx = cce_index(n);
    for (long k = 0; k < n; k++) {
        __m256 lo = _mm512_cvtpd_ps(_mm512_loadu_pd(et + k * CCE_ROWS));
        __m256 hi = _mm512_cvtpd_ps(_mm512_loadu_pd(et + k * CCE_ROWS + 8));
        _mm512_mask_i32scatter_ps(a + k, m, idx, _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1), 4);
    }
}
#endif

/* rows <= CCE_ROWS rows of n <= CCE_MAXN classes: A into a, each row's cost into cost;
 * scratch: CCE_SCRATCH doubles */
static inline void cce_rows_f(const float *z, const float *b, const float *y, float *a, long rows,
                              long n, double *scratch, double *cost)
{
#if defined(CCE_AVX512)
    double *t = scratch, *et = scratch + CCE_ROWS * CCE_MAXN, *yt = scratch + 2 * CCE_ROWS * CCE_MAXN;
    double mx[CCE_ROWS], lse[CCE_ROWS];
    cce_in_f(z, b, y, rows, n, t, yt);
    cce_block(n, t, et, mx, lse);
    cce_cost_lanes(n, t, yt, mx, lse, cost);
    cce_out_f(et, rows, n, a);
#else
    CCE_ROWS_LOOPS(z, b, y, a, rows, n, scratch, cost)
#endif
}

static inline void cce_rows_d(const double *z, const double *b, const double *y, double *a, long rows,
                              long n, double *scratch, double *cost)
{
    CCE_ROWS_LOOPS(z, b, y, a, rows, n, scratch, cost)
}

#endif
