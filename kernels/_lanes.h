/* Lane primitives of the population engine by lanes (_lanes.pxi): LN_GROUP models side by side,
 * one per lane, in GCC's vector extensions so that a row's running values stay in registers
 * (a loop over the lanes of a local array goes through memory at every step).  Without FMA
 * contraction (-ffp-contract=off) each operation rounds as the point functions' do. */
#ifndef FUSEDNET_LANES_H
#define FUSEDNET_LANES_H

#include <stdint.h>
#include <Python.h>
#include "_vmath.h"
#include "_point.h"

#define LN_GROUP 16
/* examples per block primitive (ln_*_block) */
#define LN_EB 8

/* every loop over the lanes: vectorised whole (a constant trip count would have gcc unroll it
 * into scalar code first) */
#define LN_LANES _Pragma("GCC unroll 1") _Pragma("GCC ivdep") for (int q = 0; q < LN_GROUP; q++)

/* rows of the per-lane update constants (LN_C_ROWS rows of LN_GROUP values, in the dtype) */
enum { LN_C_LR, LN_C_B1, LN_C_1MB1, LN_C_B2, LN_C_1MB2, LN_C_EPS, LN_C_BC1, LN_C_BC2, LN_C_L2, LN_C_ROWS };
/* optimiser codes (fusednet.kernels._codes) */
enum { LN_OPT_GD, LN_OPT_MOMENTUM, LN_OPT_RMSPROP, LN_OPT_ADAM };

typedef float ln_vf __attribute__((vector_size(LN_GROUP * sizeof(float))));
typedef int32_t ln_mf __attribute__((vector_size(LN_GROUP * sizeof(int32_t))));
typedef double ln_vd __attribute__((vector_size(LN_GROUP * sizeof(double))));
typedef int64_t ln_md __attribute__((vector_size(LN_GROUP * sizeof(int64_t))));

#define LN_T float
#define LN_V ln_vf
#define LN_M ln_mf
#define LN_S f
#define LN_SIGMOID vm_sigmoidf
#define LN_BCE vm_bce_logitf
#define LN_PT(name) pt_##name##_f
#define LN_TANH vm_tanhf
#include "_lanes_t.h"

#define LN_T double
#define LN_V ln_vd
#define LN_M ln_md
#define LN_S d
#define LN_SIGMOID vm_sigmoid
#define LN_BCE vm_bce_logit
#define LN_PT(name) pt_##name##_d
#define LN_TANH vm_tanh
#include "_lanes_t.h"

#endif
