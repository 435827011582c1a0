/* The optimisers' point functions, one formula each, in float (_f) and double (_d): mirrors of
 * decayed, ewa, _flush, gd_step, momentum_step, rmsprop_step and adam_step in
 * fusednet.kernels.reference.  _point.pxd's functions of the same names call them, and so do
 * the loops over the lanes of the population engine (_lanes.h).  Compiled with
 * -ffp-contract=off, each operation rounds on its own, as NumPy's do. */
#ifndef FUSEDNET_POINT_H
#define FUSEDNET_POINT_H

#include <float.h>
#include <math.h>

/* g + l2 w */
static inline float pt_decayed_f(float g, float w, float l2) { return g + l2 * w; }
static inline double pt_decayed_d(double g, double w, double l2) { return g + l2 * w; }

/* beta v + (1 - beta) x */
static inline float pt_ewa_f(float v, float x, float beta, float omb) { return beta * v + omb * x; }
static inline double pt_ewa_d(double v, double x, double beta, double omb) { return beta * v + omb * x; }

/* 0 below the smallest normal number, else x */
static inline float pt_flush_f(float x) { return fabsf(x) < FLT_MIN ? 0.0f : x; }
static inline double pt_flush_d(double x) { return fabs(x) < DBL_MIN ? 0.0 : x; }

/* w - lr g' */
static inline float pt_gd_step_f(float w, float gp, float lr) { return w - lr * gp; }
static inline double pt_gd_step_d(double w, double gp, double lr) { return w - lr * gp; }

/* w - lr (v / bc) */
static inline float pt_momentum_step_f(float w, float v, float lr, float bc) { return w - lr * (v / bc); }
static inline double pt_momentum_step_d(double w, double v, double lr, double bc) { return w - lr * (v / bc); }

/* w - lr g' / (sqrt(s) + eps) */
static inline float pt_rmsprop_step_f(float w, float gp, float s, float lr, float eps)
{
    return w - lr * gp / (sqrtf(s) + eps);
}
static inline double pt_rmsprop_step_d(double w, double gp, double s, double lr, double eps)
{
    return w - lr * gp / (sqrt(s) + eps);
}

/* w - lr (m / bc1) / (sqrt(v / bc2) + eps), each bias correction a product by its reciprocal: a
 * loop over the parameters divides once per element, not three times (the reciprocals are
 * the same for every element, computed once) */
static inline float pt_adam_step_f(float w, float m, float v, float lr, float bc1, float bc2, float eps)
{
    return w - lr * (m * (1.0f / bc1)) / (sqrtf(v * (1.0f / bc2)) + eps);
}
static inline double pt_adam_step_d(double w, double m, double v, double lr, double bc1, double bc2, double eps)
{
    return w - lr * (m * (1.0 / bc1)) / (sqrt(v * (1.0 / bc2)) + eps);
}

#endif
