"""Every column sum of the kernels is accumulated in float64, on every backend.

``db = sum(dZ)`` over 1e5 float32 rows added in float32 drifts by about 7e-4
(relative); accumulated in float64 and rounded once it is within an ulp or two
(1.6e-7).  The sums: the bias gradients of the activation and loss backward,
batch norm's ``dbeta``/``dgamma`` and its batch statistics.  The truth is the
float64 sum of the very summands the kernel formed (``dZ`` as returned, the
products ``dout * xhat`` in float32).
"""

import numpy as np
import pytest

import fusednet.kernels as K

BACKENDS = K.available()
ROWS = 100_000
COLS = 16
#: relative error of a float32 column sum against its float64 truth
RTOL = 1e-6


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 1.5, (ROWS, COLS)).astype(np.float32)


def _assert_sum(got, summands, what):
    truth = summands.astype(np.float64).sum(axis=0)
    err = np.max(np.abs(got.astype(np.float64) - truth) / np.abs(truth))
    assert err < RTOL, f"{what}: relative error {err:.2g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["linear", "sigmoid", "tanh", "relu"])
def test_float32_bias_gradient_of_activation_backward_sums_in_float64(activation, backend):
    dA = _data(0)
    A = (_data(1) - 1.0).astype(np.float32) if activation != "sigmoid" else _data(1) / 2
    dZ, db = K.act_backward(dA, A, activation, backend=backend)
    _assert_sum(db, dZ, f"{backend} {activation} db")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_bias_gradient_of_loss_backward_sums_in_float64(backend):
    A, Y = _data(0), np.zeros((ROWS, COLS), np.float32)
    dZ, db = K.loss_backward(A, Y, backend=backend)
    _assert_sum(db, dZ, f"{backend} loss db")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_batchnorm_backward_sums_in_float64(backend):
    dout, xhat = _data(0), _data(1)
    ones = np.ones(COLS, np.float32)
    dZ = np.empty_like(dout)
    dgamma, dbeta = np.empty(COLS, np.float32), np.empty(COLS, np.float32)
    K.resolve("batchnorm_backward", backend)(dout, xhat, ones, ones, dZ, dgamma, dbeta, 1)
    _assert_sum(dbeta, dout, f"{backend} dbeta")
    _assert_sum(dgamma, dout * xhat, f"{backend} dgamma")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_batchnorm_statistics_sum_in_float64(backend):
    Z = _data(0)
    ones, zeros = np.ones(COLS, np.float32), np.zeros(COLS, np.float32)
    xhat, out = np.empty_like(Z), np.empty_like(Z)
    mean, var, invstd = (np.empty(COLS, np.float32) for _ in range(3))
    K.resolve("batchnorm_forward_train", backend)(Z, ones, zeros, 1e-5, xhat, out, mean, var, invstd, 1)
    Z64 = Z.astype(np.float64)
    np.testing.assert_allclose(mean, Z64.mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(var, Z64.var(axis=0), rtol=RTOL)
