"""The population engine by lanes: a net of Dense layers trains its models side by side, one per vector lane.

It must give each model the fit the trainer gives it (float64 to 1e-10, float32 to the products'
tolerance), the same result as the model-by-model engine, and a model's bits whatever its group,
population or thread; a model that diverges stops alone.
"""

import numpy as np
import pytest
from test_population import OPTIMIZERS, _alone, _assert_trainer_fits, _close, _data, _fit_against_trainer

import fusednet as fn
from fusednet import population as population_module
from fusednet.kernels import _population_lanes as lanes

L = fn.layers

pytestmark = pytest.mark.skipif(lanes._extension() is None, reason="the lanes are the compiled extension's")

#: float32: the lanes sum each product in its own order (and treat subnormal values as 0), a few ulp per
#: step against the trainer's kernels; after 3 epochs of 3 steps the weights agree to this (normwise)
FLOAT32_RTOL = 1e-4


def _layers(kind="bce"):
    """Dense layers only (every hidden activation, one without a bias) and the loss's output."""
    out = {"bce": L.Dense(1, activation="sigmoid"), "cce": L.Dense(3, activation="softmax"),
           "mse": L.Dense(2, activation=None)}[kind]
    return [L.Dense(7, activation="leaky_relu"), L.Dense(5, activation="tanh", use_bias=False),
            L.Dense(4, activation="sigmoid"), L.Dense(3, activation="relu"), L.Dense(3, activation=None), out]


def _configs(base, K):
    """K configs cycling through ``base``, with their own seeds (the first keeps the default)."""
    return [dict(base[k % len(base)], **({"seed": 10 + k} if k else {})) for k in range(K)]


def _fit(layers, cfgs, X, y, dev, *, lanes_on=None, team=None, dtype="float64", optimizer="adam", batch_size=32,
         epochs=3):
    """A population's fit on the engine asked for (``lanes_on``: None by the net, True, or False: the Numba
    engine)."""
    pop = fn.Population(layers, input_dim=X.shape[1], configs=cfgs, optimizer=optimizer, batch_size=batch_size,
                        epochs=epochs, seed=5, dtype=dtype)
    pop._run(pop._data(X, y, dev), 0, epochs, pop.histories, team=team, lanes=lanes_on,
             steps=False if lanes_on is False else None)
    return pop


def test_a_dense_net_takes_the_lanes_and_other_nets_do_not():
    net = fn.Sequential(_layers(), input_dim=3).plan()["layers"]
    assert lanes.eligible(net, 64)
    for extra in (L.BatchNorm(), L.Dropout(0.9), L.Activation("relu")):
        other = fn.Sequential([L.Dense(4), extra, L.Dense(1, activation="sigmoid")], input_dim=3).plan()["layers"]
        assert not lanes.eligible(other, 64)
    wide = fn.Sequential([L.Dense(64, activation="relu"), L.Dense(10, activation="softmax")], input_dim=64)
    assert not lanes.eligible(wide.plan()["layers"], 64)  # its first product goes to BLAS


@pytest.mark.parametrize("K", [1, 2, 7, 17])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_model_equals_its_trainer_fit_float64(name, K):
    pop = _fit_against_trainer(name, K, _layers, _configs)
    assert lanes.eligible(pop._net, 32)


@pytest.mark.parametrize("kind", ["cce", "mse"])
def test_softmax_and_linear_outputs_equal_trainer_fits(kind):
    X, y = _data(kind)
    dev = (X[:40], y[:40])
    cfgs = _configs(OPTIMIZERS["adam"][1], 3)
    pop = fn.Population(_layers(kind), input_dim=3, configs=cfgs, batch_size=32, epochs=3, seed=5, dtype="float64")
    _assert_trainer_fits(pop, pop.fit(X, y, dev=dev), _layers(kind), fn.optim.Adam, X, y, dev)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_model_equals_its_trainer_fit_float32(name):
    cls, base = OPTIMIZERS[name]
    X, y = _data()
    cfgs = _configs(base, 5)
    pop = fn.Population(_layers(), input_dim=3, configs=cfgs, optimizer=name, batch_size=32, epochs=3, seed=5)
    histories = pop.fit(X, y, dev=(X[:40], y[:40]))
    for k, cfg in enumerate(cfgs):
        model, history = _alone(_layers(), cfg, cls, "float32", X, y, (X[:40], y[:40]))
        _close(pop.models[k]._params, model._params, FLOAT32_RTOL)
        _close(histories[k]["train_loss"], history["train_loss"], FLOAT32_RTOL)
        assert histories[k]["train_accuracy"] == pytest.approx(history["train_accuracy"], abs=1 / 90 + 1e-12)


@pytest.mark.parametrize("kind", ["bce", "cce", "mse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_lanes_equal_the_model_by_model_engine(kind, dtype):
    X, y = _data(kind, m=70)
    dev = (X[:30], y[:30])
    cfgs = _configs(OPTIMIZERS["adam"][1], 19)
    by_lane = _fit(_layers(kind), cfgs, X, y, dev, lanes_on=True, dtype=dtype, batch_size=16)
    by_model = _fit(_layers(kind), cfgs, X, y, dev, lanes_on=False, dtype=dtype, batch_size=16)
    rtol = 1e-10 if dtype == "float64" else FLOAT32_RTOL
    for a, b, ha, hb in zip(by_lane.models, by_model.models, by_lane.histories, by_model.histories):
        _close(a._params, b._params, rtol)
        assert list(ha) == list(hb)
        for key in ("train_loss", "dev_loss"):
            _close(ha[key], hb[key], rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_model_does_not_depend_on_its_group_the_population_or_the_threads(dtype, monkeypatch):
    X, y = _data(m=70)
    cfgs = _configs(OPTIMIZERS["adam"][1], 35)  # three groups, the last of three models
    big = _fit(_layers(), cfgs, X, y, None, dtype=dtype, batch_size=16, team=False)
    for k in (0, 17, 34):
        alone = _fit(_layers(), cfgs[k:k + 1], X, y, None, dtype=dtype, batch_size=16, team=False)
        np.testing.assert_array_equal(big.models[k]._params, alone.models[0]._params)
        assert big.histories[k]["train_loss"] == alone.histories[0]["train_loss"]
    monkeypatch.setattr(population_module, "PARALLEL_FLOPS", 0)
    team = _fit(_layers(), cfgs, X, y, None, dtype=dtype, batch_size=16, team=True)
    for a, b in zip(big.models, team.models):
        np.testing.assert_array_equal(a._params, b._params)


def test_a_diverging_lane_stops_and_the_others_go_on():
    X, y = _data("mse")
    cfgs = [{"lr": 1e-3}, {"lr": 1e200}, {"lr": 0.01}]
    layers = [L.Dense(6, activation="relu"), L.Dense(2, activation=None)]
    pop = fn.Population(layers, input_dim=3, configs=cfgs, optimizer="gd", batch_size=32, epochs=3, dtype="float64")
    assert lanes.eligible(pop._net, 32)
    histories = pop.fit(X, y)
    assert pop.diverged[0] is None and pop.diverged[2] is None
    stop = pop.diverged[1]
    assert stop is not None and stop["what"] in ("cost", "gradient", "update")
    model = fn.Sequential(layers, input_dim=3, dtype="float64")
    with pytest.raises(fn.TrainingDiverged) as info:
        fn.Trainer(model, optimizer=fn.optim.GD(lr=1e200), batch_size=32, epochs=3, progress=False).fit(X, y)
    assert (info.value.epoch, info.value.step) == (stop["epoch"], stop["step"])
    _close(pop.models[1]._params, model._params, 1e-10)  # both from before the failing step
    assert histories[1].epochs == stop["epoch"] and histories[2].epochs == 3
    for k in (0, 2):
        model, _ = _alone(layers, cfgs[k], fn.optim.GD, "float64", X, y, None, seed=0)
        _close(pop.models[k]._params, model._params, 1e-10)


def test_two_fits_from_initial_epoch_equal_one():
    X, y = _data()
    cfgs = _configs(OPTIMIZERS["adam"][1], 3)
    one = fn.Population(_layers(), input_dim=3, configs=cfgs, batch_size=32, epochs=4, seed=5, dtype="float64")
    one.fit(X, y)
    two = fn.Population(_layers(), input_dim=3, configs=cfgs, batch_size=32, epochs=2, seed=5, dtype="float64")
    first = two.fit(X, y)
    two.epochs = 4
    two.fit(X, y, initial_epoch=2)
    assert first[0].epochs == 2  # a history returned by an earlier fit is left as it was
    for a, b in zip(one.models, two.models):
        np.testing.assert_array_equal(a._params, b._params)


def test_a_work_buffer_too_small_is_refused():
    X, y = _data()
    pop = fn.Population(_layers(), input_dim=3, configs=[{}], batch_size=32, epochs=1)
    data = pop._data(X, y, None)
    real = pop._work
    pop._work = lambda *args: tuple(a[:, : a.shape[1] // 2] for a in real(*args))
    with pytest.raises(ValueError, match="work: .* values per worker"):
        pop._run(data, 0, 1, pop.histories, lanes=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_copy_of_the_extension_trains_the_same_models(dtype, monkeypatch):
    """The AVX2 and AVX-512 copies share the polynomials' fused multiply-adds: the same bits; the baseline
    copy (none) agrees to rounding."""
    from fusednet.kernels import _cython

    X, y = _data(m=50)
    cfgs = _configs(OPTIMIZERS["adam"][1], 5)
    fits = {}
    for variant in _cython.VARIANTS:
        monkeypatch.setattr(lanes, "_extension", lambda variant=variant: variant)
        fits[variant.ISA] = _fit(_layers(), cfgs, X, y, (X[:20], y[:20]), lanes_on=True, dtype=dtype)._P
    best = fits[_cython.VARIANTS[0].ISA]
    for isa, params in fits.items():
        if isa in ("x86-64-v3", "x86-64-v4"):
            np.testing.assert_array_equal(params, best, err_msg=isa)
        else:
            _close(params, best, 1e-10 if dtype == "float64" else FLOAT32_RTOL)
