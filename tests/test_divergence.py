"""TrainingDiverged keeps its promise on every path: after it, every parameter, optimiser state and
BatchNorm running statistic equals its value before the failing step, and the error names the step.

The paths: the whole fit in one call, the one-call epoch (shuffled, Cython), the one-call step
(unshuffled batches) and the per-kernel path on every backend.  The failures: an update that would
overflow (a schedule's huge learning rate, or gradients whose squares leave float32's range),
batch-norm statistics that overflow, a non-finite cost.
"""

import numpy as np
import pytest

import fusednet as fn
from fusednet import kernels, optim
from fusednet.errors import TrainingDiverged
from fusednet.layers import Activation, BatchNorm, Dense
from fusednet.model import Sequential
from fusednet.trainer import Trainer, _Run, _WholeFit

OPTIMISERS = {
    "gd": lambda: optim.GD(0.05),
    "momentum": lambda: optim.Momentum(0.05, beta=0.9, bias_correction=True),
    "rmsprop": lambda: optim.RMSProp(0.01),
    "adam": lambda: optim.Adam(0.01),
}

# (kernel backend, fused_step, shuffle): the fit in one call, the epoch in one call, a step per call,
# the per-kernel path
PATHS = {
    "fused-fit": ("auto", True, True),
    "fused-epoch": ("auto", True, True),
    "fused-step": ("auto", True, False),
    "numpy": ("numpy", False, True),
    "numba": ("numba", False, True),
    "cython": ("cython", False, True),
}


@pytest.fixture(params=sorted(PATHS))
def path(request, monkeypatch):
    backend, fused, shuffle = PATHS[request.param]
    if backend != "auto" and backend not in kernels.available():
        pytest.fail(f"backend {backend} is not available")
    if request.param == "fused-epoch":  # one call per epoch, not the whole fit in one
        monkeypatch.setattr(_WholeFit, "why_not", staticmethod(lambda run: "off for the test"))
    before = kernels.get_backend()
    kernels.set_backend(backend)
    yield request.param, fused, shuffle
    kernels.set_backend(before)


def blobs(m=96, nf=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, m)
    X = rng.standard_normal((m, nf)) + 1.5 * np.eye(k, nf)[y]
    return X.astype(np.float32), y


class Snapshots:
    """Records the model's and optimiser's state before every step of a _Run (any path)."""

    def __init__(self, monkeypatch):
        self.before = None
        snap = self

        def step(run, epoch, step, s, e):
            snap.before = (epoch, step, run.model._params.copy(), run.model._stats.copy(), run.opt.state_dict())
            return original_step(run, epoch, step, s, e)

        def epoch(run, epoch):
            # the one-call epoch: the state before the epoch; the step it stops at is checked by
            # comparing with the step-per-call path (see test_the_one_call_epoch_stops_where_the_steps_do)
            snap.before = (epoch, None, run.model._params.copy(), run.model._stats.copy(), run.opt.state_dict())
            return original_epoch(run, epoch)

        def whole(fit, bar):
            # the whole fit in one call: the state before it (as for the one-call epoch)
            run = fit.run
            snap.before = (run.first_epoch, None, run.model._params.copy(), run.model._stats.copy(),
                           run.opt.state_dict())
            return original_whole(fit, bar)

        original_step, original_epoch, original_whole = _Run.step, _Run._fused_epoch, _WholeFit.train
        monkeypatch.setattr(_Run, "step", step)
        monkeypatch.setattr(_Run, "_fused_epoch", epoch)
        monkeypatch.setattr(_WholeFit, "train", whole)


def _same_state(model, opt, params, stats, state):
    np.testing.assert_array_equal(model._params, params)
    np.testing.assert_array_equal(model._stats, stats)
    now = opt.state_dict()
    if state["n_arrays"] == 0 and now["n_arrays"] > 0:  # no step before: state made for this one is zeros
        assert now["t"] == state["t"] == 0
        for key, value in now.items():
            if isinstance(value, np.ndarray):
                assert not value.any(), key
        return
    assert now.keys() == state.keys()
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(now[key], value, err_msg=key)
        else:
            assert now[key] == value, key
    assert np.isfinite(model._params).all() and np.isfinite(model._stats).all()


class HugeAt:
    """A schedule: 0.01, but ``lr`` (finite) at one (epoch, step)."""

    def __init__(self, at, lr):
        self.at, self.lr = at, lr

    def __call__(self, epoch, step):
        return self.lr if (epoch, step) == self.at else 0.01


def _bn_net():
    return [Dense(6, None, use_bias=False), BatchNorm(), Activation("tanh"), Dense(3, "softmax")]


@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
@pytest.mark.parametrize("net", ["dense", "batchnorm"])
def test_an_overflowing_update_is_refused_and_nothing_changes(path, opt, net, monkeypatch):
    name, fused, shuffle = path
    X, y = blobs()
    layers = _bn_net() if net == "batchnorm" else [Dense(7, "relu"), Dense(3, "softmax")]
    model = Sequential(layers, input_dim=5, l2=0.1, seed=2)
    o = OPTIMISERS[opt]()
    snaps = Snapshots(monkeypatch)
    # 1e39 is finite as a Python float, inf as the float32 the kernels compute with
    trainer = Trainer(model, o, schedule=HugeAt((1, 2), 1e39), batch_size=16, epochs=3, shuffle=shuffle,
                      progress=False, fused_step=fused)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit(X, y)
    assert err.value.what == "update"
    assert (err.value.epoch, err.value.step) == (1, 2)
    assert err.value.history.epochs == 1
    epoch, step, params, stats, state = snaps.before
    if step is None:  # the one-call epoch (or fit): epoch 1's first two steps were applied
        assert o.t == 6 + 2
    else:
        assert (epoch, step) == (1, 2)
        _same_state(model, o, params, stats, state)


@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
def test_the_one_call_epoch_stops_where_the_steps_do(opt):
    """float64: the epoch in one call and the per-kernel path stop at the same step with the same state.

    With lr = 1e300 at (1, 2) the update is finite (Adam's is refused: lr / eps overflows) and the
    next step's cost is not."""
    X, y = blobs()
    got = []
    for fused in (True, False):
        model = Sequential([Dense(7, "relu"), Dense(3, "softmax")], input_dim=5, l2=0.1, seed=2, dtype="float64")
        o = OPTIMISERS[opt]()
        with pytest.raises(TrainingDiverged) as err:
            Trainer(model, o, schedule=HugeAt((1, 2), 1e300), batch_size=16, epochs=3, progress=False,
                    fused_step=fused).fit(X.astype(np.float64), y)
        got.append((err.value.epoch, err.value.step, err.value.what, model._params.copy(), o.state_dict()))
    (e1, s1, w1, p1, st1), (e2, s2, w2, p2, st2) = got
    assert (e1, s1, w1) == (e2, s2, w2)
    assert (e1, s1) in ((1, 2), (1, 3))
    np.testing.assert_allclose(p1, p2, rtol=1e-10, atol=1e-12)
    assert st1["t"] == st2["t"] == 6 + s1
    assert np.isfinite(p1).all()


@pytest.mark.parametrize("opt", ["rmsprop", "adam"])
def test_gradients_whose_squares_overflow_float32_stop_before_the_update(path, opt, monkeypatch):
    """A linear model with weights of 1e19: the gradient is finite, its square is not (v = inf)."""
    name, fused, shuffle = path
    rng = np.random.default_rng(1)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    y = rng.standard_normal(64).astype(np.float32)
    model = Sequential([Dense(1)], input_dim=3, seed=0)
    dict(model.parameters())["dense_0.W"][...] = 1e19
    o = OPTIMISERS[opt]()
    snaps = Snapshots(monkeypatch)
    with pytest.raises(TrainingDiverged) as err:
        Trainer(model, o, batch_size=16, epochs=2, shuffle=shuffle, progress=False, fused_step=fused).fit(X, y)
    assert (err.value.epoch, err.value.step, err.value.what) == (0, 0, "update")
    _, _, params, stats, state = snaps.before
    _same_state(model, o, params, stats, state)
    assert o.t == 0


def test_finite_gradients_beyond_a_float32_squared_norm_are_not_called_infinite(path):
    """A gradient norm of ~1e20 (its square overflows a float32 sum): GD with a small lr updates."""
    name, fused, shuffle = path
    rng = np.random.default_rng(1)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    y = rng.standard_normal(64).astype(np.float32)
    model = Sequential([Dense(1)], input_dim=3, seed=0)
    dict(model.parameters())["dense_0.W"][...] = 1e20
    Trainer(model, optim.GD(1e-3), batch_size=16, epochs=1, shuffle=shuffle, progress=False,
            fused_step=fused).fit(X, y)
    assert np.isfinite(model._params).all()


def test_batchnorm_statistics_that_overflow_stop_training(path, monkeypatch):
    """Pre-BatchNorm activations of ~1e20: their float32 variance is inf."""
    name, fused, shuffle = path
    X, y = blobs()
    model = Sequential(_bn_net(), input_dim=5, seed=2)
    dict(model.parameters())["dense_0.W"][...] = np.linspace(-1e20, 1e20, 30, dtype=np.float32).reshape(5, 6)
    o = optim.Adam(0.01)
    snaps = Snapshots(monkeypatch)
    with pytest.raises(TrainingDiverged) as err:
        Trainer(model, o, batch_size=16, epochs=2, shuffle=shuffle, progress=False, fused_step=fused).fit(X, y)
    assert (err.value.epoch, err.value.step) == (0, 0)
    assert err.value.what in ("batch-norm statistics", "cost", "gradient")
    _, _, params, stats, state = snaps.before
    _same_state(model, o, params, stats, state)
    assert np.isfinite(model._stats).all()


@pytest.mark.parametrize("bad", [-0.1, 0.0, float("nan"), float("inf"), "0.1"])
def test_a_bad_learning_rate_from_a_schedule_is_refused_before_the_step(path, bad):
    name, fused, shuffle = path
    X, y = blobs()
    model = Sequential([Dense(7, "relu"), Dense(3, "softmax")], input_dim=5, seed=2)
    trainer = Trainer(model, optim.Adam(), schedule=lambda e, s: bad if (e, s) == (0, 1) else 0.01,
                      batch_size=16, epochs=1, shuffle=shuffle, progress=False, fused_step=fused)
    before = model._params.copy()
    with pytest.raises(ValueError, match=r"epoch 0, step 1"):
        trainer.fit(X, y)
    assert np.isfinite(model._params).all()
    if name in ("fused-epoch", "fused-fit"):  # every step's rate is asked for before the epoch runs
        np.testing.assert_array_equal(model._params, before)


def test_update_bound_refuses_exactly_what_could_overflow():
    limit = float(np.finfo(np.float32).max) / 4
    ok, after = optim.update_bound(0, 1.0, 0.0, 0, 0, 0, 1.0, 1.0, (1.0, 0.0, 0.0), limit)
    assert ok and after == (2.0, 0.0, 0.0)
    ok, _ = optim.update_bound(0, 1e38, 0.0, 0, 0, 0, 1.0, 1.0, (1.0, 0.0, 0.0), limit)
    assert not ok
    # Adam: v grows by (1 - beta2) g^2; g^2 itself must stay in range
    ok, after = optim.update_bound(3, 1e-3, 0.0, 0.9, 0.999, 1e-8, 0.1, 10.0, (1.0, 0.0, 0.0), limit)
    assert ok and after[1] == pytest.approx(1.0) and after[2] == pytest.approx(0.1)
    assert not optim.update_bound(3, 1e-3, 0.0, 0.9, 0.999, 1e-8, 0.1, 1e19, (1.0, 0.0, 0.0), limit)[0]
    # RMSProp's step is at most lr / sqrt(1 - beta) whatever the gradient
    ok, after = optim.update_bound(2, 0.1, 0.0, 0.0, 0.99, 1e-8, 1.0, 1e15, (1.0, 0.0, 0.0), limit)
    assert ok and after[0] == pytest.approx(1.0 + 0.1 * 1.01 / 0.1)


def test_a_diverged_fit_leaves_a_model_that_saves_and_loads(tmp_path):
    X, y = blobs()
    model = Sequential(_bn_net(), input_dim=5, seed=2)
    with pytest.raises(TrainingDiverged):
        Trainer(model, optim.GD(0.01), schedule=HugeAt((0, 3), 1e39), batch_size=16, epochs=2,
                progress=False).fit(X, y)
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(fn.load(tmp_path / "m.npz").predict(X), model.predict(X))
