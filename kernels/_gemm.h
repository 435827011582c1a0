/* Single-precision matrix products for the fused training step, in AVX-512 or AVX2.
 *
 *   fg_nn:  C (m, n) = A (m, K) @ B (K, n)      forward:  Z[:, J] = A_prev @ W[:, J]
 *   fg_tn:  C (m, n) = A (K, m)^T @ B (K, n)    backward: dW[J, :] = A_prev[:, J]^T @ dZ
 *   fg_nt:  C (m, n) = A (m, K) @ B (n, K)^T    backward: dA[:, J] = dZ @ W[J, :]^T
 *
 * All row-major with leading dimensions; C is overwritten.  The shapes of one
 * training step are small (a thread's operands stay in L2 at batch 128; up to
 * the step's limit of 1024 rows they come from L3), so neither operand is
 * packed: a micro-kernel keeps a block of C in registers -- on AVX-512 (6, 64) or
 * (8, 48) in 24 of the 32 registers (fg_walk and fg_nt) or (8, 32) in sixteen, on
 * AVX2 (6, 16) in twelve of the 16 -- and for every k broadcasts a row block's
 * elements of A against the vectors of B's row k.  On one core of an AVX-512
 * machine, a thread's share of the first layer's products at batch 128 (128x784 @
 * 784x128, 392x128 @ 128x256) takes 13-15 % less time than OpenBLAS's sgemm
 * (benchmarks/test_bench_kernels.py, "step product").
 *
 * Every element of C is one chain of fused multiply-adds over k = 0 .. K-1 in
 * order, whichever block, thread, tail variant or vector width computes it, so a
 * product has the same bits for any split of C among threads, on AVX2 and AVX-512.
 *
 * Built where the compiler targets AVX-512F (the x86-64-v4 variant of the
 * extension) or AVX2 with FMA (x86-64-v3); elsewhere FG_AVAILABLE is 0 and the
 * step calls BLAS.
 */
#ifndef FUSEDNET_GEMM_H
#define FUSEDNET_GEMM_H

#include <stddef.h>

#define FG_MAX_K 4096    /* depth of a chunk: fg_nn keeps a (FG_MAX_K, FG_NVW * FG_VW) panel of B in L2 */

/* The vector layer: fg_v holds FG_VW floats; fg_mask selects a vector's first lanes (fg_tail). */
#if defined(__AVX512F__)
#include <immintrin.h>
#define FG_VW 16         /* floats per vector */
#define FG_MR 8          /* rows of C per micro-kernel */
#define FG_NVW 4         /* vectors of C's row in a block of fg_walk (a wide panel) */
#define FG_TN1_MAXN 24   /* fg_tn_units: most units (accumulators) of one block */
typedef __m512 fg_v;
typedef __mmask16 fg_mask;
static inline fg_v fg_zero(void) { return _mm512_setzero_ps(); }
static inline fg_v fg_set1(float x) { return _mm512_set1_ps(x); }
static inline fg_v fg_fma(fg_v a, fg_v b, fg_v c) { return _mm512_fmadd_ps(a, b, c); }
static inline fg_v fg_load(const float *p) { return _mm512_loadu_ps(p); }
static inline fg_v fg_loadm(fg_mask m, const float *p) { return _mm512_maskz_loadu_ps(m, p); }
static inline void fg_store(float *p, fg_v v) { _mm512_storeu_ps(p, v); }
static inline void fg_store_aligned(float *p, fg_v v) { _mm512_store_ps(p, v); }
static inline void fg_storem(float *p, fg_mask m, fg_v v) { _mm512_mask_storeu_ps(p, m, v); }
/* lanes 0 .. w-1 (1 <= w <= FG_VW) */
static inline fg_mask fg_tail(ptrdiff_t w) { return (fg_mask)(w >= 16 ? 0xFFFFu : (1u << w) - 1); }
static inline int fg_full(fg_mask m) { return m == 0xFFFFu; }
#define FG_MASK_COSTS 0  /* a masked load or store costs what a plain one does */
static inline fg_v fg_add(fg_v a, fg_v b) { return _mm512_add_ps(a, b); }
/* 0 where x <= 0, else x (NaN kept): the point function relu's select */
static inline fg_v fg_relu(fg_v x)
{
    return _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LE_OQ), _mm512_setzero_ps());
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FG_VW 8
#define FG_MR 6
#define FG_NVW 2
#define FG_TN1_MAXN 8    /* wider: fg_walk (measured faster on AVX2 from 10 units on) */
typedef __m256 fg_v;
typedef __m256i fg_mask;
static inline fg_v fg_zero(void) { return _mm256_setzero_ps(); }
static inline fg_v fg_set1(float x) { return _mm256_set1_ps(x); }
static inline fg_v fg_fma(fg_v a, fg_v b, fg_v c) { return _mm256_fmadd_ps(a, b, c); }
static inline fg_v fg_load(const float *p) { return _mm256_loadu_ps(p); }
static inline fg_v fg_loadm(fg_mask m, const float *p) { return _mm256_maskload_ps(p, m); }
static inline void fg_store(float *p, fg_v v) { _mm256_storeu_ps(p, v); }
static inline void fg_store_aligned(float *p, fg_v v) { _mm256_store_ps(p, v); }
static inline void fg_storem(float *p, fg_mask m, fg_v v) { _mm256_maskstore_ps(p, m, v); }
static inline fg_mask fg_tail(ptrdiff_t w)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)w), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline int fg_full(fg_mask m) { return _mm256_testc_si256(m, _mm256_set1_epi32(-1)); }
#define FG_MASK_COSTS 1  /* vmaskmovps is slower than a plain load or store: blocks of full vectors skip it */
static inline fg_v fg_add(fg_v a, fg_v b) { return _mm256_add_ps(a, b); }
static inline fg_v fg_relu(fg_v x)
{
    return _mm256_blendv_ps(x, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LE_OQ));
}
#endif

#if defined(FG_VW)
#define FG_AVAILABLE 1
#define FG_NB (2 * FG_VW)   /* columns of C per micro-kernel (two vectors) */
#define FG_KC (FG_NVW > 2 ? 128 : 256)  /* fg_nt transposes B in (FG_KC, FG_NVW * FG_VW) panels on the stack (32 KB, 16 KB) */
#define FG_MR_MAX 8      /* the row counts the kernels are compiled for (up to FG_MR are used) */
#define FG_TN1_MAX 24    /* ... and the unit counts of fg_tn_units (up to FG_TN1_MAXN are used) */

/* How a block reads A's element a(r, k) (r: row of C, k: depth) */
#define FG_NN 0          /* rows[r][k]: A's rows, by pointer (contiguous or gathered) */
#define FG_TN 1          /* a[k * lda + r]: A stored (K, m) */
#define FG_TN_ROWS 2     /* rows[k][lda + r]: A's rows by pointer, columns from lda on */
#define FG_NN_RELU 3     /* as FG_NN, then C = relu(C + bias) on storing (a hidden ReLU layer's forward) */
#define FG_TN_AHEAD 4    /* as FG_TN, prefetching B's row k FG_AHEAD floats on (fg_tn_narrow's first block) */
#define FG_AHEAD (2 * FG_NB)  /* two panels of a narrow weight gradient's A to the right */

/* C[0:MR, 0:FG_VW*NV] = sum_k a(r, k) * B[k, 0:FG_VW*NV], the last vector masked by `tail`
 * (FULL: the last vector is whole, the mask unused); with `add`, the sum starts from C's values
 * instead of zero. */
static inline __attribute__((always_inline)) void
fg_block(const int MR, const int NV, const int MODE, const int FULL, ptrdiff_t K, const float *a, ptrdiff_t lda,
         const float *const *rows, const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
         fg_mask tail, int add, const float *bias)
{
    fg_v acc[FG_MR_MAX][FG_NVW], bv[FG_NVW];
    const float *row[FG_MR_MAX];
    const float *ak;
    ptrdiff_t k;
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        row[r] = MODE == FG_NN || MODE == FG_NN_RELU ? rows[r] : a;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            if (!add)
                acc[r][v] = fg_zero();
            else if (v < NV - 1 || FULL)
                acc[r][v] = fg_load(c + r * ldc + v * FG_VW);
            else
                acc[r][v] = fg_loadm(tail, c + r * ldc + v * FG_VW);
        }
    }
    /* Rows k < ksafe of B read their last vector whole where it is partial: its lanes past the
     * panel lie inside B's rows below (the read ends before B's last element), their products
     * land in lanes that are never stored, and the lanes kept are computed as before.  Only
     * where masks cost (AVX2); the last rows take the masked load. */
    ptrdiff_t ksafe = FULL || !FG_MASK_COSTS || ldb < 1 ? 0 : K - (FG_VW - 1 + ldb - 1) / ldb;
#define FG_K_BODY(PLAIN)                                                                  \
    {                                                                                     \
        const float *bk = b + k * ldb;                                                    \
        _Pragma("GCC unroll 4")                                                           \
        for (int v = 0; v < NV; v++)                                                      \
            bv[v] = v < NV - 1 || FULL || PLAIN ? fg_load(bk + v * FG_VW)                 \
                                                : fg_loadm(tail, bk + v * FG_VW);         \
        if (MODE == FG_TN_AHEAD)                                                          \
            _mm_prefetch((const char *)(bk + FG_AHEAD), _MM_HINT_T0);                     \
        ak = MODE == FG_TN || MODE == FG_TN_AHEAD ? a + k * lda                           \
                                                  : (MODE == FG_TN_ROWS ? rows[k] + lda : a); \
        _Pragma("GCC unroll 8")                                                           \
        for (int r = 0; r < MR; r++) {                                                    \
            fg_v x = fg_set1(MODE == FG_NN || MODE == FG_NN_RELU ? row[r][k] : ak[r]);    \
            _Pragma("GCC unroll 4")                                                       \
            for (int v = 0; v < NV; v++)                                                  \
                acc[r][v] = fg_fma(x, bv[v], acc[r][v]);                                  \
        }                                                                                 \
    }
    for (k = 0; k < ksafe; k++)
        FG_K_BODY(1)
    for (; k < K; k++)
        FG_K_BODY(0)
#undef FG_K_BODY
    if (MODE == FG_NN_RELU) {  /* relu(z + b): 0 where z + b <= 0 (so -0 too), NaN kept */
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            bv[v] = v < NV - 1 || FULL ? fg_load(bias + v * FG_VW) : fg_loadm(tail, bias + v * FG_VW);
#pragma GCC unroll 8
            for (int r = 0; r < MR; r++)
                acc[r][v] = fg_relu(fg_add(acc[r][v], bv[v]));
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            if (v < NV - 1 || FULL)
                fg_store(c + r * ldc + v * FG_VW, acc[r][v]);
            else
                fg_storem(c + r * ldc + v * FG_VW, tail, acc[r][v]);
        }
    }
}

/* One block of up to fg_rows(nv) rows and nv vectors of columns: the row and vector counts pick
 * a specialised kernel (each has its accumulators in registers). */
#define FG_KERNEL(MR, NV, MODE)                                                           \
    if (full)                                                                             \
        fg_block(MR, NV, MODE, 1, K, a, lda, rows, b, ldb, c, ldc, tail, add, bias);      \
    else                                                                                  \
        fg_block(MR, NV, MODE, 0, K, a, lda, rows, b, ldb, c, ldc, tail, add, bias);      \
    break;

#define FG_CASE(MR, MODE)                                                                 \
    case MR:                                                                              \
        switch (nv) {                                                                     \
        case 1: FG_KERNEL(MR, 1, MODE)                                                    \
        default: FG_KERNEL(MR, 2, MODE)                                                   \
        }                                                                                 \
        break;

#if FG_NVW > 2
/* wide blocks: as many rows as leave registers for B's vectors and the broadcast (32 in all) */
#define FG_WIDE(MODE)                                                                     \
    if (nv == 3) {                                                                        \
        switch (mr) {                                                                     \
        case 1: FG_KERNEL(1, 3, MODE) case 2: FG_KERNEL(2, 3, MODE)                       \
        case 3: FG_KERNEL(3, 3, MODE) case 4: FG_KERNEL(4, 3, MODE)                       \
        case 5: FG_KERNEL(5, 3, MODE) case 6: FG_KERNEL(6, 3, MODE)                       \
        case 7: FG_KERNEL(7, 3, MODE) default: FG_KERNEL(8, 3, MODE)                      \
        }                                                                                 \
        return;                                                                           \
    }                                                                                     \
    if (nv == 4) {                                                                        \
        switch (mr) {                                                                     \
        case 1: FG_KERNEL(1, 4, MODE) case 2: FG_KERNEL(2, 4, MODE)                       \
        case 3: FG_KERNEL(3, 4, MODE) case 4: FG_KERNEL(4, 4, MODE)                       \
        case 5: FG_KERNEL(5, 4, MODE) default: FG_KERNEL(6, 4, MODE)                      \
        }                                                                                 \
        return;                                                                           \
    }
#else
#define FG_WIDE(MODE)
#endif

#define FG_DISPATCH(NAME, MODE)                                                           \
    static void NAME(int mr, int nv, ptrdiff_t K, const float *a, ptrdiff_t lda,          \
                     const float *const *rows, const float *b, ptrdiff_t ldb, float *c,   \
                     ptrdiff_t ldc, fg_mask tail, int add, const float *bias)           \
    {                                                                                     \
        const int full = FG_MASK_COSTS && fg_full(tail);                                  \
        FG_WIDE(MODE)                                                                     \
        switch (mr) {                                                                     \
            FG_CASE(1, MODE) FG_CASE(2, MODE) FG_CASE(3, MODE) FG_CASE(4, MODE)           \
            FG_CASE(5, MODE) FG_CASE(6, MODE) FG_CASE(7, MODE) FG_CASE(8, MODE)           \
        }                                                                                 \
    }

FG_DISPATCH(fg_block_nn, FG_NN)
FG_DISPATCH(fg_block_tn, FG_TN)
FG_DISPATCH(fg_block_tn_ahead, FG_TN_AHEAD)
FG_DISPATCH(fg_block_tn_rows, FG_TN_ROWS)
FG_DISPATCH(fg_block_nn_relu, FG_NN_RELU)

#undef FG_DISPATCH
#undef FG_CASE
#undef FG_WIDE
#undef FG_KERNEL

/* The panel of C's columns from j: its width (returned), vectors and last vector's mask. */
static inline ptrdiff_t
fg_panel(ptrdiff_t n, ptrdiff_t j, int *nv, fg_mask *tail)
{
    ptrdiff_t w = n - j < FG_NB ? n - j : FG_NB;
    *nv = w > FG_VW ? 2 : 1;
    *tail = fg_tail(w % FG_VW ? w % FG_VW : FG_VW);
    return w;
}

/* The wide panel of C's columns from j (fg_walk's): as fg_panel, up to FG_NVW vectors. */
static inline ptrdiff_t
fg_wide_panel(ptrdiff_t n, ptrdiff_t j, int *nv, fg_mask *tail)
{
    ptrdiff_t w = n - j < FG_NVW * FG_VW ? n - j : FG_NVW * FG_VW;
    *nv = (int)((w + FG_VW - 1) / FG_VW);
    *tail = fg_tail(w % FG_VW ? w % FG_VW : FG_VW);
    return w;
}

/* Rows of a block of nv vectors per row: the accumulators, B's vectors and the broadcast fill
 * the registers (AVX-512: 6 x 4 or 8 x 3 of 32; measured 10-15 % faster than 8 x 2 on one core). */
static inline int
fg_rows(int nv)
{
    return FG_NVW > 2 && nv == 4 ? 6 : FG_MR;
}

/* Walk C in column panels of up to FG_NVW vectors (B's panel stays in cache) and, inside a
 * panel, in blocks of fg_rows rows (a C of two panels, the second one vector: row blocks
 * outside, so each part of A is read once); the last panel masks its last vector.
 * FG_NN reads A's row i at rows[i] when rows is given, else at A + i * lda.
 * Depths beyond FG_MAX_K are walked in chunks of FG_MAX_K (B's panel of a chunk stays
 * in L2), each chunk's blocks starting from C's values: a float accumulator stored and
 * reloaded is the same number, so each element of C is still one chain over k in order. */
static inline void
fg_walk(int mode, ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
        const float *const *rows, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, const float *bias)
{
    const ptrdiff_t nbw = FG_NVW * FG_VW;
    const float *rp[FG_MR_MAX];
    ptrdiff_t i, j, r, k0, kw, height;
    int nv, mr, add;
    fg_mask tail;
    for (k0 = 0; k0 < K; k0 += FG_MAX_K) {
        kw = K - k0 < FG_MAX_K ? K - k0 : FG_MAX_K;
        add = k0 > 0;
        /* two panels, the second one vector: both blocks of a row block in turn (panels inner),
         * so A's part (streamed from memory when A is large) is read once, not once per panel */
        int inner = n > nbw && n <= nbw + FG_VW;
        height = fg_rows(FG_NVW);
        for (ptrdiff_t o = 0; o < (inner ? m : n); o += inner ? height : nbw) {
            if (!inner) {
                fg_wide_panel(n, o, &nv, &tail);
                height = fg_rows(nv);
            }
            for (ptrdiff_t q = 0; q < (inner ? n : m); q += inner ? nbw : height) {
                i = inner ? o : q;
                j = inner ? q : o;
                fg_wide_panel(n, j, &nv, &tail);
                mr = (int)(m - i < height ? m - i : height);
                if (mode == FG_NN) {
                    for (r = 0; r < mr; r++)
                        rp[r] = (rows ? rows[i + r] : A + (i + r) * lda) + k0;
                    if (bias && k0 + kw == K)  /* the last chunk stores relu(C + bias) */
                        fg_block_nn_relu(mr, nv, kw, NULL, 0, rp, B + k0 * ldb + j, ldb, C + i * ldc + j,
                                         ldc, tail, add, bias + j);
                    else
                        fg_block_nn(mr, nv, kw, NULL, 0, rp, B + k0 * ldb + j, ldb, C + i * ldc + j, ldc,
                                    tail, add, NULL);
                } else if (mode == FG_TN) {
                    fg_block_tn(mr, nv, kw, A + k0 * lda + i, lda, NULL, B + k0 * ldb + j, ldb,
                                C + i * ldc + j, ldc, tail, add, NULL);
                } else {
                    fg_block_tn_rows(mr, nv, kw, NULL, lda + i, rows + k0, B + k0 * ldb + j, ldb,
                                     C + i * ldc + j, ldc, tail, add, NULL);
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
    fg_walk(FG_NN, m, n, K, A, lda, rows, B, ldb, C, ldc, NULL);
    return 1;
}

/* C (m, n) = relu(A (m, K) @ B (K, n) + bias (n,)), as fg_nn and then the point function relu
 * over C + bias, element for element (a hidden ReLU layer's forward in one pass). */
static inline int
fg_nn_relu(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
           const float *const *rows, const float *B, ptrdiff_t ldb, const float *bias, float *C, ptrdiff_t ldc)
{
    fg_walk(FG_NN, m, n, K, A, lda, rows, B, ldb, C, ldc, bias);
    return 1;
}

/* Lanes of the vectors that cover x columns that hold one (FG_NB panels of FG_VW-wide vectors). */
static inline double
fg_lanes(ptrdiff_t x)
{
    return (double)x / (double)(FG_VW * ((x + FG_VW - 1) / FG_VW));
}

/* Units of the block from unit u of n in blocks of at most FG_MR: FG_MR each, unless the last
 * one would hold fewer than FG_MR / 2 (too few accumulators to keep the multiply-adds busy over
 * their latency: on AVX2 20 units as 6 + 6 + 6 + 2), then the fewest blocks, of sizes that
 * differ by at most one (5 + 5 + 5 + 5). */
static inline int
fg_unit_block(ptrdiff_t n, ptrdiff_t u)
{
    ptrdiff_t blocks = (n + FG_MR - 1) / FG_MR, size;
    if (n % FG_MR == 0 || 2 * (n % FG_MR) >= FG_MR)
        return (int)(n - u < FG_MR ? n - u : FG_MR);
    size = n / blocks;  /* the first n % blocks blocks hold one more */
    return (int)(u < (n % blocks) * (size + 1) ? size + 1 : size);
}

/* fg_tn of a narrow C (a weight gradient of few units, n not a multiple of FG_VW, m wide), as
 * C^T (n, m) = B^T A: the vectors run along C's m columns of C^T, full, where along n their
 * last one would be mostly masked; each (fg_unit_block, FG_NB) block of C^T is stored
 * transposed through a tile on the stack.  Each panel of A (the rows' 32 columns) stays in L1
 * for the blocks of C^T's rows (wider super-panels, read from L2, measured slower); the first
 * block of a panel prefetches, row by row, the panel FG_AHEAD floats to the right, whose rows lie
 * lda apart, too far for the hardware prefetchers (the cats net's dW, 209 rows of X 48 KB apart,
 * streamed from L3).  An element's chain, fma(b, a, acc) over k in order, is fg_tn's
 * fma(a, b, acc): the same bits. */
static inline void
fg_tn_narrow(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
             ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    float tile[FG_MR_MAX * FG_NB] __attribute__((aligned(64)));
    ptrdiff_t i, j, w, r, jj;
    int nv, mr;
    fg_mask tail;
    for (j = 0; j < m; j += FG_NB) {
        w = fg_panel(m, j, &nv, &tail);
        for (i = 0; i < n; i += mr) {
            mr = fg_unit_block(n, i);
            if (i == 0 && j + FG_AHEAD < m)
                fg_block_tn_ahead(mr, nv, K, B + i, ldb, NULL, A + j, lda, tile, FG_NB, tail, 0, NULL);
            else
                fg_block_tn(mr, nv, K, B + i, ldb, NULL, A + j, lda, tile, FG_NB, tail, 0, NULL);
            for (jj = 0; jj < w; jj++)
                for (r = 0; r < mr; r++)
                    C[(j + jj) * ldc + i + r] = tile[r * FG_NB + jj];
        }
    }
}

#define FG_TN1_AHEAD 2    /* fg_tn_units: panels of A prefetched ahead */

/* C^T[0:NU, 0:FG_VW] of a narrow weight gradient: every unit at once (NU accumulators, one
 * vector of A's columns each), for k in order acc[u] = fma(b(k, u), a(k, :), acc[u]) -- fg_tn's
 * chain, the same bits.  Each row of A's panel is read once (one cache line); the panel
 * FG_TN1_AHEAD to the right is prefetched row by row meanwhile (its rows lie lda apart, too far
 * for the hardware prefetchers).  The block goes to `tile` (NU vectors). */
static inline __attribute__((always_inline)) void
fg_tn_units_block(const int NU, const int FULL, ptrdiff_t K, const float *a, ptrdiff_t lda, const float *b,
                  ptrdiff_t ldb, float *tile, fg_mask tail, int ahead)
{
    fg_v acc[FG_TN1_MAX], x;
    ptrdiff_t k;
#pragma GCC unroll 24
    for (int u = 0; u < NU; u++)
        acc[u] = fg_zero();
    for (k = 0; k < K; k++) {
        x = FULL ? fg_load(a + k * lda) : fg_loadm(tail, a + k * lda);
        if (ahead)
            _mm_prefetch((const char *)(a + k * lda + FG_VW * FG_TN1_AHEAD), _MM_HINT_T0);
#pragma GCC unroll 24
        for (int u = 0; u < NU; u++)
            acc[u] = fg_fma(fg_set1(b[k * ldb + u]), x, acc[u]);
    }
#pragma GCC unroll 24
    for (int u = 0; u < NU; u++)
        fg_store_aligned(tile + FG_VW * u, acc[u]);
}

#define FG_TU(NU)                                                                         \
    case NU:                                                                              \
        if (full)                                                                         \
            fg_tn_units_block(NU, 1, K, a, lda, b, ldb, tile, tail, ahead);               \
        else                                                                              \
            fg_tn_units_block(NU, 0, K, a, lda, b, ldb, tile, tail, ahead);               \
        break;

static void
fg_tn_units_any(int nu, ptrdiff_t K, const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                float *tile, fg_mask tail, int ahead)
{
    const int full = FG_MASK_COSTS && fg_full(tail);
    switch (nu) {
        FG_TU(1) FG_TU(2) FG_TU(3) FG_TU(4) FG_TU(5) FG_TU(6) FG_TU(7) FG_TU(8)
        FG_TU(9) FG_TU(10) FG_TU(11) FG_TU(12) FG_TU(13) FG_TU(14) FG_TU(15) FG_TU(16)
        FG_TU(17) FG_TU(18) FG_TU(19) FG_TU(20) FG_TU(21) FG_TU(22) FG_TU(23) FG_TU(24)
    }
}

#undef FG_TU

/* fg_tn of a weight gradient of at most FG_TN1_MAXN units (n): C^T (n, m) = B^T A in blocks
 * of all n units by FG_VW of C's rows, one per panel of A's columns, walked left to right so the
 * prefetch of the panel ahead pays; each block is stored transposed from a tile on the stack.
 * Same chains as fg_tn, so the same bits (tests/kernels/test_gemm.py). */
static inline void
fg_tn_units(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
            ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    float tile[FG_TN1_MAX * FG_VW] __attribute__((aligned(64)));
    ptrdiff_t j, w, jj, u;
    fg_mask tail;
    for (j = 0; j < m; j += FG_VW) {
        w = m - j < FG_VW ? m - j : FG_VW;
        tail = fg_tail(w);
        fg_tn_units_any((int)n, K, A + j, lda, B, ldb, tile, tail, j + FG_VW * (FG_TN1_AHEAD + 1) <= m);
        for (jj = 0; jj < w; jj++)
            for (u = 0; u < n; u++)
                C[(j + jj) * ldc + u] = tile[u * FG_VW + jj];
    }
}

/* fg_tn over rows by pointer with its vectors along C's rows (fg_tn_rows_t): at most FG_TRT_NV
 * vectors of them by FG_TRT_NU columns of C per block, in registers */
#if FG_VW == 16
#define FG_TRT_NV 4
#else
#define FG_TRT_NV 2
#endif
#define FG_TRT_NU 6

/* C^T[u, i] for NU columns u of C and FG_TRT_NV whole vectors of its rows i (from `col`): for k in
 * order acc = fma(b(k, u), a(k, i), acc) -- fg_tn's chain, the same bits; to `tile` (NU rows of
 * FG_TRT_NV vectors). */
static inline __attribute__((always_inline)) void
fg_tn_rows_t_block(const int NU, ptrdiff_t K, const float *const *rows, ptrdiff_t col, const float *b,
                   ptrdiff_t ldb, float *tile)
{
    fg_v acc[FG_TRT_NU][FG_TRT_NV], x[FG_TRT_NV];
    ptrdiff_t k;
#pragma GCC unroll 6
    for (int u = 0; u < NU; u++)
#pragma GCC unroll 4
        for (int v = 0; v < FG_TRT_NV; v++)
            acc[u][v] = fg_zero();
    for (k = 0; k < K; k++) {
        const float *ak = rows[k] + col;
        const float *bk = b + k * ldb;
#pragma GCC unroll 4
        for (int v = 0; v < FG_TRT_NV; v++)
            x[v] = fg_load(ak + v * FG_VW);
#pragma GCC unroll 6
        for (int u = 0; u < NU; u++) {
            fg_v s = fg_set1(bk[u]);
#pragma GCC unroll 4
            for (int v = 0; v < FG_TRT_NV; v++)
                acc[u][v] = fg_fma(s, x[v], acc[u][v]);
        }
    }
#pragma GCC unroll 6
    for (int u = 0; u < NU; u++)
#pragma GCC unroll 4
        for (int v = 0; v < FG_TRT_NV; v++)
            fg_store_aligned(tile + (u * FG_TRT_NV + v) * FG_VW, acc[u][v]);
}

#define FG_TRT(NU)                                                                        \
    case NU:                                                                              \
        fg_tn_rows_t_block(NU, K, rows, col, b, ldb, tile);                              \
        break;

static void
fg_tn_rows_t_any(int nu, ptrdiff_t K, const float *const *rows, ptrdiff_t col, const float *b, ptrdiff_t ldb,
                 float *tile)
{
    switch (nu) {
        FG_TRT(1) FG_TRT(2) FG_TRT(3) FG_TRT(4) FG_TRT(5) FG_TRT(6)
    }
}

#undef FG_TRT

/* Whether fg_tn over rows by pointer takes fg_tn_rows_t: C's m rows whole vectors of blocks of
 * FG_TRT_NV, its n columns not (a weight gradient of 64 inputs by 100 units: along the units the
 * last of 7 vectors holds 4 lanes). */
static inline int
fg_tn_rows_t_pays(ptrdiff_t m, ptrdiff_t n)
{
    return m % (FG_TRT_NV * FG_VW) == 0 && n % FG_VW != 0;
}

/* fg_tn of A's rows by pointer as C^T (n, m) = B^T A, blocks of FG_TRT_NU columns of C by
 * FG_TRT_NV vectors of its rows, each stored transposed from a tile on the stack (m a multiple of
 * FG_TRT_NV * FG_VW). */
static inline void
fg_tn_rows_t(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *const *rows, ptrdiff_t col, const float *B,
             ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    float tile[FG_TRT_NU * FG_TRT_NV * FG_VW] __attribute__((aligned(64)));
    ptrdiff_t i, u, r, j;
    int nu;
    for (i = 0; i < m; i += FG_TRT_NV * FG_VW) {
        for (u = 0; u < n; u += FG_TRT_NU) {
            nu = (int)(n - u < FG_TRT_NU ? n - u : FG_TRT_NU);
            fg_tn_rows_t_any(nu, K, rows, col + i, B + u, ldb, tile);
            for (j = 0; j < FG_TRT_NV * FG_VW; j++)
                for (r = 0; r < nu; r++)
                    C[(i + j) * ldc + u + r] = tile[r * FG_TRT_NV * FG_VW + j];
        }
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
    if (rows && fg_tn_rows_t_pays(m, n))
        fg_tn_rows_t(m, n, K, rows, col, B, ldb, C, ldc);
    else if (rows)
        fg_walk(FG_TN_ROWS, m, n, K, NULL, col, rows, B, ldb, C, ldc, NULL);
    else if (n <= FG_TN1_MAXN && K >= FG_MR && fg_lanes(m) > fg_lanes(n) + 0.125)
        fg_tn_units(m, n, K, A, lda, B, ldb, C, ldc);
    else if (n < 4 * FG_NB && K >= FG_MR && fg_lanes(m) > fg_lanes(n) + 0.125)
        fg_tn_narrow(m, n, K, A, lda, B, ldb, C, ldc);
    else
        fg_walk(FG_TN, m, n, K, A, lda, NULL, B, ldb, C, ldc, NULL);
    return 1;
}

/* ---- a wide first layer of few units, its input packed once per fit ----
 *
 * Z (m, n) = X (m, K) @ W (K, n) with n far below FG_NB's multiples (20 units: vectors along n
 * fill 20 of 32 lanes) runs as Z^T = W^T X^T with the vectors along X's rows, full, reading X
 * from a copy transposed in panels of FG_NB rows (fg_pack_t), made once for every step of a fit
 * that takes the same X each time. */

#define FG_PACK_KC 64     /* fg_nn_packed: depth of a chunk (the panel's chunk stays in L1) */
#define FG_PACK_MAXN 32   /* fg_nn_packed: most columns of C (its tile on the stack) */

/* Whether fg_nn_packed fills more of its vectors with C's m rows than fg_nn does with its n columns. */
static inline int
fg_pack_pays(ptrdiff_t m, ptrdiff_t n)
{
    return n <= FG_PACK_MAXN && fg_lanes(m) > fg_lanes(n) + 0.125;
}

/* floats of fg_pack_t's copy of an (m, K) matrix */
static inline ptrdiff_t
fg_pack_size(ptrdiff_t m, ptrdiff_t K)
{
    return (m + FG_NB - 1) / FG_NB * FG_NB * K;
}

/* P[p][k][r] = A[p * FG_NB + r, k]: panels of FG_NB rows of A (m, K), each transposed (K, FG_NB),
 * rows past m zero. */
static inline void
fg_pack_t(ptrdiff_t m, ptrdiff_t K, const float *A, ptrdiff_t lda, float *P)
{
    ptrdiff_t p, k0, k, r, kw, i;
    for (p = 0; p * FG_NB < m; p++) {
        float *panel = P + p * K * FG_NB;
        for (k0 = 0; k0 < K; k0 += 64) {
            kw = K - k0 < 64 ? K - k0 : 64;
            for (r = 0; r < FG_NB; r++) {
                i = p * FG_NB + r;
                if (i < m) {
                    const float *a = A + i * lda + k0;
                    for (k = 0; k < kw; k++)
                        panel[(k0 + k) * FG_NB + r] = a[k];
                } else {
                    for (k = 0; k < kw; k++)
                        panel[(k0 + k) * FG_NB + r] = 0.0f;
                }
            }
        }
    }
}

#define FG_PACK_GROUP 4   /* fg_nn_packed: panels whose tiles stay on the stack while K is walked */

/* Rows i0 .. i1 - 1 of C (m, n) = A (m, K) @ B (K, n), n <= FG_PACK_MAXN, i0 a multiple of FG_VW,
 * A given as fg_pack_t's P.  The rows go in groups of up to FG_PACK_GROUP panels' shares, each
 * share's C^T block (n, FG_VW or FG_NB) in a tile of its own; K is walked in chunks of
 * FG_PACK_KC, and within a chunk every share of the group in turn, the units in blocks of FG_MR
 * against one or two vectors of its panel (each chunk starting from the tiles' values): B's
 * chunk is read from L1 by every share, and the group's panels are streamed side by side.  The
 * tiles are then stored transposed.  Each element is fma(b(k, u), a(i, k), acc) over k in order:
 * fg_nn's chain, the same bits. */
static inline void
fg_nn_packed(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t n, ptrdiff_t K, const float *P, const float *B,
             ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    float tile[FG_PACK_GROUP][FG_PACK_MAXN * FG_NB] __attribute__((aligned(64)));
    const fg_mask all = fg_tail(FG_VW);   /* the panels are whole: rows past m are zero */
    ptrdiff_t start[FG_PACK_GROUP], width[FG_PACK_GROUP];
    ptrdiff_t i, p, o, k0, kw, u, r;
    int g, shares, mr;
    for (i = i0; i < i1;) {
        for (shares = 0; shares < FG_PACK_GROUP && i < i1; shares++) {
            o = i % FG_NB;
            start[shares] = i;
            width[shares] = i1 - i < FG_NB - o ? i1 - i : FG_NB - o;
            i += width[shares];
        }
        for (k0 = 0; k0 < K; k0 += FG_PACK_KC) {
            kw = K - k0 < FG_PACK_KC ? K - k0 : FG_PACK_KC;
            for (g = 0; g < shares; g++) {
                p = start[g] / FG_NB;
                o = start[g] - p * FG_NB;
                for (u = 0; u < n; u += FG_MR) {
                    mr = (int)(n - u < FG_MR ? n - u : FG_MR);
                    fg_block_tn(mr, width[g] > FG_VW ? 2 : 1, kw, B + k0 * ldb + u, ldb, NULL,
                                P + (p * K + k0) * FG_NB + o, FG_NB, tile[g] + u * FG_NB, FG_NB, all, k0 > 0,
                                NULL);
                }
            }
        }
        for (g = 0; g < shares; g++)
            for (r = 0; r < width[g]; r++)
                for (u = 0; u < n; u++)
                    C[(start[g] + r) * ldc + u] = tile[g][u * FG_NB + r];
    }
}

/* C (m, n) = A (m, K) @ B (n, K)^T.  For each wide panel of C's columns (as fg_walk's), B's
 * rows are transposed FG_KC columns at a time into a (FG_KC, panel) block on the stack, and
 * the blocks of C add each K chunk's product to the previous ones' (the chunks depend on K
 * only, and a float accumulator stored and reloaded is the same number, so each element is
 * still one chain over k in order whatever splits C). */
static inline int
fg_nt(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
      ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    const ptrdiff_t nbw = FG_NVW * FG_VW;
    float panel[FG_KC * FG_NVW * FG_VW] __attribute__((aligned(64)));
    const float *rp[FG_MR_MAX];
    ptrdiff_t i, j, w, k0, kw, k, jj, r;
    int nv, mr, height;
    fg_mask tail;
    for (j = 0; j < n; j += nbw) {
        w = fg_wide_panel(n, j, &nv, &tail);
        height = fg_rows(nv);
        for (k0 = 0; k0 < K; k0 += FG_KC) {
            kw = K - k0 < FG_KC ? K - k0 : FG_KC;
            for (jj = 0; jj < w; jj++)
                for (k = 0; k < kw; k++)
                    panel[k * nbw + jj] = B[(j + jj) * ldb + k0 + k];
            for (i = 0; i < m; i += height) {
                mr = (int)(m - i < height ? m - i : height);
                for (r = 0; r < mr; r++)
                    rp[r] = A + (i + r) * lda + k0;
                fg_block_nn(mr, nv, kw, NULL, 0, rp, panel, nbw, C + i * ldc + j, ldc, tail, k0 > 0, NULL);
            }
        }
    }
    return 1;
}

#else /* neither AVX-512F nor AVX2 with FMA: the callers use BLAS */

#define FG_AVAILABLE 0

static inline int
fg_pack_pays(ptrdiff_t m, ptrdiff_t n)
{
    (void)m; (void)n;
    return 0;
}

static inline ptrdiff_t
fg_pack_size(ptrdiff_t m, ptrdiff_t K)
{
    (void)m; (void)K;
    return 0;
}

static inline void
fg_pack_t(ptrdiff_t m, ptrdiff_t K, const float *A, ptrdiff_t lda, float *P)
{
    (void)m; (void)K; (void)A; (void)lda; (void)P;
}

static inline void
fg_nn_packed(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t n, ptrdiff_t K, const float *P, const float *B,
             ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    (void)i0; (void)i1; (void)n; (void)K; (void)P; (void)B; (void)ldb; (void)C; (void)ldc;
}

static inline int
fg_nn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
      const float *const *rows, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    (void)m; (void)n; (void)K; (void)A; (void)lda; (void)rows; (void)B; (void)ldb; (void)C; (void)ldc;
    return 0;
}

static inline int
fg_nn_relu(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
           const float *const *rows, const float *B, ptrdiff_t ldb, const float *bias, float *C, ptrdiff_t ldc)
{
    (void)m; (void)n; (void)K; (void)A; (void)lda; (void)rows; (void)B; (void)ldb; (void)bias; (void)C; (void)ldc;
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
