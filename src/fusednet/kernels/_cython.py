"""The Cython backend: the compiled extension ``_ckernels`` behind the reference contract.

Importing this module raises ImportError when the extension was not built.
Each kernel picks the float32 or float64 specialisation of the fused-type
Cython function once per call by dtype (no fused-type dispatch at run time).
"""

import numpy as np

from . import _ckernels as _ck

OPENMP = _ck.OPENMP
SERIAL_THRESHOLD = _ck.SERIAL_THRESHOLD
max_threads = _ck.max_threads

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _specialised(name):
    fused = getattr(_ck, name)
    return {_F32: fused["float"], _F64: fused["double"]}


_bias_act_forward = _specialised("bias_act_forward")
_act_backward = _specialised("act_backward")
_loss_forward = _specialised("loss_forward")
_loss_backward = _specialised("loss_backward")
_dropout_apply = _specialised("dropout_apply")
_gd_update = _specialised("gd_update")
_momentum_update = _specialised("momentum_update")
_rmsprop_update = _specialised("rmsprop_update")
_adam_update = _specialised("adam_update")
_bn_train = _specialised("batchnorm_forward_train")
_bn_infer = _specialised("batchnorm_forward_infer")
_bn_backward = _specialised("batchnorm_backward")
_ewa_update = _specialised("ewa_update")


def bias_act_forward(Z, b, act, slope, A, n_threads):
    _bias_act_forward[A.dtype](Z, b, act, slope, A, n_threads)


def act_backward(dA, A, act, slope, dZ, db, n_threads):
    _act_backward[dZ.dtype](dA, A, act, slope, dZ, db, n_threads)


def loss_forward(Z, b, Y, loss, A, n_threads):
    return _loss_forward[A.dtype](Z, b, Y, loss, A, n_threads)


def loss_backward(A, Y, dZ, db, n_threads):
    _loss_backward[dZ.dtype](A, Y, dZ, db, n_threads)


def dropout_apply(X, key, threshold, scale, out, n_threads):
    _dropout_apply[out.dtype](X.reshape(-1), key, threshold, scale, out.reshape(-1), n_threads)


def gd_update(w, g, lr, l2, n_decay, n_threads):
    _gd_update[w.dtype](w, g, lr, l2, n_decay, n_threads)


def momentum_update(w, g, v, lr, beta, bc, l2, n_decay, n_threads):
    _momentum_update[w.dtype](w, g, v, lr, beta, bc, l2, n_decay, n_threads)


def rmsprop_update(w, g, s, lr, beta, eps, l2, n_decay, n_threads):
    _rmsprop_update[w.dtype](w, g, s, lr, beta, eps, l2, n_decay, n_threads)


def adam_update(w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, n_threads):
    _adam_update[w.dtype](w, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, n_decay, n_threads)


def batchnorm_forward_train(Z, gamma, beta, eps, xhat, out, mean, var, invstd, n_threads):
    _bn_train[out.dtype](Z, gamma, beta, eps, xhat, out, mean, var, invstd, n_threads)


def batchnorm_forward_infer(Z, gamma, beta, running_mean, running_var, eps, out, n_threads):
    _bn_infer[out.dtype](Z, gamma, beta, running_mean, running_var, eps, out, n_threads)


def batchnorm_backward(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_threads):
    _bn_backward[dZ.dtype](dout, xhat, gamma, invstd, dZ, dgamma, dbeta, n_threads)


def ewa_update(v, x, beta, n_threads):
    _ewa_update[v.dtype](v.reshape(-1), x.reshape(-1), beta, n_threads)
