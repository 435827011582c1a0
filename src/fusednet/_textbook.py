"""A pure-NumPy trainer written the course's way: the speed baseline.

Course layout (examples in columns: ``X`` of shape ``(n_x, m)``, ``W[l]`` of
shape ``(n[l], n[l-1])``), dictionaries of parameters and caches, ReLU hidden
layers and a softmax output, mini-batches and Adam exactly as the programming
exercises write them.  Used by ``benchmarks/`` and ``fusednet bench``; it is a
baseline, not part of the public API.
"""

import numpy as np


def initialize_parameters_he(layer_dims, rng):
    params = {}
    for l in range(1, len(layer_dims)):
        W = rng.standard_normal((layer_dims[l], layer_dims[l - 1])) * np.sqrt(2.0 / layer_dims[l - 1])
        params["W" + str(l)] = W.astype(np.float32)
        params["b" + str(l)] = np.zeros((layer_dims[l], 1), np.float32)
    return params


def initialize_adam(params):
    v, s = {}, {}
    for key, value in params.items():
        v["d" + key] = np.zeros_like(value)
        s["d" + key] = np.zeros_like(value)
    return v, s


def random_mini_batches(X, Y, mini_batch_size, rng):
    m = X.shape[1]
    permutation = list(rng.permutation(m))
    shuffled_X = X[:, permutation]
    shuffled_Y = Y[:, permutation]
    batches = []
    for k in range(0, m, mini_batch_size):
        batches.append((shuffled_X[:, k : k + mini_batch_size], shuffled_Y[:, k : k + mini_batch_size]))
    return batches


def forward(X, params, L):
    caches = []
    A = X
    for l in range(1, L):
        A_prev = A
        Z = np.dot(params["W" + str(l)], A_prev) + params["b" + str(l)]
        A = np.maximum(0, Z)
        caches.append((A_prev, Z))
    Z = np.dot(params["W" + str(L)], A) + params["b" + str(L)]
    caches.append((A, Z))
    t = np.exp(Z - np.max(Z, axis=0, keepdims=True))
    AL = t / np.sum(t, axis=0, keepdims=True)
    return AL, caches


def compute_cost(AL, Y):
    m = Y.shape[1]
    return float(-np.sum(Y * np.log(AL + 1e-12)) / m)


def backward(AL, Y, caches, params, L):
    grads = {}
    m = AL.shape[1]
    dZ = AL - Y
    dA = None  # dA[l]: computed in the iteration of layer l + 1, read in that of layer l
    for l in reversed(range(1, L + 1)):
        A_prev, Z = caches[l - 1]
        if l < L:
            dZ = np.array(dA, copy=True)
            dZ[Z <= 0] = 0
        grads["dW" + str(l)] = np.dot(dZ, A_prev.T) / m
        grads["db" + str(l)] = np.sum(dZ, axis=1, keepdims=True) / m
        if l > 1:
            dA = np.dot(params["W" + str(l)].T, dZ)
    return grads


def update_parameters_with_adam(params, grads, v, s, t, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8):
    v_corrected, s_corrected = {}, {}
    for key in params:
        g = grads["d" + key]
        v["d" + key] = beta1 * v["d" + key] + (1 - beta1) * g
        v_corrected["d" + key] = v["d" + key] / (1 - beta1**t)
        s["d" + key] = beta2 * s["d" + key] + (1 - beta2) * np.square(g)
        s_corrected["d" + key] = s["d" + key] / (1 - beta2**t)
        params[key] = params[key] - learning_rate * v_corrected["d" + key] / (np.sqrt(s_corrected["d" + key]) + epsilon)
    return params, v, s


class TextbookMLP:
    """ReLU hidden layers, softmax output, Adam, mini-batches: the course's code in a class.

    ``X`` (m, n_x) and integer labels ``y`` (m,) come in our row layout and are
    transposed once, as a student would before calling the course's functions.
    """

    def __init__(self, layer_dims, seed=0, lr=0.001):
        self.rng = np.random.default_rng(seed)
        self.layer_dims = list(layer_dims)
        self.L = len(layer_dims) - 1
        self.params = initialize_parameters_he(self.layer_dims, self.rng)
        self.v, self.s = initialize_adam(self.params)
        self.t = 0
        self.lr = lr

    def epoch(self, X, y, batch_size):
        XT = np.ascontiguousarray(X.T, dtype=np.float32)
        Y = np.eye(self.layer_dims[-1], dtype=np.float32)[y].T
        total = 0.0
        for Xb, Yb in random_mini_batches(XT, Y, batch_size, self.rng):
            AL, caches = forward(Xb, self.params, self.L)
            total += compute_cost(AL, Yb) * Xb.shape[1]
            grads = backward(AL, Yb, caches, self.params, self.L)
            self.t += 1
            self.params, self.v, self.s = update_parameters_with_adam(
                self.params, grads, self.v, self.s, self.t, self.lr
            )
        return total / X.shape[0]


# ---------------------------------------------------------------------------
# the kernels' textbook counterparts: each formula as the course's exercises write it
# ---------------------------------------------------------------------------

FORWARD = {
    "sigmoid": lambda Z, b: 1 / (1 + np.exp(-(Z + b))),
    "tanh": lambda Z, b: np.tanh(Z + b),
    "relu": lambda Z, b: np.maximum(0, Z + b),
}

BACKWARD = {
    "sigmoid": lambda dA, A: (dA * A * (1 - A), np.sum(dA * A * (1 - A), axis=0)),
    "tanh": lambda dA, A: (dA * (1 - np.power(A, 2)), np.sum(dA * (1 - np.power(A, 2)), axis=0)),
    "relu": lambda dA, A: (dA * (A > 0), np.sum(dA * (A > 0), axis=0)),
}


def softmax_cross_entropy(Z, b, Y):
    Z = Z + b
    t = np.exp(Z - Z.max(axis=1, keepdims=True))
    A = t / t.sum(axis=1, keepdims=True)
    return -np.sum(Y * np.log(A)) / Z.shape[0], A


def dropout(A, keep_prob, rng):
    D = rng.random(A.shape, dtype=np.float32) < keep_prob
    return A * D / keep_prob


def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    m[:] = beta1 * m + (1 - beta1) * g
    v[:] = beta2 * v + (1 - beta2) * g**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    w[:] = w - lr * m_hat / (np.sqrt(v_hat) + eps)


def rmsprop_update(w, g, s, lr=1e-3, beta=0.9, eps=1e-8):
    s[:] = beta * s + (1 - beta) * g**2
    w[:] = w - lr * g / (np.sqrt(s) + eps)


def momentum_update(w, g, v, lr=1e-2, beta=0.9):
    v[:] = beta * v + (1 - beta) * g
    w[:] = w - lr * v


def batchnorm_forward(Z, gamma, beta, eps=1e-5):
    mu = Z.mean(axis=0)
    var = Z.var(axis=0)
    Znorm = (Z - mu) / np.sqrt(var + eps)
    return gamma * Znorm + beta


def batchnorm_forward_infer(Z, gamma, beta, running_mean, running_var, eps=1e-5):
    return gamma * (Z - running_mean) / np.sqrt(running_var + eps) + beta


def batchnorm_backward(dout, xhat, gamma, invstd):
    m = dout.shape[0]
    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * xhat, axis=0)
    dxhat = dout * gamma
    dZ = invstd / m * (m * dxhat - np.sum(dxhat, axis=0) - xhat * np.sum(dxhat * xhat, axis=0))
    return dZ, dgamma, dbeta


def softmax_cross_entropy_backward(A, Y):
    m = A.shape[0]
    dZ = (A - Y) / m
    return dZ, np.sum(dZ, axis=0)


def gd_update(w, g, lr=1e-2):
    w[:] = w - lr * g


def ewa_update(v, x, beta=0.9):
    v[:] = beta * v + (1 - beta) * x
