"""The course's own numbers.

Each test puts the course's initial weights into a fusednet model through
``parameters()`` and trains it with the Trainer; the reference is an
independent pure-NumPy implementation written here in the course's notation
(examples in columns, ``X`` of shape ``(n_x, m)``, ``W[l]`` of shape
``(n[l], n[l-1])``, dictionaries of parameters), and, where the course
publishes them, its printed costs.
"""

from pathlib import Path

import numpy as np
import pytest

from fusednet import optim
from fusednet.layers import Dense
from fusednet.model import Sequential
from fusednet.trainer import Trainer

FOOTBALL = Path(__file__).parent / "data" / "football.npz"  # the C2W1 regularisation data set


# ---- the course's code, in its notation ----------------------------------------------------------------------------


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def relu(z):
    return np.maximum(0, z)


def load_planar_dataset():
    """C1W3 planar_utils.load_planar_dataset: the 'flower', X (2, 400), Y (1, 400)."""
    np.random.seed(1)
    m = 400
    N = int(m / 2)
    D = 2
    X = np.zeros((m, D))
    Y = np.zeros((m, 1), dtype="uint8")
    a = 4
    for j in range(2):
        ix = range(N * j, N * (j + 1))
        t = np.linspace(j * 3.12, (j + 1) * 3.12, N) + np.random.randn(N) * 0.2
        r = a * np.sin(4 * t) + np.random.randn(N) * 0.2
        X[ix] = np.c_[r * np.sin(t), r * np.cos(t)]
        Y[ix] = j
    return X.T, Y.T


def L_model_forward(X, parameters, hidden="relu"):
    """C1W4: [LINEAR -> RELU] x (L-1) -> LINEAR -> SIGMOID, with caches."""
    caches = []
    A = X
    L = len(parameters) // 2
    for l in range(1, L):
        A_prev = A
        Z = np.dot(parameters["W" + str(l)], A_prev) + parameters["b" + str(l)]
        A = relu(Z) if hidden == "relu" else np.tanh(Z)
        caches.append((A_prev, Z, A))
    Z = np.dot(parameters["W" + str(L)], A) + parameters["b" + str(L)]
    AL = sigmoid(Z)
    caches.append((A, Z, AL))
    return AL, caches


def compute_cost(AL, Y):
    m = Y.shape[1]
    cost = (-1 / m) * np.sum(np.multiply(Y, np.log(AL)) + np.multiply(1 - Y, np.log(1 - AL)))
    return float(np.squeeze(cost))


def compute_cost_with_regularization(AL, Y, parameters, lambd):
    """C2W1: cross-entropy cost + lambd/(2m) sum ||W||_F^2."""
    m = Y.shape[1]
    L = len(parameters) // 2
    L2 = sum(np.sum(np.square(parameters["W" + str(l)])) for l in range(1, L + 1))
    return compute_cost(AL, Y) + lambd / (2 * m) * L2


def L_model_backward(AL, Y, caches, parameters, lambd=0.0, hidden="relu"):
    grads = {}
    L = len(caches)
    m = AL.shape[1]
    dZ = AL - Y
    for l in reversed(range(1, L + 1)):
        A_prev, Z, A = caches[l - 1]
        W = parameters["W" + str(l)]
        grads["dW" + str(l)] = 1.0 / m * np.dot(dZ, A_prev.T) + lambd / m * W
        grads["db" + str(l)] = 1.0 / m * np.sum(dZ, axis=1, keepdims=True)
        if l > 1:
            dA_prev = np.dot(W.T, dZ)
            A_prev_act = caches[l - 2][2]
            if hidden == "relu":
                dZ = np.multiply(dA_prev, np.int64(A_prev_act > 0))
            else:
                dZ = dA_prev * (1 - np.power(A_prev_act, 2))
    return grads


def update_parameters(parameters, grads, learning_rate):
    L = len(parameters) // 2
    for l in range(1, L + 1):
        parameters["W" + str(l)] = parameters["W" + str(l)] - learning_rate * grads["dW" + str(l)]
        parameters["b" + str(l)] = parameters["b" + str(l)] - learning_rate * grads["db" + str(l)]
    return parameters


def initialize_parameters_deep(layer_dims, seed, scale="sqrt_prev"):
    np.random.seed(seed)
    parameters = {}
    for l in range(1, len(layer_dims)):
        if scale == "0.01":
            f = 0.01
        else:
            f = np.sqrt(2 / layer_dims[l - 1]) if scale == "he" else 1 / np.sqrt(layer_dims[l - 1])
        parameters["W" + str(l)] = np.random.randn(layer_dims[l], layer_dims[l - 1]) * f
        parameters["b" + str(l)] = np.zeros((layer_dims[l], 1))
    return parameters


def course_batch_gd(X, Y, parameters, learning_rate, num_iterations, lambd=0.0, hidden="relu"):
    parameters = {k: v.copy() for k, v in parameters.items()}
    costs = []
    for _ in range(num_iterations):
        AL, caches = L_model_forward(X, parameters, hidden)
        costs.append(compute_cost_with_regularization(AL, Y, parameters, lambd))
        grads = L_model_backward(AL, Y, caches, parameters, lambd, hidden)
        parameters = update_parameters(parameters, grads, learning_rate)
    return costs, parameters


# ---- bridging: the course's weights into a fusednet model ------------------------------------------------------------


def fusednet_model(parameters, hidden="relu", l2=0.0):
    L = len(parameters) // 2
    n_x = parameters["W1"].shape[1]
    layers = [Dense(parameters["W" + str(l)].shape[0], hidden) for l in range(1, L)]
    layers.append(Dense(parameters["W" + str(L)].shape[0], "sigmoid"))
    model = Sequential(layers, input_dim=n_x, l2=l2, dtype="float64")
    p = dict(model.parameters())
    for l in range(1, L + 1):
        p[f"dense_{l - 1}.W"][...] = parameters["W" + str(l)].T  # ours is the transpose
        p[f"dense_{l - 1}.b"][...] = parameters["b" + str(l)][:, 0]
    return model


def assert_same_parameters(model, parameters, atol=1e-10):
    p = dict(model.parameters())
    for l in range(1, len(parameters) // 2 + 1):
        np.testing.assert_allclose(p[f"dense_{l - 1}.W"], parameters["W" + str(l)].T, rtol=1e-9, atol=atol)
        np.testing.assert_allclose(p[f"dense_{l - 1}.b"], parameters["b" + str(l)][:, 0], rtol=1e-9, atol=atol)


def football():
    d = np.load(FOOTBALL)
    return d["X"], d["y"][:, 0], d["Xval"], d["yval"][:, 0]


# ---- C1W3: the planar classifier -------------------------------------------------------------------------------------

#: "Cost after iteration i" printed by the C1W3 notebook (nn_model, n_h = 4, learning rate 1.2)
PLANAR_PUBLISHED = {
    0: 0.693048, 1000: 0.288083, 2000: 0.254385, 3000: 0.233864,
    4000: 0.226792, 5000: 0.222644, 6000: 0.219731, 7000: 0.217504,
}


def test_c1w3_planar_flower_cost_curve():
    X, Y = load_planar_dataset()
    np.random.seed(2)  # the notebook's initialize_parameters
    params = {
        "W1": np.random.randn(4, 2) * 0.01,
        "b1": np.zeros((4, 1)),
        "W2": np.random.randn(1, 4) * 0.01,
        "b2": np.zeros((1, 1)),
    }
    n = 7001
    ref_costs, ref_params = course_batch_gd(X, Y, params, 1.2, n, hidden="tanh")
    model = fusednet_model(params, hidden="tanh")
    history = Trainer(model, optim.GD(lr=1.2), batch_size=None, epochs=n, progress=False).fit(X.T, Y[0])
    costs = np.array(history["train_loss"])
    np.testing.assert_allclose(costs, ref_costs, rtol=0, atol=1e-10)
    for i, published in PLANAR_PUBLISHED.items():
        assert round(costs[i], 6) == published, (i, costs[i])
    assert_same_parameters(model, ref_params)
    # the notebook's prediction rule: A2 > 0.5
    A2, _ = L_model_forward(X, ref_params, "tanh")
    np.testing.assert_array_equal(model.predict(X.T), (A2[0] > 0.5).astype(int))


# ---- C1W4: a deep L-layer network ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden, scale", [("relu", "sqrt_prev"), ("relu", "he"), ("tanh", "0.01")])
def test_c1w4_deep_network_cost_curve(hidden, scale):
    rng = np.random.default_rng(4)
    m, n_x = 60, 30
    X = rng.standard_normal((n_x, m))
    Y = (X[:1] + 0.5 * X[1:2] * X[2:3] + 0.3 * rng.standard_normal((1, m)) > 0).astype(np.float64)
    layer_dims = [n_x, 20, 7, 5, 1]  # the C1W4 application's 4-layer model
    params = initialize_parameters_deep(layer_dims, seed=1, scale=scale)
    ref_costs, ref_params = course_batch_gd(X, Y, params, 0.05, 300, hidden=hidden)
    model = fusednet_model(params, hidden=hidden)
    history = Trainer(model, optim.GD(0.05), batch_size=None, epochs=300, progress=False).fit(X.T, Y[0])
    np.testing.assert_allclose(history["train_loss"], ref_costs, rtol=0, atol=1e-10)
    assert_same_parameters(model, ref_params)
    assert history["train_loss"][-1] < history["train_loss"][0]


# ---- C2W1: L2 regularisation on the football data --------------------------------------------------------------------

#: "Cost after iteration i" printed by the C2W1 regularisation notebook (3-layer model, learning rate 0.3)
REG_PUBLISHED = {
    0.0: {0: 0.6557412523481002, 10000: 0.16329987525724216},
    0.7: {0: 0.6974484493131264, 10000: 0.2684918873282239},
}


def _reg_init():
    """reg_utils.initialize_parameters: randn / sqrt(n[l-1]), seed 3."""
    return initialize_parameters_deep([2, 20, 3, 1], seed=3, scale="sqrt_prev")


@pytest.mark.parametrize("lambd", [0.0, 0.7])
def test_c2w1_regularisation_matches_the_course_code(lambd):
    X, y, _, _ = football()
    Xc, Yc = X.T, y[None, :].astype(np.float64)
    params = _reg_init()
    ref_costs, ref_params = course_batch_gd(Xc, Yc, params, 0.3, 1500, lambd=lambd)
    model = fusednet_model(params, l2=lambd)
    h = Trainer(model, optim.GD(0.3), batch_size=None, epochs=1500, progress=False).fit(X, y)
    np.testing.assert_allclose(h["train_loss"], ref_costs, rtol=0, atol=1e-10)
    assert_same_parameters(model, ref_params)


@pytest.mark.parametrize("lambd", [0.0, 0.7])
def test_c2w1_regularisation_published_costs(lambd):
    X, y, _, _ = football()
    model = fusednet_model(_reg_init(), l2=lambd)
    h = Trainer(model, optim.GD(0.3), batch_size=None, epochs=10001, progress=False).fit(X, y)
    for i, published in REG_PUBLISHED[lambd].items():
        assert h["train_loss"][i] == pytest.approx(published, rel=1e-9, abs=1e-12)


# ---- C2W2: mini-batches with momentum and Adam -----------------------------------------------------------------------


def course_minibatch_run(
    X, Y, parameters, optimizer, lr, epochs, batch_size, seed, lambd=0.0, beta=0.9, beta1=0.9, beta2=0.999, eps=1e-8
):
    """The C2W2 optimisation notebook's model(), with fusednet's per-epoch permutation.

    Mini-batches: shuffle, partition into batch_size columns, keep the last
    partial batch.  cost_avg of an epoch = sum over batches of (batch cost x
    batch size) / m.
    """
    parameters = {k: v.copy() for k, v in parameters.items()}
    L = len(parameters) // 2
    v = {k: np.zeros_like(p) for k, p in parameters.items()}
    s = {k: np.zeros_like(p) for k, p in parameters.items()}
    t = 0
    m = X.shape[1]
    costs = []
    for epoch in range(epochs):
        permutation = np.random.default_rng([seed, epoch]).permutation(m)
        shuffled_X, shuffled_Y = X[:, permutation], Y[:, permutation]
        cost_total = 0.0
        for k in range(0, m, batch_size):
            mb_X, mb_Y = shuffled_X[:, k : k + batch_size], shuffled_Y[:, k : k + batch_size]
            a3, caches = L_model_forward(mb_X, parameters)
            cost_total += compute_cost_with_regularization(a3, mb_Y, parameters, lambd) * mb_X.shape[1]
            grads = L_model_backward(a3, mb_Y, caches, parameters, lambd)
            t += 1
            for l in range(1, L + 1):
                for name in ("W", "b"):
                    key, g = name + str(l), grads["d" + name + str(l)]
                    if optimizer == "gd":
                        parameters[key] = parameters[key] - lr * g
                    elif optimizer == "momentum":
                        v[key] = beta * v[key] + (1 - beta) * g
                        parameters[key] = parameters[key] - lr * v[key]
                    else:  # adam
                        v[key] = beta1 * v[key] + (1 - beta1) * g
                        v_corrected = v[key] / (1 - beta1**t)
                        s[key] = beta2 * s[key] + (1 - beta2) * np.power(g, 2)
                        s_corrected = s[key] / (1 - beta2**t)
                        parameters[key] = parameters[key] - lr * v_corrected / (np.sqrt(s_corrected) + eps)
        costs.append(cost_total / m)
    return costs, parameters


@pytest.mark.parametrize(
    "name, opt, lr, lambd",
    [
        ("gd", optim.GD, 0.05, 0.0),
        ("momentum", optim.Momentum, 0.05, 0.0),
        ("momentum", optim.Momentum, 0.05, 0.5),
        ("adam", optim.Adam, 0.01, 0.0),
        ("adam", optim.Adam, 0.01, 0.3),
    ],
)
def test_c2w2_minibatch_optimisers_match_the_course_code(name, opt, lr, lambd):
    X, y, _, _ = football()
    Xc, Yc = X.T, y[None, :].astype(np.float64)
    params = initialize_parameters_deep([2, 5, 2, 1], seed=3, scale="he")  # the notebook's [n_x, 5, 2, 1]
    ref_costs, ref_params = course_minibatch_run(Xc, Yc, params, name, lr, 40, 64, seed=7, lambd=lambd)
    model = fusednet_model(params, l2=lambd)
    if name == "gd":
        optimizer = opt(lr=lr)
    elif name == "momentum":
        optimizer = opt(lr=lr, beta=0.9)
    else:
        optimizer = opt(lr=lr, beta1=0.9, beta2=0.999, eps=1e-8)
    h = Trainer(model, optimizer, batch_size=64, epochs=40, shuffle=True, seed=7, progress=False).fit(X, y)
    np.testing.assert_allclose(h["train_loss"], ref_costs, rtol=0, atol=1e-10)
    assert_same_parameters(model, ref_params, atol=1e-9)
    assert optimizer.t == 40 * 4  # 211 examples: 3 batches of 64 and one of 19, per epoch
