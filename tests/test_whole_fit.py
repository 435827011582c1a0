"""A whole fit in one compiled call (``dense_fit``, fusednet.trainer._WholeFit) against the per-epoch path."""

import numpy as np
import pytest

from fusednet import _fused, kernels, optim
from fusednet import trainer as _trainer
from fusednet.callbacks import Callback, EarlyStopping
from fusednet.errors import TrainingDiverged
from fusednet.kernels import _blas, _codes, _plan
from fusednet.layers import Activation, BatchNorm, Dense, Dropout
from fusednet.model import Sequential
from fusednet.trainer import Trainer

pytestmark = pytest.mark.skipif(
    not _blas.AVAILABLE or "cython" not in kernels.available(),
    reason=f"the fused step is unavailable here: {_blas.STATUS}",
)

NETS = {
    "planar": (lambda: [Dense(4, "tanh"), Dense(1, "sigmoid")], "binary"),
    "moons": (lambda: [Dense(5, "relu"), Dense(2, "relu"), Dense(1, "sigmoid")], "binary"),
    "softmax": (lambda: [Dense(9, "leaky_relu"), Dense(3, "softmax")], "labels"),
    "regression": (lambda: [Dense(4, "tanh"), Dense(2, None)], "regression"),
    "batchnorm": (lambda: [Dense(8, None, use_bias=False), BatchNorm(), Activation("relu"), Dropout(0.8),
                           Dense(3, "softmax")], "labels"),
}
OPTIMISERS = {
    "gd": lambda: optim.GD(0.5),
    "momentum": lambda: optim.Momentum(0.05, beta=0.9, bias_correction=True),
    "rmsprop": lambda: optim.RMSProp(0.01),
    "adam": lambda: optim.Adam(0.01),
}


def data(kind, m=120, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, m)
    X = (rng.standard_normal((m, 5)) + 1.5 * np.eye(3, 5)[y]).astype(dtype)
    if kind == "binary":
        return X, (y == 1).astype(np.float64)
    if kind == "regression":
        return X, np.stack([X[:, 0] - X[:, 1], 0.5 * X[:, 2]], axis=1)
    return X, y


@pytest.fixture
def per_epoch(monkeypatch):
    """Turns the whole-fit call off: every epoch is its own call, as before it existed."""

    def off():
        monkeypatch.setattr(_trainer._WholeFit, "why_not", staticmethod(lambda run: "off for the test"))

    return off


def _fit(net, opt="adam", dtype="float64", batch_size=32, shuffle=True, epochs=6, callbacks=(), schedule=None,
         dev=False, l2=0.0, m=120):
    make, kind = NETS[net]
    X, y = data(kind, m=m, dtype=dtype)
    model = Sequential(make(), input_dim=5, dtype=dtype, l2=l2, seed=2)
    o = OPTIMISERS[opt]()
    trainer = Trainer(model, o, schedule=schedule, batch_size=batch_size, epochs=epochs, shuffle=shuffle, seed=7,
                      callbacks=callbacks, progress=False)
    run = {}
    real = _trainer._Run.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        run["run"] = self

    _trainer._Run.__init__ = spy
    try:
        h = trainer.fit(X, y, dev=(X[:30], y[:30]) if dev else None)
    finally:
        _trainer._Run.__init__ = real
    return model, o, h, run["run"]


def _same(a, b):
    (ma, oa, ha, _), (mb, ob, hb, _) = a, b
    np.testing.assert_array_equal(ma._params, mb._params)
    np.testing.assert_array_equal(ma._stats, mb._stats)
    for k in ("train_loss", "lr", "train_accuracy", "dev_loss", "dev_accuracy"):
        assert ha.get(k) == hb.get(k), k
    assert set(ha.keys()) == set(hb.keys())
    assert oa.t == ob.t
    for sa, sb in zip(oa._fused(ma._params, ma._grads)[6:], ob._fused(mb._params, mb._grads)[6:]):
        np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_size, shuffle", [(None, True), (32, True), (32, False), (1000, True)])
@pytest.mark.parametrize("net", sorted(NETS))
def test_the_whole_fit_equals_the_per_epoch_path_bit_for_bit(net, batch_size, shuffle, dtype, per_epoch):
    opt = "adam" if net != "planar" else "gd"
    whole = _fit(net, opt, dtype, batch_size, shuffle)
    assert whole[3].whole is not None, whole[3].whole_why_not
    if batch_size == 32 and shuffle:  # each epoch's order drawn inside the call
        assert whole[3].whole.order == _codes.FIT_ORDER_DRAWN
    per_epoch()
    _same(whole, _fit(net, opt, dtype, batch_size, shuffle))


@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
def test_every_optimiser_with_l2_and_a_schedule_per_step(opt, per_epoch):
    def sched(epoch, step):
        return 0.02 / (1 + epoch + 0.1 * step)

    whole = _fit("softmax", opt, l2=0.3, schedule=sched)
    assert whole[3].whole is not None
    per_epoch()
    _same(whole, _fit("softmax", opt, l2=0.3, schedule=sched))


@pytest.mark.parametrize("monitor, restore", [("train_loss", True), ("train_accuracy", True),
                                              ("train_loss", False)])
def test_early_stopping_in_the_whole_fit_restores_the_best_weights_as_the_callback_does(monitor, restore,
                                                                                        per_epoch):
    def run():
        # GD with a large rate: the train loss goes up and down, so patience runs out
        es = EarlyStopping(monitor=monitor, patience=2, min_delta=1e-4, restore_best=restore)
        return _fit("batchnorm", "gd", batch_size=16, epochs=40, callbacks=[es]), es

    whole, es_whole = run()
    assert whole[3].whole is not None
    per_epoch()
    ref, es_ref = run()
    _same(whole, ref)
    for attr in ("curve", "best", "best_epoch", "stopped_epoch", "wait"):
        assert getattr(es_whole, attr) == getattr(es_ref, attr), attr
    assert es_ref.stopped_epoch is not None and es_ref.stopped_epoch < 39  # the test stops early


def test_early_stopping_that_never_stops_runs_every_epoch(per_epoch):
    es = EarlyStopping(monitor="train_loss", patience=100)
    whole = _fit("moons", epochs=12, callbacks=[es])
    assert whole[2].epochs == 12 and es.stopped_epoch is None and es.best_epoch is not None


class _Boom:
    """A schedule whose learning rate explodes in epoch 2."""

    def __call__(self, epoch, step):
        return 1e300 if epoch == 2 else 0.01


@pytest.mark.parametrize("batch_size", [None, 16])
def test_divergence_names_epoch_and_step_and_keeps_the_last_finite_values(batch_size, per_epoch):
    def run():
        with pytest.raises(TrainingDiverged) as err:
            _fit("softmax", "momentum", batch_size=batch_size, schedule=_Boom(), epochs=5)
        return err.value

    whole = run()
    per_epoch()
    ref = run()
    assert (whole.epoch, whole.step, whole.what) == (ref.epoch, ref.step, ref.what)
    assert whole.epoch >= 2 and whole.history.epochs == whole.epoch
    assert whole.history.to_dict().keys() == ref.history.to_dict().keys()
    for k in ("train_loss", "lr", "train_accuracy"):
        assert whole.history[k] == ref.history[k]


class _Counting(Callback):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.epochs.append(epoch)


def test_a_python_callback_falls_back_to_one_call_per_epoch():
    cb = _Counting()
    *_, run = _fit("moons", epochs=4, callbacks=[cb])
    assert run.whole is None and "_Counting" in run.whole_why_not
    assert cb.epochs == [0, 1, 2, 3]
    *_, run = _fit("moons", epochs=2, callbacks=[_Counting(), EarlyStopping(monitor="dev_loss")], dev=True)
    assert run.whole is None


@pytest.mark.parametrize("net", ["softmax", "regression", "batchnorm"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_dev_set_is_evaluated_inside_the_whole_fit_as_the_per_epoch_path_does(net, dtype, per_epoch):
    whole = _fit(net, dtype=dtype, dev=True)
    assert whole[3].whole is not None, whole[3].whole_why_not
    assert len(whole[2]["dev_loss"]) == 6
    per_epoch()
    _same(whole, _fit(net, dtype=dtype, dev=True))


@pytest.mark.parametrize("monitor", ["dev_loss", "dev_accuracy"])
def test_early_stopping_on_the_dev_set_in_the_whole_fit(monitor, per_epoch):
    def run():
        es = EarlyStopping(monitor=monitor, patience=2)
        return _fit("batchnorm", "gd", batch_size=16, epochs=40, callbacks=[es], dev=True), es

    whole, es_whole = run()
    assert whole[3].whole is not None
    per_epoch()
    ref, es_ref = run()
    _same(whole, ref)
    for attr in ("curve", "best", "best_epoch", "stopped_epoch", "wait"):
        assert getattr(es_whole, attr) == getattr(es_ref, attr), attr
    assert es_ref.stopped_epoch is not None and es_ref.stopped_epoch < 39


def test_an_error_of_the_dev_evaluation_propagates(monkeypatch):
    def boom(self):
        raise RuntimeError("dev evaluation failed")

    monkeypatch.setattr(_trainer._WholeFit, "_dev", boom)
    with pytest.raises(RuntimeError, match="dev evaluation failed"):
        _fit("moons", dev=True)


def test_a_bad_learning_rate_is_raised_at_its_epoch_after_the_ones_before_ran():
    def sched(epoch, step):
        return -1.0 if epoch == 3 else 0.01

    with pytest.raises(ValueError, match="epoch 3, step 0"):
        _fit("moons", schedule=sched)


def test_a_progress_bar_splits_the_fit_into_calls_with_the_same_result(per_epoch):
    make, kind = NETS["moons"]
    X, y = data(kind)
    out = []
    for progress in (True, False):
        model = Sequential(make(), input_dim=5, seed=2)
        h = Trainer(model, optim.Adam(0.01), batch_size=32, epochs=9, seed=1, progress=progress).fit(X, y)
        out.append((model._params.copy(), h["train_loss"]))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert out[0][1] == out[1][1]


def test_a_fit_record_that_does_not_fit_is_named():
    _, _, _, run = _fit("moons", epochs=1)
    fused = run.fused
    ids = np.ascontiguousarray(run.ids, np.intp)
    perms = np.arange(run.m)[None, :]
    lrs = np.full((1, len(run.bounds)), 0.01)

    def call(rec=None, hist=None, data=None, perms_=perms, lrs_=lrs):
        rec = _plan.fit_record(0, 1, 0, order=2) if rec is None else rec
        hist = np.zeros(1, _plan.HIST_DTYPE) if hist is None else hist
        return fused.fit(data or (run.X, run.Y, ids, None), rec, perms_, lrs_, hist)

    call()  # the record as built is accepted
    bad = _plan.fit_record(0, 1, 0, order=2)
    bad = bad.astype([(n, "<i8" if n == "monitor" else bad.dtype.fields[n][0]) for n in bad.dtype.names])
    with pytest.raises(ValueError, match="fit"):
        call(rec=bad)
    rec = _plan.fit_record(0, 1, 0, order=2, monitor=7)
    with pytest.raises(ValueError, match=r"fit.monitor"):
        call(rec=rec)
    with pytest.raises(ValueError, match=r"fit.epochs"):
        call(rec=_plan.fit_record(0, 0, 0, order=2))
    with pytest.raises(ValueError, match="hist must be a contiguous 1-D array of 2 records"):
        call(rec=_plan.fit_record(0, 2, 0, order=2))  # hist holds one record
    with pytest.raises(ValueError, match=r"fit.order: unknown"):
        call(rec=_plan.fit_record(0, 1, 0, order=9))
    with pytest.raises(ValueError, match=r"perms must be \(0, 120\) for fit.order 0"):
        call(rec=_plan.fit_record(0, 1, 0, order=0))
    hist = np.zeros(1, [("train_loss", "<f8"), ("correct", "<i8"), ("seconds", "<f8")])
    with pytest.raises(ValueError, match="hist: the fields"):
        call(hist=hist)
    with pytest.raises(ValueError, match="lrs must be"):
        call(lrs_=np.full((1, 3), 0.01))
    with pytest.raises(ValueError, match=r"perms\[0, 0\]"):
        call(perms_=np.full((1, run.m), -1, np.intp))
    with pytest.raises(ValueError, match="data: ids"):
        call(data=(run.X, run.Y, ids[:5], None))
    with pytest.raises(ValueError, match="data must be a tuple"):
        call(data=(run.X, run.Y, ids))
    with pytest.raises(ValueError, match=r"fit.monitor: the dev set"):
        call(rec=_plan.fit_record(0, 1, 0, order=2, monitor=3))
    with pytest.raises(ValueError, match="fit.restore"):
        call(rec=_plan.fit_record(0, 1, 0, order=2, restore=True))


def test_the_fit_dtypes_mirror_the_c_structs_field_by_field():
    ck = _fused._cython()
    for dtype, struct in ((_plan.FIT_DTYPE, "FitSpec"), (_plan.HIST_DTYPE, "HistRow")):
        size, offsets = ck._ck.layouts()[struct]
        assert dtype.itemsize == size, struct
        assert dtype.names == tuple(offsets), struct
        for name, off in offsets.items():
            assert dtype.fields[name][1] == off, (struct, name)


def test_the_serial_or_team_choice_is_made_once_per_fit_and_reported(monkeypatch):
    import fusednet as fn
    from fusednet.kernels import _policy

    calls = []
    real = _fused.team_choice

    def counted(*a):
        calls.append(a[1])
        return real(*a)

    monkeypatch.setattr(_fused, "team_choice", counted)
    *_, run = _fit("moons", batch_size=32, epochs=3)
    assert calls == [32] and run.fused.n_threads == 1
    last = fn.info()["last_fit"]
    assert last["model"] == "5 -> 5 -> 2 -> 1" and last["batch_rows"] == 32
    assert last["step"].startswith("one-call step; serial") and "STEP_SERIAL_FLOPS" in last["step"]
    assert last["epochs"] == "all epochs in one compiled call"
    monkeypatch.setattr(_policy, "STEP_SERIAL_FLOPS", 0)
    *_, run = _fit("moons", batch_size=32, epochs=3, callbacks=[_Counting()])
    if kernels.get_num_threads() > 1:
        assert run.fused.n_threads == kernels.get_num_threads()
        assert fn.info()["last_fit"]["step"].startswith(f"one-call step; a team of {run.fused.n_threads}")
    assert fn.info()["last_fit"]["epochs"].startswith("one call per epoch: the callback _Counting")


def _runs(monkeypatch):
    """The list every ``_Run`` the trainer builds from now on is appended to."""
    runs = []
    real = _trainer._Run.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        runs.append(self)

    monkeypatch.setattr(_trainer._Run, "__init__", spy)
    return runs


def _without_the_kept_step(monkeypatch):
    """Every fit builds its step afresh, as before a model kept the step of its last fit."""
    real = _fused.step_for

    def fresh(model, *a):
        model.__dict__.pop("_step_memo", None)
        return real(model, *a)

    monkeypatch.setattr(_fused, "step_for", fresh)


def _two_fits(net, opt, change=None, batch_size=32):
    """Two fits of one model and trainer on float32 data (the second on the rows reversed), with
    ``change`` made between them; returns ``(model, optimiser, first history, second history)``."""
    make, kind = NETS[net]
    X, y = data(kind, dtype="float32")
    model = Sequential(make(), input_dim=5, dtype="float32", seed=2)
    o = OPTIMISERS[opt]()
    trainer = Trainer(model, o, batch_size=batch_size, epochs=3, seed=7, progress=False)
    first = trainer.fit(X, y)
    backend, n_threads = kernels.get_backend(), kernels.get_num_threads()
    if change == "optimizer":
        trainer.optimizer = o = OPTIMISERS[opt]()
    elif change == "reset":
        o.reset()
    elif change == "l2":
        model.l2 = 1e-3
    elif change == "seed":
        model.seed = 5
    elif change == "batch":
        trainer.batch_size = 40
    elif change == "threads":
        kernels.set_num_threads(n_threads % 2 + 1)
    elif change == "backend":  # named rather than chosen
        kernels.set_backend("cython")
    try:
        second = trainer.fit(X[::-1].copy(), y[::-1].copy())
    finally:
        kernels.set_backend(backend)
        kernels.set_num_threads(n_threads)
    return model, o, first, second


def _same_two_fits(a, b):
    _same(a[:3] + (None,), b[:3] + (None,))
    _same((a[0], a[1], a[3], None), (b[0], b[1], b[3], None))


@pytest.mark.parametrize("net, opt, batch_size", [("planar", "gd", None), ("planar", "gd", 32),
                                                  ("batchnorm", "adam", 32), ("softmax", "momentum", 1000)])
def test_a_second_fit_takes_the_models_step_again_with_the_same_bits(monkeypatch, net, opt, batch_size):
    runs = _runs(monkeypatch)
    kept = _two_fits(net, opt, batch_size=batch_size)
    assert runs[0].fused is not None and runs[1].fused is runs[0].fused
    _without_the_kept_step(monkeypatch)
    built = _two_fits(net, opt, batch_size=batch_size)
    assert runs[3].fused is not runs[2].fused
    _same_two_fits(kept, built)


@pytest.mark.parametrize("change", ["optimizer", "reset", "l2", "seed", "batch", "threads", "backend"])
def test_the_kept_step_is_built_again_when_what_it_was_built_from_changes(monkeypatch, change):
    runs = _runs(monkeypatch)
    kept = _two_fits("batchnorm", "adam", change)
    assert runs[0].fused is not None and runs[1].fused is not None and runs[1].fused is not runs[0].fused
    _without_the_kept_step(monkeypatch)
    _same_two_fits(kept, _two_fits("batchnorm", "adam", change))


@pytest.mark.parametrize("bound_by_user", [False, True])
def test_a_team_keeps_a_cpu_each_during_a_whole_fit_and_gives_them_back(monkeypatch, bound_by_user):
    import os

    from fusednet.kernels import _policy

    monkeypatch.setattr(_policy, "STEP_SERIAL_FLOPS", 0)  # a team for a small net
    if bound_by_user:
        monkeypatch.setenv("OMP_PROC_BIND", "false")
    allowed = os.sched_getaffinity(0)
    during = []
    real = _trainer._WholeFit._dev

    def dev(self):  # called back on the calling thread, inside the call
        during.append(os.sched_getaffinity(0))
        return real(self)

    monkeypatch.setattr(_trainer._WholeFit, "_dev", dev)
    *_, run = _fit("softmax", batch_size=32, epochs=3, dev=True)
    assert run.whole is not None and len(during) == 3
    if run.fused.n_threads > 1 and len(allowed) > 1 and not bound_by_user:
        assert all(len(cpus) == 1 and cpus <= allowed for cpus in during)
    else:
        assert during == [allowed] * 3
    assert os.sched_getaffinity(0) == allowed


@pytest.mark.parametrize("seed", [0, 1, 7, 2**31, 2**32 + 5, 2**63 - 1, 2**64 - 1])
def test_the_compiled_epoch_orders_are_numpys(seed):
    order = _fused._cython()._ck.epoch_order
    for epoch in (0, 1, 2, 399, 2**32, 2**64 - 1):
        for m in (0, 1, 2, 3, 64, 320, 1000):
            ref, got = np.arange(m), np.empty(m, np.intp)
            np.random.default_rng([seed, epoch]).shuffle(ref)
            order(seed, epoch, got)
            np.testing.assert_array_equal(got, ref, err_msg=f"seed {seed}, epoch {epoch}, m {m}")


@pytest.mark.parametrize("trusted", [True, False])
def test_epoch_orders_are_the_trainers_draws_either_way(monkeypatch, trusted):
    monkeypatch.setattr(_trainer, "_DRAWN_ORDERS", None if trusted else False)  # None: checked here
    for seed, e0, e1, m in ((0, 0, 3, 5), (5, 2, 9, 320), (2**64 - 1, 397, 400, 64), (3, 4, 4, 10)):
        got = _trainer.epoch_orders(seed, e0, e1, m)
        assert got.shape == (e1 - e0, m) and got.dtype == np.int64
        for i, epoch in enumerate(range(e0, e1)):
            ref = np.arange(m)
            np.random.default_rng([seed, epoch]).shuffle(ref)
            np.testing.assert_array_equal(got[i], ref, err_msg=f"seed {seed}, epoch {epoch}")


def test_orders_drawn_by_numpy_when_the_compiled_ones_are_not_trusted(monkeypatch, per_epoch):
    monkeypatch.setattr(_trainer, "_DRAWN_ORDERS", False)
    whole = _fit("moons", batch_size=16)
    assert whole[3].whole.order == _codes.FIT_ORDER_GIVEN
    per_epoch()
    _same(whole, _fit("moons", batch_size=16))


def test_a_fit_split_into_many_calls_equals_one_call(monkeypatch, per_epoch):
    """Calls of one epoch each (the early-stopping state and the step count carry between them)."""
    monkeypatch.setattr(_trainer._WholeFit, "CALL_SECONDS", 1e-12)
    calls = []
    real = _fused.FusedStep.fit

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(_fused.FusedStep, "fit", counted)

    def run():
        es = EarlyStopping(monitor="train_loss", patience=2, min_delta=1e-4)
        return _fit("batchnorm", "gd", batch_size=16, epochs=40, callbacks=[es]), es

    split, es_split = run()
    assert len(calls) == split[2].epochs > 1
    per_epoch()
    ref, es_ref = run()
    _same(split, ref)
    assert (es_split.best_epoch, es_split.stopped_epoch, es_split.curve) == (es_ref.best_epoch, es_ref.stopped_epoch,
                                                                          es_ref.curve)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_in, rows", [(2048, 90), (5120, 130), (4097, 40)])
def test_a_wide_first_layer_reads_its_input_copied_once_with_the_same_bits(n_in, rows, threads, per_epoch):
    """A full-batch float32 fit whose first layer has many inputs and few units copies X once
    (transposed in panels for the forward product, with padded rows for dW where rows lie a
    multiple of 1 KiB apart); the per-epoch path, one call per epoch, reads X as it is."""
    if _fused.products("float32") != "the own kernels":
        pytest.skip("the copies serve the own float32 kernels, which this CPU's copy lacks")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((rows, n_in)).astype(np.float32)
    y = (X[:, :7].sum(axis=1) > 0).astype(np.float64)

    def fit():
        model = Sequential([Dense(10, "relu"), Dense(3, "relu"), Dense(1, "sigmoid")], input_dim=n_in,
                           dtype="float32", seed=1)
        trainer = Trainer(model, optim.GD(0.01), batch_size=None, epochs=20, shuffle=False, progress=False)
        runs = []
        real = _trainer._Run.__init__

        def spy(self, *a, **k):
            real(self, *a, **k)
            runs.append(self)

        previous = kernels.get_num_threads()
        kernels.set_num_threads(threads)
        _trainer._Run.__init__ = spy
        try:
            history = trainer.fit(X, y)
        finally:
            _trainer._Run.__init__ = real
            kernels.set_num_threads(previous)
        return model, history, runs[0].fused.plan.copied_input

    whole, h_whole, copied = fit()
    assert copied
    per_epoch()
    each, h_each, copied = fit()
    assert not copied
    np.testing.assert_array_equal(whole._params, each._params)
    assert h_whole["train_loss"] == h_each["train_loss"]


# a narrow net's pass on two threads ----------------------------------------------------------
#
# From NARROW_SPLIT_ROWS rows a narrow net's step sums its pass in two ranges of rows; a whole
# fit runs the second on a thread that stands for the call, every other path runs both in turn.
# The ranges depend on the batch rows alone, so every path has the same bits.

SPLIT = _fused._cython()._ck.NARROW_SPLIT_ROWS if _fused._cython() is not None else 256


@pytest.fixture
def threads(monkeypatch):
    """Sets the kernels' thread count for the test (restored after it)."""
    before = kernels.get_num_threads()
    yield kernels.set_num_threads
    kernels.set_num_threads(before)


def _narrow_fit(net, dtype, batch_size, dev, callbacks=(), **kw):
    """A fit of ``net`` whose steps of ``batch_size`` rows (None: the whole of 300) take both ranges."""
    m = 300 if batch_size is None else 2 * batch_size + 80  # ... and a last step of 80 rows, one range
    return _fit(net, "adam", dtype, batch_size, True, epochs=4, dev=dev, m=m, callbacks=callbacks, **kw)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net, batch_size, dev", [("planar", None, False), ("moons", None, True),
                                                  ("regression", SPLIT + 4, False), ("planar", SPLIT, True)])
def test_a_narrow_net_on_two_threads_has_the_bits_of_one_thread_and_of_the_per_epoch_path(
        net, batch_size, dev, dtype, threads, per_epoch):
    threads(2)
    pair = _narrow_fit(net, dtype, batch_size, dev)
    run = pair[3]
    assert run.whole is not None and run.fused.plan.narrow_threads == 2, run.whole_why_not
    assert "on 2 threads that stand for a whole-fit call" in run.fused.described[2]
    threads(1)
    alone = _narrow_fit(net, dtype, batch_size, dev)
    assert alone[3].fused.plan.narrow_threads == 1
    _same(pair, alone)
    threads(2)
    per_epoch()
    _same(pair, _narrow_fit(net, dtype, batch_size, dev))


def test_below_the_split_a_narrow_net_runs_on_the_calling_thread(threads):
    threads(2)
    *_, run = _fit("planar", batch_size=SPLIT - 1, m=2 * SPLIT)
    assert run.fused.plan.narrow_threads == 1
    assert f"on the calling thread (below {SPLIT} rows)" in run.fused.described[2]


def test_early_stopping_on_the_dev_set_with_a_narrow_net_on_two_threads(threads, per_epoch):
    threads(2)

    def run():
        es = EarlyStopping(monitor="dev_loss", patience=2, restore_best=True)
        return _narrow_fit("moons", "float32", None, True, callbacks=[es], schedule=lambda e, s: 0.5), es

    whole, es_whole = run()
    assert whole[3].whole is not None and whole[3].fused.plan.narrow_threads == 2
    per_epoch()
    ref, es_ref = run()
    _same(whole, ref)
    for attr in ("curve", "best", "best_epoch", "stopped_epoch", "wait"):
        assert getattr(es_whole, attr) == getattr(es_ref, attr), attr


def test_divergence_of_a_narrow_net_on_two_threads_names_epoch_and_step(threads, per_epoch):
    threads(2)

    def run():
        with pytest.raises(TrainingDiverged) as err:
            _fit("regression", "momentum", batch_size=None, schedule=_Boom(), epochs=5, m=300)
        return err.value

    whole = run()
    per_epoch()
    ref = run()
    assert (whole.epoch, whole.step, whole.what) == (ref.epoch, ref.step, ref.what) and whole.epoch >= 2
    assert whole.history["train_loss"] == ref.history["train_loss"]


def test_an_error_of_the_dev_evaluation_ends_a_narrow_fit_on_two_threads(monkeypatch, threads):
    threads(2)

    def boom(self):
        raise RuntimeError("dev evaluation failed")

    monkeypatch.setattr(_trainer._WholeFit, "_dev", boom)
    with pytest.raises(RuntimeError, match="dev evaluation failed"):
        _fit("planar", batch_size=None, dev=True, m=300)
    assert _fit("planar", batch_size=None, m=300)[3].fused.plan.narrow_threads == 2  # and fits again


def test_narrow_threads_takes_1_or_2_on_a_narrow_net_only():
    *_, run = _fit("planar", batch_size=None, m=300)
    plan = run.fused.plan
    for bad in (0, 3):
        with pytest.raises(ValueError, match="narrow_threads must be 1 or 2, got"):
            plan.narrow_threads = bad
    *_, run = _fit("softmax", batch_size=None, m=300)
    with pytest.raises(ValueError, match="the net is not narrow"):
        run.fused.plan.narrow_threads = 2


def test_a_runtime_that_gives_one_thread_runs_both_ranges_on_it():
    """OMP_THREAD_LIMIT=1: the whole fit's region gets one thread, which must not wait for a second."""
    import subprocess
    import sys

    code = (
        "import numpy as np, fusednet as fn\n"
        "from fusednet import kernels, optim\n"
        "from fusednet.layers import Dense\n"
        "rng = np.random.default_rng(0); X = rng.standard_normal((300, 2)); y = (X[:, 0] > 0) * 1.0\n"
        "out = []\n"
        "for n in (1, 2):\n"
        "    kernels.set_num_threads(n)\n"
        "    m = fn.Sequential([Dense(4, 'tanh'), Dense(1, 'sigmoid')], input_dim=2, dtype='float64', seed=1)\n"
        "    out.append(fn.Trainer(m, optim.GD(0.5), batch_size=None, epochs=30, progress=False).fit(X, y)"
        "['train_loss'])\n"
        "assert 'on 2 threads' in fn.info()['last_fit']['step'], fn.info()['last_fit']\n"
        "assert out[0] == out[1], out\n"
        "print('ok')\n"
    )
    env = dict(__import__("os").environ, OMP_THREAD_LIMIT="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
