"""Sequential: gradients against finite differences, the inference API, state, bad input."""

import json

import numpy as np
import pytest

from fusednet.kernels import _codes
from fusednet.kernels._plan import NODE_DTYPE
from fusednet.layers import Activation, BatchNorm, Dense, Dropout
from fusednet.model import INFER_CHUNK, Sequential

HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "softmax", "linear"]
OUTPUTS = ["sigmoid", "softmax", "linear"]


def make_data(out, m=7, nf=3, k=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, nf))
    if out == "softmax":
        k = k or 3
        y = rng.integers(0, k, m)
    elif out == "sigmoid":
        k = k or 1
        y = rng.integers(0, 2, m) if k == 1 else rng.integers(0, 2, (m, k))
    else:
        k = k or 2
        y = rng.standard_normal((m, k))
    return X, y, k


def numeric_grads(model, X, y, eps=1e-6):
    """Two-sided differences of J through the writable parameter views."""
    out = []
    for name, p in model.parameters():
        flat = p.reshape(-1)
        g = np.zeros(flat.size)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            jp = model.loss_and_grads(X, y)[0]
            flat[i] = old - eps
            jm = model.loss_and_grads(X, y)[0]
            flat[i] = old
            g[i] = (jp - jm) / (2 * eps)
        out.append((name, g.reshape(p.shape)))
    return out


def assert_grads_match(model, X, y):
    _, grads = model.loss_and_grads(X, y)
    num = numeric_grads(model, X, y)
    assert [n for n, _ in grads] == [n for n, _ in num] == [n for n, _ in model.parameters()]
    a = np.concatenate([g.ravel() for _, g in grads])
    n = np.concatenate([g.ravel() for _, g in num])
    diff = np.linalg.norm(a - n) / (np.linalg.norm(a) + np.linalg.norm(n))
    assert diff < 1e-7, diff
    for (name, ga), (_, gn) in zip(grads, num):
        np.testing.assert_allclose(ga, gn, rtol=1e-5, atol=1e-8, err_msg=name)


def randomise(model, seed=5):
    """Nonzero biases / gamma / beta so their gradients are exercised."""
    rng = np.random.default_rng(seed)
    for name, p in model.parameters():
        if not name.endswith(".W"):
            p[...] = rng.standard_normal(p.shape) * 0.5 + (1.0 if name.endswith("gamma") else 0.0)


# ---- gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("out", OUTPUTS)
def test_gradients_every_activation_and_loss(hidden, out):
    X, y, k = make_data(out)
    model = Sequential([Dense(5, hidden, leaky_slope=0.1), Dense(k, out)], input_dim=3, dtype="float64", seed=1)
    randomise(model)
    assert_grads_match(model, X, y)


@pytest.mark.parametrize("out", OUTPUTS)
@pytest.mark.parametrize("l2", [0.3, 2.0])
def test_gradients_with_l2(out, l2):
    X, y, k = make_data(out, m=6)
    model = Sequential(
        [Dense(4, "tanh"), Dense(3, "relu"), Dense(k, out)], input_dim=3, l2=l2, dtype="float64", seed=2
    )
    randomise(model)
    assert_grads_match(model, X, y)


@pytest.mark.parametrize("out", OUTPUTS)
def test_gradients_with_batchnorm(out):
    X, y, k = make_data(out, m=8)
    model = Sequential(
        [
            BatchNorm(),  # on the inputs
            Dense(5, None, use_bias=False),
            BatchNorm(eps=1e-3),
            Activation("tanh"),
            Dense(4, "relu"),
            BatchNorm(),
            Dense(k, out),
        ],
        input_dim=3,
        l2=0.5,
        dtype="float64",
        seed=3,
    )
    randomise(model)
    before = [b.copy() for _, b in model.buffers()]
    assert_grads_match(model, X, y)
    for b0, (_, b1) in zip(before, model.buffers()):  # running stats untouched
        np.testing.assert_array_equal(b0, b1)


@pytest.mark.parametrize("out", OUTPUTS)
def test_gradients_without_bias_and_activation_output(out):
    X, y, k = make_data(out)
    model = Sequential(
        [Dense(5, "sigmoid", use_bias=False), Dense(k, None, use_bias=False), Activation(out)],
        input_dim=3,
        dtype="float64",
        seed=4,
    )
    assert [n for n, _ in model.parameters()] == ["dense_0.W", "dense_1.W"]
    assert_grads_match(model, X, y)


def test_gradients_multilabel_sigmoid_and_onehot_softmax():
    X, y, k = make_data("sigmoid", k=3)
    model = Sequential([Dense(4, "relu"), Dense(3, "sigmoid")], input_dim=3, dtype="float64", seed=6)
    assert_grads_match(model, X, y)
    X, y, k = make_data("softmax", k=4)
    onehot = np.eye(4)[y]
    model = Sequential([Dense(4, "relu"), Dense(4, "softmax")], input_dim=3, dtype="float64", seed=6)
    j1, g1 = model.loss_and_grads(X, y)
    j2, g2 = model.loss_and_grads(X, onehot)
    assert j1 == j2
    for (_, a), (_, b) in zip(g1, g2):
        np.testing.assert_array_equal(a, b)


def test_dropout_is_off_in_loss_and_grads():
    X, y, k = make_data("softmax", m=10)
    with_drop = Sequential(
        [Dense(6, "relu"), Dropout(0.5), Dense(k, "softmax")], input_dim=3, dtype="float64", seed=7
    )
    without = Sequential([Dense(6, "relu"), Dense(k, "softmax")], input_dim=3, dtype="float64", seed=7)
    j1, g1 = with_drop.loss_and_grads(X, y)
    j2, g2 = without.loss_and_grads(X, y)
    assert j1 == j2
    for (_, a), (_, b) in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
    assert_grads_match(with_drop, X, y)


def test_loss_values_match_the_formulas():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((9, 3))
    lam = 0.7
    for out, k in (("sigmoid", 1), ("softmax", 3), ("linear", 2)):
        model = Sequential([Dense(4, "tanh"), Dense(k, out)], input_dim=3, l2=lam, dtype="float64", seed=9)
        p = dict(model.parameters())
        A1 = np.tanh(X @ p["dense_0.W"] + p["dense_0.b"])
        Z = A1 @ p["dense_1.W"] + p["dense_1.b"]
        reg = lam / (2 * 9) * (np.sum(p["dense_0.W"] ** 2) + np.sum(p["dense_1.W"] ** 2))
        if out == "sigmoid":
            y = rng.integers(0, 2, 9)
            a = 1 / (1 + np.exp(-Z[:, 0]))
            J = -np.mean(y * np.log(a) + (1 - y) * np.log(1 - a))
        elif out == "softmax":
            y = rng.integers(0, 3, 9)
            A = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
            J = -np.mean(np.log(A[np.arange(9), y]))
        else:
            y = rng.standard_normal((9, 2))
            J = np.sum((Z - y) ** 2) / (2 * 9)
        got, grads = model.loss_and_grads(X, y)
        assert got == pytest.approx(J + reg, rel=1e-12)
        assert model.evaluate(X, y)["loss"] == pytest.approx(J + reg, rel=1e-12)
        assert model.loss == {"sigmoid": "bce", "softmax": "cce", "linear": "mse"}[out]


def test_loss_and_grads_changes_nothing():
    X, y, k = make_data("softmax", m=12)
    model = Sequential(
        [Dense(5, use_bias=False), BatchNorm(), Activation("relu"), Dropout(0.5), Dense(k, "softmax")],
        input_dim=3,
        l2=0.1,
        dtype="float64",
    )
    state = model.state_dict()
    _, g1 = model.loss_and_grads(X, y)
    _, g2 = model.loss_and_grads(X, y)
    after = model.state_dict()
    np.testing.assert_array_equal(state["params"], after["params"])
    np.testing.assert_array_equal(state["running"], after["running"])
    for (_, a), (_, b) in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
    g1[0][1][...] = 123.0  # copies, not views of the arena
    assert not np.any(model.loss_and_grads(X, y)[1][0][1] == 123.0)


def test_float32_gradients_close_to_float64():
    X, y, k = make_data("softmax", m=20, nf=5)
    m64 = Sequential([Dense(8, "relu"), Dense(k, "softmax")], input_dim=5, l2=0.2, dtype="float64", seed=3)
    m32 = m64.copy(dtype="float32")
    assert m32.dtype == np.float32
    j64, g64 = m64.loss_and_grads(X, y)
    j32, g32 = m32.loss_and_grads(X, y)
    assert j32 == pytest.approx(j64, rel=1e-5)
    for (n, a), (_, b) in zip(g64, g32):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6, err_msg=n)


def test_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    X = rng.standard_normal((16, 5))
    y = rng.integers(0, 4, 16)
    lam = 0.3
    model = Sequential(
        [
            Dense(7, None, use_bias=False),
            BatchNorm(eps=1e-5),
            Activation("tanh"),
            Dense(6, "leaky_relu", leaky_slope=0.05),
            Dense(4, "softmax"),
        ],
        input_dim=5,
        l2=lam,
        dtype="float64",
        seed=11,
    )
    randomise(model)
    p = {n: torch.tensor(a.copy(), requires_grad=True) for n, a in model.parameters()}
    Xt = torch.tensor(X)
    Z = Xt @ p["dense_0.W"]
    mu, var = Z.mean(0), Z.var(0, unbiased=False)
    Z = p["batchnorm_0.gamma"] * (Z - mu) / torch.sqrt(var + 1e-5) + p["batchnorm_0.beta"]
    A = torch.tanh(Z)
    A = torch.nn.functional.leaky_relu(A @ p["dense_1.W"] + p["dense_1.b"], 0.05)
    logits = A @ p["dense_2.W"] + p["dense_2.b"]
    J = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    J = J + lam / (2 * 16) * sum((p[n] ** 2).sum() for n in p if n.endswith(".W"))
    J.backward()
    ours, grads = model.loss_and_grads(X, y)
    assert ours == pytest.approx(J.item(), rel=1e-12)
    for name, g in grads:
        np.testing.assert_allclose(g, p[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


# ---- the inference API -----------------------------------------------------------------------


def test_predict_and_predict_proba():
    rng = np.random.default_rng(12)
    X = rng.standard_normal((30, 4))
    soft = Sequential([Dense(5, "relu"), Dense(3, "softmax")], input_dim=4, seed=1)
    A = soft.forward(X)
    assert A.shape == (30, 3) and A.dtype == np.float32
    np.testing.assert_allclose(A.sum(1), 1, rtol=1e-6)
    np.testing.assert_array_equal(soft.predict(X), A.argmax(1))
    np.testing.assert_array_equal(soft.predict_proba(X), A)

    sig = Sequential([Dense(5, "tanh"), Dense(1, "sigmoid")], input_dim=4, seed=1)
    a = sig.forward(X)
    assert a.shape == (30, 1)
    pred = sig.predict(X)
    assert pred.shape == (30,) and set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (a[:, 0] > 0.5).astype(int))
    proba = sig.predict_proba(X)
    assert proba.shape == (30, 2)
    np.testing.assert_allclose(proba[:, 1], a[:, 0])
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)

    lin = Sequential([Dense(5, "relu"), Dense(1)], input_dim=4, seed=1)
    np.testing.assert_array_equal(lin.predict(X), lin.forward(X)[:, 0])
    lin2 = Sequential([Dense(2)], input_dim=4, seed=1)
    assert lin2.predict(X).shape == (30, 2)
    with pytest.raises(ValueError, match="predict_proba"):
        lin.predict_proba(X)


def test_evaluate_accuracy_and_l2_term():
    rng = np.random.default_rng(13)
    X = rng.standard_normal((50, 3))
    y = rng.integers(0, 3, 50)
    model = Sequential([Dense(4, "relu"), Dense(3, "softmax")], input_dim=3, l2=1.0, dtype="float64")
    r = model.evaluate(X, y)
    assert set(r) == {"loss", "accuracy"}
    assert r["accuracy"] == pytest.approx(np.mean(model.predict(X) == y))
    assert r["loss"] == pytest.approx(model.loss_and_grads(X, y)[0])
    reg = Sequential([Dense(1)], input_dim=3)
    assert set(reg.evaluate(X, rng.standard_normal(50))) == {"loss"}


def test_inference_in_chunks_equals_one_pass():
    rng = np.random.default_rng(14)
    m = INFER_CHUNK * 2 + 17
    X = rng.standard_normal((m, 3))
    y = rng.integers(0, 2, m)
    model = Sequential([Dense(6, "tanh"), Dense(1, "sigmoid")], input_dim=3, dtype="float64", seed=2)
    p = dict(model.parameters())
    A = 1 / (1 + np.exp(-(np.tanh(X @ p["dense_0.W"] + p["dense_0.b"]) @ p["dense_1.W"] + p["dense_1.b"])))
    np.testing.assert_allclose(model.forward(X), A, rtol=1e-12)
    a = A[:, 0]
    J = -np.mean(y * np.log(a) + (1 - y) * np.log(1 - a))
    r = model.evaluate(X, y)
    assert r["loss"] == pytest.approx(J, rel=1e-10)
    assert r["accuracy"] == pytest.approx(np.mean((a > 0.5) == y))


def test_inputs_of_other_dtypes_and_layouts():
    rng = np.random.default_rng(15)
    X = rng.standard_normal((20, 3))
    model = Sequential([Dense(4, "relu"), Dense(2, "softmax")], input_dim=3, dtype="float32", seed=0)
    ref = model.forward(X.astype(np.float32))
    np.testing.assert_allclose(model.forward(X), ref, rtol=1e-6)  # float64 in
    np.testing.assert_allclose(model.forward(np.asfortranarray(X)), ref, rtol=1e-6)
    np.testing.assert_allclose(model.forward(X.tolist()), ref, rtol=1e-6)
    Xi = rng.integers(0, 5, (20, 3))
    np.testing.assert_allclose(model.forward(Xi), model.forward(Xi.astype(np.float32)), rtol=1e-6)


# ---- parameters, state, config ---------------------------------------------------------------


def test_parameters_names_order_and_views():
    model = Sequential(
        [
            Dense(4, use_bias=False),
            BatchNorm(),
            Activation("relu"),
            Dropout(0.9),
            Dense(3, "relu"),
            BatchNorm(),
            Dense(2, "softmax"),
        ],
        input_dim=5,
    )
    names = [n for n, _ in model.parameters()]
    assert names == [
        "dense_0.W",
        "batchnorm_0.gamma",
        "batchnorm_0.beta",
        "dense_1.W",
        "dense_1.b",
        "batchnorm_1.gamma",
        "batchnorm_1.beta",
        "dense_2.W",
        "dense_2.b",
    ]
    shapes = {n: p.shape for n, p in model.parameters()}
    assert shapes["dense_0.W"] == (5, 4) and shapes["dense_1.W"] == (4, 3) and shapes["dense_2.b"] == (2,)
    # W first in the arena (the L2 segment), then biases / gamma / beta
    assert model.n_decay == 5 * 4 + 4 * 3 + 3 * 2
    assert model.n_params == model.n_decay + 4 * 2 + 3 + 3 * 2 + 2
    # views: writing sets the weights
    W = dict(model.parameters())["dense_2.W"]
    W[...] = 0.25
    assert np.all(dict(model.parameters())["dense_2.W"] == 0.25)
    assert np.shares_memory(W, model.state_dict()["params"]) is False  # state_dict copies
    assert [n for n, _ in model.buffers()] == [
        "batchnorm_0.running_mean",
        "batchnorm_0.running_var",
        "batchnorm_1.running_mean",
        "batchnorm_1.running_var",
    ]


def test_config_state_and_copy_round_trip():
    model = Sequential(
        [
            Dense(4, "leaky_relu", leaky_slope=0.2, init="glorot"),
            BatchNorm(0.8, 1e-4),
            Dropout(0.6),
            Dense(3, "softmax"),
        ],
        input_dim=5,
        l2=0.25,
        dtype="float64",
        seed=42,
    )
    cfg = model.get_config()
    json.dumps(cfg)
    assert cfg["input_dim"] == 5 and cfg["l2"] == 0.25 and cfg["dtype"] == "float64" and cfg["seed"] == 42
    for _, p in model.parameters():
        p[...] = np.random.default_rng(0).standard_normal(p.shape)
    twin = Sequential.from_config(cfg)
    twin.load_state_dict(model.state_dict())
    X = np.random.default_rng(1).standard_normal((6, 5))
    np.testing.assert_array_equal(twin.forward(X), model.forward(X))
    c = model.copy()
    assert c.get_config() == cfg
    np.testing.assert_array_equal(c.state_dict()["params"], model.state_dict()["params"])
    with pytest.raises(ValueError):
        twin.load_state_dict({"params": np.zeros(3), "running": np.zeros(8)})
    bad = model.state_dict()
    bad["params"][0] = np.nan
    with pytest.raises(ValueError):
        twin.load_state_dict(bad)


def test_plan_is_typed_records():
    model = Sequential(
        [Dense(4, "relu", use_bias=False), BatchNorm(), Dropout(0.5), Dense(2, "softmax")], input_dim=3
    )
    plan = model.plan()
    nodes = plan["layers"]
    assert nodes.dtype == NODE_DTYPE and nodes.shape == (4,)
    assert plan["names"] == ["dense_0", "batchnorm_0", "dropout_0", "dense_1"]
    np.testing.assert_array_equal(nodes["op"], [_codes.DENSE, _codes.BATCHNORM, _codes.DROPOUT, _codes.DENSE])
    assert nodes[0]["w_off"] == 0 and nodes[0]["b_off"] == -1  # dense_0.W at 0, no bias
    assert nodes[3]["w_off"] == 12  # dense_1.W follows dense_0.W
    assert nodes[0]["act"] == _codes.RELU and nodes[3]["act"] == _codes.SOFTMAX
    assert nodes[2]["keep_prob"] == 0.5 and nodes[1]["bn_momentum"] == 0.9 and nodes[1]["bn_eps"] == 1e-5
    P = model.state_dict()["params"]
    params = dict(model.parameters())
    np.testing.assert_array_equal(P[nodes[1]["gamma_off"] : nodes[1]["gamma_off"] + 4], params["batchnorm_0.gamma"])
    np.testing.assert_array_equal(P[nodes[3]["b_off"] : nodes[3]["b_off"] + 2], params["dense_1.b"])
    stats = dict(model.buffers())
    S = model.state_dict()["running"]
    np.testing.assert_array_equal(S[nodes[1]["rvar_off"] : nodes[1]["rvar_off"] + 4], stats["batchnorm_0.running_var"])


def test_plan_is_the_callers_own_copy():
    """The records are made once per layout; each call returns its own copy, and the seed is current."""
    model = Sequential([Dense(4, "relu"), Dense(1, "sigmoid")], input_dim=3, seed=5)
    first = model.plan()
    first["layers"]["n_out"][0] = 99
    first["names"].append("extra")
    second = model.plan()
    assert second["layers"]["n_out"][0] == 4 and second["names"] == ["dense_0", "dense_1"]
    assert second["layers"] is not model.plan()["layers"]
    model.seed = 6
    assert model.plan()["seed"] == 6

def test_lazy_build_on_first_forward():
    model = Sequential([Dense(3, "relu"), Dense(2, "softmax")])
    assert not model.built
    with pytest.raises(RuntimeError, match="not built"):
        model.parameters()
    model.forward(np.zeros((2, 7)))
    assert model.built and model.input_dim == 7
    assert dict(model.parameters())["dense_0.W"].shape == (7, 3)


# ---- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layers, match",
    [
        ([Dense(3, "relu")], "output activation"),
        ([Dense(3, "tanh")], "output activation"),
        ([Dense(3), Dropout(0.5)], "last layer"),
        ([Dense(3), BatchNorm()], "last layer"),
        ([], "empty"),
    ],
)
def test_bad_models(layers, match):
    with pytest.raises(ValueError, match=match):
        Sequential(layers, input_dim=2)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="softmax"):
        Sequential([Dense(1, "softmax")], input_dim=2)
    with pytest.raises(ValueError, match="dtype"):
        Sequential([Dense(1)], dtype="float16")
    with pytest.raises(ValueError, match="l2"):
        Sequential([Dense(1)], l2=-1)
    with pytest.raises(ValueError, match="input_dim"):
        Sequential([Dense(1)], input_dim=0)
    with pytest.raises(TypeError):
        Sequential([Dense(1), "relu"])
    with pytest.raises(ValueError, match="seed"):
        Sequential([Dense(1)], seed=-3)


def _model():
    return Sequential([Dense(4, "relu"), Dense(3, "softmax")], input_dim=3, dtype="float64", seed=0)


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.full((4, 3), np.nan), [0, 1, 2, 0], "X must be finite"),
        (np.array([[0, 1, np.inf]] * 4), [0, 1, 2, 0], "X must be finite"),
        (np.zeros((4, 2)), [0, 1, 2, 0], "features"),
        (np.zeros(3), [0], "2-D"),
        (np.zeros((4, 3)), [0, 1, 2], "one row per example"),
        (np.zeros((4, 3)), [0, 1, 2, 3], "out of range"),
        (np.zeros((4, 3)), [0, 1, -1, 0], "out of range"),
        (np.zeros((4, 3)), [0, 1, 0.5, 0], "integer"),
        (np.zeros((4, 3)), [0, 1, np.nan, 0], "finite"),
        (np.zeros((4, 3)), np.ones((4, 3)), "one-hot"),
        (np.zeros((4, 3)), np.ones((4, 5)), "shape"),
        (np.zeros((0, 3)), [], "at least one row"),
    ],
)
def test_bad_input_raises_value_error_and_changes_nothing(X, y, match):
    model = _model()
    state = model.state_dict()
    with pytest.raises(ValueError, match=match):
        model.loss_and_grads(X, y)
    with pytest.raises(ValueError, match=match):
        model.evaluate(X, y)
    after = model.state_dict()
    np.testing.assert_array_equal(state["params"], after["params"])


@pytest.mark.parametrize(
    "out, k, y, match",
    [
        ("sigmoid", 1, [0, 1, 2, 1], "0/1"),
        ("sigmoid", 1, np.zeros((4, 2)), "shape"),
        ("sigmoid", 2, [0, 1, 1, 0], "shape"),
        ("linear", 2, [0.5, 1, 2, 1], "shape"),
        ("linear", 1, [0.5, np.inf, 2, 1], "finite"),
    ],
)
def test_bad_labels_for_sigmoid_and_linear(out, k, y, match):
    model = Sequential([Dense(k, out)], input_dim=3)
    with pytest.raises(ValueError, match=match):
        model.evaluate(np.zeros((4, 3)), y)


def test_forward_rejects_nan_and_wrong_width():
    model = _model()
    with pytest.raises(ValueError, match="features"):
        model.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        model.forward(np.array([[1.0, np.nan, 0.0]]))
    with pytest.raises(TypeError):
        model.forward(np.array([["a", "b", "c"]]))


def test_batchnorm_rejects_a_training_batch_of_one():
    model = Sequential([Dense(3), BatchNorm(), Dense(1, "sigmoid")], input_dim=2)
    with pytest.raises(ValueError, match="BatchNorm"):
        model.loss_and_grads(np.zeros((1, 2)), [1])
    model.forward(np.zeros((1, 2)))  # inference on one row is fine


def test_pickle_and_deepcopy_keep_a_working_model():
    import copy
    import pickle

    X, y, k = make_data("softmax", m=10)
    model = Sequential(
        [Dense(4, use_bias=False), BatchNorm(), Activation("relu"), Dense(k, "softmax")],
        input_dim=3,
        dtype="float64",
        seed=3,
    )
    randomise(model)
    model.note = "kept"
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        np.testing.assert_array_equal(twin.forward(X), model.forward(X))
        assert twin.note == "kept"
        dict(twin.parameters())["dense_0.W"][...] = 0  # the views still point into the twin's arena
        assert np.all(twin.state_dict()["params"][: 3 * 4] == 0)
        assert not np.all(model.state_dict()["params"][: 3 * 4] == 0)
    lazy = pickle.loads(pickle.dumps(Sequential([Dense(2, "softmax")])))
    assert not lazy.built
