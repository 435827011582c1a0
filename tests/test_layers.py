"""Layer specs: arguments, initialisers, and each layer's forward against the course formulas."""

import math

import numpy as np
import pytest

from fusednet.kernels import _codes, reference
from fusednet.layers import INITS, Activation, BatchNorm, Dense, Dropout, Layer, init_scale
from fusednet.model import Sequential

ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "softmax", "linear", None]


# ---- argument checks ---------------------------------------------------------------


@pytest.mark.parametrize("act", ACTS)
def test_dense_accepts_every_activation(act):
    layer = Dense(3, activation=act)
    assert layer.units == 3
    assert layer.act == _codes.ACTIVATIONS[act or "linear"]


@pytest.mark.parametrize("bad", ["gelu", "ReLU", "swish", 3])
def test_unknown_activation_lists_the_known_ones(bad):
    with pytest.raises((ValueError, TypeError)) as err:
        Dense(3, activation=bad)
    for name in ("sigmoid", "tanh", "relu", "leaky_relu", "softmax", "linear"):
        assert name in str(err.value)
    with pytest.raises((ValueError, TypeError)):
        Activation(bad)


@pytest.mark.parametrize("units", [0, -1, 2.5, True, "3"])
def test_dense_units_must_be_positive_int(units):
    with pytest.raises(ValueError):
        Dense(units)


@pytest.mark.parametrize("init", ["uniform", "He", None])
def test_dense_unknown_init(init):
    with pytest.raises(ValueError, match="init"):
        Dense(3, init=init)


@pytest.mark.parametrize("slope", [-0.1, 1.0, float("nan"), 2])
def test_leaky_slope_range(slope):
    with pytest.raises(ValueError, match="leaky_slope"):
        Dense(3, "leaky_relu", leaky_slope=slope)
    with pytest.raises(ValueError, match="leaky_slope"):
        Activation("leaky_relu", leaky_slope=slope)


@pytest.mark.parametrize("kp", [0.0, -0.5, 1.0001, 2, float("nan"), float("inf")])
def test_dropout_keep_prob_outside_0_1(kp):
    with pytest.raises(ValueError, match="keep_prob"):
        Dropout(kp)


@pytest.mark.parametrize("kp", [1e-3, 0.5, 0.8, 1.0, 1])
def test_dropout_keep_prob_ok(kp):
    assert Dropout(kp).keep_prob == float(kp)


@pytest.mark.parametrize("kwargs", [{"momentum": 1.0}, {"momentum": -0.1}, {"eps": 0.0}, {"eps": -1e-5}])
def test_batchnorm_arguments(kwargs):
    with pytest.raises(ValueError):
        BatchNorm(**kwargs)


@pytest.mark.parametrize(
    "layer",
    [
        Dense(5, "relu", init="he", use_bias=False, leaky_slope=0.2),
        Dense(2),
        Activation("tanh"),
        Activation("leaky_relu", leaky_slope=0.3),
        Dropout(0.7),
        BatchNorm(momentum=0.99, eps=1e-3),
    ],
)
def test_config_round_trip(layer):
    cfg = layer.get_config()
    twin = Layer.from_config(cfg)
    assert type(twin) is type(layer)
    assert twin.get_config() == cfg


# ---- initialisers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "init, act, expected",
    [
        ("zeros", _codes.RELU, 0.0),
        ("random", _codes.TANH, 0.01),
        ("he", _codes.TANH, math.sqrt(2 / 50)),
        ("xavier", _codes.RELU, math.sqrt(1 / 50)),
        ("glorot", _codes.RELU, math.sqrt(2 / (50 + 30))),
        ("auto", _codes.RELU, math.sqrt(2 / 50)),
        ("auto", _codes.LEAKY_RELU, math.sqrt(2 / 50)),
        ("auto", _codes.TANH, math.sqrt(1 / 50)),
        ("auto", _codes.SIGMOID, math.sqrt(1 / 50)),
    ],
)
def test_init_scale(init, act, expected):
    assert init_scale(init, 50, 30, act) == pytest.approx(expected)


@pytest.mark.parametrize("init", INITS)
def test_initial_weights_have_the_course_scale_and_zero_biases(init):
    model = Sequential([Dense(400, "relu", init=init), Dense(1, "sigmoid")], input_dim=300, seed=0, dtype="float64")
    W = dict(model.parameters())["dense_0.W"]
    b = dict(model.parameters())["dense_0.b"]
    assert W.shape == (300, 400)
    assert np.all(b == 0)
    expected = init_scale(init, 300, 400, _codes.RELU)
    assert W.std() == pytest.approx(expected, rel=0.02, abs=1e-12)
    if init == "zeros":
        assert np.all(W == 0)


def test_same_seed_same_weights_other_seed_other_weights():
    def weights(seed, dtype="float32"):
        m = Sequential([Dense(8, "tanh"), Dense(3, "softmax")], input_dim=5, seed=seed, dtype=dtype)
        return [p.copy() for _, p in m.parameters()]

    a, b, c = weights(7), weights(7), weights(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # float32 weights are the float64 draws rounded
    for x, y in zip(a, weights(7, "float64")):
        np.testing.assert_array_equal(x, y.astype(np.float32))
    # a Generator works too and is consumed
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    w1 = Sequential([Dense(4)], input_dim=2, seed=g1).parameters()[0][1]
    w2 = Sequential([Dense(4)], input_dim=2, seed=g2).parameters()[0][1]
    np.testing.assert_array_equal(w1, w2)


def test_auto_init_looks_through_batchnorm_to_the_activation():
    model = Sequential(
        [Dense(500, None, use_bias=False), BatchNorm(), Activation("relu"), Dense(1, "sigmoid")],
        input_dim=400,
        seed=1,
        dtype="float64",
    )
    W = dict(model.parameters())["dense_0.W"]
    assert W.std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)


# ---- each layer's inference forward against the formulas ------------------------------------


def _np_act(z, act, slope=0.01):
    if act in (None, "linear"):
        return z
    if act == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if act == "tanh":
        return np.tanh(z)
    if act == "relu":
        return np.maximum(0, z)
    if act == "leaky_relu":
        return np.where(z > 0, z, slope * z)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("hidden", ACTS)
@pytest.mark.parametrize("out", ["sigmoid", "softmax", "linear"])
def test_forward_matches_formula(hidden, out):
    rng = np.random.default_rng(0)
    k = 3 if out == "softmax" else 2
    model = Sequential(
        [Dense(5, hidden, leaky_slope=0.05), Dense(k, out)], input_dim=4, seed=2, dtype="float64"
    )
    X = rng.standard_normal((9, 4))
    p = dict(model.parameters())
    p["dense_0.b"][...] = rng.standard_normal(5)
    p["dense_1.b"][...] = rng.standard_normal(k)
    A1 = _np_act(X @ p["dense_0.W"] + p["dense_0.b"], hidden, 0.05)
    A2 = _np_act(A1 @ p["dense_1.W"] + p["dense_1.b"], out)
    np.testing.assert_allclose(model.forward(X), A2, rtol=1e-12, atol=1e-14)


def test_activation_and_dropout_layers_at_inference():
    rng = np.random.default_rng(1)
    model = Sequential(
        [Dense(6), Activation("leaky_relu", leaky_slope=0.2), Dropout(0.5), Dense(2), Activation("softmax")],
        input_dim=3,
        seed=0,
        dtype="float64",
    )
    X = rng.standard_normal((7, 3))
    p = dict(model.parameters())
    A = _np_act(X @ p["dense_0.W"] + p["dense_0.b"], "leaky_relu", 0.2)  # no dropout at inference
    A = _np_act(A @ p["dense_1.W"] + p["dense_1.b"], "softmax")
    np.testing.assert_allclose(model.forward(X), A, rtol=1e-12)
    assert model.loss == "cce"


def test_batchnorm_inference_uses_running_stats():
    rng = np.random.default_rng(2)
    model = Sequential([Dense(4, use_bias=False), BatchNorm(eps=1e-3), Dense(1)], input_dim=3, dtype="float64")
    buf = dict(model.buffers())
    np.testing.assert_array_equal(buf["batchnorm_0.running_mean"], 0)
    np.testing.assert_array_equal(buf["batchnorm_0.running_var"], 1)
    buf["batchnorm_0.running_mean"][...] = rng.standard_normal(4)
    buf["batchnorm_0.running_var"][...] = rng.uniform(0.5, 2, 4)
    p = dict(model.parameters())
    p["batchnorm_0.gamma"][...] = rng.standard_normal(4)
    p["batchnorm_0.beta"][...] = rng.standard_normal(4)
    X = rng.standard_normal((5, 3))
    Z = X @ p["dense_0.W"]
    Zt = (Z - buf["batchnorm_0.running_mean"]) / np.sqrt(buf["batchnorm_0.running_var"] + 1e-3)
    Zt = p["batchnorm_0.gamma"] * Zt + p["batchnorm_0.beta"]
    np.testing.assert_allclose(model.forward(X), Zt @ p["dense_1.W"] + p["dense_1.b"], rtol=1e-12)


def test_dropout_training_forward_is_inverted_dropout_with_the_hash_mask():
    """One training forward: A = A_prev * D / keep_prob, D from the counter-based hash."""
    from fusednet.kernels import dropout_key, dropout_threshold
    from fusednet.model import _Kernels

    rng = np.random.default_rng(3)
    kp = 0.7
    model = Sequential([Dense(50, "relu"), Dropout(kp), Dense(1, "sigmoid")], input_dim=4, seed=11, dtype="float64")
    X = rng.standard_normal((40, 4))
    Y = (rng.random((40, 1)) > 0.5).astype(np.float64)
    ws = model._workspace(40, train=True)
    v = ws.views(40)
    model._forward_train(v, _Kernels("numpy"), X, Y, (3, 5))
    p = dict(model.parameters())
    A1 = np.maximum(0, X @ p["dense_0.W"] + p["dense_0.b"])
    key = dropout_key(11, 3, 5, 1)  # (model seed, epoch, step, layer index)
    D = reference.dropout_hash(np.arange(A1.size).reshape(A1.shape), key) < dropout_threshold(kp)
    np.testing.assert_allclose(v.nodes[1].A, A1 * D / kp, rtol=1e-15)
    assert 0.6 < D.mean() < 0.8
