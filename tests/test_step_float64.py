"""float64 on the one-call step (``dense_step`` / ``dense_epoch`` / ``dense_fit`` on dgemm).

The course's exercises are float64, so the compiled step and the whole fit cover float64 for the
course's shapes: planar 2-4-1 on 400 rows in one batch, moons 2-5-2-1 in batches of 64, a
cats-shaped 12288-20-7-5-1 net on 209 rows (narrower input here), digits 64-100-10 in batches
of 200 and a 784-256-128-10-shaped MLP in batches of 128 (narrower here).  Each fit is held
against the per-kernel path over many steps: parameters, optimiser state and batch-norm running
statistics within 1e-12 in norm relative to the per-kernel path's, the epochs' costs within 1e-12
each (both compute the same formulas in float64; what differs is how dgemm and NumPy's matmul
block the products and in which order the pieces of a sum are added, about k u = 1e-13 for the
longest sum of k = 2000 terms, u = 2**-53, and a run of 30 steps does not amplify it
noticeably).  The whole fit equals the per-epoch path bit for bit.  Every test asserts the path
``fusednet.info()["last_fit"]`` reports, so a float64 fit that fell back to the per-kernel path
would fail it.
"""

import numpy as np
import pytest

import fusednet as fn
from fusednet import _fused, kernels, optim
from fusednet import trainer as _trainer
from fusednet.kernels import _blas, _policy
from fusednet.layers import Activation, BatchNorm, Dense, Dropout
from fusednet.model import Sequential
from fusednet.trainer import Trainer

pytestmark = pytest.mark.skipif(
    not _blas.AVAILABLE or "cython" not in kernels.available(),
    reason=f"the fused step is unavailable here: {_blas.STATUS}",
)

#: relative agreement with the per-kernel path (module docstring)
RTOL = 1e-12

OPTIMISERS = {
    "gd": lambda: optim.GD(0.2),
    "momentum": lambda: optim.Momentum(0.05, beta=0.9, bias_correction=True),
    "rmsprop": lambda: optim.RMSProp(0.005, beta=0.9),
    "adam": lambda: optim.Adam(0.01),
}


@pytest.fixture(autouse=True)
def two_threads():
    """Two kernel threads, so that a step at or above STEP_SERIAL_FLOPS runs on a team of two."""
    before = kernels.get_num_threads()
    kernels.set_num_threads(2)
    yield
    kernels.set_num_threads(before)


@pytest.fixture
def per_epoch(monkeypatch):
    """Turns the whole-fit call off: one compiled call per epoch."""

    def off():
        monkeypatch.setattr(_trainer._WholeFit, "why_not", staticmethod(lambda run: "off for the test"))

    return off


def _cats(m=209, nf=2000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((m, nf)), rng.integers(0, 2, m).astype(np.float64)


def _mlp(m=600, nf=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, m)
    return rng.random((m, nf)) + 0.3 * np.eye(10, nf)[y], y


def _digits():
    X, y = fn.datasets.digits()
    return X.astype(np.float64) / 16.0, y


def _planar():
    X, y = fn.datasets.planar_flower(m=400, seed=1)
    return X.astype(np.float64), y


def _moons():
    X, y = fn.datasets.moons(m=320, noise=0.2, seed=3)
    return X.astype(np.float64), y


#: name -> (layers, data, optimiser, batch size, epochs); serial or team as serial_flops() says
COURSE = {
    "planar": (lambda: [Dense(4, "tanh", init="random"), Dense(1, "sigmoid")], _planar,
               lambda: optim.GD(1.2), None, 40),
    "moons": (lambda: [Dense(5, "relu"), Dense(2, "relu"), Dense(1, "sigmoid")], _moons,
              lambda: optim.Adam(7e-4), 64, 6),
    "cats": (lambda: [Dense(20, "relu"), Dense(7, "relu"), Dense(5, "relu"), Dense(1, "sigmoid")], _cats,
             lambda: optim.GD(0.0075), None, 12),
    "digits": (lambda: [Dense(100, "relu"), Dense(10, "softmax")], _digits, lambda: optim.Adam(1e-3), 200, 3),
    "mlp": (lambda: [Dense(64, "relu"), Dense(32, "relu"), Dense(10, "softmax")], _mlp, lambda: optim.Adam(1e-3),
            128, 5),
}


def _fit(layers, X, y, opt, batch_size, epochs, fused=True, l2=0.0, dtype="float64"):
    model = Sequential(layers(), input_dim=X.shape[1], dtype=dtype, l2=l2, seed=1)
    o = opt()
    h = Trainer(model, o, batch_size=batch_size, epochs=epochs, seed=3, progress=False, fused_step=fused).fit(X, y)
    return model, o, h, dict(fn.info()["last_fit"])


def _rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-300)


def _agree(fused, ref):
    """The step's fit against the per-kernel path's: weights, running statistics, optimiser state, costs."""
    (model, o, h, _), (rmodel, ro, rh, _) = fused, ref
    assert _rel(model._params, rmodel._params) <= RTOL
    assert _rel(model._stats, rmodel._stats) <= RTOL
    np.testing.assert_allclose(h["train_loss"], rh["train_loss"], rtol=RTOL, atol=0)
    assert o.t == ro.t > 0
    for key, value in ro.state_dict().items():
        if isinstance(value, np.ndarray):
            assert _rel(o.state_dict()[key], value) <= RTOL, key


def _same(a, b):
    """Two fits equal bit for bit."""
    (ma, oa, ha, _), (mb, ob, hb, _) = a, b
    np.testing.assert_array_equal(ma._params, mb._params)
    np.testing.assert_array_equal(ma._stats, mb._stats)
    for key in ("train_loss", "lr", "train_accuracy"):
        assert ha.get(key) == hb.get(key), key
    assert oa.t == ob.t
    for key, value in ob.state_dict().items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(oa.state_dict()[key], value)


def _assert_step(last, team, whole=True, dtype="float64"):
    """``last_fit`` says the fit took the one-call step, serial or on the team, in one call or one per epoch."""
    assert last["dtype"] == dtype
    step = last["step"]
    assert step.startswith("one-call step; "), step
    want = {"team": "a team of 2 threads", "serial": "serial",
            "pair": "on 2 threads that stand for a whole-fit call"}[team]
    assert want in step, step
    epochs = last["epochs"]
    assert epochs == "all epochs in one compiled call" if whole else epochs.startswith("one call per epoch"), epochs


@pytest.mark.parametrize("name", sorted(COURSE))
def test_the_course_nets_take_the_step_in_float64_and_equal_the_per_kernel_path(name, per_epoch):
    layers, data, opt, batch, epochs = COURSE[name]
    X, y = data()
    rows = len(X) if batch is None else batch
    # on the AVX-512 copy: planar, moons and digits serial, cats and mlp on the team
    flops = _fused.step_flops(Sequential(layers(), input_dim=X.shape[1], dtype="float64"), rows)
    team = "serial" if flops < _fused.serial_flops() else "team"
    whole = _fit(layers, X, y, opt, batch, epochs)
    if "a narrow net" in whole[3]["step"] and rows >= _fused._cython()._ck.NARROW_SPLIT_ROWS \
            and kernels.get_num_threads() > 1:
        team = "pair"  # planar: the pass in two ranges of rows, on two threads in the whole fit
    _assert_step(whole[3], team)
    assert whole[3]["batch_rows"] == rows
    ref = _fit(layers, X, y, opt, batch, epochs, fused=False)
    assert ref[3]["step"] == "per-kernel path: Trainer(fused_step=False)"
    _agree(whole, ref)
    per_epoch()
    one_per_epoch = _fit(layers, X, y, opt, batch, epochs)
    _assert_step(one_per_epoch[3], team, whole=False)
    _same(whole, one_per_epoch)


def _regularised():
    """Batch norm, dropout after two hidden layers, an Activation layer of its own, a softmax output."""
    return [Dense(40, None, use_bias=False), BatchNorm(), Activation("relu"), Dropout(0.8), Dense(16, "tanh"),
            Dropout(0.9), Dense(3, "softmax")]


def _blobs(m=300, nf=10, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, m)
    return rng.standard_normal((m, nf)) + 1.5 * np.eye(3, nf)[y], y


@pytest.mark.parametrize("batch_size, epochs", [(None, 30), (160, 15)])  # batches of 300 rows, or 160 and 140
@pytest.mark.parametrize("team", ["serial", "team"])
@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
def test_every_optimiser_with_l2_dropout_and_batch_norm(opt, team, batch_size, epochs, monkeypatch, per_epoch):
    """Batches above the 128 rows float64 was once limited to, serial and on a team, 30 steps."""
    if team == "team":  # every step on the team of two, however small
        monkeypatch.setattr(_policy, "STEP_SERIAL_FLOPS", 0)
    X, y = _blobs()
    whole = _fit(_regularised, X, y, OPTIMISERS[opt], batch_size, epochs, l2=0.3)
    _assert_step(whole[3], team)
    _agree(whole, _fit(_regularised, X, y, OPTIMISERS[opt], batch_size, epochs, fused=False, l2=0.3))
    per_epoch()
    one_per_epoch = _fit(_regularised, X, y, OPTIMISERS[opt], batch_size, epochs, l2=0.3)
    _assert_step(one_per_epoch[3], team, whole=False)
    _same(whole, one_per_epoch)


def _planar_big(m):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((m, 2))
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.float64)


def _narrow_pair():
    """What a whole fit of a narrow net (planar) on NARROW_SPLIT_ROWS rows or more reports here."""
    return "pair" if kernels.get_num_threads() > 1 else "serial"


def test_a_serial_step_takes_batches_of_any_size():
    """A step below STEP_SERIAL_FLOPS splits no product between threads: no row limit (a narrow
    net's pass, in two ranges of rows on two threads, has none either)."""
    m = _fused.MAX_ROWS_F64 + 808
    X, y = _planar_big(m)
    net = COURSE["planar"][0]
    model = Sequential(net(), input_dim=2, dtype="float64")
    assert _fused.step_flops(model, m) < _fused.serial_flops()
    got = _fit(net, X, y, lambda: optim.GD(1.2), None, 20)
    _assert_step(got[3], _narrow_pair())
    assert got[3]["batch_rows"] == m
    _agree(got, _fit(net, X, y, lambda: optim.GD(1.2), None, 20, fused=False))
    # float32 too, past both float32 limits (own products and sgemm)
    m32 = max(_fused.MAX_ROWS_OWN, _fused.MAX_ROWS) + 500
    Xs, ys = _planar_big(m32)
    _fit(net, Xs.astype(np.float32), ys, lambda: optim.GD(1.2), None, 2, dtype="float32")
    _assert_step(fn.info()["last_fit"], _narrow_pair(), dtype="float32")


def test_a_team_step_above_the_row_limit_takes_the_per_kernel_path_and_says_why(monkeypatch):
    monkeypatch.setattr(_fused, "MAX_ROWS_F64", 200)
    X, y = _mlp()
    layers = COURSE["mlp"][0]
    assert _fused.max_rows("float64") == 200 and _fused.products("float64") == "dgemm"
    _, _, _, last = _fit(layers, X, y, lambda: optim.Adam(1e-3), 256, 1)
    assert last["step"].startswith("per-kernel path: batches of 256 rows, above the step's 200 for float64 "
                                   "products on dgemm"), last["step"]
    assert "a team of 2 threads" in last["step"]
    _, _, _, last = _fit(layers, X, y, lambda: optim.Adam(1e-3), 200, 1)
    _assert_step(last, "team")


def test_the_course_check_from_the_docs_takes_the_step():
    X, y = fn.datasets.planar_flower(m=400, seed=1)
    m = fn.Sequential([fn.layers.Dense(4, activation="tanh"), fn.layers.Dense(1, activation="sigmoid")],
                      input_dim=2, seed=0, dtype="float64")
    fn.Trainer(m, optimizer=fn.optim.GD(1.2), batch_size=None, epochs=100, progress=False).fit(X, y)
    _assert_step(fn.info()["last_fit"], _narrow_pair())
