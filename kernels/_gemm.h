/* Single-precision matrix products for the fused training step, in AVX-512.
 *
 *   fg_nn:  C (m, n) = A (m, K) @ B (K, n)      forward:  Z[:, J] = A_prev @ W[:, J]
 *   fg_tn:  C (m, n) = A (K, m)^T @ B (K, n)    backward: dW[J, :] = A_prev[:, J]^T @ dZ
 *   fg_nt:  C (m, n) = A (m, K) @ B (n, K)^T    backward: dA[:, J] = dZ @ W[J, :]^T
 *
 * All row-major with leading dimensions; C is overwritten.  The shapes of one
 * training step are small (a thread's operands stay in L2 at batch 128; up to
 * the step's limit of 1024 rows they come from L3), so neither operand is
 * packed: a micro-kernel keeps an (8, 32) block of C in sixteen
 * registers, and for every k broadcasts eight elements of A against two vectors
 * of B's row k.  On one core of an AVX-512 machine, a thread's share of the
 * first layer's products at batch 128 (128x784 @ 784x128, 392x128 @ 128x256)
 * takes 13-15 % less time than OpenBLAS's sgemm, about 94 % of the core's peak
 * (benchmarks/test_bench_kernels.py, "step product").
 *
 * Every element of C is one chain of fused multiply-adds over k = 0 .. K-1 in
 * order, whichever block, thread or tail variant computes it, so a product has
 * the same bits for any split of C among threads.
 *
 * Built only where the compiler targets AVX-512F (the x86-64-v4 variant of the
 * extension); elsewhere FG_AVAILABLE is 0 and the step calls BLAS.
 */
#ifndef FUSEDNET_GEMM_H
#define FUSEDNET_GEMM_H

#include <stddef.h>

#define FG_MAX_K 4096    /* depth of a chunk: fg_nn keeps a (FG_MAX_K, 32) panel of B in L2 */

#if defined(__AVX512F__)
#include <immintrin.h>

#define FG_AVAILABLE 1
#define FG_MR 8          /* rows of C per micro-kernel */
#define FG_NB 32         /* columns of C per micro-kernel (two vectors) */
#define FG_KC 256        /* fg_nt transposes B in (FG_KC, FG_NB) panels on the stack */

/* How a block reads A's element a(r, k) (r: row of C, k: depth) */
#define FG_NN 0          /* rows[r][k]: A's rows, by pointer (contiguous or gathered) */
#define FG_TN 1          /* a[k * lda + r]: A stored (K, m) */
#define FG_TN_ROWS 2     /* rows[k][lda + r]: A's rows by pointer, columns from lda on */

/* C[0:MR, 0:16*NV] = sum_k a(r, k) * B[k, 0:16*NV], the last vector masked by `tail`;
 * with `add`, the sum starts from C's values instead of zero. */
static inline __attribute__((always_inline)) void
fg_block(const int MR, const int NV, const int MODE, ptrdiff_t K, const float *a, ptrdiff_t lda,
         const float *const *rows, const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
         __mmask16 tail, int add)
{
    __m512 acc[FG_MR][2], bv[2];
    const float *row[FG_MR];
    const float *ak;
    ptrdiff_t k;
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        row[r] = MODE == FG_NN ? rows[r] : a;
        acc[r][0] = _mm512_setzero_ps();
        acc[r][1] = _mm512_setzero_ps();
        if (add) {
            if (NV == 1) {
                acc[r][0] = _mm512_maskz_loadu_ps(tail, c + r * ldc);
            } else {
                acc[r][0] = _mm512_loadu_ps(c + r * ldc);
                acc[r][1] = _mm512_maskz_loadu_ps(tail, c + r * ldc + 16);
            }
        }
    }
    for (k = 0; k < K; k++) {
        const float *bk = b + k * ldb;
        if (NV == 1) {
            bv[0] = _mm512_maskz_loadu_ps(tail, bk);
        } else {
            bv[0] = _mm512_loadu_ps(bk);
            bv[1] = _mm512_maskz_loadu_ps(tail, bk + 16);
        }
        ak = MODE == FG_TN ? a + k * lda : (MODE == FG_TN_ROWS ? rows[k] + lda : a);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512 x = _mm512_set1_ps(MODE == FG_NN ? row[r][k] : ak[r]);
            acc[r][0] = _mm512_fmadd_ps(x, bv[0], acc[r][0]);
            if (NV == 2)
                acc[r][1] = _mm512_fmadd_ps(x, bv[1], acc[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        if (NV == 1) {
            _mm512_mask_storeu_ps(c + r * ldc, tail, acc[r][0]);
        } else {
            _mm512_storeu_ps(c + r * ldc, acc[r][0]);
            _mm512_mask_storeu_ps(c + r * ldc + 16, tail, acc[r][1]);
        }
    }
}

/* One block of up to FG_MR rows and FG_NB columns: the row count picks a
 * specialised kernel (each has its sixteen accumulators in registers). */
#define FG_CASE(MR, MODE)                                                                 \
    case MR:                                                                              \
        if (nv == 1)                                                                      \
            fg_block(MR, 1, MODE, K, a, lda, rows, b, ldb, c, ldc, tail, add);            \
        else                                                                              \
            fg_block(MR, 2, MODE, K, a, lda, rows, b, ldb, c, ldc, tail, add);            \
        break;

#define FG_DISPATCH(NAME, MODE)                                                           \
    static void NAME(int mr, int nv, ptrdiff_t K, const float *a, ptrdiff_t lda,          \
                     const float *const *rows, const float *b, ptrdiff_t ldb, float *c,   \
                     ptrdiff_t ldc, __mmask16 tail, int add)                              \
    {                                                                                     \
        switch (mr) {                                                                     \
            FG_CASE(1, MODE) FG_CASE(2, MODE) FG_CASE(3, MODE) FG_CASE(4, MODE)           \
            FG_CASE(5, MODE) FG_CASE(6, MODE) FG_CASE(7, MODE) FG_CASE(8, MODE)           \
        }                                                                                 \
    }

FG_DISPATCH(fg_block_nn, FG_NN)
FG_DISPATCH(fg_block_tn, FG_TN)
FG_DISPATCH(fg_block_tn_rows, FG_TN_ROWS)

#undef FG_DISPATCH
#undef FG_CASE

/* The panel of C's columns from j: its width (returned), vectors and last vector's mask. */
static inline ptrdiff_t
fg_panel(ptrdiff_t n, ptrdiff_t j, int *nv, __mmask16 *tail)
{
    ptrdiff_t w = n - j < FG_NB ? n - j : FG_NB;
    *nv = w > 16 ? 2 : 1;
    *tail = (__mmask16)(w % 16 ? (1u << (w % 16)) - 1 : 0xFFFFu);
    return w;
}

/* Walk C in column panels of FG_NB (B's panel stays in cache) and, inside a
 * panel, in blocks of FG_MR rows; the last panel masks its last vector.
 * FG_NN reads A's row i at rows[i] when rows is given, else at A + i * lda.
 * Depths beyond FG_MAX_K are walked in chunks of FG_MAX_K (B's panel of a chunk stays
 * in L2), each chunk's blocks starting from C's values: a float accumulator stored and
 * reloaded is the same number, so each element of C is still one chain over k in order. */
static inline void
fg_walk(int mode, ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
        const float *const *rows, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    const float *rp[FG_MR];
    ptrdiff_t i, j, r, k0, kw;
    int nv, mr, add;
    __mmask16 tail;
    for (k0 = 0; k0 < K; k0 += FG_MAX_K) {
        kw = K - k0 < FG_MAX_K ? K - k0 : FG_MAX_K;
        add = k0 > 0;
        for (j = 0; j < n; j += FG_NB) {
            fg_panel(n, j, &nv, &tail);
            for (i = 0; i < m; i += FG_MR) {
                mr = (int)(m - i < FG_MR ? m - i : FG_MR);
                if (mode == FG_NN) {
                    for (r = 0; r < mr; r++)
                        rp[r] = (rows ? rows[i + r] : A + (i + r) * lda) + k0;
                    fg_block_nn(mr, nv, kw, NULL, 0, rp, B + k0 * ldb + j, ldb, C + i * ldc + j, ldc,
                                tail, add);
                } else if (mode == FG_TN) {
                    fg_block_tn(mr, nv, kw, A + k0 * lda + i, lda, NULL, B + k0 * ldb + j, ldb,
                                C + i * ldc + j, ldc, tail, add);
                } else {
                    fg_block_tn_rows(mr, nv, kw, NULL, lda + i, rows + k0, B + k0 * ldb + j, ldb,
                                     C + i * ldc + j, ldc, tail, add);
                }
            }
        }
    }
}

/* C (m, n) = A (m, K) @ B (K, n), A's row i at rows[i] (rows not NULL) or A + i * lda. */
static inline int
fg_nn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
      const float *const *rows, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    fg_walk(FG_NN, m, n, K, A, lda, rows, B, ldb, C, ldc);
    return 1;
}

/* Lanes of the vectors that cover x columns that hold one (FG_NB panels of 16-wide vectors). */
static inline double
fg_lanes(ptrdiff_t x)
{
    return (double)x / (double)(16 * ((x + 15) / 16));
}

/* fg_tn of a narrow C (a weight gradient of few units, n not a multiple of 16, m wide), as
 * C^T (n, m) = B^T A: the vectors run along C's m columns of C^T, full, where along n their
 * last one would be mostly masked; each (FG_MR, FG_NB) block of C^T is stored transposed
 * through a tile on the stack.  Each panel of A (the rows' 32 columns) stays in L1 for the
 * blocks of C^T's rows (wider super-panels, read from L2, measured slower).  An element's chain, fma(b, a, acc) over k in order, is
 * fg_tn's fma(a, b, acc): the same bits. */
static inline void
fg_tn_narrow(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
             ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    float tile[FG_MR * FG_NB] __attribute__((aligned(64)));
    ptrdiff_t i, j, w, r, jj;
    int nv, mr;
    __mmask16 tail;
    for (j = 0; j < m; j += FG_NB) {
        w = fg_panel(m, j, &nv, &tail);
        for (i = 0; i < n; i += FG_MR) {
            mr = (int)(n - i < FG_MR ? n - i : FG_MR);
            fg_block_tn(mr, nv, K, B + i, ldb, NULL, A + j, lda, tile, FG_NB, tail, 0);
            for (jj = 0; jj < w; jj++)
                for (r = 0; r < mr; r++)
                    C[(j + jj) * ldc + i + r] = tile[r * FG_NB + jj];
        }
    }
}

#define FG_TN1_MAXN 24   /* fg_tn_units: most units (accumulators) of one block */
#define FG_TN1_AHEAD 2    /* fg_tn_units: panels of A prefetched ahead */

/* C^T[0:NU, 0:16] of a narrow weight gradient: every unit at once (NU accumulators, one
 * vector of A's columns each), for k in order acc[u] = fma(b(k, u), a(k, :), acc[u]) -- fg_tn's
 * chain, the same bits.  Each row of A's panel is read once (one cache line); the panel
 * FG_TN1_AHEAD to the right is prefetched row by row meanwhile (its rows lie lda apart, too far
 * for the hardware prefetchers).  The block goes to `tile` (NU vectors). */
static inline __attribute__((always_inline)) void
fg_tn_units_block(const int NU, ptrdiff_t K, const float *a, ptrdiff_t lda, const float *b,
                  ptrdiff_t ldb, float *tile, __mmask16 tail, int ahead)
{
    __m512 acc[FG_TN1_MAXN], x;
    ptrdiff_t k;
#pragma GCC unroll 24
    for (int u = 0; u < NU; u++)
        acc[u] = _mm512_setzero_ps();
    for (k = 0; k < K; k++) {
        x = _mm512_maskz_loadu_ps(tail, a + k * lda);
        if (ahead)
            _mm_prefetch((const char *)(a + k * lda + 16 * FG_TN1_AHEAD), _MM_HINT_T0);
#pragma GCC unroll 24
        for (int u = 0; u < NU; u++)
            acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(b[k * ldb + u]), x, acc[u]);
    }
#pragma GCC unroll 24
    for (int u = 0; u < NU; u++)
        _mm512_store_ps(tile + 16 * u, acc[u]);
}

#define FG_TU(NU)                                                                         \
    case NU:                                                                              \
        fg_tn_units_block(NU, K, a, lda, b, ldb, tile, tail, ahead);                      \
        break;

static void
fg_tn_units_any(int nu, ptrdiff_t K, const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                float *tile, __mmask16 tail, int ahead)
{
    switch (nu) {
        FG_TU(1) FG_TU(2) FG_TU(3) FG_TU(4) FG_TU(5) FG_TU(6) FG_TU(7) FG_TU(8)
        FG_TU(9) FG_TU(10) FG_TU(11) FG_TU(12) FG_TU(13) FG_TU(14) FG_TU(15) FG_TU(16)
        FG_TU(17) FG_TU(18) FG_TU(19) FG_TU(20) FG_TU(21) FG_TU(22) FG_TU(23) FG_TU(24)
    }
}

#undef FG_TU

/* fg_tn of a weight gradient of at most FG_TN1_MAXN units (n): C^T (n, m) = B^T A in blocks
 * of all n units by 16 of C's rows, one per panel of A's columns, walked left to right so the
 * prefetch of the panel ahead pays; each block is stored transposed from a tile on the stack.
 * Same chains as fg_tn, so the same bits (tests/kernels/test_gemm.py). */
static inline void
fg_tn_units(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
            ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    float tile[FG_TN1_MAXN * 16] __attribute__((aligned(64)));
    ptrdiff_t j, w, jj, u;
    __mmask16 tail;
    for (j = 0; j < m; j += 16) {
        w = m - j < 16 ? m - j : 16;
        tail = (__mmask16)((1u << w) - 1);
        fg_tn_units_any((int)n, K, A + j, lda, B, ldb, tile, tail, j + 16 * (FG_TN1_AHEAD + 1) <= m);
        for (jj = 0; jj < w; jj++)
            for (u = 0; u < n; u++)
                C[(j + jj) * ldc + u] = tile[u * 16 + jj];
    }
}

/* C (m, n) = A (K, m)^T @ B (K, n): A's row k at rows[k] + col (rows not NULL) or A + k * lda.
 * A narrow C whose vectors along n would be mostly masked goes through fg_tn_units (at most
 * FG_TN1_MAXN units) or fg_tn_narrow. */
static inline int
fg_tn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
      const float *const *rows, ptrdiff_t col, const float *B, ptrdiff_t ldb, float *C,
      ptrdiff_t ldc)
{
    if (rows)
        fg_walk(FG_TN_ROWS, m, n, K, NULL, col, rows, B, ldb, C, ldc);
    else if (n <= FG_TN1_MAXN && K >= FG_MR && fg_lanes(m) > fg_lanes(n) + 0.125)
        fg_tn_units(m, n, K, A, lda, B, ldb, C, ldc);
    else if (n < 4 * FG_NB && K >= FG_MR && fg_lanes(m) > fg_lanes(n) + 0.125)
        fg_tn_narrow(m, n, K, A, lda, B, ldb, C, ldc);
    else
        fg_walk(FG_TN, m, n, K, A, lda, NULL, B, ldb, C, ldc);
    return 1;
}

/* C (m, n) = A (m, K) @ B (n, K)^T.  For each panel of FG_NB columns of C, B's rows
 * are transposed FG_KC columns at a time into a (FG_KC, FG_NB) panel on the stack,
 * and the blocks of C add each K chunk's product to the previous ones' (the chunks
 * depend on K only, so the bits still do not depend on how C is split). */
static inline int
fg_nt(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
      ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    float panel[FG_KC * FG_NB] __attribute__((aligned(64)));
    const float *rp[FG_MR];
    ptrdiff_t i, j, w, k0, kw, k, jj, r;
    int nv, mr;
    __mmask16 tail;
    for (j = 0; j < n; j += FG_NB) {
        w = fg_panel(n, j, &nv, &tail);
        for (k0 = 0; k0 < K; k0 += FG_KC) {
            kw = K - k0 < FG_KC ? K - k0 : FG_KC;
            for (jj = 0; jj < w; jj++)
                for (k = 0; k < kw; k++)
                    panel[k * FG_NB + jj] = B[(j + jj) * ldb + k0 + k];
            for (i = 0; i < m; i += FG_MR) {
                mr = (int)(m - i < FG_MR ? m - i : FG_MR);
                for (r = 0; r < mr; r++)
                    rp[r] = A + (i + r) * lda + k0;
                fg_block_nn(mr, nv, kw, NULL, 0, rp, panel, FG_NB, C + i * ldc + j, ldc, tail, k0 > 0);
            }
        }
    }
    return 1;
}

#else /* no AVX-512F: the callers use BLAS */

#define FG_AVAILABLE 0

static inline int
fg_nn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
      const float *const *rows, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    (void)m; (void)n; (void)K; (void)A; (void)lda; (void)rows; (void)B; (void)ldb; (void)C; (void)ldc;
    return 0;
}

static inline int
fg_tn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
      const float *const *rows, ptrdiff_t col, const float *B, ptrdiff_t ldb, float *C,
      ptrdiff_t ldc)
{
    (void)m; (void)n; (void)K; (void)A; (void)lda; (void)rows; (void)col; (void)B; (void)ldb;
    (void)C; (void)ldc;
    return 0;
}

static inline int
fg_nt(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
      ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    (void)m; (void)n; (void)K; (void)A; (void)lda; (void)B; (void)ldb; (void)C; (void)ldc;
    return 0;
}

#endif
#endif
