/* exp, log, log1p, tanh and sigmoid in float and double, written so loops that call them vectorise.
 *
 * Each function is branch-free C: a range reduction, a polynomial (and at most one
 * division), a scaling by 2**n built in the exponent field, and selects for the special
 * values at the end.  gcc inlines them and vectorises the calling loop in every
 * instruction-set copy of the extension (SSE2, AVX2, AVX-512) under its flags
 * (-O3 -fno-trapping-math), where a libm call would stay one call per element, and
 * glibc's vector variants (libmvec) neither round like the scalar ones nor exist
 * outside glibc.  The polynomials use fused multiply-adds where the instruction set has
 * them (VM_FMA: x86-64-v3 and v4), plain products and sums elsewhere; with
 * -ffp-contract=off nothing else is fused, so a loop's vector body and its scalar
 * remainder give the same bits, and so do the copies that share an instruction set's FMA.
 *
 * Accuracy: the bound after each function is the largest error measured in ulp of the
 * exact value rounded to the type (below the smallest normal number, in units of the
 * subnormal spacing), over dense grids of the whole range, checked by
 * tests/kernels/test_vmath.py against NumPy in extended precision.  Outside the range
 * the results follow NumPy: exp gives inf above the overflow point, subnormal numbers
 * and then 0 below the underflow point; log gives -inf at 0, NaN below 0, inf at inf;
 * NaN propagates through every function.
 */
#ifndef FUSEDNET_VMATH_H
#define FUSEDNET_VMATH_H

#include <stdint.h>

/* ---- bit casts (gcc turns them into register moves, also in vector code) ---- */

static inline uint32_t vm_bits_f(float x) { uint32_t u; __builtin_memcpy(&u, &x, sizeof u); return u; }
static inline float vm_from_bits_f(uint32_t u) { float x; __builtin_memcpy(&x, &u, sizeof x); return x; }
static inline uint64_t vm_bits_d(double x) { uint64_t u; __builtin_memcpy(&u, &x, sizeof u); return u; }
static inline double vm_from_bits_d(uint64_t u) { double x; __builtin_memcpy(&x, &u, sizeof x); return x; }

#if defined(__FMA__)
#define VM_FMAF(a, b, c) __builtin_fmaf((a), (b), (c))
#define VM_FMA(a, b, c) __builtin_fma((a), (b), (c))
#else
#define VM_FMAF(a, b, c) ((a) * (b) + (c))
#define VM_FMA(a, b, c) ((a) * (b) + (c))
#endif

/* Adding these rounds a value below 2**22 (2**51) in magnitude to an integer k, held in the
 * low bits of the sum's mantissa: bits(sum) - bits(R) == k.  1.5 * 2**23 and 1.5 * 2**52. */
#define VM_ROUND_F 12582912.0f
#define VM_ROUND_D 6755399441055744.0

/* 2**k for an integer-valued k in [-126, 127] (float), [-1022, 1023] (double) */
static inline float vm_pow2i_f(float k)
{
    return vm_from_bits_f((vm_bits_f(k + VM_ROUND_F) - vm_bits_f(VM_ROUND_F) + 127u) << 23);
}

static inline double vm_pow2i_d(double k)
{
    return vm_from_bits_d((vm_bits_d(k + VM_ROUND_D) - vm_bits_d(VM_ROUND_D) + 1023u) << 52);
}

/* ---------------------------------------------------------------------------------------
 * exp: x = n ln2 + r, |r| <= ln2/2 (ln2 in two parts, the first with few enough bits that
 * n * part is exact), exp(r) by a polynomial, times 2**n as 2**n1 * 2**n2 (both normal
 * numbers), so a subnormal result rounds once.
 * ------------------------------------------------------------------------------------- */

/* exp(r) of the reduced argument r = x - n ln2, float (the polynomial of Cephes' expf) */
static inline float vm_expf_reduced(float x, float n)
{
    float r = VM_FMAF(n, -0.693359375f, x);             /* exact */
    r = VM_FMAF(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = VM_FMAF(p, r, 1.3981999507e-3f);
    p = VM_FMAF(p, r, 8.3334519073e-3f);
    p = VM_FMAF(p, r, 4.1665795894e-2f);
    p = VM_FMAF(p, r, 1.6666665459e-1f);
    p = VM_FMAF(p, r, 5.0000001201e-1f);
    return VM_FMAF(p, r * r, r) + 1.0f;
}

/* exp(r) of the reduced argument, double (Taylor polynomial of degree 13: truncation below
 * 1e-17, relative) */
static inline double vm_exp_reduced(double x, double n)
{
    double r = VM_FMA(n, -6.93145751953125e-1, x);      /* exact */
    r = VM_FMA(n, -1.42860682030941723212e-6, r);
    double p = 1.6059043836821613e-10;
    p = VM_FMA(p, r, 2.08767569878681e-09);
    p = VM_FMA(p, r, 2.505210838544172e-08);
    p = VM_FMA(p, r, 2.755731922398589e-07);
    p = VM_FMA(p, r, 2.7557319223985893e-06);
    p = VM_FMA(p, r, 2.48015873015873e-05);
    p = VM_FMA(p, r, 0.0001984126984126984);
    p = VM_FMA(p, r, 0.001388888888888889);
    p = VM_FMA(p, r, 0.008333333333333333);
    p = VM_FMA(p, r, 0.041666666666666664);
    p = VM_FMA(p, r, 0.16666666666666666);
    p = VM_FMA(p, r, 0.5);
    return VM_FMA(p, r * r, r) + 1.0;
}

/* exp(x), float: <= 1.5 ulp (subnormal results within 1 subnormal step). */
static inline float vm_expf(float x)
{
    const float hi = 88.72283935546875f;  /* the float above log(FLT_MAX): inf from here on */
    const float lo = -104.0f;             /* exp(-104) < 2**-150: 0 below */
    float xc = x < hi ? x : hi;           /* NaN goes to hi here and is restored at the end */
    xc = xc > lo ? xc : lo;
    float n = (xc * 1.44269504088896341f + VM_ROUND_F) - VM_ROUND_F;
    float p = vm_expf_reduced(xc, n);
    float n1 = (n * 0.5f + VM_ROUND_F) - VM_ROUND_F;
    float y = (p * vm_pow2i_f(n1)) * vm_pow2i_f(n - n1);
    y = x < hi ? y : __builtin_inff();
    y = x > lo ? y : 0.0f;
    return x == x ? y : x;
}

/* exp(x) of x <= 0, float, as vm_expf: one scaling, p * 2**(n + 64) (a normal number) then
 * times 2**-64, which rounds once also to a subnormal number.  NaN gives 0 (callers select). */
static inline float vm_expf_nonpos(float x)
{
    const float lo = -104.0f;
    float xc = x > lo ? x : lo;
    float t = xc * 1.44269504088896341f + (VM_ROUND_F + 64.0f);
    float p = vm_expf_reduced(xc, t - (VM_ROUND_F + 64.0f));
    float y = p * vm_from_bits_f((vm_bits_f(t) - vm_bits_f(VM_ROUND_F) + 127u) << 23) * 5.42101086e-20f;
    return x > lo ? y : 0.0f;
}

/* exp(x) of x in [0, 80], float: one scaling by 2**n (a normal number). */
static inline float vm_expf_small(float x)
{
    float t = x * 1.44269504088896341f + VM_ROUND_F;
    float p = vm_expf_reduced(x, t - VM_ROUND_F);
    return p * vm_from_bits_f((vm_bits_f(t) - vm_bits_f(VM_ROUND_F) + 127u) << 23);
}

/* exp(x), double: <= 1.5 ulp (subnormal results within 1 subnormal step). */
static inline double vm_exp(double x)
{
    const double hi = 709.782712893384;  /* the double above log(DBL_MAX): inf from here on */
    const double lo = -746.0;            /* exp(-746) < 2**-1075: 0 below */
    double xc = x < hi ? x : hi;
    xc = xc > lo ? xc : lo;
    double n = (xc * 1.4426950408889634074 + VM_ROUND_D) - VM_ROUND_D;
    double p = vm_exp_reduced(xc, n);
    double n1 = (n * 0.5 + VM_ROUND_D) - VM_ROUND_D;
    double y = (p * vm_pow2i_d(n1)) * vm_pow2i_d(n - n1);
    y = x < hi ? y : __builtin_inf();
    y = x > lo ? y : 0.0;
    return x == x ? y : x;
}

/* exp(x) of x <= 0, double, as vm_expf_nonpos. */
static inline double vm_exp_nonpos(double x)
{
    const double lo = -746.0;
    double xc = x > lo ? x : lo;
    double t = xc * 1.4426950408889634074 + (VM_ROUND_D + 64.0);
    double p = vm_exp_reduced(xc, t - (VM_ROUND_D + 64.0));
    double y = p * vm_from_bits_d((vm_bits_d(t) - vm_bits_d(VM_ROUND_D) + 1023u) << 52) * 5.421010862427522e-20;
    return x > lo ? y : 0.0;
}

/* exp(x) of x in [0, 700], double: one scaling by 2**n. */
static inline double vm_exp_small(double x)
{
    double t = x * 1.4426950408889634074 + VM_ROUND_D;
    double p = vm_exp_reduced(x, t - VM_ROUND_D);
    return p * vm_from_bits_d((vm_bits_d(t) - vm_bits_d(VM_ROUND_D) + 1023u) << 52);
}

/* ---------------------------------------------------------------------------------------
 * log: x = 2**k f with f in [sqrt(1/2), sqrt(2)) from the bits (subnormal x scaled into the
 * normal range first), log f = 2 atanh(s), s = (f - 1) / (f + 1), |s| <= 0.1716, by its odd
 * series, plus k ln2 in two parts.
 * ------------------------------------------------------------------------------------- */

/* log(x), float: <= 2 ulp. */
static inline float vm_logf(float x)
{
    int sub = x < 1.17549435e-38f;                      /* subnormal (or 0, negative, -inf) */
    float xs = sub ? x * 8388608.0f : x;                /* * 2**23 */
    uint32_t b = vm_bits_f(xs);
    /* the exponent field as a float: its bits under 2**23's, less 2**23 and the bias */
    float k = vm_from_bits_f((b >> 23) | 0x4B000000u) - (8388608.0f + 127.0f) - (sub ? 23.0f : 0.0f);
    float f = vm_from_bits_f((b & 0x007FFFFFu) | 0x3F800000u);
    int up = f > 1.41421356f;
    f = up ? 0.5f * f : f;
    k = up ? k + 1.0f : k;
    float t = f - 1.0f;                                 /* exact */
    float s = t / (2.0f + t);
    float s2 = s * s;
    float p = 0.11111111f;
    p = VM_FMAF(p, s2, 0.14285715f);
    p = VM_FMAF(p, s2, 0.2f);
    p = VM_FMAF(p, s2, 0.33333334f);
    float ts = s + s;
    float y = k * 0.693359375f + (k * -2.12194440e-4f + (ts + ts * (s2 * p)));
    y = x > 0.0f ? y : (x == 0.0f ? -__builtin_inff() : __builtin_nanf(""));
    y = x < __builtin_inff() ? y : x;                   /* inf stays inf, NaN stays NaN */
    return x == x ? y : x;
}

/* log(x), double: <= 2 ulp. */
static inline double vm_log(double x)
{
    int sub = x < 2.2250738585072014e-308;
    double xs = sub ? x * 4503599627370496.0 : x;       /* * 2**52 */
    uint64_t b = vm_bits_d(xs);
    double k = vm_from_bits_d((b >> 52) | 0x4330000000000000ull) - (4503599627370496.0 + 1023.0)
               - (sub ? 52.0 : 0.0);
    double f = vm_from_bits_d((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
    int up = f > 1.4142135623730951;
    f = up ? 0.5 * f : f;
    k = up ? k + 1.0 : k;
    double t = f - 1.0;
    double s = t / (2.0 + t);
    double s2 = s * s;
    double p = 0.04;
    p = VM_FMA(p, s2, 0.043478260869565216);
    p = VM_FMA(p, s2, 0.047619047619047616);
    p = VM_FMA(p, s2, 0.05263157894736842);
    p = VM_FMA(p, s2, 0.058823529411764705);
    p = VM_FMA(p, s2, 0.06666666666666667);
    p = VM_FMA(p, s2, 0.07692307692307693);
    p = VM_FMA(p, s2, 0.09090909090909091);
    p = VM_FMA(p, s2, 0.1111111111111111);
    p = VM_FMA(p, s2, 0.14285714285714285);
    p = VM_FMA(p, s2, 0.2);
    p = VM_FMA(p, s2, 0.3333333333333333);
    double ts = s + s;
    /* ln2 = 6.93147180369123816490e-01 (32 bits: k times it is exact) + 1.90821492927058770002e-10 */
    double y = k * 6.93147180369123816490e-01 + (k * 1.90821492927058770002e-10 + (ts + ts * (s2 * p)));
    y = x > 0.0 ? y : (x == 0.0 ? -__builtin_inf() : __builtin_nan(""));
    y = x < __builtin_inf() ? y : x;
    return x == x ? y : x;
}

/* log(1 + x): log(u) of u = 1 + x, plus the rounding of u, (x - (u - 1)) / u, to first order. */

/* log1p(x), float: <= 2.5 ulp. */
static inline float vm_log1pf(float x)
{
    float u = 1.0f + x;
    float c = (x - (u - 1.0f)) / u;
    float y = vm_logf(u) + (u > 0.0f ? c : 0.0f);     /* u = 0 (x = -1): -inf */
    y = u == 1.0f ? x : y;                              /* keeps -0 and tiny x exact */
    return x < __builtin_inff() ? y : x;                /* inf stays inf, NaN stays NaN */
}

/* log1p(x), double: <= 2.5 ulp. */
static inline double vm_log1p(double x)
{
    double u = 1.0 + x;
    double c = (x - (u - 1.0)) / u;
    double y = vm_log(u) + (u > 0.0 ? c : 0.0);
    y = u == 1.0 ? x : y;
    return x < __builtin_inf() ? y : x;
}

/* ---------------------------------------------------------------------------------------
 * tanh, computed on |x| and given x's sign at the end (so tanh(-0) is -0): up to
 * |x| = 0.625 |x| + |x| x**2 P(x**2), above 1 - 2 / (exp(2|x|) + 1), the argument of exp
 * capped at 20 (tanh is 1 there in either type).
 * ------------------------------------------------------------------------------------- */

/* tanh(x), float: <= 1.5 ulp. */
static inline float vm_tanhf(float x)
{
    float ax = __builtin_fabsf(x);
    float z = ax * ax;
    /* Cephes' tanhf below 0.625 */
    float p = -5.70498872745e-3f;
    p = VM_FMAF(p, z, 2.06390887954e-2f);
    p = VM_FMAF(p, z, -5.37397155531e-2f);
    p = VM_FMAF(p, z, 1.33314422036e-1f);
    p = VM_FMAF(p, z, -3.33332819422e-1f);
    float small = ax + ax * (z * p);
    float e = vm_expf_small(2.0f * (ax < 20.0f ? ax : 20.0f));
    float big = 1.0f - 2.0f / (e + 1.0f);
    float y = ax > 0.625f ? big : small;                /* NaN: small, NaN */
    return vm_from_bits_f(vm_bits_f(y) | (vm_bits_f(x) & 0x80000000u));
}

/* tanh(x), double: <= 1.5 ulp.  Cephes' tanh, as a + num / den with the branch chosen before
 * its one division: |x| + |x| s P(s) / Q(s) (s = x**2) below 0.625, 1 - 2 / (e + 1) above. */
static inline double vm_tanh(double x)
{
    double ax = __builtin_fabs(x);
    double s = ax * ax;
    double ps = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s - 1.61468768441708447952e3;
    double qs = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s + 4.84406305325125486048e3;
    double e = vm_exp_small(2.0 * (ax < 20.0 ? ax : 20.0));
    int big = ax > 0.625;                               /* NaN: the small branch, NaN */
    double a = big ? 1.0 : ax;
    double num = big ? -2.0 : ax * s * ps;
    double den = big ? e + 1.0 : qs;
    double y = a + num / den;
    return vm_from_bits_d(vm_bits_d(y) | (vm_bits_d(x) & 0x8000000000000000ull));
}

/* ---------------------------------------------------------------------------------------
 * sigmoid 1 / (1 + exp(-z)) written on e = exp(-|z|), which never overflows: 1 / (1 + e)
 * for z >= 0, e / (1 + e) below, so a tiny result keeps its relative precision down to the
 * subnormal numbers (1 / (1 + exp(-z)) gives 0 once exp(-z) overflows).
 * ------------------------------------------------------------------------------------- */

/* sigmoid(z), float: <= 2.5 ulp (subnormal results within 1 subnormal step). */
static inline float vm_sigmoidf(float z)
{
    float e = vm_expf_nonpos(-__builtin_fabsf(z));
    float y = (z >= 0.0f ? 1.0f : e) / (1.0f + e);
    return z == z ? y : z;
}

/* sigmoid(z), double: <= 2.5 ulp (subnormal results within 1 subnormal step). */
static inline double vm_sigmoid(double z)
{
    double e = vm_exp_nonpos(-__builtin_fabs(z));
    double y = (z >= 0.0 ? 1.0 : e) / (1.0 + e);
    return z == z ? y : z;
}

/* ---------------------------------------------------------------------------------------
 * The binary cross-entropy -(y log a + (1 - y) log(1 - a)) of a = sigmoid(d), written on the
 * logit d: max(d, 0) - d y + log1p(exp(-|d|)), which never overflows.
 * ------------------------------------------------------------------------------------- */

static inline double vm_bce_logit(double d, double y)
{
    return (d > 0 ? d : 0.0) - d * y + vm_log1p(vm_exp_nonpos(-__builtin_fabs(d)));
}

/* The same in float: its exp(-|d|) is vm_sigmoidf's, which a loop computing both shares. */
static inline float vm_bce_logitf(float d, float y)
{
    return (d > 0.0f ? d : 0.0f) - d * y + vm_log1pf(vm_expf_nonpos(-__builtin_fabsf(d)));
}

#endif
