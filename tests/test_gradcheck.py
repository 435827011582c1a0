"""Gradient checking: passes on correct backprop, names the parameter of a planted bug.

The batched compiled evaluator is pinned to the course's per-coordinate loop
(``backend="numpy"``) on networks that take every path through it.
"""

import numpy as np
import pytest

import fusednet as fn
from fusednet import kernels
from fusednet.gradcheck import loop_seconds, verdict_of
from fusednet.kernels import _policy
from fusednet.layers import Dense

L = fn.layers
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "linear"]
OUTPUTS = {"sigmoid": 1, "softmax": 4, "linear": 3}
PASS = ("great", "ok")


def data(m=24, n=5, out="softmax", k=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n))
    if out == "softmax":
        y = rng.integers(0, k, m)
    elif out == "sigmoid":
        y = rng.integers(0, 2, (m, k)) if k > 1 else rng.integers(0, 2, m)
    else:
        y = rng.standard_normal((m, k))
    return X, y


def net(hidden="tanh", out="softmax", k=4, l2=0.0, bn=False, dropout=False, dtype="float64", use_bias=True):
    layers = [L.Dense(6, activation=hidden, use_bias=use_bias)]
    if dropout:
        layers.append(L.Dropout(0.7))
    if bn:
        layers += [L.Dense(5, use_bias=False), L.BatchNorm(), L.Activation(hidden)]
    layers.append(L.Dense(k, activation=out))
    return fn.Sequential(layers, input_dim=5, l2=l2, dtype=dtype, seed=1)


def n_params(model):
    return sum(a.size for _, a in model.parameters())


# --------------------------------------------------------------------------
# correct backprop passes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("out", list(OUTPUTS))
def test_passes_for_every_activation_and_loss(hidden, out):
    k = OUTPUTS[out]
    X, y = data(out=out, k=k)
    model = net(hidden, out, k)
    g = fn.gradcheck(model, X, y, backend="numba")
    assert g.verdict in PASS, g
    assert g.n_checked == n_params(model)
    assert g.backend == "numba"


def test_auto_runs_the_loop_when_it_is_quicker_than_compiling_the_batched_kernel():
    """"auto" (the default): the course's loop for a check the loop does in well under a second, the batched
    kernel above; both give the same verdict."""
    X, y = data(m=16, k=3)
    small = net("tanh", "softmax", 3)
    g = fn.gradcheck(small, X, y)
    assert g.backend == "numpy" and g.verdict in PASS
    assert loop_seconds(small.plan(), 16, g.n_checked) < _policy.GRADCHECK_LOOP_SECONDS
    rng = np.random.default_rng(3)
    Xb, yb = rng.standard_normal((64, 60)), rng.integers(0, 3, 64)
    big = fn.Sequential([Dense(128, "tanh"), Dense(3, "softmax")], input_dim=60, dtype="float64")
    assert loop_seconds(big.plan(), 64, n_params(big)) > _policy.GRADCHECK_LOOP_SECONDS
    g = fn.gradcheck(big, Xb, yb)
    assert g.backend == "numba" and g.verdict in PASS


@pytest.mark.parametrize("l2", [0.0, 0.7])
@pytest.mark.parametrize("hidden", ["relu", "tanh", "sigmoid"])
def test_passes_with_dropout_batchnorm_and_l2(l2, hidden):
    X, y = data()
    g = fn.gradcheck(net(hidden, l2=l2, bn=True, dropout=True), X, y)
    assert g.verdict in PASS, g
    assert {"batchnorm_0.gamma", "batchnorm_0.beta"} <= set(g.names)


#: networks that take every path of the batched evaluator: a perturbation that
#: stays one unit up to the loss, one that crosses a Dense, batch norm above and
#: at the perturbed layer, hidden softmax, an Activation as the output layer,
#: Dropout anywhere, no bias, multi-unit sigmoid and linear outputs
ARCHS = {
    "bn-stack": ([L.Dense(7, activation="relu"), L.Dropout(0.5), L.Dense(6, use_bias=False), L.BatchNorm(),
                  L.Activation("tanh"), L.Dense(4, activation="softmax")], "softmax", 4),
    "bn-before-output": ([L.Dense(6, activation="leaky_relu", leaky_slope=0.2), L.BatchNorm(momentum=0.5, eps=1e-3),
                          L.Dense(3, activation="sigmoid")], "sigmoid", 3),
    "hidden-softmax": ([L.Dense(6, activation="softmax"), L.Dense(5), L.Activation("softmax"), L.Dense(3)],
                       "linear", 3),
    "activation-output": ([L.Dense(6, activation="tanh"), L.Dropout(0.9), L.Dense(4), L.Dropout(0.8),
                           L.Activation("softmax")], "softmax", 4),
    "deep-no-bias": ([L.Dense(6, activation="sigmoid", use_bias=False), L.Dense(6, activation="tanh"),
                      L.BatchNorm(), L.Dense(5, activation="relu"), L.Dense(1, activation="sigmoid")], "sigmoid", 1),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_batched_equals_the_course_loop(arch):
    layers, out, k = ARCHS[arch]
    X, y = data(m=13, out=out, k=k, seed=2)
    model = fn.Sequential(layers, input_dim=5, l2=0.3, dtype="float64", seed=3)
    batched = fn.gradcheck(model, X, y)
    naive = fn.gradcheck(model, X, y, backend="numpy")
    assert naive.backend == "numpy"
    np.testing.assert_allclose(batched.numeric, naive.numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(batched.analytic, naive.analytic)
    assert batched.names == naive.names and batched.indices == naive.indices
    assert batched.cost == pytest.approx(naive.cost, rel=1e-12)
    assert batched.verdict in PASS and naive.verdict in PASS, (batched, naive)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_batched_equals_the_course_loop_far_from_the_tape(arch):
    """With a large eps values move by more than the near-the-tape series cover: tanh, sigmoid and the
    softmax loss are then evaluated by the functions themselves, and still agree with the loop."""
    layers, out, k = ARCHS[arch]
    X, y = data(m=13, out=out, k=k, seed=2)
    model = fn.Sequential(layers, input_dim=5, l2=0.3, dtype="float64", seed=3)
    batched = fn.gradcheck(model, X, y, eps=1e-2)
    naive = fn.gradcheck(model, X, y, eps=1e-2, backend="numpy")
    np.testing.assert_allclose(batched.numeric, naive.numeric, rtol=1e-6, atol=1e-8)


def test_batched_is_the_same_for_any_thread_count():
    X, y = data(m=40)
    model = net("tanh", l2=0.2, bn=True)
    before = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        one = fn.gradcheck(model, X, y)
        kernels.set_num_threads(2)
        two = fn.gradcheck(model, X, y)
    finally:
        kernels.set_num_threads(before)
    np.testing.assert_array_equal(one.numeric, two.numeric)


def test_cost_includes_the_l2_term_and_the_numeric_gradient_its_derivative():
    X, y = data()
    plain, decayed = net(l2=0.0), net(l2=2.0)
    g0, g1 = fn.gradcheck(plain, X, y), fn.gradcheck(decayed, X, y)
    m = len(X)
    W = dict(decayed.parameters())
    wsum = sum(float(np.sum(W[n] ** 2)) for n in W if n.endswith(".W"))
    assert g1.cost == pytest.approx(g0.cost + 2.0 / (2 * m) * wsum, rel=1e-12)
    for name, index, k in ((n, i, k) for k, (n, i) in enumerate(zip(g0.names, g0.indices))):
        extra = 2.0 / m * W[name][index] if name.endswith(".W") else 0.0
        assert g1.numeric[k] == pytest.approx(g0.numeric[k] + extra, abs=1e-8)


def test_float32_model_is_checked_in_float64_and_left_unchanged():
    X, y = data()
    model = net(dtype="float32", bn=True)
    before = [a.copy() for _, a in model.parameters()]
    g = fn.gradcheck(model, X.astype(np.float32), y)
    assert g.verdict in PASS, g
    assert g.numeric.dtype == np.float64 and g.analytic.dtype == np.float64
    for (_, a), b in zip(model.parameters(), before):
        np.testing.assert_array_equal(a, b)
    assert model.dtype == np.float32


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_parameters_and_running_statistics_are_unchanged(backend):
    X, y = data()
    model = net("relu", l2=0.1, bn=True, dropout=True)
    state = model.state_dict()
    fn.gradcheck(model, X, y, backend=backend)
    after = model.state_dict()
    np.testing.assert_array_equal(after["params"], state["params"])
    np.testing.assert_array_equal(after["running"], state["running"])


def test_unbuilt_model_is_built_for_X():
    X, y = data()
    model = fn.Sequential([L.Dense(4, activation="tanh"), L.Dense(4, activation="softmax")], dtype="float64")
    g = fn.gradcheck(model, X, y)
    assert model.built and model.input_dim == 5
    assert g.verdict in PASS and g.n_checked == 5 * 4 + 4 + 4 * 4 + 4


def test_follows_the_process_backend_unless_told():
    X, y = data(m=8)
    before = kernels.get_backend()
    try:
        fn.set_backend("numpy")
        assert fn.gradcheck(net(), X, y).backend == "numpy"
        assert fn.gradcheck(net(), X, y, backend="numba").backend == "numba"
    finally:
        fn.set_backend(before)


@pytest.mark.parametrize("analytic", [b for b in ("numba", "cython", "numpy") if b in kernels.available()])
def test_analytic_backend_is_the_one_checked_and_the_choice_is_restored(analytic):
    X, y = data(m=8)
    model = net(bn=True, l2=0.3)
    before = kernels.get_backend()
    try:
        fn.set_backend("auto")
        g = fn.gradcheck(model, X, y, backend="numpy", analytic_backend=analytic)
        assert kernels.get_backend() == "auto"
        same = fn.gradcheck(model, X, y, backend="numpy")
        fn.set_backend(analytic)
        expected = np.concatenate([a.reshape(-1) for _, a in model.loss_and_grads(X, y)[1]])
    finally:
        fn.set_backend(before)
    np.testing.assert_array_equal(g.analytic, expected)
    np.testing.assert_array_equal(g.numeric, same.numeric)  # the numeric side follows the process's choice
    assert g.verdict in PASS


# --------------------------------------------------------------------------
# planted bugs
# --------------------------------------------------------------------------


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
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_planted_bug_is_wrong_and_named_first(name, change, backend):
    X, y = data()
    model = _planted(net("tanh", l2=0.1), name, change)
    g = fn.gradcheck(model, X, y, backend=backend)
    assert g.verdict == "wrong", g
    assert g.worst[0][0] == name


@pytest.mark.parametrize("name", ["batchnorm_0.gamma", "batchnorm_0.beta", "dense_1.W"])
def test_planted_bug_under_batchnorm_and_dropout(name):
    X, y = data()
    model = _planted(net("relu", l2=0.1, bn=True, dropout=True), name, _scale)
    g = fn.gradcheck(model, X, y)
    assert g.verdict == "wrong", g
    assert g.worst[0][0] == name


def test_planted_bug_in_a_float32_model_is_seen():
    X, y = data()
    model = _planted(net("tanh", dtype="float32"), "dense_1.b", _bias_off)
    g = fn.gradcheck(model, X.astype(np.float32), y)
    assert g.verdict == "wrong", g
    assert g.worst[0][:2] == ("dense_1.b", (0,))
    # an honest wrapper changes nothing: still checked at float64 precision
    honest = _planted(net("tanh", dtype="float32"), "dense_1.b", lambda g: g)
    assert fn.gradcheck(honest, X.astype(np.float32), y).verdict in PASS


def test_subclass_with_a_wrong_backward_is_caught():
    class Buggy(fn.Sequential):
        def loss_and_grads(self, X, y):
            J, grads = super().loss_and_grads(X, y)
            return J, [(n, -g if n == "dense_1.W" else g) for n, g in grads]

    X, y = data()
    model = Buggy([L.Dense(6, activation="tanh"), L.Dense(4, activation="softmax")], input_dim=5,
                  dtype="float32", seed=1)
    g = fn.gradcheck(model, X, y)
    assert g.verdict == "wrong" and g.worst[0][0] == "dense_1.W"


def test_the_course_exercise_with_its_planted_bugs():
    """C2W1 "Gradient Checking": LINEAR->RELU->LINEAR->RELU->LINEAR->SIGMOID, 4 features, 3 examples.

    Its backward_propagation_n has two bugs: ``dW2 = ... * 2`` and ``db1 = 4./m * ...``.
    """
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 4))
    y = np.array([1, 1, 0])
    model = fn.Sequential([L.Dense(5, activation="relu"), L.Dense(3, activation="relu"),
                           L.Dense(1, activation="sigmoid")], input_dim=4, dtype="float64", seed=1)
    for name, _ in model.parameters():  # biases off zero, as the exercise's random parameters
        if name.endswith(".b"):
            dict(model.parameters())[name][...] = rng.standard_normal(dict(model.parameters())[name].shape)
    good = fn.gradcheck(model, X, y)
    assert good.verdict in PASS, good
    _planted(model, "dense_1.W", _scale)
    _planted(model, "dense_0.b", lambda g: 4 * g)
    bad = fn.gradcheck(model, X, y)
    assert bad.verdict == "wrong", bad
    assert bad.difference > 0.1
    assert bad.worst[0][0] in ("dense_1.W", "dense_0.b")
    assert {w[0] for w in bad.worst[:3]} <= {"dense_1.W", "dense_0.b"}


# --------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------


def test_sample_checks_a_reproducible_subset_of_the_same_values():
    X, y = data()
    full = fn.gradcheck(net(), X, y)
    g = fn.gradcheck(net(), X, y, sample=20, seed=3)
    assert g.n_checked == 20 and g.verdict in PASS
    again = fn.gradcheck(net(), X, y, sample=20, seed=3)
    assert g.names == again.names and g.indices == again.indices
    position = {(n, i): k for k, (n, i) in enumerate(zip(full.names, full.indices))}
    at = [position[(n, i)] for n, i in zip(g.names, g.indices)]
    assert at == sorted(at)  # in parameter order
    np.testing.assert_array_equal(g.analytic, full.analytic[at])
    np.testing.assert_allclose(g.numeric, full.numeric[at], rtol=0, atol=1e-12)
    assert fn.gradcheck(net(), X, y, sample=10_000).n_checked == full.n_checked


def test_worst_entries_index_into_parameters():
    X, y = data()
    model = net(bn=True)
    g = fn.gradcheck(model, X, y, top=3)
    gd = dict(model.loss_and_grads(X, y)[1])
    assert len(g.worst) == 3
    for name, index, numeric, analytic in g.worst:
        assert isinstance(index, tuple) and all(isinstance(i, int) for i in index)
        assert gd[name][index] == analytic
        k = list(zip(g.names, g.indices)).index((name, index))
        assert g.numeric[k] == numeric
    diffs = [abs(n - a) for _, _, n, a in g.worst]
    assert diffs == sorted(diffs, reverse=True)
    assert diffs[0] == np.max(np.abs(g.numeric - g.analytic))


def test_difference_is_the_course_formula():
    X, y = data()
    g = fn.gradcheck(net(), X, y)
    a, n = g.analytic, g.numeric
    assert g.difference == pytest.approx(np.linalg.norm(n - a) / (np.linalg.norm(n) + np.linalg.norm(a)))
    assert g.verdict == verdict_of(g.difference)


def test_verdict_thresholds():
    assert [verdict_of(v) for v in (0.0, 1e-8, 1e-6, 1e-4, 1e-2, 1.0, np.nan, np.inf)] == [
        "great", "great", "ok", "worry", "wrong", "wrong", "wrong", "wrong"]
    assert [verdict_of(v) for v in (1e-7, 1e-5, 1e-3)] == ["ok", "worry", "wrong"]


def test_nan_gradient_reads_wrong_and_comes_first():
    X, y = data()
    model = _planted(net(), "dense_1.b", lambda g: g * np.nan)
    g = fn.gradcheck(model, X, y)
    assert g.verdict == "wrong" and np.isnan(g.difference)
    assert g.worst[0][0] == "dense_1.b"


def test_repr_and_str_read_well():
    X, y = data()
    g = fn.gradcheck(net(), X, y, top=4)
    assert repr(g).startswith("GradCheck(difference=") and g.verdict in repr(g)
    text = str(g)
    assert "difference" in text and g.verdict in text and f"{g.n_checked} coordinates" in text
    name, index, _, _ = g.worst[0]
    assert f"{name}[{', '.join(map(str, index))}]" in text


@pytest.mark.parametrize("kw", [{"eps": 0}, {"eps": -1e-7}, {"eps": np.nan}, {"eps": True}, {"sample": 0},
                                {"sample": 2.5}, {"sample": True}, {"backend": "fast"}, {"backend": "cython"},
                                {"top": -1}, {"analytic_backend": "fast"}])
def test_bad_arguments(kw):
    X, y = data()
    with pytest.raises(ValueError):
        fn.gradcheck(net(), X, y, **kw)


@pytest.mark.parametrize("bad", ["labels", "width", "nan"])
def test_bad_data_is_refused_before_any_work(bad):
    X, y = data()
    if bad == "labels":
        y = y + 10
    elif bad == "width":
        X = X[:, :3]
    else:
        X[2, 1] = np.nan
    with pytest.raises(ValueError):
        fn.gradcheck(net(), X, y)
