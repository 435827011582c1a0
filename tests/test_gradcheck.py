"""Gradient checking: passes on correct backprop, names the parameter of a planted bug."""

import numpy as np
import pytest

import fusednet as fn

HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "linear"]
OUTPUTS = {"sigmoid": 1, "softmax": 4, "linear": 3}


def data(m=24, n=5, out="softmax", k=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n))
    if out == "softmax":
        y = rng.integers(0, k, m)
    elif out == "sigmoid":
        y = rng.integers(0, 2, m)
    else:
        y = rng.standard_normal((m, k))
    return X, y


def net(hidden="tanh", out="softmax", k=4, l2=0.0, bn=False, dropout=False, dtype="float64", use_bias=True):
    layers = [fn.layers.Dense(6, activation=hidden, use_bias=use_bias)]
    if dropout:
        layers.append(fn.layers.Dropout(0.7))
    if bn:
        layers += [fn.layers.Dense(5, use_bias=False), fn.layers.BatchNorm(), fn.layers.Activation(hidden)]
    layers.append(fn.layers.Dense(k, activation=out))
    return fn.Sequential(layers, input_dim=5, l2=l2, dtype=dtype, seed=1)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("out", list(OUTPUTS))
def test_passes_for_every_activation_and_loss(hidden, out):
    k = OUTPUTS[out]
    X, y = data(out=out, k=k)
    g = fn.gradcheck(net(hidden, out, k), X, y)
    assert g.verdict in ("great", "ok"), g
    assert g.n_checked == sum(a.size for _, a in net(hidden, out, k).parameters())


@pytest.mark.parametrize("l2", [0.0, 0.7])
def test_passes_with_dropout_batchnorm_and_l2(l2):
    X, y = data()
    g = fn.gradcheck(net("relu", l2=l2, bn=True, dropout=True), X, y)
    assert g.verdict in ("great", "ok"), g


def test_float32_model_is_checked_in_float64_and_left_unchanged():
    X, y = data()
    model = net(dtype="float32", bn=True)
    before = [a.copy() for _, a in model.parameters()]
    g = fn.gradcheck(model, X.astype(np.float32), y)
    assert g.verdict in ("great", "ok"), g
    assert g.numeric.dtype == np.float64
    for (_, a), b in zip(model.parameters(), before):
        np.testing.assert_array_equal(a, b)
    assert model.dtype == np.float32


def test_batched_equals_naive_loop():
    X, y = data(m=16)
    model = net("tanh", l2=0.3, bn=True)
    batched = fn.gradcheck(model, X, y)
    naive = fn.gradcheck(model, X, y, method="naive")
    np.testing.assert_allclose(batched.numeric, naive.numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(batched.analytic, naive.analytic)


def _planted(model, name, change):
    """Wrap the model's loss_and_grads so one gradient is wrong, as a buggy backward would be."""
    original = model.loss_and_grads

    def buggy(X, y):
        J, grads = original(X, y)
        return J, [(n, change(g.copy()) if n == name else g) for n, g in grads]

    model.loss_and_grads = buggy
    return model


def _scale(g):
    return g * 2


def _flip(g):
    return -g


def _bias_off(g):
    g.reshape(-1)[0] += 1e-3
    return g


@pytest.mark.parametrize(
    "name, change",
    [("dense_0.W", _scale), ("dense_1.W", _flip), ("dense_1.b", _bias_off), ("dense_0.b", _flip)],
)
def test_planted_bug_is_wrong_and_named_first(name, change):
    X, y = data()
    model = _planted(net("tanh", l2=0.1), name, change)
    g = fn.gradcheck(model, X, y)
    assert g.verdict == "wrong", g
    assert g.worst[0][0] == name


def test_sample_checks_a_subset():
    X, y = data()
    g = fn.gradcheck(net(), X, y, sample=20, seed=3)
    assert g.n_checked == 20 and g.verdict in ("great", "ok")
    again = fn.gradcheck(net(), X, y, sample=20, seed=3)
    assert g.names == again.names and g.indices == again.indices


def test_worst_entries_index_into_parameters():
    X, y = data()
    model = net()
    g = fn.gradcheck(model, X, y, top=3)
    _, grads = model.loss_and_grads(X, y)
    gd = dict(grads)
    assert len(g.worst) == 3
    for name, index, numeric, analytic in g.worst:
        assert gd[name][index] == analytic
    diffs = [abs(n - a) for _, _, n, a in g.worst]
    assert diffs == sorted(diffs, reverse=True)


def test_verdict_thresholds():
    from fusednet.gradcheck import verdict_of

    assert [verdict_of(v) for v in (1e-8, 1e-6, 1e-4, 1e-2, np.nan)] == ["great", "ok", "worry", "wrong", "wrong"]


@pytest.mark.parametrize("kw", [{"eps": 0}, {"eps": -1e-7}, {"sample": 0}, {"method": "fast"}])
def test_bad_arguments(kw):
    X, y = data()
    with pytest.raises(ValueError):
        fn.gradcheck(net(), X, y, **kw)
