"""Callbacks (EarlyStopping, Checkpoint) and the History record."""

import json
import sys

import numpy as np
import pytest

from fusednet import optim
from fusednet.callbacks import Callback, Checkpoint, EarlyStopping
from fusednet.history import History
from fusednet.layers import BatchNorm, Dense
from fusednet.model import Sequential
from fusednet.trainer import Trainer


def data(m=100, seed=0, flip=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    return X, (1 - y if flip else y)


class Snapshots(Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        self.__dict__.setdefault("params", []).append(trainer.model.state_dict())


# ---- EarlyStopping ---------------------------------------------------------------------------------------------------


def test_early_stopping_restores_the_best_weights_and_records_the_dev_curve():
    X, y = data()
    Xd, yd = data(seed=1, flip=True)  # dev labels flipped: dev loss gets worse as training improves
    model = Sequential(
        [Dense(4, None, use_bias=False), BatchNorm(), Dense(1, "sigmoid")], input_dim=2, dtype="float64", seed=0
    )
    snaps = Snapshots()
    es = EarlyStopping(monitor="dev_loss", patience=3)
    trainer = Trainer(model, optim.Adam(0.05), batch_size=20, epochs=50, callbacks=[snaps, es], progress=False)
    h = trainer.fit(X, y, dev=(Xd, yd))
    assert es.curve == h["dev_loss"]
    best = int(np.argmin(h["dev_loss"]))
    assert es.best_epoch == best and es.best == min(h["dev_loss"])
    assert es.stopped_epoch == best + 3 == h.epochs - 1
    state = model.state_dict()
    np.testing.assert_array_equal(state["params"], snaps.params[best]["params"])
    np.testing.assert_array_equal(state["running"], snaps.params[best]["running"])
    assert model.evaluate(Xd, yd)["loss"] == pytest.approx(es.best)


def test_early_stopping_on_accuracy_and_without_restore():
    X, y = data()
    model = Sequential([Dense(3, "tanh"), Dense(1, "sigmoid")], input_dim=2, seed=0)
    es = EarlyStopping(monitor="train_accuracy", patience=2, restore_best=False)
    assert es.mode == "max"
    h = Trainer(model, optim.GD(1e-6), batch_size=None, epochs=30, callbacks=[es], progress=False).fit(X, y)
    assert h.epochs == 3  # no improvement after the first epoch
    assert es.best_epoch == 0


def test_early_stopping_patience_zero_and_min_delta():
    X, y = data()
    model = Sequential([Dense(1, "sigmoid")], input_dim=2, seed=0)
    es = EarlyStopping(monitor="train_loss", patience=0, min_delta=1.0)  # no epoch improves by 1.0
    h = Trainer(model, optim.GD(0.1), batch_size=None, epochs=10, callbacks=[es], progress=False).fit(X, y)
    assert h.epochs == 2 and es.stopped_epoch == 1


def test_early_stopping_arguments():
    with pytest.raises(ValueError):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError):
        EarlyStopping(min_delta=-0.1)
    with pytest.raises(ValueError):
        EarlyStopping(mode="up")
    X, y = data()
    model = Sequential([Dense(1, "sigmoid")], input_dim=2)
    with pytest.raises(ValueError, match="dev"):
        Trainer(model, callbacks=[EarlyStopping()], progress=False).fit(X, y)


# ---- Checkpoint ------------------------------------------------------------------------------------------------------


def test_checkpoint_saves_every_n_epochs(tmp_path):
    from fusednet.io import load_model

    X, y = data()
    model = Sequential([Dense(3, "relu"), Dense(1, "sigmoid")], input_dim=2, dtype="float64")
    ck = Checkpoint(tmp_path / "model-{epoch}.npz", every=2)
    latest = Checkpoint(tmp_path / "latest.npz")
    Trainer(model, optim.Adam(0.01), batch_size=32, epochs=5, callbacks=[ck, latest], progress=False).fit(X, y)
    assert [p.rsplit("/", 1)[-1] for p in ck.saved] == ["model-1.npz", "model-3.npz"]
    assert len(latest.saved) == 5
    loaded = load_model(tmp_path / "latest.npz")
    np.testing.assert_array_equal(loaded.forward(X), model.forward(X))


def test_checkpoint_arguments():
    with pytest.raises(ValueError):
        Checkpoint("m.npz", every=0)
    with pytest.raises(TypeError):
        Checkpoint(3)


def test_custom_callback_can_stop_training():
    class StopAt(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            assert set(logs) >= {"train_loss", "lr", "time"}
            if epoch == 4:
                trainer.stop_training = True

    X, y = data()
    h = Trainer(Sequential([Dense(1, "sigmoid")], input_dim=2), callbacks=[StopAt()], progress=False).fit(X, y)
    assert h.epochs == 5


# ---- History ---------------------------------------------------------------------------------------------------------


def test_history_behaves_like_a_dict_and_is_json_able():
    X, y = data()
    h = Trainer(Sequential([Dense(1, "sigmoid")], input_dim=2), epochs=3, progress=False).fit(X, y, dev=(X, y))
    assert isinstance(h, History)
    assert "train_loss" in h and "dev_accuracy" in h and "nope" not in h
    assert set(h.keys()) == {"train_loss", "lr", "time", "train_accuracy", "dev_loss", "dev_accuracy"}
    assert len(h["train_loss"]) == 3 and h.epochs == 3
    d = h.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert History.from_dict(d).to_dict() == d
    assert dict(h) == d
    json.loads(h.to_json())
    assert "History(epochs=3" in repr(h)


@pytest.mark.parametrize("first_read", ["getitem", "keys", "len", "epochs", "to_dict", "to_json", "repr", "pickle",
                                        "append"])
def test_history_columns_recorded_at_once_read_as_the_epochs_appended_one_by_one(first_read):
    import pickle

    cols = {"train_loss": np.array([0.5, 0.25, 0.125]), "lr": np.full(3, 0.1), "time": np.array([1e-3, 2e-3, 3e-3])}
    extra = {"train_loss": 0.0625, "lr": 0.1, "time": 4e-3}
    ref = History()
    for i in range(3):
        ref.append({k: v[i] for k, v in cols.items()})
    h = History()
    h._extend({k: v[:2] for k, v in cols.items()})  # as the trainer's whole-fit calls record them
    h._extend({k: v[2:] for k, v in cols.items()})
    read = {"getitem": lambda: h["lr"], "keys": lambda: list(h), "len": lambda: len(h), "epochs": lambda: h.epochs,
            "to_dict": h.to_dict, "to_json": h.to_json, "repr": lambda: repr(h),
            "pickle": lambda: pickle.loads(pickle.dumps(h)), "append": lambda: h.append(extra)}[first_read]()
    if first_read == "append":
        ref.append(extra)
    if first_read == "pickle":
        h = read
    assert h.epochs == ref.epochs and list(h) == list(ref) and repr(h) == repr(ref)
    assert h.to_dict() == ref.to_dict() and h.to_json() == ref.to_json()
    assert all(type(x) is float for v in h.values() for x in v)


def test_history_plot(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = data()
    h = Trainer(Sequential([Dense(1, "sigmoid")], input_dim=2), epochs=4, progress=False).fit(X, y, dev=(X, y))
    path = tmp_path / "curve.png"
    h.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reg = History({"train_loss": [3.0, 2.0, 1.0]})
    reg.plot(tmp_path / "reg.png")
    assert (tmp_path / "reg.png").stat().st_size > 0


def test_history_plot_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="matplotlib"):
        History({"train_loss": [1.0]}).plot("x.png")
