"""The peers of the course benchmarks, each run as a script in a process of its own.

    python _course_peers.py IMPL THREADS

IMPL is ``textbook`` (the course's NumPy loop), ``torch`` (PyTorch eager),
``jax`` (the whole fit in one ``jax.jit``: ``lax.fori_loop`` over the epochs,
``lax.scan`` over the mini-batches of each shuffled epoch) or ``sklearn``
(scikit-learn's ``MLPClassifier``).  The process serves the commands it reads
on stdin, one a line, so that it starts (imports) once for every workload:

``load TAG WORKLOAD.npz``
    WORKLOAD.npz, written by ``test_bench_course.py``, holds the data (``X``
    float64, examples in rows; ``y`` int class ids), the initial weights
    (``W0``, ``b0``, ... of shapes ``(n_in, n_out)`` and ``(n_out,)``,
    fusednet's layout) and a JSON ``spec``: layer sizes, hidden activation,
    output (``sigmoid`` or ``softmax``), optimiser (``gd`` or ``adam``),
    learning rate, batch size (0: the whole set), epochs of the timed fit, and
    the epochs and rows of the agreement check.  The program answers ``check TAG
    LOSS`` (when the spec asks for a check: the last epoch's cost of a float64
    fit from the given weights, mini-batches in order, the cost defined as
    fusednet's ``history["train_loss"]``), then ``ready TAG COMPILE_SECONDS`` once
    its float32 fit is built and run once (JAX: the time of
    ``lower(...).compile()``; 0 for the others), or ``error TAG MESSAGE``.
``go``
    One whole float32 fit of the loaded workload's ``epochs`` epochs (shuffled
    each epoch); the answer is its wall time in seconds.
"""

import importlib
import json
import sys
import time
import traceback

import numpy as np


def load(path):
    with np.load(path) as f:
        spec = json.loads(str(f["spec"]))
        n = len(spec["dims"]) - 1
        weights = [(f[f"W{i}"], f[f"b{i}"]) for i in range(n)]
        return spec, f["X"], f["y"], weights


def one_hot(spec, y, dtype):
    """Targets of shape (m, n_out): 0/1 in a column for a sigmoid output, one-hot for softmax."""
    if spec["output"] == "sigmoid":
        return y.reshape(-1, 1).astype(dtype)
    return np.eye(spec["dims"][-1], dtype=dtype)[y]


# ---------------------------------------------------------------- the course's NumPy loop


def textbook_program(spec, X, y, weights, threads):
    """Forward, backward and update written out with NumPy in the course's layout ((n_x, m), W[l] (n[l], n[l-1])).

    NumPy's BLAS threads are set by the environment the process starts with (``threads`` is not used here).
    """
    from fusednet._textbook import initialize_adam, random_mini_batches, update_parameters_with_adam

    L = len(weights)
    hidden = spec["hidden"]

    def initial(dtype):
        params = {}
        for l, (W, b) in enumerate(weights, start=1):
            params["W" + str(l)] = np.ascontiguousarray(W.T, dtype=dtype)
            params["b" + str(l)] = b.reshape(-1, 1).astype(dtype)
        return params

    def forward(X, params):
        caches = []
        A = X
        for l in range(1, L + 1):
            A_prev = A
            Z = np.dot(params["W" + str(l)], A_prev) + params["b" + str(l)]
            if l < L:
                A = np.maximum(0, Z) if hidden == "relu" else np.tanh(Z)
            elif spec["output"] == "sigmoid":
                A = 1 / (1 + np.exp(-Z))
            else:
                t = np.exp(Z - np.max(Z, axis=0, keepdims=True))
                A = t / np.sum(t, axis=0, keepdims=True)
            caches.append((A_prev, Z, A))
        return A, caches

    def compute_cost(AL, Y):
        m = Y.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            if spec["output"] == "sigmoid":
                return float(-np.sum(Y * np.log(AL) + (1 - Y) * np.log(1 - AL)) / m)
            return float(-np.sum(Y * np.log(AL)) / m)

    def backward(AL, Y, caches, params):
        grads = {}
        m = AL.shape[1]
        dZ = AL - Y
        for l in reversed(range(1, L + 1)):
            A_prev, Z, A = caches[l - 1]
            grads["dW" + str(l)] = np.dot(dZ, A_prev.T) / m
            grads["db" + str(l)] = np.sum(dZ, axis=1, keepdims=True) / m
            if l > 1:
                dA_prev = np.dot(params["W" + str(l)].T, dZ)
                _, Z_prev, A_prev_act = caches[l - 2]
                if hidden == "relu":
                    dZ = np.array(dA_prev, copy=True)
                    dZ[Z_prev <= 0] = 0
                else:
                    dZ = dA_prev * (1 - np.power(A_prev_act, 2))
        return grads

    def update_parameters(params, grads, learning_rate):
        for l in range(1, L + 1):
            params["W" + str(l)] = params["W" + str(l)] - learning_rate * grads["dW" + str(l)]
            params["b" + str(l)] = params["b" + str(l)] - learning_rate * grads["db" + str(l)]
        return params

    def make_fit(dtype, shuffle):
        XT = np.ascontiguousarray(X.T, dtype=dtype)
        Y = one_hot(spec, y, dtype).T.copy()
        m = XT.shape[1]
        batch = spec["batch"] if 0 < spec["batch"] < m else m
        rng = np.random.default_rng(0)
        state = {"params": initial(dtype), "t": 0}
        state["v"], state["s"] = initialize_adam(state["params"])

        def fit(epochs):
            params, v, s, t = state["params"], state["v"], state["s"], state["t"]
            cost = 0.0
            for _ in range(epochs):
                if batch == m:
                    minibatches = [(XT, Y)]
                elif shuffle:
                    minibatches = random_mini_batches(XT, Y, batch, rng)
                else:
                    minibatches = [(XT[:, k:k + batch], Y[:, k:k + batch]) for k in range(0, m, batch)]
                cost = 0.0
                for Xb, Yb in minibatches:
                    AL, caches = forward(Xb, params)
                    cost += compute_cost(AL, Yb) * Xb.shape[1] / m
                    grads = backward(AL, Yb, caches, params)
                    if spec["optimizer"] == "adam":
                        t += 1
                        params, v, s = update_parameters_with_adam(params, grads, v, s, t, spec["lr"])
                    else:
                        params = update_parameters(params, grads, spec["lr"])
            state.update(params=params, v=v, s=s, t=t)
            return cost

        return fit

    return make_fit


# ---------------------------------------------------------------- PyTorch eager


def torch_program(spec, X, y, weights, threads):
    import torch

    torch.set_num_threads(threads)

    def make_fit(dtype, shuffle):
        tdtype = getattr(torch, np.dtype(dtype).name)
        layers = []
        for l, (W, b) in enumerate(weights):
            lin = torch.nn.Linear(*W.shape).to(tdtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W.T.copy()))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if l < len(weights) - 1:
                layers.append(torch.nn.ReLU() if spec["hidden"] == "relu" else torch.nn.Tanh())
        net = torch.nn.Sequential(*layers)
        if spec["output"] == "sigmoid":
            loss_fn = torch.nn.BCEWithLogitsLoss()
            Y = torch.from_numpy(one_hot(spec, y, dtype))
        else:
            loss_fn = torch.nn.CrossEntropyLoss()
            Y = torch.from_numpy(y.astype(np.int64))
        Xt = torch.from_numpy(X.astype(dtype))
        if spec["optimizer"] == "adam":
            opt = torch.optim.Adam(net.parameters(), lr=spec["lr"])
        else:
            opt = torch.optim.SGD(net.parameters(), lr=spec["lr"])
        m = Xt.shape[0]
        batch = spec["batch"] if 0 < spec["batch"] < m else m

        def fit(epochs):
            cost = 0.0
            for _ in range(epochs):
                perm = torch.randperm(m) if shuffle and batch < m else None
                cost = 0.0
                for k in range(0, m, batch):
                    if batch == m:
                        xb, yb = Xt, Y
                    elif perm is None:
                        xb, yb = Xt[k:k + batch], Y[k:k + batch]
                    else:
                        idx = perm[k:k + batch]
                        xb, yb = Xt[idx], Y[idx]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(net(xb), yb)
                    loss.backward()
                    opt.step()
                    cost += loss.item() * xb.shape[0] / m
            return cost

        return fit

    return make_fit


# ---------------------------------------------------------------- JAX, the whole fit in one jit


def jax_program(spec, X, y, weights, threads):
    """The whole fit as one compiled function: ``fori_loop`` over epochs, ``scan`` over each epoch's mini-batches.

    Adam is written out (optax's ``adam``: bias-corrected, eps outside the square root).
    JAX's CPU client sizes its thread pool by the cores it finds (``threads`` is not a JAX setting).
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    n_layers = len(weights)
    b1, b2, eps = 0.9, 0.999, 1e-8

    def make_fit(dtype, shuffle):
        m = X.shape[0]
        batch = spec["batch"] if 0 < spec["batch"] < m else m
        n_full, rest = divmod(m, batch)

        def cost(params, xb, yb):
            a = xb
            for l, (W, b) in enumerate(params):
                z = a @ W + b
                if l < n_layers - 1:
                    a = jax.nn.relu(z) if spec["hidden"] == "relu" else jnp.tanh(z)
            if spec["output"] == "sigmoid":
                return jnp.mean(yb * jnp.logaddexp(0, -z) + (1 - yb) * jnp.logaddexp(0, z))
            return -jnp.mean(jnp.sum(yb * jax.nn.log_softmax(z), axis=1))

        def step(carry, xy):
            params, mom, sq, t = carry
            value, grads = jax.value_and_grad(cost)(params, *xy)
            if spec["optimizer"] == "adam":
                t = t + 1
                c1 = (1 - b1**t).astype(dtype)
                c2 = (1 - b2**t).astype(dtype)
                mom = jax.tree.map(lambda v, g: b1 * v + (1 - b1) * g, mom, grads)
                sq = jax.tree.map(lambda s, g: b2 * s + (1 - b2) * g * g, sq, grads)
                params = jax.tree.map(lambda p, v, s: p - spec["lr"] * (v / c1) / (jnp.sqrt(s / c2) + eps),
                                      params, mom, sq)
            else:
                params = jax.tree.map(lambda p, g: p - spec["lr"] * g, params, grads)
            return (params, mom, sq, t), value

        def fit(params, key, Xd, Yd, epochs):
            def epoch(_, carry):
                state, key, _ = carry
                Xe, Ye = Xd, Yd
                if shuffle and batch < m:
                    key, sub = jax.random.split(key)
                    perm = jax.random.permutation(sub, m)
                    Xe, Ye = Xd[perm], Yd[perm]
                if batch == m:
                    state, value = step(state, (Xe, Ye))
                    return state, key, value
                head = n_full * batch
                state, values = lax.scan(step, state, (Xe[:head].reshape(n_full, batch, -1),
                                                       Ye[:head].reshape(n_full, batch, -1)))
                total = jnp.sum(values) * batch
                if rest:
                    state, value = step(state, (Xe[head:], Ye[head:]))
                    total = total + value * rest
                return state, key, total / m

            zeros = jax.tree.map(jnp.zeros_like, params)
            state = (params, zeros, zeros, jnp.zeros((), jnp.int32))
            (params, _, _, _), _, value = lax.fori_loop(0, epochs, epoch, (state, key, jnp.zeros((), dtype)))
            return params, value

        args = ([(jnp.asarray(W, dtype), jnp.asarray(b, dtype)) for W, b in weights], jax.random.key(0),
                jnp.asarray(X, dtype), jnp.asarray(one_hot(spec, y, dtype)))
        compiled = {}

        def run(epochs):
            if epochs not in compiled:
                start = time.perf_counter()
                compiled[epochs] = jax.jit(fit, static_argnums=4).lower(*args, epochs).compile()
                run.compile_seconds = time.perf_counter() - start
            _, value = jax.block_until_ready(compiled[epochs](*args))
            return float(value)

        run.compile_seconds = 0.0
        return run

    def make(dtype, shuffle):
        if np.dtype(dtype) != np.float64:
            return make_fit(dtype, shuffle)
        with jax.enable_x64(True):
            fit = make_fit(dtype, shuffle)

        def fit64(epochs):
            with jax.enable_x64(True):
                return fit(epochs)

        return fit64

    return make


# ---------------------------------------------------------------- scikit-learn


def sklearn_program(spec, X, y, weights, threads):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    warnings.simplefilter("ignore", ConvergenceWarning)
    if spec["hidden"] != "relu":
        raise ValueError("the scikit-learn peer is written for ReLU hidden layers")

    def classifier(epochs, shuffle, warm_start=False):
        # early stopping off and no convergence test: exactly ``epochs`` epochs
        return MLPClassifier(hidden_layer_sizes=tuple(spec["dims"][1:-1]), activation="relu", solver="adam",
                             alpha=0.0, batch_size=spec["batch"] if spec["batch"] > 0 else X.shape[0],
                             learning_rate_init=spec["lr"], max_iter=epochs, tol=0.0, n_iter_no_change=10**9,
                             shuffle=shuffle, early_stopping=False, random_state=0, warm_start=warm_start)

    def make_fit(dtype, shuffle):
        Xd = X.astype(dtype)
        if not shuffle:
            # from the given weights: one epoch to build the estimator, then the weights, then the fit
            def fit_from_weights(epochs):
                clf = classifier(1, shuffle, warm_start=True).fit(Xd, y)
                clf.coefs_ = [W.astype(dtype) for W, _ in weights]
                clf.intercepts_ = [b.astype(dtype) for _, b in weights]
                clf.max_iter = epochs
                return float(clf.fit(Xd, y).loss_curve_[-1])

            return fit_from_weights
        return lambda epochs: float(classifier(epochs, shuffle).fit(Xd, y).loss_curve_[-1])

    return make_fit


# ---------------------------------------------------------------- the server loop


PROGRAMS = {"textbook": textbook_program, "torch": torch_program, "jax": jax_program, "sklearn": sklearn_program}
#: imported as the process starts, before the first workload comes
MODULES = {"textbook": "fusednet._textbook", "torch": "torch", "jax": "jax", "sklearn": "sklearn.neural_network"}


def serve(program, path, threads, tag):
    """Answer a ``load`` command; return the timed fit."""
    spec, X, y, weights = load(path)
    if spec["check_epochs"] > 0:
        rows = spec["check_rows"]
        check = program(spec, X[:rows], y[:rows], weights, threads)(np.float64, False)
        print("check", tag, repr(check(spec["check_epochs"])), flush=True)
    fit = program(spec, X, y, weights, threads)(np.float32, True)
    fit(spec["epochs"])
    print("ready", tag, getattr(fit, "compile_seconds", 0.0), flush=True)
    return lambda: fit(spec["epochs"])


def main(argv):
    program, threads = PROGRAMS[argv[1]], int(argv[2])
    importlib.import_module(MODULES[argv[1]])
    fit = None
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "load":
            tag, _, path = argument.partition(" ")
            fit = None
            try:
                fit = serve(program, path, threads, tag)
            except Exception as exc:
                traceback.print_exc()
                print("error", tag, f"{type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        elif command == "go":
            start = time.perf_counter()
            fit()
            print(time.perf_counter() - start, flush=True)


if __name__ == "__main__":
    main(sys.argv)
