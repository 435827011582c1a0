"""Resuming a run: 5 + 5 epochs equal 10, bit for bit, through the same objects or a checkpoint file."""

import numpy as np
import pytest

import fusednet as fn
from fusednet import optim
from fusednet.callbacks import Checkpoint
from fusednet.io import load_checkpoint, save_checkpoint
from fusednet.layers import BatchNorm, Dense, Dropout
from fusednet.model import Sequential
from fusednet.schedules import InverseTimeDecay


def _data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    X = (rng.standard_normal((150, 6)) + np.eye(3, 6)[y]).astype(np.float32)
    return X, y


def _model():
    return Sequential([Dense(16, "relu"), Dropout(0.8), Dense(8, use_bias=False), BatchNorm(), Dense(3, "softmax")],
                      input_dim=6, l2=0.01, seed=3)


OPTIMISERS = {"adam": lambda: optim.Adam(0.01), "momentum": lambda: optim.Momentum(0.05, bias_correction=True),
              "rmsprop": lambda: optim.RMSProp(0.01), "gd": lambda: optim.GD(0.1)}


def _trainer(model, opt, epochs, fused):
    return fn.Trainer(model, opt, schedule=InverseTimeDecay(0.01, 0.5), batch_size=32, epochs=epochs, seed=7,
                      progress=False, fused_step=fused)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
def test_five_plus_five_epochs_equal_ten(opt, fused):
    X, y = _data()
    whole = _model()
    h10 = _trainer(whole, OPTIMISERS[opt](), 10, fused).fit(X, y)
    parts = _model()
    o = OPTIMISERS[opt]()
    h5 = _trainer(parts, o, 5, fused).fit(X, y)
    h5b = _trainer(parts, o, 10, fused).fit(X, y, initial_epoch=5)
    np.testing.assert_array_equal(parts._params, whole._params)
    np.testing.assert_array_equal(parts._stats, whole._stats)
    assert h5b.epochs == 5
    np.testing.assert_array_equal(np.concatenate([h5["train_loss"], h5b["train_loss"]]), h10["train_loss"])
    np.testing.assert_array_equal(np.concatenate([h5["lr"], h5b["lr"]]), h10["lr"])


@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
def test_a_checkpoint_file_resumes_the_run_exactly(tmp_path, opt):
    X, y = _data()
    whole = _model()
    _trainer(whole, OPTIMISERS[opt](), 10, True).fit(X, y)
    first = _model()
    ckpt = Checkpoint(tmp_path / "ckpt.npz")
    t = _trainer(first, OPTIMISERS[opt](), 5, True)
    t.callbacks = [ckpt]
    t.fit(X, y)
    model, o, epoch = load_checkpoint(tmp_path / "ckpt.npz")
    assert epoch == 5 and type(o).__name__ == type(OPTIMISERS[opt]()).__name__
    _trainer(model, o, 10, True).fit(X, y, initial_epoch=epoch)
    np.testing.assert_array_equal(model._params, whole._params)
    np.testing.assert_array_equal(model._stats, whole._stats)
    # a checkpoint is a model file too
    np.testing.assert_array_equal(fn.load(tmp_path / "ckpt.npz").predict(X), first.predict(X))


def test_load_checkpoint_refuses_a_plain_model_file_and_bad_state(tmp_path):
    X, y = _data()
    model = _model()
    model.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="without training state"):
        load_checkpoint(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="values"):
        o = optim.Adam()
        o.step(np.zeros(4, np.float32), np.ones(4, np.float32))
        save_checkpoint(model, o, 1, tmp_path / "c.npz")
    with pytest.raises(ValueError, match="epoch"):
        save_checkpoint(model, optim.Adam(), -1, tmp_path / "c.npz")


@pytest.mark.parametrize("bad", [-1, 11, 2.0, True])
def test_initial_epoch_is_checked(bad):
    X, y = _data()
    with pytest.raises(ValueError, match="initial_epoch"):
        _trainer(_model(), optim.Adam(), 10, True).fit(X, y, initial_epoch=bad)
