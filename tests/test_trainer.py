"""Trainer: history semantics, mini-batching, backends, no allocation, divergence, bad input, memmap."""

import gc
import tracemalloc

import numpy as np
import pytest

from fusednet import kernels, optim
from fusednet.callbacks import Callback
from fusednet.errors import TrainingDiverged
from fusednet.layers import Activation, BatchNorm, Dense, Dropout
from fusednet.model import Sequential
from fusednet.trainer import Trainer, _Run

BACKENDS = kernels.available()


def blobs(m=120, nf=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, nf)) * 2
    y = rng.integers(0, k, m)
    X = centers[y] + rng.standard_normal((m, nf))
    return X, y


def mlp(nf=4, k=3, dtype="float64", seed=0, l2=0.0, extra=()):
    return Sequential([Dense(8, "relu"), *extra, Dense(k, "softmax")], input_dim=nf, l2=l2, dtype=dtype, seed=seed)


class Snapshots(Callback):
    """Copies of the parameters after every epoch."""

    def __init__(self):
        self.params = []

    def on_train_begin(self, trainer):
        self.params = [trainer.model.state_dict()["params"]]

    def on_epoch_end(self, trainer, epoch, logs):
        self.params.append(trainer.model.state_dict()["params"])


def apply_gd(model, grads, lr):
    for (_, p), (_, g) in zip(model.parameters(), grads):
        p -= lr * g


# ---- history semantics --------------------------------------------------------------------------


def test_batch_gd_train_loss_is_the_cost_before_each_update():
    X, y = blobs()
    model = mlp(l2=0.3)
    twin = model.copy()
    h = Trainer(model, optim.GD(0.5), batch_size=None, epochs=6, progress=False).fit(X, y)
    expected = []
    for _ in range(6):
        J, g = twin.loss_and_grads(X, y)
        expected.append(J)
        apply_gd(twin, g, 0.5)
    np.testing.assert_allclose(h["train_loss"], expected, rtol=1e-13)
    np.testing.assert_allclose(model.state_dict()["params"], twin.state_dict()["params"], rtol=1e-12, atol=1e-15)
    assert h.epochs == 6 and len(h.epochs) == 6 and list(h.epochs) == [0, 1, 2, 3, 4, 5]
    assert h["lr"] == [0.5] * 6
    assert len(h["time"]) == 6 and all(t >= 0 for t in h["time"])
    # train accuracy: from the training forward pass before each update
    acc0 = np.mean(mlp(l2=0.3).predict(X) == y)
    assert h["train_accuracy"][0] == pytest.approx(acc0)


@pytest.mark.parametrize("batch_size, shuffle", [(32, True), (50, True), (32, False), (1, True), (500, True)])
def test_minibatch_train_loss_weights_batches_by_size(batch_size, shuffle):
    X, y = blobs(m=110)
    model = mlp(l2=0.2)
    twin = model.copy()
    trainer = Trainer(model, optim.GD(0.1), batch_size=batch_size, epochs=3, shuffle=shuffle, seed=5, progress=False)
    h = trainer.fit(X, y)
    m = len(X)
    for e in range(3):
        order = np.random.default_rng([5, e]).permutation(m) if shuffle else np.arange(m)
        total = 0.0
        for s in range(0, m, batch_size):
            idx = order[s : s + batch_size]  # the last partial batch is kept
            J, g = twin.loss_and_grads(X[idx], y[idx])
            total += J * len(idx)
            apply_gd(twin, g, 0.1)
        assert h["train_loss"][e] == pytest.approx(total / m, rel=1e-12)
    np.testing.assert_allclose(model.state_dict()["params"], twin.state_dict()["params"], rtol=1e-10, atol=1e-13)


def test_shuffling_is_deterministic_in_the_seed():
    X, y = blobs()

    def run(seed):
        model = mlp(extra=(Dropout(0.7),))
        h = Trainer(model, optim.Adam(0.01), batch_size=16, epochs=3, seed=seed, progress=False).fit(X, y)
        return h["train_loss"], model.state_dict()["params"]

    (h1, p1), (h2, p2), (h3, p3) = run(3), run(3), run(4)
    assert h1 == h2
    np.testing.assert_array_equal(p1, p2)
    assert h1 != h3
    assert not np.array_equal(p1, p3)


def test_schedule_and_lr_history():
    X, y = blobs()
    seen = []

    def sched(epoch, step):
        seen.append((epoch, step))
        return 0.1 / (1 + epoch)

    h = Trainer(mlp(), optim.GD(1.0), schedule=sched, batch_size=50, epochs=3, progress=False).fit(X, y)
    assert h["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert seen == [(e, s) for e in range(3) for s in range(3)]  # step counts within the epoch
    h = Trainer(mlp(), optim.GD(0.3), schedule=0.02, batch_size=None, epochs=2, progress=False).fit(X, y)
    assert h["lr"] == [0.02, 0.02]


def test_dev_metrics_and_keys():
    X, y = blobs()
    Xd, yd = blobs(m=40, seed=1)
    model = mlp()
    h = Trainer(model, batch_size=32, epochs=2, progress=False).fit(X, y, dev=(Xd, yd))
    assert set(h.keys()) == {"train_loss", "lr", "time", "train_accuracy", "dev_loss", "dev_accuracy"}
    r = model.evaluate(Xd, yd)
    assert h["dev_loss"][-1] == pytest.approx(r["loss"])
    assert h["dev_accuracy"][-1] == pytest.approx(r["accuracy"])
    reg = Sequential([Dense(4, "tanh"), Dense(1)], input_dim=4)
    h = Trainer(reg, batch_size=32, epochs=1, progress=False).fit(X, X[:, 0], dev=(Xd, Xd[:, 0]))
    assert set(h.keys()) == {"train_loss", "lr", "time", "dev_loss"}


def test_sigmoid_multilabel_and_regression_train():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((80, 3))
    Y = (X[:, :2] > 0).astype(int)
    model = Sequential([Dense(8, "tanh"), Dense(2, "sigmoid")], input_dim=3, seed=1)
    h = Trainer(model, optim.Adam(0.05), batch_size=16, epochs=30, progress=False).fit(X, Y)
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["train_accuracy"][-1] > 0.9
    reg = Sequential([Dense(8, "tanh"), Dense(1)], input_dim=3, seed=1)
    h = Trainer(reg, optim.Adam(0.05), batch_size=16, epochs=30, progress=False).fit(X, X @ [1.0, -2.0, 0.5])
    assert h["train_loss"][-1] < 0.1 * h["train_loss"][0]


def test_float32_training_tracks_float64():
    X, y = blobs()
    m64 = mlp(dtype="float64")
    m32 = m64.copy(dtype="float32")
    h64 = Trainer(m64, optim.Adam(0.01), batch_size=32, epochs=5, progress=False).fit(X, y)
    h32 = Trainer(m32, optim.Adam(0.01), batch_size=32, epochs=5, progress=False).fit(X.astype(np.float32), y)
    np.testing.assert_allclose(h32["train_loss"], h64["train_loss"], rtol=1e-4)
    assert m32.state_dict()["params"].dtype == np.float32


def test_lazy_model_is_built_by_fit_and_progress_bar_runs(capsys):
    X, y = blobs()
    model = Sequential([Dense(5, "relu"), Dense(3, "softmax")])
    Trainer(model, epochs=2, progress=True).fit(X, y)
    assert model.input_dim == 4


def test_batchnorm_running_stats_follow_the_ewa():
    X, y = blobs(m=64)
    model = Sequential(
        [Dense(5, use_bias=False), BatchNorm(momentum=0.8), Activation("relu"), Dense(3, "softmax")],
        input_dim=4,
        dtype="float64",
    )
    W0 = dict(model.parameters())["dense_0.W"].copy()
    Trainer(model, optim.GD(1e-9), batch_size=None, epochs=1, progress=False).fit(X, y)
    Z = X @ W0
    buf = dict(model.buffers())
    np.testing.assert_allclose(buf["batchnorm_0.running_mean"], 0.2 * Z.mean(0), rtol=1e-6)
    np.testing.assert_allclose(buf["batchnorm_0.running_var"], 0.8 + 0.2 * Z.var(0), rtol=1e-6)


# ---- backends ---------------------------------------------------------------------------------------


def _full_run():
    X, y = blobs(m=90, nf=5)
    model = Sequential(
        [
            Dense(12, None, use_bias=False),
            BatchNorm(),
            Activation("tanh"),
            Dropout(0.6),
            Dense(8, "leaky_relu"),
            Dropout(0.8),
            Dense(3, "softmax"),
        ],
        input_dim=5,
        l2=0.05,
        dtype="float64",
        seed=21,
    )
    trainer = Trainer(model, optim.Adam(0.01), batch_size=32, epochs=4, seed=2, progress=False)
    h = trainer.fit(X, y, dev=blobs(30, 5, seed=9))
    return model, h


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_whole_training_run_is_the_same_on_every_backend(backend):
    before = kernels.get_backend()
    kernels.set_backend("numpy")
    ref_model, ref_h = _full_run()
    kernels.set_backend(backend)
    model, h = _full_run()
    kernels.set_backend(before)
    np.testing.assert_allclose(h["train_loss"], ref_h["train_loss"], rtol=1e-9)
    np.testing.assert_allclose(h["dev_loss"], ref_h["dev_loss"], rtol=1e-9)
    np.testing.assert_allclose(model.state_dict()["params"], ref_model.state_dict()["params"], rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(model.state_dict()["running"], ref_model.state_dict()["running"], rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_dropout_masks_are_equal_on_every_backend(backend):
    X, y = blobs(m=64)

    def masks():
        model = Sequential([Dense(40, "relu"), Dropout(0.5), Dense(3, "softmax")], input_dim=4, dtype="float64", seed=8)
        # the per-kernel path (its workspace keeps each node's input); the fused step's masks
        # are held equal to these in test_fused.py
        run = _Run(Trainer(model, optim.GD(0.1), batch_size=64, epochs=1, progress=False, fused_step=False),
                   X, y, None)
        run.step(2, 7, 0, 64)
        A_in = run.v_full.ins[1]
        A_out = run.v_full.nodes[1].A
        return A_out != 0, A_in != 0, model._grads.copy()

    got, nz, g = masks()
    kernels.set_backend("numpy")
    ref, _, g_ref = masks()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-13)
    assert 0.4 < got[nz].mean() < 0.6  # keep_prob 0.5 among the nonzero inputs


# ---- a steady-state step allocates nothing ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_steady_state_steps_allocate_nothing(backend, dtype):
    X, y = blobs(m=300, nf=20)
    X = X.astype(np.float32)  # float64 model: the gather converts into the buffer
    model = Sequential(
        [
            Dense(64, "relu"),
            Dropout(0.8),
            Dense(64, None, use_bias=False),
            BatchNorm(),
            Activation("tanh"),
            Dense(3, "softmax"),
        ],
        input_dim=20,
        l2=0.01,
        dtype=dtype,
    )
    run = _Run(Trainer(model, optim.Adam(0.001), batch_size=64, epochs=3, progress=False), X, y, None)
    run.run_epoch(0)  # warm-up: optimiser state, kernel compilation, cached views
    bounds = run.bounds
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for epoch in (1, 2):
            for step, (s, e) in enumerate(bounds):  # includes the partial batch of 44
                run.step(epoch, step, s, e)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - base < 4096, current - base
    if backend != "numpy":  # the numpy reference kernels allocate temporaries by design
        # the compiled kernels reuse their scratch (column-sum tiles, loss block sums)
        # from call to call; what remains is the step's small Python objects, about
        # 3-4 KiB at peak, below a single 8 KiB float64 tile
        assert peak - base < 8192, peak - base


# ---- divergence ------------------------------------------------------------------------------------------------


def test_nan_cost_stops_with_epoch_and_step_and_keeps_the_last_parameters():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3)) * 100
    y = X @ [1.0, 2.0, 3.0]
    model = Sequential([Dense(1)], input_dim=3, dtype="float64")
    snaps = Snapshots()
    trainer = Trainer(model, optim.GD(0.5), batch_size=None, epochs=1000, callbacks=[snaps], progress=False)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit(X, y)
    e = err.value
    assert isinstance(e, FloatingPointError)
    assert f"epoch {e.epoch}" in str(e) and f"step {e.step}" in str(e)
    assert e.step == 0 and e.epoch > 2
    assert e.history is trainer.history and e.history.epochs == e.epoch
    params = model.state_dict()["params"]
    assert np.all(np.isfinite(params))
    np.testing.assert_array_equal(params, snaps.params[-1])  # unchanged by the failing step
    assert len(snaps.params) == e.epoch + 1


def test_divergence_in_a_later_minibatch_names_that_step():
    X, y = blobs(m=100)

    class Boom:
        """A schedule whose learning rate explodes at epoch 1, step 2."""

        def __call__(self, epoch, step):
            return 1e300 if (epoch, step) == (1, 2) else 0.01

    model = mlp()
    with pytest.raises(TrainingDiverged) as err:
        Trainer(model, optim.GD(0.1), schedule=Boom(), batch_size=20, epochs=5, shuffle=False, progress=False).fit(X, y)
    assert (err.value.epoch, err.value.step) == (1, 3)  # the step after the huge update
    assert "epoch 1, step 3" in str(err.value)
    assert np.all(np.isfinite(model.state_dict()["params"]))
    assert err.value.history.epochs == 1


# ---- bad input changes nothing ---------------------------------------------------------------------------------


def _bad_cases():
    X, y = blobs(m=30)
    Xn = X.copy()
    Xn[7, 2] = np.nan
    Xi = X.copy()
    Xi[3, 0] = np.inf
    return [
        ("nan in X", Xn, y, None, {}, "finite"),
        ("inf in X", Xi, y, None, {}, "finite"),
        ("wrong n_features", X[:, :3], y, None, {}, "features"),
        ("label out of range", X, np.where(y == 0, 3, y), None, {}, "out of range"),
        ("wrong length", X, y[:-1], None, {}, "one row per example"),
        ("1-D X", X[:, 0], y, None, {}, "2-D"),
        ("dev nan", X, y, (Xn, y), {}, "finite"),
        ("dev width", X, y, (X[:, :2], y), {}, "features"),
        ("dev label", X, y, (X, y + 5), {}, "out of range"),
        ("batchnorm sgd", X, y, None, {"bn": True, "batch_size": 1}, "BatchNorm"),
        ("batchnorm last batch of one", X, y, None, {"bn": True, "batch_size": 29}, "BatchNorm"),
        ("early stopping without dev", X, y, None, {"es": True}, "dev"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_before_any_state_changes(case):
    from fusednet.callbacks import EarlyStopping

    _, X, y, dev, opts, match = case
    extra = (Dense(8, use_bias=False), BatchNorm()) if opts.get("bn") else ()
    model = Sequential([*extra, Dense(8, "relu"), Dense(3, "softmax")], input_dim=4, dtype="float64")
    opt = optim.Adam()
    state = model.state_dict()
    callbacks = [EarlyStopping()] if opts.get("es") else []
    trainer = Trainer(model, opt, batch_size=opts.get("batch_size", 8), epochs=2, callbacks=callbacks, progress=False)
    with pytest.raises(ValueError, match=match):
        trainer.fit(X, y, dev=dev)
    after = model.state_dict()
    np.testing.assert_array_equal(state["params"], after["params"])
    np.testing.assert_array_equal(state["running"], after["running"])
    assert opt.t == 0
    if match != "features" and not opts.get("bn"):  # a lazily built model stays unbuilt
        lazy = Sequential([Dense(8, "relu"), Dense(3, "softmax")])
        with pytest.raises(ValueError, match=match):
            Trainer(lazy, batch_size=8, callbacks=callbacks, progress=False).fit(X, y, dev=dev)
        assert not lazy.built


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 2.5},
        {"epochs": -1},
        {"seed": -1},
        {"optimizer": "adam"},
        {"callbacks": [object()]},
    ],
)
def test_bad_trainer_arguments(kwargs):
    with pytest.raises((ValueError, TypeError)):
        Trainer(mlp(), **kwargs)


# ---- memmap ---------------------------------------------------------------------------------------------------------


def test_memmap_trains_like_an_array(tmp_path):
    X, y = blobs(m=500, nf=6)
    path = tmp_path / "X.dat"
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    mm = np.memmap(path, dtype=np.float64, mode="r", shape=X.shape)

    def train(data, dtype):
        model = mlp(nf=6, dtype=dtype, extra=(Dropout(0.9),))
        trainer = Trainer(model, optim.Adam(0.01), batch_size=64, epochs=2, seed=1, progress=False)
        h = trainer.fit(data, y, dev=(data, y))
        return h, model.state_dict()["params"]

    for dtype in ("float64", "float32"):  # same dtype: gathered directly; float32: converted per batch
        h_mm, p_mm = train(mm, dtype)
        h_ar, p_ar = train(X, dtype)
        assert h_mm["train_loss"] == h_ar["train_loss"]
        np.testing.assert_array_equal(p_mm, p_ar)
    run = _Run(Trainer(mlp(nf=6), batch_size=64, progress=False), mm, y, None)
    assert run.X is mm  # never converted as a whole
