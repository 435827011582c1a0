"""The Keras-style shortcut: ``fusednet._fit.fit`` and ``Sequential.fit``."""

import numpy as np
import pytest

from fusednet import optim
from fusednet._fit import OPTIMIZERS, fit
from fusednet.callbacks import EarlyStopping
from fusednet.history import History
from fusednet.layers import Dense, Dropout
from fusednet.model import Sequential
from fusednet.trainer import Trainer


def blobs(m=150, nf=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, nf)) * 2
    y = rng.integers(0, k, m)
    return centers[y] + rng.standard_normal((m, nf)), y


def mlp(nf=4, k=3, dtype="float64", seed=0):
    return Sequential([Dense(8, "relu"), Dropout(0.9), Dense(k, "softmax")], input_dim=nf, dtype=dtype, seed=seed)


def params(model):
    return model.state_dict()["params"]


def test_fit_is_the_trainer():
    X, y = blobs()
    a, b = mlp(), mlp()
    h = fit(a, X, y, epochs=4, batch_size=32)
    ref = Trainer(b, optimizer=optim.Adam(), batch_size=32, epochs=4, seed=0, progress=False).fit(X, y)
    assert isinstance(h, History) and h.epochs == 4
    assert h["train_loss"] == ref["train_loss"]
    np.testing.assert_array_equal(params(a), params(b))


def test_second_fit_continues_with_the_same_optimizer():
    X, y = blobs()
    a, b = mlp(), mlp()
    fit(a, X, y, epochs=3)
    opt = a._fit_optimizer
    assert isinstance(opt, optim.Adam) and opt.t == 3 * 3  # 150 rows in batches of 64: 3 steps an epoch
    fit(a, X, y, epochs=2)
    assert a._fit_optimizer is opt and opt.t == 5 * 3
    ref = optim.Adam()
    Trainer(b, optimizer=ref, batch_size=64, epochs=3, seed=0, progress=False).fit(X, y)
    Trainer(b, optimizer=ref, batch_size=64, epochs=2, seed=0, progress=False).fit(X, y)
    np.testing.assert_array_equal(params(a), params(b))
    np.testing.assert_array_equal(opt.state_dict()["m.0"], ref.state_dict()["m.0"])


def test_validation_split_takes_the_last_rows_before_shuffling():
    X, y = blobs(m=100)
    a, b = mlp(), mlp()
    ha = fit(a, X, y, epochs=3, validation_split=0.25)
    hb = fit(b, X[:75], y[:75], epochs=3, validation_data=(X[75:], y[75:]))
    assert ha["dev_loss"] == hb["dev_loss"] and len(ha["dev_loss"]) == 3
    np.testing.assert_array_equal(params(a), params(b))


def test_validation_split_rounds_the_training_part_down_as_keras():
    X, y = blobs(m=10)
    h = fit(mlp(), X, y, epochs=1, validation_split=0.15)  # floor(10 * 0.85) = 8 train rows, 2 held out
    b = mlp()
    ref = fit(b, X[:8], y[:8], epochs=1, validation_data=(X[8:], y[8:]))
    assert h["dev_loss"] == ref["dev_loss"]


def test_validation_data_overrides_validation_split():
    X, y = blobs()
    a, b = mlp(), mlp()
    ha = fit(a, X, y, epochs=2, validation_data=(X[:20], y[:20]), validation_split=0.5)
    hb = fit(b, X, y, epochs=2, validation_data=(X[:20], y[:20]))
    assert ha["dev_loss"] == hb["dev_loss"]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_by_name(name):
    X, y = blobs()
    model = mlp()
    fit(model, X, y, epochs=1, optimizer=name.upper() if name == "adam" else name)
    assert type(model._fit_optimizer) is OPTIMIZERS[name]
    assert model._fit_optimizer.t == 3


def test_optimizer_instance_is_used_and_kept():
    X, y = blobs()
    model = mlp()
    opt = optim.RMSProp(lr=0.01)
    fit(model, X, y, epochs=1, optimizer=opt)
    fit(model, X, y, epochs=1)
    assert model._fit_optimizer is opt and opt.t == 6


def test_a_named_optimizer_starts_afresh():
    X, y = blobs()
    model = mlp()
    fit(model, X, y, epochs=1)
    first = model._fit_optimizer
    fit(model, X, y, epochs=1, optimizer="adam")
    assert model._fit_optimizer is not first and model._fit_optimizer.t == 3


def test_trainer_arguments_pass_through():
    X, y = blobs()
    model = mlp()
    h = fit(model, X, y, epochs=3, batch_size=None, schedule=lambda e, s: 0.01 / (e + 1), fused_step=False,
            shuffle=False, seed=3)
    assert h["lr"] == [0.01, 0.005, 0.01 / 3]
    assert model._fit_optimizer.t == 3


def test_callbacks_see_the_validation_rows():
    X, y = blobs()
    stop = EarlyStopping(monitor="dev_loss", patience=1)
    h = fit(mlp(), X, y, epochs=3, validation_split=0.2, callbacks=[stop])
    assert stop.curve == h["dev_loss"]


def test_inputs_as_lists_and_memmaps(tmp_path):
    X, y = blobs(m=40)
    path = tmp_path / "X.npy"
    np.save(path, X)
    Xm = np.load(path, mmap_mode="r")
    a, b = mlp(), mlp()
    fit(a, X.tolist(), y.tolist(), epochs=2, validation_split=0.25)
    fit(b, Xm, y, epochs=2, validation_split=0.25)
    np.testing.assert_array_equal(params(a), params(b))


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"validation_split": 1.0}, ValueError, "validation_split"),
        ({"validation_split": -0.1}, ValueError, "validation_split"),
        ({"validation_split": "0.2"}, TypeError, "validation_split"),
        ({"validation_split": True}, TypeError, "validation_split"),
        ({"epochs": -1}, ValueError, "epochs"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"optimizer": "adagrad"}, ValueError, "optimizer"),
        ({"optimizer": 0.1}, TypeError, "optimizer"),
        ({"callbacks": [object()]}, TypeError, "callbacks"),
        ({"verbose": 0}, TypeError, "progress"),
        ({"validation_data": ([[0.0] * 4],)}, TypeError, "validation_data"),
        ({"validation_data": (np.zeros((3, 4)), [0, 1, 2], None)}, TypeError, "validation_data"),
        ({"validation_data": (np.zeros((3, 5)), [0, 1, 2])}, ValueError, "validation_data[0]"),
        ({"validation_data": (np.full((3, 4), np.nan), [0, 1, 2])}, ValueError, "validation_data[0]"),
        ({"validation_data": (np.zeros((3, 4)), [0, 1, 7])}, ValueError, "validation_data[1]"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_arguments_change_nothing(kwargs, exc, words):
    X, y = blobs()
    model = mlp()
    fit(model, X, y, epochs=1)
    before, opt, t = params(model), model._fit_optimizer, model._fit_optimizer.t
    with pytest.raises(exc, match=None) as info:
        fit(model, X, y, **kwargs)
    assert words in str(info.value)
    np.testing.assert_array_equal(params(model), before)
    assert model._fit_optimizer is opt and opt.t == t


@pytest.mark.parametrize(
    "X, y, exc, words",
    [
        (np.zeros((5, 4)), np.zeros(4, int), ValueError, "y"),
        (np.zeros(5), np.zeros(5, int), ValueError, "X"),
        (np.zeros((5, 3)), np.zeros(5, int), ValueError, "features"),
        (np.zeros((5, 4)), np.full(5, 9), ValueError, "label"),
    ],
)
def test_bad_data_changes_nothing(X, y, exc, words):
    model = mlp()
    before = params(model)
    with pytest.raises(exc) as info:
        fit(model, X, y, optimizer="momentum")
    assert words in str(info.value)
    np.testing.assert_array_equal(params(model), before)
    assert not hasattr(model, "_fit_optimizer")


def test_not_a_model():
    with pytest.raises(TypeError, match="Sequential"):
        fit(object(), np.zeros((2, 2)), np.zeros(2))


# ---- through Sequential.fit (the method delegates to fusednet._fit.fit) ----------------------


def test_model_fit_method():
    X, y = blobs()
    a, b = mlp(), mlp()
    h = a.fit(X, y, epochs=3, batch_size=32, validation_split=0.2)
    ref = fit(b, X, y, epochs=3, batch_size=32, validation_split=0.2)
    assert h.to_dict()["train_loss"] == ref.to_dict()["train_loss"] and "dev_loss" in h
    np.testing.assert_array_equal(params(a), params(b))


def test_model_fit_method_continues_training():
    X, y = blobs()
    model = mlp()
    first = model.fit(X, y, epochs=2)
    second = model.fit(X, y, epochs=2, validation_data=(X, y), callbacks=())
    assert model._fit_optimizer.t == 4 * 3
    assert second["train_loss"][0] < first["train_loss"][0]


def test_model_fit_method_refuses_bad_arguments():
    model = mlp()
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(*blobs(), validation_split=2.0)
    with pytest.raises(ValueError, match="optimizer"):
        model.fit(*blobs(), optimizer="nadam")
