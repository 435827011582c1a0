"""fusednet.optim: every optimiser against a hand-written NumPy loop of the
course's formulas, over backend x dtype x shape, and against torch.optim."""

import copy
import io
import pickle
import tracemalloc

import numpy as np
import pytest

import fusednet.kernels as K
from fusednet import optim
from fusednet.optim import GD, Adam, Momentum, RMSProp, ewa

BACKENDS = K.available()
DTYPES = (np.float32, np.float64)
SHAPES = ((0,), (1,), (7,), (1001,))
STEPS = 5

#: name -> (class, hyperparameters); the loop below reads the same dict
CASES = {
    "gd": (GD, dict(lr=0.1)),
    "momentum": (Momentum, dict(lr=0.05, beta=0.9)),
    "momentum_bc": (Momentum, dict(lr=0.05, beta=0.8, bias_correction=True)),
    "rmsprop": (RMSProp, dict(lr=0.01, beta=0.9, eps=1e-8)),
    "adam": (Adam, dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)),
}


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def problem(shape, dtype, seed=0, steps=STEPS):
    """Initial weights and a sequence of read-only gradients."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(shape).astype(dtype)
    grads = []
    for _ in range(steps):
        g = rng.standard_normal(shape).astype(dtype)
        g.flags.writeable = False
        grads.append(g)
    return w0, grads


def loop(case, w0, grads, lrs=None, l2=0.0, n_decay=None):
    """The course's update rules, written out in float64 (independent of the kernels)."""
    cls, hp = CASES[case]
    kind = cls.__name__
    w = w0.astype(np.float64).ravel().copy()
    a = np.zeros_like(w)  # v (momentum), s (rmsprop), m (adam)
    b = np.zeros_like(w)  # v (adam)
    nd = w.size if n_decay is None else min(n_decay, w.size)
    for t, g in enumerate(grads, 1):
        lr = hp["lr"] if lrs is None else lrs[t - 1]
        g = g.astype(np.float64).ravel().copy()
        g[:nd] += l2 * w[:nd]
        if kind == "GD":
            w -= lr * g
        elif kind == "Momentum":
            beta = hp["beta"]
            a = beta * a + (1 - beta) * g
            w -= lr * a / ((1 - beta**t) if hp.get("bias_correction") else 1.0)
        elif kind == "RMSProp":
            beta, eps = hp["beta"], hp["eps"]
            a = beta * a + (1 - beta) * g**2
            w -= lr * g / (np.sqrt(a) + eps)
        else:
            b1, b2, eps = hp["beta1"], hp["beta2"], hp["eps"]
            a = b1 * a + (1 - b1) * g
            b = b2 * b + (1 - b2) * g**2
            mhat, vhat = a / (1 - b1**t), b / (1 - b2**t)
            w -= lr * mhat / (np.sqrt(vhat) + eps)
    return w.reshape(w0.shape)


def make(case, **kw):
    cls, hp = CASES[case]
    return cls(**hp, **kw)


# --------------------------------------------------------------------------
# equality with the formulas
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_numpy_loop(backend, dtype, shape, case):
    w0, grads = problem(shape, dtype)
    opt = make(case, backend=backend)
    w = w0.copy()
    for g in grads:
        opt.step(w, g)
    assert w.dtype == dtype and w.shape == shape
    assert opt.t == STEPS
    np.testing.assert_allclose(w, loop(case, w0, grads), **tol(dtype))
    for g0, g in zip(problem(shape, dtype)[1], grads):
        np.testing.assert_array_equal(g, g0)  # gradients are read only


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
def test_list_of_arrays(backend, dtype, case):
    shapes = [(3, 4), (0,), (5,), (1001,), ()]
    probs = [problem(s, dtype, seed=i) for i, s in enumerate(shapes)]
    ws = [w0.copy() for w0, _ in probs]
    opt = make(case, backend=backend)
    for k in range(STEPS):
        opt.step(ws, tuple(gs[k] for _, gs in probs), l2=0.3, n_decay=6)
    assert opt.t == STEPS
    for w, (w0, gs) in zip(ws, probs):
        np.testing.assert_allclose(w, loop(case, w0, gs, l2=0.3, n_decay=6), **tol(dtype))


@pytest.mark.parametrize("n_decay", [None, 0, 3, 7, 100])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_on_the_first_n_decay_elements(backend, case, n_decay):
    w0, grads = problem((7,), np.float64)
    w = w0.copy()
    opt = make(case, backend=backend)
    for g in grads:
        opt.step(w, g, l2=0.5, n_decay=n_decay)
    np.testing.assert_allclose(w, loop(case, w0, grads, l2=0.5, n_decay=n_decay), rtol=1e-12)
    if n_decay == 0:  # nothing regularised: the same as l2 = 0
        np.testing.assert_allclose(w, loop(case, w0, grads), rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lr_override_is_for_one_step(backend, case):
    w0, grads = problem((7,), np.float64)
    lrs = [0.2, None, 0.003, None, 0.05]
    w = w0.copy()
    opt = make(case, backend=backend)
    for g, lr in zip(grads, lrs):
        opt.step(w, g, lr)
        assert opt.lr == CASES[case][1]["lr"]
    expected = [CASES[case][1]["lr"] if lr is None else lr for lr in lrs]
    np.testing.assert_allclose(w, loop(case, w0, grads, lrs=expected), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_t_counts_steps_and_adam_uses_t_after_the_increment(backend):
    opt = Adam(lr=0.01, backend=backend)
    assert opt.t == 0
    ws = [np.zeros(3), np.zeros(4)]
    gs = [np.array([1.0, -2.0, 0.5]), np.array([3.0, -1e-3, 1.0, -1.0])]
    opt.step(ws, gs)
    assert opt.t == 1  # once per step, not per array
    # t = 1: m_hat = g, v_hat = g**2, so the first step is lr * sign(g)
    np.testing.assert_allclose(ws[0], -0.01 * np.sign(gs[0]), rtol=1e-6)
    np.testing.assert_allclose(ws[1], -0.01 * np.sign(gs[1]), rtol=1e-4)
    for _ in range(4):
        opt.step(ws, gs)
    assert opt.t == 5
    opt.reset()
    assert opt.t == 0 and opt.state_dict()["n_arrays"] == 0


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99])
def test_momentum_undampened_form_is_lr_scaled_by_one_over_one_minus_beta(beta):
    """The notes: with v = beta v + dW instead, alpha is in effect scaled by 1/(1-beta)."""
    w0, grads = problem((7,), np.float64, steps=10)
    w, u, b = w0.copy(), w0.copy(), np.zeros(7)
    opt = Momentum(lr=0.1, beta=beta)
    for g in grads:
        opt.step(w, g)
        b = beta * b + g
        u -= 0.1 * (1 - beta) * b
    np.testing.assert_allclose(w, u, rtol=1e-12)


def test_momentum_beta_zero_is_gd():
    w0, grads = problem((7,), np.float64)
    a, b = w0.copy(), w0.copy()
    m, gd = Momentum(lr=0.1, beta=0.0), GD(lr=0.1)
    for g in grads:
        m.step(a, g)
        gd.step(b, g)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip_is_bitwise(backend, dtype, case):
    w0, grads = problem((1001,), dtype, steps=8)
    b0, bgrads = problem((3, 2), dtype, seed=1, steps=8)
    ws = [w0.copy(), b0.copy()]
    opt = make(case, backend=backend)
    for k in range(3):
        opt.step(ws, [grads[k], bgrads[k]], l2=0.1, n_decay=500)
    d = opt.state_dict()
    ws2 = [w.copy() for w in ws]
    fresh = type(opt)(backend=backend)
    fresh.load_state_dict(d)
    assert fresh.hyperparameters() == opt.hyperparameters() and fresh.t == 3
    for k in range(3, 8):
        opt.step(ws, [grads[k], bgrads[k]], l2=0.1, n_decay=500)
        fresh.step(ws2, [grads[k], bgrads[k]], l2=0.1, n_decay=500)
    for a, b in zip(ws, ws2):
        assert a.tobytes() == b.tobytes()
    for k, v in opt.state_dict().items():
        other = fresh.state_dict()[k]
        assert (v.tobytes() == other.tobytes()) if isinstance(v, np.ndarray) else v == other


@pytest.mark.parametrize("case", CASES)
def test_state_dict_is_plain_and_survives_savez(case):
    w0, grads = problem((4, 3), np.float32)
    opt = make(case)
    w = w0.copy()
    opt.step(w, grads[0])
    d = opt.state_dict()
    assert d["class"] == CASES[case][0].__name__ and d["t"] == 1
    for k, v in d.items():
        assert isinstance(v, (str, bool, int, float, np.ndarray)), k
        if isinstance(v, np.ndarray):
            assert v.shape == w.shape and v.dtype == w.dtype
    buf = io.BytesIO()
    np.savez(buf, **d)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}
    fresh = type(opt)(backend=None)
    fresh.load_state_dict(loaded)
    w2 = w.copy()
    opt.step(w, grads[1])
    fresh.step(w2, grads[1])
    assert w.tobytes() == w2.tobytes()


def test_state_dict_and_load_copy_the_arrays():
    w0, grads = problem((7,), np.float64)
    opt = Adam()
    opt.step(w0.copy(), grads[0])
    d = opt.state_dict()
    d["m.0"][:] = 123.0
    assert not np.any(opt.state_dict()["m.0"] == 123.0)
    fresh = Adam()
    fresh.load_state_dict(d)
    d["v.0"][:] = 456.0
    assert np.all(fresh.state_dict()["m.0"] == 123.0)
    assert not np.any(fresh.state_dict()["v.0"] == 456.0)


def _adam_dict():
    opt = Adam(lr=0.01)
    opt.step([np.zeros(3), np.zeros(2)], [np.ones(3), np.ones(2)])
    return opt.state_dict()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update({"class": "RMSProp"}), "RMSProp"),
        (lambda d: d.pop("beta2"), "beta2"),
        (lambda d: d.pop("v.1"), "v.1"),
        (lambda d: d.update({"extra": 1}), "extra"),
        (lambda d: d.update({"n_arrays": 3}), "m.2"),
        (lambda d: d.update({"n_arrays": -1}), "n_arrays"),
        (lambda d: d.update({"t": -1}), "'t'"),
        (lambda d: d.update({"t": 1.5}), "'t'"),
        (lambda d: d.update({"lr": 0.0}), "lr"),
        (lambda d: d.update({"beta1": 1.0}), "beta1"),
        (lambda d: d.update({"eps": "small"}), "eps"),
        (lambda d: d.update({"v.0": np.zeros(4)}), "v.0"),
        (lambda d: d.update({"m.1": np.zeros(2, np.float32)}), "v.1"),
        (lambda d: d.update({"m.0": [0.0, 0.0, 0.0]}), "m.0"),
        (lambda d: d.update({"m.0": np.zeros(3, np.int64)}), "m.0"),
    ],
)
def test_load_state_dict_rejects_bad_dicts(edit, match):
    d = _adam_dict()
    edit(d)
    opt = Adam(lr=0.5)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(d)
    assert opt.state_dict() == before  # unchanged


def test_load_state_dict_rejects_non_mappings():
    with pytest.raises(TypeError, match="mapping"):
        Adam().load_state_dict([("class", "Adam")])


def test_state_is_checked_against_params_on_the_next_step():
    opt = Adam()
    opt.load_state_dict(_adam_dict())  # built for shapes (3,) and (2,)
    with pytest.raises(ValueError, match=r"params\[1\]"):
        opt.step([np.zeros(3), np.zeros(5)], [np.ones(3), np.ones(5)])
    with pytest.raises(ValueError, match="params has 1 array"):
        opt.step(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match=r"params\[0\].*float32"):
        opt.step(
            [np.zeros(3, np.float32), np.zeros(2, np.float32)],
            [np.ones(3, np.float32), np.ones(2, np.float32)],
        )
    assert opt.t == 1
    opt.step([np.zeros(3), np.zeros(2)], [np.ones(3), np.ones(2)])
    assert opt.t == 2


@pytest.mark.parametrize("case", ["momentum", "rmsprop", "adam"])
def test_state_shape_mismatch_on_a_later_step(case):
    opt = make(case)
    opt.step(np.zeros(5), np.ones(5))
    with pytest.raises(ValueError, match="params has shape"):
        opt.step(np.zeros(6), np.ones(6))
    with pytest.raises(ValueError, match="params has shape"):
        opt.step(np.zeros((5, 1)), np.ones((5, 1)))
    assert opt.t == 1
    w = np.zeros(5)
    opt.step(w, np.ones(5))  # other arrays of the same shape carry the state on
    assert opt.t == 2
    opt.reset()
    opt.step(np.zeros(6), np.ones(6))
    assert opt.t == 1


def test_gd_has_no_shape_constraint():
    opt = GD()
    opt.step(np.zeros(5), np.ones(5))
    opt.step([np.zeros(2), np.zeros(3)], [np.ones(2), np.ones(3)])
    assert opt.t == 2 and opt.state_dict() == {"class": "GD", "lr": 0.1, "t": 2, "n_arrays": 0}


def test_copy_and_pickle_continue_identically():
    w0, grads = problem((9,), np.float64)
    opt = Adam(lr=0.02)
    w = w0.copy()
    opt.step(w, grads[0])
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        a, b = w.copy(), w.copy()
        ref = copy.deepcopy(opt)
        for g in grads[1:]:
            ref.step(a, g)
            other.step(b, g)
        assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (GD, dict(lr=0.0), "lr"),
        (GD, dict(lr=-0.1), "lr"),
        (GD, dict(lr=float("inf")), "lr"),
        (GD, dict(lr=float("nan")), "lr"),
        (Momentum, dict(beta=1.0), "beta"),
        (Momentum, dict(beta=-0.1), "beta"),
        (Momentum, dict(beta=float("nan")), "beta"),
        (RMSProp, dict(beta=1.5), "beta"),
        (RMSProp, dict(eps=0.0), "eps"),
        (RMSProp, dict(eps=-1e-8), "eps"),
        (Adam, dict(beta1=1.0), "beta1"),
        (Adam, dict(beta2=1.0), "beta2"),
        (Adam, dict(beta2=-1e-9), "beta2"),
        (Adam, dict(eps=0.0), "eps"),
        (Adam, dict(lr=0.0), "lr"),
        (Adam, dict(backend="fortran"), "backend"),
    ],
)
def test_bad_hyperparameters(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (GD, dict(lr="0.1"), "lr"),
        (GD, dict(lr=True), "lr"),
        (Adam, dict(beta1=None), "beta1"),
        (Momentum, dict(bias_correction=1), "bias_correction"),
    ],
)
def test_hyperparameters_of_the_wrong_type(cls, kwargs, match):
    with pytest.raises(TypeError, match=match):
        cls(**kwargs)


def test_hyperparameters_are_checked_when_set():
    opt = Adam()
    opt.lr = 0.5
    opt.beta2 = 0.99
    assert opt.hyperparameters() == {"lr": 0.5, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8}
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="beta1"):
        opt.beta1 = 1.0
    assert opt.lr == 0.5 and opt.beta1 == 0.9
    assert repr(opt) == "Adam(lr=0.5, beta1=0.9, beta2=0.99, eps=1e-08)"
    with pytest.raises(AttributeError):
        opt.t = 3


def _bad_step_cases():
    w, g = np.zeros(4), np.ones(4)
    ro = np.zeros(4)
    ro.flags.writeable = False
    big = np.zeros(8)
    return [
        (dict(params=w, grads=g, lr=0.0), ValueError, "lr"),
        (dict(params=w, grads=g, lr=float("nan")), ValueError, "lr"),
        (dict(params=w, grads=g, lr=float("inf")), ValueError, "lr"),
        (dict(params=w, grads=g, l2=-1.0), ValueError, "l2"),
        (dict(params=w, grads=g, l2=float("nan")), ValueError, "l2"),
        (dict(params=w, grads=g, l2=0.1, n_decay=-1), ValueError, "n_decay"),
        (dict(params=w, grads=g, n_decay=2.5), TypeError, "n_decay"),
        (dict(params=w.astype(np.int64), grads=g), TypeError, "params"),
        (dict(params=w, grads=g.astype(np.float32)), TypeError, "grads"),
        (dict(params=w, grads=np.ones(5)), ValueError, "grads"),
        (dict(params=w, grads=[g]), TypeError, "grads"),
        (dict(params=ro, grads=g), ValueError, "writable"),
        (dict(params=big[::2], grads=g), ValueError, "contiguous"),
        (dict(params=w, grads=big[::2]), ValueError, "contiguous"),
        (dict(params=w.tolist(), grads=g.tolist()), TypeError, r"params\[0\]"),
        (dict(params={"w": w}, grads=g), TypeError, "params"),
        (dict(params=[w, g], grads=[g]), ValueError, "same length"),
        (dict(params=[w, w], grads=[g, g]), ValueError, r"params\[1\] shares memory"),
        (dict(params=w, grads=w), ValueError, "shares memory"),
        (dict(params=[big[:4], big[2:6]], grads=[g, g]), ValueError, "shares memory"),
        (dict(params=[big[:4]], grads=[big[3:7]]), ValueError, "shares memory"),
    ]


@pytest.mark.parametrize("case", ["gd", "adam"])
@pytest.mark.parametrize("index", range(len(_bad_step_cases())))
def test_bad_step_arguments_change_nothing(case, index):
    kwargs, exc, match = _bad_step_cases()[index]
    opt = make(case)
    params = kwargs["params"]
    before = copy.deepcopy(params)
    with pytest.raises(exc, match=match):
        opt.step(**kwargs)
    assert opt.t == 0 and opt.state_dict()["n_arrays"] == 0
    arrays = list(params.values()) if isinstance(params, dict) else params
    expected = list(before.values()) if isinstance(before, dict) else before
    np.testing.assert_array_equal(np.asarray(arrays), np.asarray(expected))


def test_views_of_one_arena_and_overlapping_grads_are_fine():
    arena, grads = np.zeros(10), np.ones(10)
    opt = Momentum(lr=1.0, beta=0.0)
    opt.step([arena[:4], arena[4:]], [grads[:4], grads[2:8]])
    np.testing.assert_array_equal(arena, -1.0)


# --------------------------------------------------------------------------
# steady-state cost: resolution once, no allocation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_allocation_per_step(backend, case):
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal(1001), rng.standard_normal(7)]
    gs = [rng.standard_normal(1001) * 1e-3, rng.standard_normal(7) * 1e-3]
    opt = make(case, backend=backend)
    for _ in range(3):  # warm-up: state allocated, kernels compiled
        opt.step(ws, gs, 0.001, l2=0.01, n_decay=500)
    tracemalloc.start()
    try:
        for _ in range(100):
            opt.step(ws, gs, 0.001, l2=0.01, n_decay=500)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 2048
    if backend != "numpy":  # the readable reference kernels use temporaries by design
        assert peak < 4096


def test_kernel_is_resolved_once_and_again_when_the_backend_changes(
    monkeypatch, restore_backend
):
    calls = []
    real = K.resolve

    def counting(name, backend=None):
        calls.append((name, backend))
        return real(name, backend)

    monkeypatch.setattr(K, "resolve", counting)
    K.set_backend("auto")
    opt = Momentum()
    w, g = np.zeros(3), np.ones(3)
    for _ in range(10):
        opt.step(w, g)
    assert calls == [("momentum_update", "auto")]
    K.set_backend("numpy")
    for _ in range(10):
        opt.step(w, g)
    assert calls == [("momentum_update", "auto"), ("momentum_update", "numpy")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_backend_beats_the_global_choice(backend, monkeypatch, restore_backend):
    calls = []
    real = K.resolve
    monkeypatch.setattr(K, "resolve", lambda n, b=None: calls.append(b) or real(n, b))
    opt = RMSProp(backend=backend)
    assert opt.backend == backend and "backend=" in repr(opt)
    w, g = np.zeros(3), np.ones(3)
    for glob in ("numpy", "auto", "numpy"):
        K.set_backend(glob)
        opt.step(w, g)
    assert set(calls) == {backend}
    assert opt.t == 3


# --------------------------------------------------------------------------
# ewa
# --------------------------------------------------------------------------


def test_ewa_matches_the_notes_example():
    theta = [10.0, 20.0, 30.0]
    v = ewa(theta, beta=0.98)
    assert v.dtype == np.float64 and v.shape == (3,)
    np.testing.assert_allclose(v[:2], [0.02 * 10.0, 0.0196 * 10.0 + 0.02 * 20.0], rtol=1e-14)
    vc = ewa(theta, beta=0.98, bias_correction=True)
    np.testing.assert_allclose(vc, v / (1 - 0.98 ** np.arange(1, 4)), rtol=1e-14)
    np.testing.assert_allclose(vc[0], 10.0, rtol=1e-14)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.98])
def test_ewa_recursion_and_constant_series(beta):
    x = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    v, out = 0.0, []
    for xi in x.astype(np.float64):
        v = beta * v + (1 - beta) * xi
        out.append(v)
    np.testing.assert_allclose(ewa(x, beta), out, rtol=1e-13)
    np.testing.assert_allclose(ewa(np.full(20, 3.0), beta, bias_correction=True), 3.0, rtol=1e-13)
    assert ewa([], beta).shape == (0,)


def test_ewa_matches_the_kernel():
    x = np.random.default_rng(2).standard_normal(30)
    v = np.zeros(1)
    out = []
    for xi in x:
        K.ewa_update(v, np.array([xi]), 0.9)
        out.append(v[0])
    np.testing.assert_allclose(ewa(x, 0.9), out, rtol=1e-13)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((np.zeros((2, 2)),), ValueError, "1-D"),
        ((np.zeros(3), 1.0), ValueError, "beta"),
        ((np.zeros(3), -0.5), ValueError, "beta"),
        ((["a", "b"],), TypeError, "real"),
        ((np.zeros(3), 0.9, "yes"), TypeError, "bias_correction"),
    ],
)
def test_ewa_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        ewa(*args)


def test_public_names():
    assert set(optim.__all__) == {"Optimizer", "GD", "Momentum", "RMSProp", "Adam", "ewa"}
    for name in ("GD", "Momentum", "RMSProp", "Adam"):
        doc = getattr(optim, name).__doc__
        assert ".. math::" in doc
    for name in ("Momentum", "RMSProp", "Adam"):
        assert ".. warning::" in getattr(optim, name).__doc__
    assert "1 / (1 - \\beta)" in ewa.__doc__


# --------------------------------------------------------------------------
# against torch.optim (torch is in the test extras)
# --------------------------------------------------------------------------


def _torch_run(torch, make_opt, w0, grads):
    p = torch.tensor(w0.copy(), requires_grad=True)
    opt = make_opt([p])
    for g in grads:
        p.grad = torch.tensor(g.copy())
        opt.step()
    return p.detach().numpy()


TORCH_CASES = {
    # ours (case, l2) -> torch.optim factory
    "gd": lambda T, hp, l2: (lambda ps: T.optim.SGD(ps, lr=hp["lr"], weight_decay=l2)),
    # b_t = beta b + g = v_t / (1 - beta): same steps with lr * (1 - beta)
    "momentum": lambda T, hp, l2: (
        lambda ps: T.optim.SGD(
            ps, lr=hp["lr"] * (1 - hp["beta"]), momentum=hp["beta"], weight_decay=l2
        )
    ),
    "rmsprop": lambda T, hp, l2: (
        lambda ps: T.optim.RMSprop(
            ps, lr=hp["lr"], alpha=hp["beta"], eps=hp["eps"], weight_decay=l2, centered=False
        )
    ),
    "adam": lambda T, hp, l2: (
        lambda ps: T.optim.Adam(
            ps, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], weight_decay=l2
        )
    ),
}


@pytest.mark.parametrize("l2", [0.0, 0.2])
@pytest.mark.parametrize("case", TORCH_CASES)
@pytest.mark.parametrize("shape", [(1,), (7,), (1001,), (3, 5)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch_optim(backend, dtype, shape, case, l2):
    torch = pytest.importorskip("torch")
    w0, grads = problem(shape, dtype, steps=8)
    w = w0.copy()
    opt = make(case, backend=backend)
    for g in grads:
        opt.step(w, g, l2=l2)
    ref = _torch_run(torch, TORCH_CASES[case](torch, CASES[case][1], l2), w0, grads)
    np.testing.assert_allclose(w, ref, **tol(dtype))


def test_torch_dampened_momentum_is_not_the_course_form():
    """SGD(momentum=beta, dampening=beta) starts its buffer at g_1 undampened:
    b_t = v_t + beta**t g_1 (as the Momentum docstring warns)."""
    torch = pytest.importorskip("torch")
    beta = 0.9
    w0, grads = problem((7,), np.float64)
    p = torch.tensor(w0.copy(), requires_grad=True)
    topt = torch.optim.SGD([p], lr=0.05, momentum=beta, dampening=beta)
    ours = Momentum(lr=0.05, beta=beta)
    w = w0.copy()
    for t, g in enumerate(grads, 1):
        p.grad = torch.tensor(g.copy())
        topt.step()
        ours.step(w, g)
        buf = topt.state[p]["momentum_buffer"].numpy()
        np.testing.assert_allclose(buf, ours.state_dict()["v.0"] + beta**t * grads[0], rtol=1e-12)
    assert not np.allclose(p.detach().numpy(), w)
