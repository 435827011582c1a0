"""The benchmarks' textbook formulas compute what the kernels compute.

A ratio against the textbook means something only if both sides do the same
work: each course-style formula of ``fusednet._textbook`` is checked here
against the reference kernel it is timed beside (float64).
"""

import numpy as np
import pytest

from fusednet import _textbook as tb
from fusednet.kernels import _codes
from fusednet.kernels import reference as ref

RNG = np.random.default_rng(0)
M, N = 37, 11


def arrays(*shapes):
    return [RNG.standard_normal(s) for s in shapes]


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_forward(act):
    Z, b = arrays((M, N), N)
    A = np.empty_like(Z)
    ref.bias_act_forward(Z, b, _codes.ACTIVATIONS[act], 0.01, A, 1)
    np.testing.assert_allclose(tb.FORWARD[act](Z, b), A, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_backward(act):
    dA, Z = arrays((M, N), (M, N))
    A = np.empty_like(Z)
    ref.bias_act_forward(Z, np.zeros(N), _codes.ACTIVATIONS[act], 0.01, A, 1)
    dZ, db = np.empty_like(dA), np.empty(N)
    ref.act_backward(dA, A, _codes.ACTIVATIONS[act], 0.01, dZ, db, 1)
    tdZ, tdb = tb.BACKWARD[act](dA, A)
    np.testing.assert_allclose(tdZ, dZ, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(tdb, db, rtol=1e-12, atol=1e-14)


def test_softmax_cross_entropy_forward_and_backward():
    Z, b = arrays((M, N), N)
    Y = np.eye(N)[RNG.integers(0, N, M)]
    A = np.empty_like(Z)
    cost = ref.loss_forward(Z, b, Y, _codes.CCE, A, 1)
    tcost, tA = tb.softmax_cross_entropy(Z, b, Y)
    assert tcost == pytest.approx(cost, rel=1e-12)
    np.testing.assert_allclose(tA, A, rtol=1e-12)
    dZ, db = np.empty_like(A), np.empty(N)
    ref.loss_backward(A, Y, dZ, db, 1)
    tdZ, tdb = tb.softmax_cross_entropy_backward(A, Y)
    np.testing.assert_allclose(tdZ, dZ, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(tdb, db, rtol=1e-12, atol=1e-15)


def test_optimisers():
    w, g = arrays(1000, 1000)
    m, v = np.abs(arrays(1000, 1000))
    for name, args, kernel_args in [
        ("gd_update", (), (1e-2, 0.0, 0)),
        ("momentum_update", (m.copy(),), None),
        ("rmsprop_update", (v.copy(),), None),
    ]:
        w1, w2 = w.copy(), w.copy()
        s1 = [a.copy() for a in args]
        s2 = [a.copy() for a in args]
        getattr(tb, name)(w1, g, *s1)
        if name == "gd_update":
            ref.gd_update(w2, g, *kernel_args, 1)
        elif name == "momentum_update":
            ref.momentum_update(w2, g, *s2, 1e-2, 0.9, 1.0, 0.0, 0, 1)
        else:
            ref.rmsprop_update(w2, g, *s2, 1e-3, 0.9, 1e-8, 0.0, 0, 1)
        np.testing.assert_allclose(w1, w2, rtol=1e-12, err_msg=name)
        for a, b in zip(s1, s2):
            np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=name)
    w1, w2, m1, m2, v1, v2 = w.copy(), w.copy(), m.copy(), m.copy(), v.copy(), v.copy()
    tb.adam_update(w1, g, m1, v1, 10)
    ref.adam_update(w2, g, m2, v2, 1e-3, 0.9, 0.999, 1e-8, 1 - 0.9**10, 1 - 0.999**10, 0.0, 0, 1)
    for a, b in ((w1, w2), (m1, m2), (v1, v2)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    v1, v2 = v.copy(), v.copy()
    tb.ewa_update(v1, g)
    ref.ewa_update(v2, g, 0.9, 1)
    np.testing.assert_allclose(v1, v2, rtol=1e-12)


def test_batchnorm():
    Z, dout = arrays((M, N), (M, N))
    gamma, beta = RNG.uniform(0.5, 1.5, N), RNG.standard_normal(N)
    xhat, out = np.empty_like(Z), np.empty_like(Z)
    mean, var, invstd = np.empty(N), np.empty(N), np.empty(N)
    ref.batchnorm_forward_train(Z, gamma, beta, 1e-5, xhat, out, mean, var, invstd, 1)
    np.testing.assert_allclose(tb.batchnorm_forward(Z, gamma, beta), out, rtol=1e-12, atol=1e-14)
    inf = np.empty_like(Z)
    ref.batchnorm_forward_infer(Z, gamma, beta, mean, var, 1e-5, inf, 1)
    np.testing.assert_allclose(tb.batchnorm_forward_infer(Z, gamma, beta, mean, var), inf, rtol=1e-12, atol=1e-14)
    dZ, dgamma, dbeta = np.empty_like(Z), np.empty(N), np.empty(N)
    ref.batchnorm_backward(dout, xhat, gamma, invstd, dZ, dgamma, dbeta, 1)
    tdZ, tdgamma, tdbeta = tb.batchnorm_backward(dout, xhat, gamma, invstd)
    np.testing.assert_allclose(tdZ, dZ, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(tdgamma, dgamma, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(tdbeta, dbeta, rtol=1e-12, atol=1e-13)


def test_dropout_keeps_and_scales():
    A = np.ones((200, 50), np.float32)
    D = tb.dropout(A, 0.8, np.random.default_rng(0))
    kept = D != 0
    assert abs(kept.mean() - 0.8) < 0.01
    np.testing.assert_allclose(D[kept], 1 / 0.8, rtol=1e-6)
