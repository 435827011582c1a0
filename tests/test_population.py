"""fusednet.Population: K models trained together equal K Trainer fits; bad configs; divergence; best()."""

import numpy as np
import pytest

import fusednet as fn
from fusednet import population as population_module
from fusednet.kernels import _population as engine
from fusednet.kernels._codes import dropout_key

L = fn.layers

#: optimiser -> (class, configs of the population: some keys left to the defaults)
OPTIMIZERS = {
    "gd": (fn.optim.GD, [{"lr": 0.2}, {"lr": 0.05, "l2": 0.3}]),
    "momentum": (fn.optim.Momentum, [{"lr": 0.1, "beta": 0.8}, {"lr": 0.05, "bias_correction": True, "l2": 0.1}]),
    "rmsprop": (fn.optim.RMSProp, [{"lr": 0.01, "beta": 0.95, "eps": 1e-6}, {"lr": 0.003}]),
    "adam": (fn.optim.Adam, [{"lr": 0.01, "beta1": 0.8, "beta2": 0.99}, {"lr": 0.003, "eps": 1e-6, "l2": 0.2}]),
}


def _layers(kind="bce"):
    """A net with every layer kind: Dense without bias, BatchNorm, Activation, Dropout, and the loss's output."""
    out = {"bce": L.Dense(1, activation="sigmoid"), "cce": L.Dense(3, activation="softmax"),
           "mse": L.Dense(2, activation=None)}[kind]
    return [L.Dense(8, activation=None, use_bias=False), L.BatchNorm(), L.Activation("relu"),
            L.Dropout(0.8), L.Dense(5, activation="tanh"), L.Dropout(0.9), out]


def _data(kind="bce", m=90, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 3))
    if kind == "bce":
        y = (X[:, 0] * X[:, 1] > 0).astype(int)
    elif kind == "cce":
        y = np.argmax(X, axis=1)
    else:
        y = np.stack([X[:, 0] - X[:, 2], X[:, 1] ** 2], axis=1)
    return X, y


def _configs(base, K):
    """K configs cycling through ``base``, with varying keep_prob and seeds (the first keeps the defaults)."""
    cfgs = []
    for k in range(K):
        cfg = dict(base[k % len(base)])
        if k > 0:
            cfg["keep_prob"] = (0.7, 0.9, 1.0)[k % 3]
            cfg["seed"] = 10 + k
        cfgs.append(cfg)
    return cfgs


def _alone(layers, cfg, cls, dtype, X, y, dev, epochs=3, batch_size=32, seed=5):
    """Model k trained alone, as the Population's docstring says it equals."""
    layers = [L.Dropout(cfg["keep_prob"]) if isinstance(x, L.Dropout) and "keep_prob" in cfg else x for x in layers]
    model = fn.Sequential(layers, input_dim=X.shape[1], l2=cfg.get("l2", 0.0), seed=cfg.get("seed", seed), dtype=dtype)
    opt = cls(**{k: v for k, v in cfg.items() if k not in ("l2", "keep_prob", "seed")})
    history = fn.Trainer(model, optimizer=opt, batch_size=batch_size, epochs=epochs, seed=seed, progress=False).fit(
        X, y, dev=dev)
    return model, history


def _close(got, want, rtol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))), 1e-30)
    assert np.max(np.abs(got - want)) <= rtol * scale, np.max(np.abs(got - want)) / scale


@pytest.mark.parametrize("K", [1, 2, 7])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_model_equals_its_trainer_fit_float64(name, K):
    _fit_against_trainer(name, K, _layers, _configs)


def _fit_against_trainer(name, K, layers, configs):
    """A float64 population of ``configs(base, K)`` for optimiser ``name`` on ``layers()``, fitted with a dev
    set, each of its models held to its own trainer fit; returns it."""
    cls, base = OPTIMIZERS[name]
    X, y = _data()
    dev = (X[:40], y[:40])
    pop = fn.Population(layers(), input_dim=3, configs=configs(base, K), optimizer=name, batch_size=32, epochs=3,
                        seed=5, dtype="float64")
    histories = pop.fit(X, y, dev=dev)
    assert len(histories) == K and len(pop.models) == K
    assert all(isinstance(model, fn.Sequential) for model in pop.models)
    _assert_trainer_fits(pop, histories, layers(), cls, X, y, dev)
    return pop


def _assert_trainer_fits(pop, histories, layers, cls, X, y, dev, rtol=1e-10):
    """Each model of ``pop``, its running statistics and its history (``histories``) equal its own
    trainer fit (:func:`_alone`) within ``rtol``."""
    for k, cfg in enumerate(pop.configs):
        model, history = _alone(layers, cfg, cls, pop.dtype.name, X, y, dev)
        _close(pop.models[k]._params, model._params, rtol)
        if model._stats.size:
            _close(pop.models[k]._stats, model._stats, rtol)
        assert list(histories[k]) == list(history)
        for key in history:
            if key != "time":
                _close(histories[k][key], history[key], rtol)


@pytest.mark.parametrize("kind", ["cce", "mse"])
def test_softmax_and_linear_outputs_float64(kind):
    X, y = _data(kind)
    cfgs = _configs(OPTIMIZERS["adam"][1], 3)
    pop = fn.Population(_layers(kind), input_dim=3, configs=cfgs, batch_size=32, epochs=3, seed=5, dtype="float64")
    histories = pop.fit(X, y, dev=(X[:40], y[:40]))
    for k, cfg in enumerate(cfgs):
        model, history = _alone(_layers(kind), cfg, fn.optim.Adam, "float64", X, y, (X[:40], y[:40]))
        _close(pop.models[k]._params, model._params, 1e-10)
        for key in history:
            if key != "time":
                _close(histories[k][key], history[key], 1e-10)


#: float32: each product sums in another order than the trainer's (BLAS or its own kernels), a few
#: ulp per step; after 3 epochs of 3 steps with batch norm and dropout the weights agree to this (normwise)
FLOAT32_RTOL = 1e-4


def test_each_model_equals_its_trainer_fit_float32():
    X, y = _data()
    cfgs = _configs(OPTIMIZERS["adam"][1], 4)
    pop = fn.Population(_layers(), input_dim=3, configs=cfgs, batch_size=32, epochs=3, seed=5)
    histories = pop.fit(X, y, dev=(X[:40], y[:40]))
    for k, cfg in enumerate(cfgs):
        model, history = _alone(_layers(), cfg, fn.optim.Adam, "float32", X, y, (X[:40], y[:40]))
        assert pop.models[k].dtype == np.float32
        _close(pop.models[k]._params, model._params, FLOAT32_RTOL)
        _close(histories[k]["train_loss"], history["train_loss"], FLOAT32_RTOL)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_model_does_not_depend_on_the_population_or_the_threads(dtype, monkeypatch):
    X, y = _data(m=70)
    cfgs = _configs(OPTIMIZERS["adam"][1], 7)
    big = fn.Population(_layers(), input_dim=3, configs=cfgs, batch_size=16, epochs=2, dtype=dtype)
    big.fit(X, y)
    alone = fn.Population(_layers(), input_dim=3, configs=cfgs[5:6], batch_size=16, epochs=2, dtype=dtype)
    alone.fit(X, y)
    np.testing.assert_array_equal(big.models[5]._params, alone.models[0]._params)
    monkeypatch.setattr(population_module, "PARALLEL_FLOPS", 0)  # on the team
    for chunk_models in (4, 1):  # 2 chunks; 7 chunks handed out to the threads one at a time
        monkeypatch.setattr(population_module, "CHUNK_MODELS", chunk_models)
        team = fn.Population(_layers(), input_dim=3, configs=cfgs, batch_size=16, epochs=2, dtype=dtype)
        team.fit(X, y)
        for a, b in zip(big.models, team.models):
            np.testing.assert_array_equal(a._params, b._params)
            np.testing.assert_array_equal(a._stats, b._stats)


def test_two_fits_from_initial_epoch_equal_one():
    X, y = _data()
    cfgs = _configs(OPTIMIZERS["momentum"][1], 3)
    one = fn.Population(_layers(), input_dim=3, configs=cfgs, optimizer="momentum", batch_size=32, epochs=4,
                        dtype="float64")
    one.fit(X, y)
    two = fn.Population(_layers(), input_dim=3, configs=cfgs, optimizer="momentum", batch_size=32, epochs=4,
                        dtype="float64")
    two.epochs = 2
    two.fit(X, y)
    two.epochs = 4
    h = two.fit(X, y, initial_epoch=2)
    assert h[0].epochs == 2
    for a, b in zip(one.models, two.models):
        np.testing.assert_array_equal(a._params, b._params)


def test_batch_gradient_descent_and_no_shuffle():
    X, y = _data(m=40)
    cfgs = [{"lr": 0.05}, {"lr": 0.01, "l2": 0.5}]
    layers = [L.Dense(4, activation="leaky_relu"), L.Dense(1, activation="sigmoid")]
    for batch_size, shuffle in ((None, True), (16, False)):
        pop = fn.Population(layers, input_dim=3, configs=cfgs, optimizer="gd", batch_size=batch_size, epochs=5,
                            shuffle=shuffle, dtype="float64")
        pop.fit(X, y)
        for k, cfg in enumerate(cfgs):
            model = fn.Sequential(layers, input_dim=3, l2=cfg.get("l2", 0.0), dtype="float64")
            fn.Trainer(model, optimizer=fn.optim.GD(lr=cfg["lr"]), batch_size=batch_size, epochs=5, shuffle=shuffle,
                       progress=False).fit(X, y)
            _close(pop.models[k]._params, model._params, 1e-10)


@pytest.mark.parametrize("kind", ["bce", "cce", "mse"])
def test_every_activation_and_activation_layers_equal_trainer_fits(kind):
    """Hidden sigmoid, tanh, leaky ReLU and linear, in Dense layers and in Activation layers (whose input is
    copied before the in-place pass), and an Activation layer as the output."""
    X, y = _data(kind, m=70)
    k = {"bce": 1, "cce": 3, "mse": 2}[kind]
    out = {"bce": "sigmoid", "cce": "softmax", "mse": "linear"}[kind]
    layers = [L.Dense(6, activation="sigmoid"), L.Dense(5, activation="leaky_relu", leaky_slope=0.2),
              L.Dense(4, activation=None), L.Activation("tanh"), L.Dense(4, activation=None),
              L.Activation("sigmoid"), L.Dense(k, activation=None), L.Activation(out)]
    cfgs = [{"lr": 0.05}, {"lr": 0.01, "l2": 0.3, "seed": 3}]
    pop = fn.Population(layers, input_dim=3, configs=cfgs, optimizer="adam", batch_size=16, epochs=3, seed=5,
                        dtype="float64")
    histories = pop.fit(X, y)
    for i, cfg in enumerate(cfgs):
        model, history = _alone(layers, cfg, fn.optim.Adam, "float64", X, y, None, batch_size=16)
        _close(pop.models[i]._params, model._params, 1e-10)
        _close(histories[i]["train_loss"], history["train_loss"], 1e-10)


def test_best_and_models_predict():
    X, y = _data()
    cfgs = [{"lr": 1e-4}, {"lr": 0.02}, {"lr": 0.005}]
    pop = fn.Population([L.Dense(6, activation="relu"), L.Dense(1, activation="sigmoid")], input_dim=3,
                        configs=cfgs, epochs=10, batch_size=16)
    histories = pop.fit(X, y, dev=(X[:30], y[:30]))
    last = [h["dev_loss"][-1] for h in histories]
    assert pop.best_index() == int(np.argmin(last))
    assert pop.best() is pop.models[int(np.argmin(last))]
    acc = [h["dev_accuracy"][-1] for h in histories]
    assert pop.best_index("dev_accuracy") == int(np.argmax(acc))
    assert pop.best().predict(X).shape == (90,)
    with pytest.raises(ValueError, match="dev_loss"):
        fn.Population([L.Dense(1, activation="sigmoid")], input_dim=3, configs=cfgs).best()


def test_a_diverging_model_stops_and_the_others_go_on():
    X, y = _data("mse")
    cfgs = [{"lr": 1e-3}, {"lr": 1e200}, {"lr": 0.01}]
    layers = [L.Dense(6, activation="relu"), L.Dense(2, activation=None)]
    pop = fn.Population(layers, input_dim=3, configs=cfgs, optimizer="gd", batch_size=32, epochs=3, dtype="float64")
    histories = pop.fit(X, y)
    assert pop.diverged[0] is None and pop.diverged[2] is None
    stop = pop.diverged[1]
    assert stop is not None and stop["what"] in ("cost", "gradient", "update")
    assert histories[1].epochs == stop["epoch"]
    model = fn.Sequential(layers, input_dim=3, dtype="float64")
    with pytest.raises(fn.TrainingDiverged) as info:
        fn.Trainer(model, optimizer=fn.optim.GD(lr=1e200), batch_size=32, epochs=3, progress=False).fit(X, y)
    assert (info.value.epoch, info.value.step) == (stop["epoch"], stop["step"])
    _close(pop.models[1]._params, model._params, 1e-10)  # both from before the failing step
    assert np.isfinite(pop.models[1]._params).all()
    assert histories[2].epochs == 3
    assert pop.best_index("train_loss") in (0, 2)


@pytest.mark.parametrize(
    "configs, match",
    [
        ([{"lr": 0.1}, {"lrr": 0.1}], r"configs\[1\]\['lrr'\]: unknown key"),
        ([{"lr": 0.1}, {"lr": 0.1, "units": 32}], r"configs\[1\]\['units'\].*another shape"),
        ([{"lr": -1.0}], r"configs\[0\]\['lr'\]"),
        ([{"lr": 0.1}, {"beta1": 1.5}], r"configs\[1\]\['beta1'\]"),
        ([{"l2": -0.1}], r"configs\[0\]\['l2'\]"),
        ([{"keep_prob": 0.0}], r"configs\[0\]\['keep_prob'\]"),
        ([{"seed": -3}], r"configs\[0\]\['seed'\]"),
        ([{"beta": 0.9}], r"configs\[0\]\['beta'\]: unknown key"),  # Adam has beta1 and beta2
    ],
)
def test_bad_configs_name_index_and_key(configs, match):
    with pytest.raises(ValueError, match=match):
        fn.Population(_layers(), input_dim=3, configs=configs)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"configs\[0\]\['keep_prob'\].*no Dropout"):
        fn.Population([L.Dense(1, activation="sigmoid")], input_dim=3, configs=[{"keep_prob": 0.5}])
    with pytest.raises(ValueError, match="optimizer"):
        fn.Population(_layers(), input_dim=3, configs=[{}], optimizer="sgd")
    with pytest.raises(ValueError, match="at least one"):
        fn.Population(_layers(), input_dim=3, configs=[])
    with pytest.raises(TypeError, match=r"configs\[0\] must be a dict"):
        fn.Population(_layers(), input_dim=3, configs=[0.1])
    with pytest.raises(ValueError, match="layers\\[0\\] must be a Dense"):
        fn.Population([L.Dropout(0.5), L.Dense(1, activation="sigmoid")], input_dim=3, configs=[{}])
    with pytest.raises(ValueError, match="input_dim"):
        fn.Population(_layers(), input_dim=0, configs=[{}])
    pop = fn.Population(_layers(), input_dim=3, configs=[{}])
    before = pop.models[0]._params.copy()
    with pytest.raises(ValueError, match="features"):
        pop.fit(np.zeros((10, 4)), np.zeros(10))
    with pytest.raises(ValueError, match="initial_epoch"):
        pop.fit(np.zeros((10, 3)), np.zeros(10), initial_epoch=99)
    np.testing.assert_array_equal(pop.models[0]._params, before)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_bias_corrections_are_each_models_own(name):
    """Computed once per distinct pair of betas, a column per pair: each model's equals ``1 - beta**t`` of its
    own betas."""
    cls, base = OPTIMIZERS[name]
    cfgs = [dict(base[k % 2], lr=0.01 * (k + 1)) for k in range(5)]
    pop = fn.Population([L.Dense(2, activation="sigmoid")], input_dim=3, configs=cfgs, optimizer=name)
    table, cols = pop._bias_corrections(7, 4)
    assert table.shape == (4, 2, 2) and cols.tolist() == [0, 1, 0, 1, 0]  # two distinct pairs of betas
    bc = table[:, cols]
    t = np.arange(8, 12, dtype=np.float64)
    for k, opt in enumerate(pop.optimizers):
        hp = opt.hyperparameters()
        if name == "adam":
            want = (1.0 - hp["beta1"] ** t, 1.0 - hp["beta2"] ** t)
        else:
            want = (1.0 - hp["beta"] ** t if hp["bias_correction"] else np.ones(4), np.ones(4))
        np.testing.assert_array_equal(bc[:, k, 0], want[0], err_msg=f"model {k}")
        np.testing.assert_array_equal(bc[:, k, 1], want[1], err_msg=f"model {k}")


def test_dropout_keys_mirror_the_trainer():
    for seed, epoch, step, layer in ((0, 0, 0, 0), (12345, 7, 3, 5), (2**63 + 11, 1000, 99, 2)):
        assert int(engine.dropout_key4(np.uint64(seed), epoch, step, layer)) == dropout_key(seed, epoch, step, layer)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wide_first_layer_products(dtype):
    """A first layer wide enough for one BLAS product over the chunk's models (BLAS_MACS): still each model's fit."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((100, 64))
    y = np.argmax(X[:, :3] + X[:, 3:6] ** 2, axis=1)
    layers = [L.Dense(64, activation=None, use_bias=False), L.BatchNorm(), L.Activation("tanh"), L.Dropout(0.9),
              L.Dense(3, activation="softmax")]
    cfgs = _configs(OPTIMIZERS["adam"][1], 3)
    assert 64 * 64 * 32 >= engine.BLAS_MACS
    pop = fn.Population(layers, input_dim=64, configs=cfgs, batch_size=32, epochs=3, seed=5, dtype=dtype)
    histories = pop.fit(X, y, dev=(X[:30], y[:30]))
    rtol = 1e-10 if dtype == "float64" else FLOAT32_RTOL
    for k, cfg in enumerate(cfgs):
        model, history = _alone(layers, cfg, fn.optim.Adam, dtype, X, y, (X[:30], y[:30]))
        _close(pop.models[k]._params, model._params, rtol)
        _close(histories[k]["train_loss"], history["train_loss"], rtol)
    alone = fn.Population(layers, input_dim=64, configs=cfgs[1:2], batch_size=32, epochs=3, seed=5, dtype=dtype)
    alone.fit(X, y)  # the same model, alone: BLAS may round the rows of a taller product differently
    _close(alone.models[0]._params, pop.models[1]._params, 1e-12 if dtype == "float64" else 1e-5)


def test_models_are_built_when_asked_for_and_follow_every_fit():
    X, y = _data()
    cfgs = _configs(OPTIMIZERS["adam"][1], 3)
    early = fn.Population(_layers(), input_dim=3, configs=cfgs, batch_size=32, epochs=2, seed=5, dtype="float64")
    late = fn.Population(_layers(), input_dim=3, configs=cfgs, batch_size=32, epochs=2, seed=5, dtype="float64")
    before = early.models  # built before any fit: each its Sequential's initial state
    for k, cfg in enumerate(cfgs):
        keep = cfg.get("keep_prob")
        layers = [L.Dropout(keep) if isinstance(x, L.Dropout) and keep is not None else x for x in _layers()]
        fresh = fn.Sequential(layers, input_dim=3, l2=cfg.get("l2", 0.0), seed=cfg.get("seed", 5), dtype="float64")
        np.testing.assert_array_equal(before[k]._params, fresh._params)
        assert before[k].l2 == fresh.l2 and before[k].seed == fresh.seed
        assert [getattr(n, "keep_prob", None) for n in before[k]._nodes] == [
            getattr(n, "keep_prob", None) for n in fresh._nodes]
    early.fit(X, y)
    late.fit(X, y)
    assert early.models is before
    for a, b, row in zip(early.models, late.models, late._P):
        np.testing.assert_array_equal(a._params, b._params)
        np.testing.assert_array_equal(b._params, row)
