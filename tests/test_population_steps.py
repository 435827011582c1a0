"""The population engine by the trainer's own step: a plain Dense net trains each model with the one-call step.

Each model must be its own trainer fit bit for bit (parameters, train loss and accuracy; the dev loss to
rounding), in float32 and float64, for every optimiser; a model's bits do not depend on the population or
the threads; a model that diverges stops alone.
"""

import numpy as np
import pytest
from test_population import OPTIMIZERS, _alone, _close, _data

import fusednet as fn
from fusednet import _population_steps as steps
from fusednet import population as population_module

L = fn.layers

pytestmark = pytest.mark.skipif(steps._fused.why_not(fn.Sequential([L.Dense(1)], input_dim=1), fn.optim.GD())
                                is not None, reason="the step engine is the compiled extension's")

#: the dev loss is the step's forward pass against the trainer's model evaluation (NumPy's products)
DEV_RTOL = {"float32": 1e-5, "float64": 1e-12}


def _layers(kind="bce"):
    """Dense layers only, wide enough not to be one of the step's narrow nets (every hidden activation,
    one without a bias) and the loss's output."""
    out = {"bce": L.Dense(1, activation="sigmoid"), "cce": L.Dense(3, activation="softmax"),
           "mse": L.Dense(2, activation=None)}[kind]
    return [L.Dense(12, activation="leaky_relu"), L.Dense(9, activation="tanh", use_bias=False),
            L.Dense(10, activation="sigmoid"), L.Dense(9, activation="relu"), out]


def _configs(base, K):
    """K configs cycling through ``base``, with their own seeds (the first keeps the default)."""
    return [dict(base[k % len(base)], **({"seed": 10 + k} if k else {})) for k in range(K)]


def _fit(layers, cfgs, X, y, dev, *, dtype, optimizer="adam", team=None, epochs=3, batch_size=32, seed=5):
    """A population's fit on the step engine (the lanes off: these nets are small enough for them)."""
    pop = fn.Population(layers, input_dim=X.shape[1], configs=cfgs, optimizer=optimizer, batch_size=batch_size,
                        epochs=epochs, seed=seed, dtype=dtype)
    assert steps.why_not(pop, batch_size) is None
    calls = []
    kernel = steps.fit_steps

    def counted(*args):
        calls.append(args[0])
        return kernel(*args)

    steps.fit_steps = counted
    try:
        pop._run(pop._data(X, y, dev), 0, epochs, pop.histories, team=team, lanes=False)
    finally:
        steps.fit_steps = kernel
    assert calls, "the step engine did not run"
    return pop


def _assert_trainer_fits(pop, cls, layers, X, y, dev, batch_size=32):
    for k, cfg in enumerate(pop.configs):
        model, history = _alone(layers, cfg, cls, pop.dtype.name, X, y, dev, batch_size=batch_size)
        np.testing.assert_array_equal(pop.models[k]._params, model._params)
        h = pop.histories[k]
        assert list(h) == list(history)
        for key in history:
            if key in ("train_loss", "train_accuracy", "lr"):
                assert h[key] == history[key], key
            elif key != "time":
                _close(h[key], history[key], DEV_RTOL[pop.dtype.name])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("K", [1, 2, 7])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_model_is_its_trainer_fit_bit_for_bit(name, K, dtype):
    cls, base = OPTIMIZERS[name]
    X, y = _data()
    dev = (X[:40], y[:40])
    pop = _fit(_layers(), _configs(base, K), X, y, dev, dtype=dtype, optimizer=name)
    _assert_trainer_fits(pop, cls, _layers(), X, y, dev)


@pytest.mark.parametrize("kind", ["cce", "mse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_and_linear_outputs(kind, dtype):
    X, y = _data(kind)
    dev = (X[:40], y[:40])
    pop = _fit(_layers(kind), _configs(OPTIMIZERS["adam"][1], 3), X, y, dev, dtype=dtype)
    _assert_trainer_fits(pop, fn.optim.Adam, _layers(kind), X, y, dev)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_model_does_not_depend_on_the_population_or_the_threads(dtype, monkeypatch):
    X, y = _data("cce", m=70)
    cfgs = _configs(OPTIMIZERS["adam"][1], 9)
    big = _fit(_layers("cce"), cfgs, X, y, None, dtype=dtype, team=False, batch_size=16)
    alone = _fit(_layers("cce"), cfgs[4:5], X, y, None, dtype=dtype, team=False, batch_size=16)
    np.testing.assert_array_equal(big.models[4]._params, alone.models[0]._params)
    assert big.histories[4]["train_loss"] == alone.histories[0]["train_loss"]
    monkeypatch.setattr(population_module, "PARALLEL_FLOPS", 0)
    for chunk_models in (4, 1):  # 3 chunks in slices of epochs; 9 chunks
        monkeypatch.setattr(population_module, "CHUNK_MODELS", chunk_models)
        team = _fit(_layers("cce"), cfgs, X, y, None, dtype=dtype, team=True, batch_size=16)
        for a, b, ha, hb in zip(big.models, team.models, big.histories, team.histories):
            np.testing.assert_array_equal(a._params, b._params)
            assert ha["train_loss"] == hb["train_loss"]


def test_two_fits_from_initial_epoch_equal_one():
    X, y = _data("cce")
    cfgs = _configs(OPTIMIZERS["momentum"][1], 3)
    one = _fit(_layers("cce"), cfgs, X, y, None, dtype="float32", optimizer="momentum", epochs=4)
    two = fn.Population(_layers("cce"), input_dim=3, configs=cfgs, optimizer="momentum", batch_size=32, epochs=4,
                        seed=5)
    data = two._data(X, y, None)
    two._run(data, 0, 2, two.histories, lanes=False)
    two._run(data, 2, 4, two.histories, lanes=False)
    for a, b, ha, hb in zip(one.models, two.models, one.histories, two.histories):
        np.testing.assert_array_equal(a._params, b._params)
        assert ha["train_loss"] == hb["train_loss"]


def test_a_diverging_model_stops_and_the_others_go_on():
    X, y = _data("mse")
    cfgs = [{"lr": 1e-3}, {"lr": 1e200}, {"lr": 0.01}]
    pop = _fit(_layers("mse"), cfgs, X, y, None, dtype="float64", optimizer="gd")
    assert pop.diverged[0] is None and pop.diverged[2] is None
    stop = pop.diverged[1]
    assert stop is not None and stop["what"] in ("cost", "gradient", "update")
    assert pop.histories[1].epochs == stop["epoch"]
    model = fn.Sequential(_layers("mse"), input_dim=3, dtype="float64", seed=5)
    with pytest.raises(fn.TrainingDiverged) as info:
        fn.Trainer(model, optimizer=fn.optim.GD(lr=1e200), batch_size=32, epochs=3, seed=5, progress=False).fit(X, y)
    assert (info.value.epoch, info.value.step, info.value.what) == (stop["epoch"], stop["step"], stop["what"])
    np.testing.assert_array_equal(pop.models[1]._params, model._params)  # both from before the failing step
    assert pop.histories[2].epochs == 3


def test_which_nets_take_the_step_engine():
    digits = fn.Population([L.Dense(64, activation="relu"), L.Dense(10, activation="softmax")], input_dim=64,
                           configs=[{"lr": 0.01}])
    assert steps.why_not(digits, 64) is None
    for extra in (L.BatchNorm(), L.Dropout(0.9), L.Activation("relu")):
        other = fn.Population([L.Dense(16), extra, L.Dense(3, activation="softmax")], input_dim=3,
                              configs=[{"lr": 0.01}])
        assert "Dense" in steps.why_not(other, 64)
    multi = fn.Population([L.Dense(16, activation="relu"), L.Dense(2, activation="sigmoid")], input_dim=3,
                          configs=[{"lr": 0.01}])
    assert steps.why_not(multi, 64) == "multi-label accuracy"
    narrow = fn.Population([L.Dense(4, activation="tanh"), L.Dense(1, activation="sigmoid")], input_dim=3,
                           configs=[{"lr": 0.01}])
    assert steps.work(narrow, 1, 16, 0) is None  # the step runs it as a narrow net: the Numba engine takes it


def test_a_digits_sized_net_takes_the_step_engine_by_itself(monkeypatch):
    X, y = fn.datasets.digits()
    X, y = X[:300] / 16.0, y[:300]
    calls = []
    kernel = steps.fit_steps
    monkeypatch.setattr(steps, "fit_steps", lambda *args: calls.append(args[:2]) or kernel(*args))
    layers = [L.Dense(64, activation="relu"), L.Dense(10, activation="softmax")]
    cfgs = [{"lr": 0.01, "l2": 0.01}, {"lr": 0.003, "seed": 4}]
    pop = fn.Population(layers, input_dim=64, configs=cfgs, batch_size=64, epochs=3, seed=5)
    pop.fit(X, y, dev=(X[:100], y[:100]))
    assert calls
    _assert_trainer_fits(pop, fn.optim.Adam, layers, X, y, (X[:100], y[:100]), batch_size=64)


def test_the_engine_of_the_last_fit_is_named_with_the_reason():
    X, y = _data("cce", m=70)
    cfgs = [{"lr": 0.01}]
    small = fn.Population([L.Dense(4, activation="relu"), L.Dense(3, activation="softmax")], input_dim=3,
                          configs=cfgs)
    assert small.engine is None
    small.fit(X, y)
    assert small.engine.startswith("vector lanes")
    stepped = _fit(_layers("cce"), cfgs, X, y, None, dtype="float32")
    assert stepped.engine == "the trainer's one-call step, model by model"
    bn = fn.Population([L.Dense(16), L.BatchNorm(), L.Activation("relu"), L.Dense(3, activation="softmax")],
                       input_dim=3, configs=cfgs)
    bn.fit(X, y)
    assert bn.engine.startswith("model by model (Numba): not the lanes (layers other than Dense)")
    assert "not the trainer's step (the net has layers other than Dense" in bn.engine
