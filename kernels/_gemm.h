/* Single-precision matrix products for the fused training step, in AVX-512.
 *
 *   fg_nn:  C (m, n) = A (m, K) @ B (K, n)      forward:  Z[:, J] = A_prev @ W[:, J]
 *   fg_tn:  C (m, n) = A (K, m)^T @ B (K, n)    backward: dW[J, :] = A_prev[:, J]^T @ dZ
 *
 * All row-major with leading dimensions; C is overwritten.  The shapes of one
 * training step are small (at most 128 batch rows), so the operands stay in L2
 * and neither is packed: a micro-kernel keeps an (8, 32) block of C in sixteen
 * registers, and for every k broadcasts eight elements of A against two vectors
 * of B's row k.  The widest forward products run 15-25 % faster than OpenBLAS's
 * sgemm on one thread of an AVX-512 core (benchmarks/test_bench_kernels.py).
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

#if defined(__AVX512F__)
#include <immintrin.h>

#define FG_AVAILABLE 1
#define FG_MR 8          /* rows of C per micro-kernel */
#define FG_NB 32         /* columns of C per micro-kernel (two vectors) */
#define FG_MAX_K 4096    /* fg_nn keeps a (K, 32) panel of B in L2; longer K goes to BLAS */

/* C[0:MR, 0:16*NV] = sum_k a(r, k) * B[k, 0:16*NV], the last vector masked by `tail`.
 * a(r, k) is rows[r][k] when ROWS (fg_nn), else a[k * lda + r] (fg_tn). */
static inline __attribute__((always_inline)) void
fg_block(const int MR, const int NV, const int ROWS, ptrdiff_t K, const float *a, ptrdiff_t lda,
         const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc, __mmask16 tail)
{
    __m512 acc[FG_MR][2], bv[2];
    const float *row[FG_MR];
    ptrdiff_t k;
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        row[r] = a + r * (ROWS ? lda : 1);
        acc[r][0] = _mm512_setzero_ps();
        acc[r][1] = _mm512_setzero_ps();
    }
    for (k = 0; k < K; k++) {
        const float *bk = b + k * ldb;
        if (NV == 1) {
            bv[0] = _mm512_maskz_loadu_ps(tail, bk);
        } else {
            bv[0] = _mm512_loadu_ps(bk);
            bv[1] = _mm512_maskz_loadu_ps(tail, bk + 16);
        }
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512 x = _mm512_set1_ps(ROWS ? row[r][k] : row[r][k * lda]);
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
#define FG_CASE(MR, ROWS)                                                                 \
    case MR:                                                                              \
        if (nv == 1)                                                                      \
            fg_block(MR, 1, ROWS, K, a, lda, b, ldb, c, ldc, tail);                       \
        else                                                                              \
            fg_block(MR, 2, ROWS, K, a, lda, b, ldb, c, ldc, tail);                       \
        break;

#define FG_DISPATCH(ROWS)                                                                 \
    switch (mr) {                                                                         \
        FG_CASE(1, ROWS) FG_CASE(2, ROWS) FG_CASE(3, ROWS) FG_CASE(4, ROWS)               \
        FG_CASE(5, ROWS) FG_CASE(6, ROWS) FG_CASE(7, ROWS) FG_CASE(8, ROWS)               \
    }

static void
fg_block_nn(int mr, int nv, ptrdiff_t K, const float *a, ptrdiff_t lda, const float *b,
            ptrdiff_t ldb, float *c, ptrdiff_t ldc, __mmask16 tail)
{
    FG_DISPATCH(1)
}

static void
fg_block_tn(int mr, int nv, ptrdiff_t K, const float *a, ptrdiff_t lda, const float *b,
            ptrdiff_t ldb, float *c, ptrdiff_t ldc, __mmask16 tail)
{
    FG_DISPATCH(0)
}

#undef FG_DISPATCH
#undef FG_CASE

/* Walk C in column panels of FG_NB (B's panel stays in cache) and, inside a
 * panel, in blocks of FG_MR rows; the last panel masks its last vector. */
static inline void
fg_walk(int trans, ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda,
        const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    ptrdiff_t i, j, w;
    int nv, mr;
    __mmask16 tail;
    for (j = 0; j < n; j += FG_NB) {
        w = n - j < FG_NB ? n - j : FG_NB;
        nv = w > 16 ? 2 : 1;
        tail = (__mmask16)(w % 16 ? (1u << (w % 16)) - 1 : 0xFFFFu);
        for (i = 0; i < m; i += FG_MR) {
            mr = (int)(m - i < FG_MR ? m - i : FG_MR);
            if (trans)
                fg_block_tn(mr, nv, K, A + i, lda, B + j, ldb, C + i * ldc + j, ldc, tail);
            else
                fg_block_nn(mr, nv, K, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc, tail);
        }
    }
}

/* C (m, n) = A (m, K) @ B (K, n); 0 if the shape is left to BLAS (K > FG_MAX_K). */
static inline int
fg_nn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
      ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    if (K > FG_MAX_K)
        return 0;
    fg_walk(0, m, n, K, A, lda, B, ldb, C, ldc);
    return 1;
}

/* C (m, n) = A (K, m)^T @ B (K, n). */
static inline int
fg_tn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
      ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    fg_walk(1, m, n, K, A, lda, B, ldb, C, ldc);
    return 1;
}

#else /* no AVX-512F: the callers use BLAS */

#define FG_AVAILABLE 0

static inline int
fg_nn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
      ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    (void)m; (void)n; (void)K; (void)A; (void)lda; (void)B; (void)ldb; (void)C; (void)ldc;
    return 0;
}

static inline int
fg_tn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *A, ptrdiff_t lda, const float *B,
      ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    (void)m; (void)n; (void)K; (void)A; (void)lda; (void)B; (void)ldb; (void)C; (void)ldc;
    return 0;
}

#endif
#endif
