"""The Cython backend: the compiled extension behind the reference contract.

The raw kernels here have the positional signatures of
:mod:`fusednet.kernels.reference` and check nothing.  Each call picks the
float32 or float64 specialisation of the fused-type Cython function by the
dtype of its output (the specialisations are looked up once, at import, so no
fused-type dispatch runs per call).

The extension is built once per instruction-set level: ``_ckernels``
(baseline x86-64, always present), ``_ckernels_avx2`` (x86-64-v3) and
``_ckernels_avx512`` (x86-64-v4).  This module imports the best one the CPU
runs; :data:`ISA` names it.  Importing this module raises ImportError when the
extension was not built.
"""

import importlib

import numpy as np

from . import _ckernels as _baseline
from . import _policy

#: extension modules by instruction-set level, best first
_LEVELS = ((4, "_ckernels_avx512"), (3, "_ckernels_avx2"), (0, "_ckernels"))


def _variants():
    """The built extension modules this CPU runs, best first."""
    cpu = _baseline.cpu_level()
    found = []
    for level, name in _LEVELS:
        if level > cpu:
            continue
        try:
            found.append(importlib.import_module(f"{__package__}.{name}"))
        except ImportError:  # that level was not built here
            continue
    return found


#: every importable copy of the extension (the tests compare them), best first
VARIANTS = tuple(_variants())
_ck = VARIANTS[0]

#: the instruction-set level the kernels run with ("x86-64-v4", "x86-64-v3", "x86-64")
ISA = _ck.ISA
#: whether the extension was compiled with OpenMP
OPENMP = _ck.OPENMP
#: whether the fused step's float32 products run on the extension's own kernels (the AVX2 and AVX-512 copies)
FUSED_GEMM = getattr(_ck, "FUSED_GEMM", False)
#: OpenMP's thread limit in this process
max_threads = _ck.max_threads
#: element counts from which each kernel family uses more than one thread
_ck.set_parallel_thresholds(**_policy.CYTHON_PARALLEL)
PARALLEL_THRESHOLDS = _ck.parallel_thresholds()
#: below this many elements every kernel runs on the calling thread
SERIAL_THRESHOLD = min(PARALLEL_THRESHOLDS.values())

_F32 = np.dtype(np.float32)


def _pair(name):
    fused = getattr(_ck, name)
    return fused["float"], fused["double"]


_bias_act_forward = _pair("bias_act_forward")
_act_backward = _pair("act_backward")
_loss_forward = _pair("loss_forward")
_loss_backward = _pair("loss_backward")
_dropout_apply = _pair("dropout_apply")
_gd_update = _pair("gd_update")
_momentum_update = _pair("momentum_update")
_rmsprop_update = _pair("rmsprop_update")
_adam_update = _pair("adam_update")
_bn_train = _pair("batchnorm_forward_train")
_bn_infer = _pair("batchnorm_forward_infer")
_bn_backward = _pair("batchnorm_backward")
_ewa_update = _pair("ewa_update")


def _flat(x):
    """A 1-D view of a C-contiguous array (the kernels index flat buffers)."""
    return x if x.ndim == 1 else x.reshape(-1)


def bias_act_forward(Z, b, act, slope, A, n_threads):
    _bias_act_forward[A.dtype != _F32](Z, b, act, slope, A, n_threads)


def act_backward(dA, A, act, slope, dZ, db, n_threads):
    _act_backward[dZ.dtype != _F32](dA, A, act, slope, dZ, db, n_threads)


def loss_forward(Z, b, Y, loss, A, n_threads):
    return _loss_forward[A.dtype != _F32](Z, b, Y, loss, A, n_threads)


def loss_backward(A, Y, dZ, db, n_threads):
    _loss_backward[dZ.dtype != _F32](A, Y, dZ, db, n_threads)


def dropout_apply(X, key, threshold, scale, out, n_threads):
    _dropout_apply[out.dtype != _F32](_flat(X), key, threshold, scale, _flat(out), n_threads)


def gd_update(w, g, lr, l2, n_decay, n_threads):
    _gd_update[w.dtype != _F32](_flat(w), _flat(g), lr, l2, n_decay, n_threads)


def momentum_update(w, g, v, lr, beta, bc, l2, n_decay, n_threads):
    _momentum_update[w.dtype != _F32](_flat(w), _flat(g), _flat(v), lr, beta, bc, l2, n_decay, n_threads)


def rmsprop_update(w, g, s, lr, beta, eps, l2, n_decay, n_threads):
    _rmsprop_update[w.dtype != _F32](_flat(w), _flat(g), _flat(s), lr, beta, eps, l2, n_decay, n_threads)


def adam_update(w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, n_threads):
    _adam_update[w.dtype != _F32](
        _flat(w), _flat(g), _flat(m), _flat(v), lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, n_threads
    )


def batchnorm_forward_train(Z, gamma, beta, eps, xhat, out, mean, var, invstd, n_threads):
    _bn_train[out.dtype != _F32](Z, gamma, beta, eps, xhat, out, mean, var, invstd, n_threads)


def batchnorm_forward_infer(Z, gamma, beta, running_mean, running_var, eps, out, n_threads):
    _bn_infer[out.dtype != _F32](Z, gamma, beta, running_mean, running_var, eps, out, n_threads)


def batchnorm_backward(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_threads):
    _bn_backward[dZ.dtype != _F32](dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_threads)


def ewa_update(v, x, beta, n_threads):
    _ewa_update[v.dtype != _F32](_flat(v), _flat(x), beta, n_threads)
