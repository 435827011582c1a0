"""The trainer's one-call step (fusednet._fused) against the per-kernel path it replaces."""

import gc
import tracemalloc

import numpy as np
import pytest

import fusednet as fn
from fusednet import _fused, kernels, optim
from fusednet.callbacks import Callback
from fusednet.errors import TrainingDiverged
from fusednet.kernels import _blas, _policy
from fusednet.layers import Activation, BatchNorm, Dense, Dropout
from fusednet.model import Sequential
from fusednet.trainer import Trainer, _Run

pytestmark = pytest.mark.skipif(
    not _blas.AVAILABLE or "cython" not in kernels.available(),
    reason=f"the fused step is unavailable here: {_blas.STATUS}",
)


def blobs(m=120, nf=6, k=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, m)
    X = rng.standard_normal((m, nf)) + 1.5 * np.eye(k, nf)[y]
    return X.astype(dtype), y


OPTIMISERS = {
    "gd": lambda: optim.GD(0.1),
    "momentum": lambda: optim.Momentum(0.05, beta=0.9, bias_correction=True),
    "rmsprop": lambda: optim.RMSProp(0.01, beta=0.9),
    "adam": lambda: optim.Adam(0.01),
}

NETS = {
    # hidden activations of every kind, a layer without bias, a softmax output
    "softmax": (lambda: [Dense(33, "relu"), Dense(17, "tanh", use_bias=False), Dense(9, "leaky_relu"),
                         Dense(5, "sigmoid"), Dense(3, "softmax")], "labels"),
    # a wide hidden layer (column blocks beyond 256) and a sigmoid output (binary cross-entropy)
    "sigmoid": (lambda: [Dense(300, "tanh"), Dense(1, "sigmoid")], "binary"),
    # a linear output (mean squared error), several targets, narrow hidden layer
    "linear": (lambda: [Dense(4, "tanh"), Dense(2, None)], "regression"),
    # one layer: logistic regression
    "single": (lambda: [Dense(1, "sigmoid")], "binary"),
    # inverted dropout after hidden layers (keep_prob 1 is the identity), a wide layer after one
    "dropout": (lambda: [Dense(270, "relu"), Dropout(0.7), Dense(17, "tanh"), Dropout(1.0), Dense(9, "relu"),
                         Dropout(0.5), Dense(3, "softmax")], "labels"),
    # batch norm (with and without a bias before it, with and without an activation after it),
    # an Activation layer of its own, dropout after both
    "batchnorm": (lambda: [Dense(270, None, use_bias=False), BatchNorm(), Activation("relu"), Dropout(0.8),
                           Dense(20, None, use_bias=False), BatchNorm(momentum=0.8), Dense(11, None),
                           Activation("leaky_relu"),
                           Dense(7, None), Activation("tanh"), Dropout(0.6), Dense(3, "softmax")], "labels"),
    # narrow nets (every layer at most 8 wide): one pass over the batch, its rows along the vectors
    "planar": (lambda: [Dense(4, "tanh"), Dense(1, "sigmoid")], "binary"),
    "narrow": (lambda: [Dense(8, "sigmoid"), Dense(5, "relu"), Dense(3, "leaky_relu", use_bias=False),
                        Dense(2, None)], "regression"),
}
NARROW = ("planar", "narrow", "linear", "single")


def _targets(kind, X, y):
    if kind == "labels":
        return y
    if kind == "binary":
        return (y == 1).astype(np.float64)
    return np.stack([X[:, 0] - X[:, 1], X[:, 2] * 0.5], axis=1)


def _train(net, opt, dtype, fused, batch_size=32, shuffle=True, l2=0.0, x_dtype=None, epochs=3, m=130):
    make, kind = NETS[net]
    X, y = blobs(m=m, dtype=dtype if x_dtype in (None, "fortran") else x_dtype)
    if x_dtype == "fortran":
        X = np.asfortranarray(X)
    model = Sequential(make(), input_dim=X.shape[1], dtype=dtype, l2=l2, seed=4)
    o = OPTIMISERS[opt]()
    trainer = Trainer(model, o, batch_size=batch_size, epochs=epochs, shuffle=shuffle, seed=3, progress=False,
                      fused_step=fused)
    h = trainer.fit(X, _targets(kind, X, y), dev=(X[:20], _targets(kind, X[:20], y[:20])))
    return model, o, h, trainer


@pytest.fixture(params=["team", "serial"])
def team(request, monkeypatch):
    """Steps on a team of every thread however small ("team"), or as STEP_SERIAL_FLOPS decides."""
    if request.param == "team":
        monkeypatch.setattr(_policy, "STEP_SERIAL_FLOPS", 0)
    return request.param


@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
@pytest.mark.parametrize("net", sorted(NETS))
def test_fused_step_equals_the_per_kernel_path(net, opt, team):
    """float64 over the whole run (3 epochs of 5 steps, L2 on): the same formulas to 1e-10."""
    ref_model, ref_opt, ref_h, _ = _train(net, opt, "float64", fused=False, l2=0.3)
    model, o, h, trainer = _train(net, opt, "float64", fused=True, l2=0.3)
    for key in ref_h.keys():
        if key != "time":
            np.testing.assert_allclose(h[key], ref_h[key], rtol=1e-10, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(model._params, ref_model._params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model._stats, ref_model._stats, rtol=1e-10, atol=1e-12)
    assert o.t == ref_opt.t == 3 * 5
    for key, value in ref_opt.state_dict().items():
        if isinstance(value, np.ndarray):
            np.testing.assert_allclose(o.state_dict()[key], value, rtol=1e-9, atol=1e-12)


# float32 ------------------------------------------------------------------------------------
#
# Two correct float32 implementations drift apart over a run: the products round differently
# (the own AVX2/AVX-512 kernels, OpenBLAS's kernels for this CPU, NumPy's matmul), and Adam or
# RMSProp turn a gradient element near 0 into a step of +-lr whatever its size, so a sign that
# rounding flips moves a weight by 2 lr.  Where they drift depends on the CPU.  So in float32
# each step is checked on its own, from the same parameters and optimiser state:
#
# * the step's cost and gradient against the per-kernel path's, in norm, within
#   F32_TOL = 8 * L * k * u: u = 2**-24, k the longest sum in any product (the batch rows or
#   the widest layer), L the Dense layers the backward pass goes through; the worst-case
#   relative error of L chained k-term float32 products, with both paths rounding;
# * the update against the optimiser's own kernel applied to the step's gradient.  Its input
#   g + (lambda/m) w is rounded to float32 in both, differently (the L2 coefficient is
#   rounded or not, the sum fused or not); where the two terms cancel, Adam's
#   g / (|g| + eps) turns that rounding into a visible change of the step.  So the kernel is
#   run on g + (lambda/m) w -+ 2u (|g| + |(lambda/m) w|), and the fused update must lie
#   between the two results, give or take 8 ulp of the parameters (before or after the step).


def _f32_tol(model, m):
    widths = [n.n_out for n in model._nodes] + [model.input_dim, m]
    dense = sum(1 for n in model._nodes if type(n).__name__ == "_DenseNode")
    return 8 * dense * max(widths) * 2.0**-24


def _update_agrees(o, opt, state0, P0, model, n, schedule, epoch, step, done):
    lr = o.lr if schedule is None else schedule(epoch, step)
    G = model._grads.astype(np.float64)
    decay = np.zeros_like(G)
    decay[: model._n_decay] = (model._l2 / n) * P0[: model._n_decay].astype(np.float64)
    delta = 2.0**-23 * (np.abs(G) + np.abs(decay))
    ends = []
    for sign in (-1.0, 1.0):
        upd = OPTIMISERS[opt]()
        upd.load_state_dict(state0)
        P = P0.copy()
        upd.step(P, (G + decay + sign * delta).astype(np.float32), lr)
        ends.append(P.astype(np.float64))
    lo, hi = np.minimum(*ends), np.maximum(*ends)
    got = model._params.astype(np.float64)
    scale = np.maximum(np.maximum(np.abs(hi), np.abs(lo)), np.abs(P0.astype(np.float64)))  # w - step cancels too
    ulp = np.spacing(scale.astype(np.float32)).astype(np.float64)
    off = np.maximum(lo - got, got - hi).clip(0) / ulp
    assert off.max() <= 8, f"step {done}: update off by {off.max():.3g} ulp (element {int(off.argmax())})"


def _float32_steps_agree(net, opt, batch_size=32, m=130, steps=4, l2=0.3, shuffle=True, variant=None):
    """Run ``steps`` fused float32 steps; check each one's cost, gradient and update (see above)."""
    make, kind = NETS[net]
    X, y = blobs(m=m, dtype="float32")
    Y = _targets(kind, X, y)
    model = Sequential(make(), input_dim=X.shape[1], dtype="float32", l2=l2, seed=4)
    o = OPTIMISERS[opt]()
    run = _Run(Trainer(model, o, batch_size=batch_size, shuffle=shuffle, seed=3, progress=False), X, Y, None,
               kernels.get_num_threads())
    assert isinstance(run.fused, _fused.FusedStep)
    ref = model.copy()
    K = ref._kernels()
    epoch, done = 0, 0
    while done < steps:
        if run.mode == 2:  # the epoch's shuffle, as run_epoch makes it
            np.copyto(run.perm, run.perm0)
            np.random.default_rng([run.base_seed, epoch]).shuffle(run.perm)
        for step, (s, e) in enumerate(run.bounds):
            if done == steps:
                break
            rows = run.perm[s:e] if run.mode == 2 else np.arange(s, e)
            P0, S0, state0 = model._params.copy(), model._stats.copy(), o.state_dict()
            run.step(epoch, step, s, e)
            cost = run.loss_sum
            run.loss_sum = 0.0
            # the per-kernel path's cost and gradient from the same parameters
            ref._params[:] = P0
            ref._stats[:] = S0
            n = e - s
            v = ref._workspace(n, train=True).views(n)
            Xb = np.ascontiguousarray(X[rows])
            Yb = np.ascontiguousarray(run.Y[rows])
            ref_cost = ref._forward_train(v, K, Xb, Yb, (epoch, step) if run.dropout else None)
            ref._backward(v, K, Yb)
            tol = _f32_tol(model, n)
            np.testing.assert_allclose(cost / n, ref_cost, rtol=tol, err_msg=f"cost of step {done}")
            G, Gref = model._grads.astype(np.float64), ref._grads.astype(np.float64)
            err = np.linalg.norm(G - Gref) / max(np.linalg.norm(Gref), 1e-30)
            assert err <= tol, f"step {done}: gradient differs by {err:.3g} in norm (tolerance {tol:.3g})"
            # the update from the step's own gradient, by the optimiser's kernel
            _update_agrees(o, opt, state0, P0, model, n, run.schedule, epoch, step, done)
            done += 1
        epoch += 1
    assert o.t == steps
    return model


@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
@pytest.mark.parametrize("net", sorted(NETS))
def test_fused_float32_steps_equal_the_per_kernel_path(net, opt, team):
    _float32_steps_agree(net, opt)


@pytest.mark.parametrize("net", ["dropout", "batchnorm", "sigmoid", "planar", "narrow"])
def test_batches_of_hundreds_of_rows_take_the_fused_step_in_float32(net):
    """Batches of 300 rows and a last one of 100: the fused step when the policy takes them (a serial
    step takes any batch; a team step up to max_rows, 1024 on the own products, 128 on sgemm)."""
    make, kind = NETS[net]
    X, y = blobs(m=700, dtype="float32")
    model = Sequential(make(), input_dim=X.shape[1], dtype="float32")
    run = _Run(Trainer(model, optim.Adam(), batch_size=300, progress=False), X, _targets(kind, X, y), None, 2)
    takes = _fused.rows_why_not(model, 300, kernels.get_num_threads()) is None
    assert takes == (_fused.step_flops(model, 300) < _fused.serial_flops() or _fused.max_rows("float32") >= 300)
    assert isinstance(run.fused, _fused.FusedStep) == takes
    if run.fused is not None:
        _float32_steps_agree(net, "adam", batch_size=300, m=700, steps=4)


def _variants_without_own_products():
    ck = _fused._cython()
    return [v for v in getattr(ck, "VARIANTS", ()) if not v.FUSED_GEMM]


@pytest.mark.parametrize("variant", _variants_without_own_products(), ids=lambda v: v.ISA)
def test_the_blas_products_of_the_baseline_copy_train_the_same(monkeypatch, variant):
    """The copy of the extension built for the baseline x86-64 (no AVX2) runs float32 products on sgemm."""
    ck = _fused._cython()
    monkeypatch.setattr(ck, "_ck", variant)
    monkeypatch.setattr(ck, "FUSED_GEMM", False)
    assert _fused.max_rows("float32") == _fused.MAX_ROWS
    for opt in ("adam", "rmsprop"):
        _float32_steps_agree("softmax", opt)
    _float32_steps_agree("batchnorm", "momentum")


@pytest.mark.parametrize(
    "batch_size, shuffle, x_dtype",
    [
        (None, True, None),  # batch gradient descent: the whole set (130 rows), no gather
        (32, False, None),  # slices of X
        (32, True, None),  # rows gathered inside the step
        (32, True, "float32"),  # a float64 model on float32 data: converted in Python, then the step
        (32, True, "fortran"),  # rows of a non-contiguous X: gathered in Python, then the step
        (1, True, None),  # stochastic: one example per step
    ],
)
def test_every_batching_mode_takes_the_fused_step_and_equals_the_per_kernel_path(batch_size, shuffle, x_dtype):
    ref = _train("softmax", "adam", "float64", False, batch_size=batch_size, shuffle=shuffle, x_dtype=x_dtype, epochs=2)
    got = _train("softmax", "adam", "float64", True, batch_size=batch_size, shuffle=shuffle, x_dtype=x_dtype, epochs=2)
    np.testing.assert_allclose(got[2]["train_loss"], ref[2]["train_loss"], rtol=1e-10)
    np.testing.assert_allclose(got[2]["train_accuracy"], ref[2]["train_accuracy"])
    np.testing.assert_allclose(got[0]._params, ref[0]._params, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("net", sorted(NETS))
def test_narrow_nets_and_only_they_take_the_one_pass_step(net):
    make, kind = NETS[net]
    X, y = blobs(m=64)
    model = Sequential(make(), input_dim=X.shape[1], seed=4)
    run = _Run(Trainer(model, optim.GD(0.1), batch_size=32, progress=False), X, _targets(kind, X, y), None, 2)
    assert run.fused.plan.narrow == (net in NARROW)
    path = _fused.record_fit(model, 32, run.fused, None)["step"]
    assert ("a narrow net" in path) == (net in NARROW)


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
@pytest.mark.parametrize("net", ["planar", "narrow"])
@pytest.mark.parametrize("batch_size", [None, 50])
def test_the_one_pass_step_of_a_narrow_net_equals_the_numpy_reference(net, optimizer, batch_size):
    """float64, 120 rows (the float64 step's limit is 128: one block, not a whole number of
    16-row partial sums), as one batch or in shuffled batches of 50, 50 and 20 gathered by the
    step; L2 on; 4 epochs (several blocks: the float32 tests of batches of hundreds of rows).
    The one pass sums the
    gradients over the rows in another order than the reference (partial sums, then those), a
    difference of a few units of 2**-52 relative per step: parameters, losses and the optimiser's
    state stay within 1e-12 of the pure NumPy backend's."""
    make, kind = NETS[net]
    X, y = blobs(m=120)
    Y = _targets(kind, X, y)
    results = []
    for backend, fused in (("numpy", False), ("cython", True)):
        before = fn.get_backend()
        fn.set_backend(backend)
        try:
            model = Sequential(make(), input_dim=X.shape[1], dtype="float64", l2=0.2, seed=4)
            o = OPTIMISERS[optimizer]()
            h = Trainer(model, o, batch_size=batch_size, epochs=4, seed=3, progress=False,
                        fused_step=fused).fit(X, Y)
        finally:
            fn.set_backend(before)
        results.append((model, o, h))
    (ref, ref_opt, ref_h), (got, o, h) = results
    assert fn.info()["last_fit"]["step"].find("a narrow net") > 0
    np.testing.assert_allclose(h["train_loss"], ref_h["train_loss"], rtol=1e-12)
    np.testing.assert_allclose(got._params, ref._params, rtol=1e-12, atol=1e-14)
    for key, value in ref_opt.state_dict().items():
        if isinstance(value, np.ndarray):
            np.testing.assert_allclose(o.state_dict()[key], value, rtol=1e-12, atol=1e-14)


def _same_bits_for_any_thread_count(train):
    """Run ``train() -> (model, history)`` on 1, 2 and 3 threads; parameters and losses must be equal bit for bit.

    Every step runs on a team of that many threads, however small (``STEP_SERIAL_FLOPS`` set to 0).
    """
    before = kernels.get_num_threads()
    serial = _policy.STEP_SERIAL_FLOPS
    _policy.STEP_SERIAL_FLOPS = 0
    runs = []
    try:
        for n in (1, 2, 3):
            kernels.set_num_threads(n)
            model, h = train()
            runs.append((model._params.copy(), h["train_loss"]))
    finally:
        kernels.set_num_threads(before)
        _policy.STEP_SERIAL_FLOPS = serial
    for params, loss in runs[1:]:
        np.testing.assert_array_equal(loss, runs[0][1])
        np.testing.assert_array_equal(params, runs[0][0])


def test_the_result_does_not_depend_on_the_thread_count():
    def train():
        model, _, h, _ = _train("softmax", "adam", "float32", True, l2=0.1)
        return model, h

    _same_bits_for_any_thread_count(train)


def test_layers_a_team_splits_by_rows_do_not_depend_on_the_thread_count():
    # widths that are not whole cache lines (270, 17, 9 units) with dropout, and a narrow output:
    # a team of two splits their work by rows, of three partly by units
    def train():
        model, _, h, _ = _train("dropout", "adam", "float32", True, l2=0.1)
        return model, h

    _same_bits_for_any_thread_count(train)


def test_the_one_pass_step_of_a_narrow_net_does_not_depend_on_the_thread_count():
    def train():
        model, _, h, _ = _train("narrow", "adam", "float32", True, l2=0.1, batch_size=None, m=300)
        return model, h

    _same_bits_for_any_thread_count(train)


def test_the_cost_with_l2_does_not_depend_on_the_thread_count():
    # an arena of 12.6k parameters: its sums of squares run in several fixed pieces
    X, y = blobs(m=200, nf=60)

    def train():
        model = Sequential([Dense(200, "relu"), Dense(3, "softmax")], input_dim=60, l2=0.7, dtype="float64")
        return model, Trainer(model, optim.Adam(0.01), batch_size=64, epochs=2, progress=False).fit(X, y)

    _same_bits_for_any_thread_count(train)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_run_uses_the_fused_step(dtype, monkeypatch):
    """The one-call step is taken up to the row limit of a team step, and by a serial step at any size."""
    limit = _fused.max_rows(dtype)
    own = getattr(_fused._cython(), "FUSED_GEMM", False)
    assert limit == (_fused.MAX_ROWS_F64 if dtype == "float64" else _fused.MAX_ROWS_OWN if own else _fused.MAX_ROWS)
    X, y = blobs(m=limit + 10)
    model = Sequential([Dense(8, "relu"), Dense(3, "softmax")], input_dim=6, dtype=dtype)
    run = _Run(Trainer(model, optim.Adam(), batch_size=16, progress=False), X, y, None, 2)
    assert isinstance(run.fused, _fused.FusedStep)
    run = _Run(Trainer(model, optim.Adam(), batch_size=limit, progress=False), X, y, None, 2)
    assert isinstance(run.fused, _fused.FusedStep)
    run = _Run(Trainer(model, optim.Adam(), batch_size=16, progress=False, fused_step=False), X, y, None, 2)
    assert run.fused is None
    # a serial step (below STEP_SERIAL_FLOPS) takes any batch; a team step larger batches than the limit
    # does not (NumPy's multi-threaded matmul splits the products better)
    run = _Run(Trainer(model, optim.Adam(), batch_size=None, progress=False), X, y, None, 2)
    assert isinstance(run.fused, _fused.FusedStep) and run.fused.n_threads == 1
    monkeypatch.setattr(_policy, "STEP_SERIAL_FLOPS", 0)
    run = _Run(Trainer(model, optim.Adam(), batch_size=None, progress=False), X, y, None, 2)
    assert run.fused is None
    assert _fused.rows_why_not(model, limit + 10, 2).startswith(f"batches of {limit + 10} rows, above the step's "
                                                                f"{limit} for {dtype} products on")


@pytest.mark.parametrize(
    "layers, opt_backend, backend, reason",
    [
        ([Dense(8, "relu"), Dropout(0.5), Dense(3, "softmax")], None, "auto", None),
        ([Dropout(0.5), Dense(8, "relu"), Dense(3, "softmax")], None, "auto", "does not follow"),
        ([Dense(8, "relu"), Dropout(0.5), Dropout(0.5), Dense(3, "softmax")], None, "auto", "does not follow"),
        ([Dense(8), BatchNorm(), Activation("relu"), Dense(3, "softmax")], None, "auto", None),
        ([Dense(8), Activation("relu"), Dropout(0.5), Dense(3, "softmax")], None, "auto", None),
        ([Dense(8), Activation("relu"), BatchNorm(), Dense(3, "softmax")], None, "auto", "in the order"),
        ([Dense(8, "relu"), BatchNorm(), Dense(3, "softmax")], None, "auto", "activation of its own"),
        ([Dense(8, "relu"), Activation("tanh"), Dense(3, "softmax")], None, "auto", "activation of its own"),
        ([Dense(8), Activation("softmax"), Dense(3, "softmax")], None, "auto", "softmax"),
        ([Dense(8), Dense(3), Activation("sigmoid")], None, "auto", "does not follow"),
        ([Dense(8, "softmax"), Dense(3, "softmax")], None, "auto", "softmax"),
        ([Dense(8, "relu"), Dense(3, "softmax")], "numpy", "auto", "optimiser's backend"),
        ([Dense(8, "relu"), Dense(3, "softmax")], None, "numpy", "kernel backend"),
        ([Dense(8, "relu"), Dense(3, "softmax")], None, "cython", None),
        ([Dense(8, "relu"), Dense(3, "softmax")], "cython", "auto", None),
    ],
)
def test_why_not_names_the_reason(layers, opt_backend, backend, reason):
    model = Sequential(layers, input_dim=6).build(6)
    before = kernels.get_backend()
    kernels.set_backend(backend)
    try:
        got = _fused.why_not(model, optim.Adam(backend=opt_backend))
    finally:
        kernels.set_backend(before)
    if reason is None:
        assert got is None
    else:
        assert reason in got


class _BlasThreads(Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        self.seen = _blas._GET()


def test_scipy_blas_runs_single_threaded_during_the_fit_and_is_restored():
    before = _blas._GET()
    _blas._SET(2)
    try:
        cb = _BlasThreads()
        X, y = blobs()
        Trainer(Sequential([Dense(3, "softmax")], input_dim=6), batch_size=16, epochs=1, callbacks=[cb],
                progress=False).fit(X, y)
        assert cb.seen == 1
        assert _blas._GET() == 2
        # restored after a divergence too
        with pytest.raises(TrainingDiverged):
            Trainer(Sequential([Dense(1)], input_dim=6, dtype="float64"), optim.GD(10.0), batch_size=None,
                    epochs=50, progress=False).fit(X * 1e150, X[:, 0] * 1e150)
        assert _blas._GET() == 2
    finally:
        _blas._SET(before)


def test_a_non_finite_cost_leaves_parameters_and_step_count_alone():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3)) * 100
    y = X @ [1.0, 2.0, 3.0]
    model = Sequential([Dense(4, "relu"), Dense(1)], input_dim=3, dtype="float64")
    opt = optim.GD(0.5)
    trainer = Trainer(model, opt, batch_size=None, epochs=1, progress=False)
    assert trainer.fit(X, y) is not None
    diverged = None
    for _ in range(200):
        before, t = model._params.copy(), opt.t
        try:
            trainer.fit(X, y)
        except TrainingDiverged as exc:
            diverged = exc
            break
    assert diverged is not None and diverged.what in ("cost", "gradient")
    np.testing.assert_array_equal(model._params, before)
    assert opt.t == t


def _traced(run, work):
    """(current, peak) bytes that tracemalloc sees ``work()`` add after a warm-up epoch."""
    with _blas.single_threaded():
        run.run_epoch(0)
        gc.collect()
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            work()
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return current - base, peak - base


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_steady_state_fused_steps_allocate_nothing(dtype):
    X, y = blobs(m=300, nf=20, dtype=dtype)
    model = Sequential([Dense(64, "relu"), Dense(64, "tanh", use_bias=False), Dense(3, "softmax")], input_dim=20,
                       l2=0.01, dtype=dtype)
    run = _Run(Trainer(model, optim.Adam(0.001), batch_size=64, epochs=3, progress=False), X, y, None, 2)
    assert run.fused is not None

    def two_epochs():
        for epoch in (1, 2):
            for step, (s, e) in enumerate(run.bounds):  # includes the partial batch of 44
                run.step(epoch, step, s, e)

    current, peak = _traced(run, two_epochs)
    assert current < 4096, current
    assert peak < 8192, peak


def test_dense_step_rejects_mismatched_rows():
    from fusednet.kernels import _cython

    X, y = blobs(m=40)
    model = Sequential([Dense(5, "relu"), Dense(3, "softmax")], input_dim=6)
    run = _Run(Trainer(model, optim.Adam(), batch_size=16, progress=False), X, y, None, 1)
    v = run.v_full
    with pytest.raises(ValueError, match=r"Xb and Yb must be \(16, 6\) and \(16, 3\)"):
        run.fused(v, v.X, v.Y[:3], X, run.Y, None, 0.1)
    assert _cython._ck is not None


def test_info_reports_the_fused_step():
    assert "fused_step" in fn.info()


class _Boom:
    """A schedule whose learning rate explodes at epoch 1, step 2."""

    def __call__(self, epoch, step):
        return 1e300 if (epoch, step) == (1, 2) else 0.01


@pytest.mark.parametrize("fused", [True, False])
def test_divergence_inside_a_fused_epoch_stops_at_that_step(fused):
    X, y = blobs(m=100)
    ref_model = Sequential([Dense(7, "relu"), Dense(3, "softmax")], input_dim=6, dtype="float64", seed=1)
    ref_opt = optim.Momentum(0.1)
    with pytest.raises(TrainingDiverged):
        Trainer(ref_model, ref_opt, schedule=_Boom(), batch_size=16, epochs=3, progress=False,
                fused_step=False).fit(X, y)
    model = Sequential([Dense(7, "relu"), Dense(3, "softmax")], input_dim=6, dtype="float64", seed=1)
    opt = optim.Momentum(0.1)
    with pytest.raises(TrainingDiverged) as err:
        Trainer(model, opt, schedule=_Boom(), batch_size=16, epochs=3, progress=False, fused_step=fused).fit(X, y)
    assert (err.value.epoch, err.value.step) == (1, 3)  # the step after the huge update
    assert err.value.history.epochs == 1
    assert opt.t == ref_opt.t == 7 + 3  # epoch 0's 7 steps and epoch 1's first 3
    np.testing.assert_allclose(model._params, ref_model._params, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(model._params))


def test_a_fused_epoch_allocates_only_small_python_objects():
    X, y = blobs(m=300, nf=20, dtype=np.float32)
    model = Sequential([Dense(64, "relu"), Dense(3, "softmax")], input_dim=20, dtype="float32")
    run = _Run(Trainer(model, optim.Adam(0.001), batch_size=64, epochs=3, progress=False), X, y, None, 2)
    assert run.fused_epoch
    _, peak = _traced(run, lambda: run.run_epoch(1))
    # the epoch's shuffle makes a Generator; no array of the size of a batch or of X
    assert peak < 16384, peak


@pytest.mark.parametrize("net", ["softmax", "sigmoid"])
def test_train_accuracy_of_a_fused_epoch_equals_the_per_kernel_path(net):
    ref = _train(net, "adam", "float64", False)
    got = _train(net, "adam", "float64", True)
    np.testing.assert_array_equal(got[2]["train_accuracy"], ref[2]["train_accuracy"])
    assert got[3].history is got[2]


@pytest.mark.parametrize("batch_size, shuffle", [(32, True), (32, False), (None, True)])
def test_dropout_masks_of_the_fused_step_equal_the_per_kernel_path(batch_size, shuffle):
    ref = _train("dropout", "adam", "float64", False, batch_size=batch_size, shuffle=shuffle)
    got = _train("dropout", "adam", "float64", True, batch_size=batch_size, shuffle=shuffle)
    np.testing.assert_allclose(got[2]["train_loss"], ref[2]["train_loss"], rtol=1e-10)
    np.testing.assert_allclose(got[0]._params, ref[0]._params, rtol=1e-10, atol=1e-12)
    _float32_steps_agree("dropout", "adam", batch_size=batch_size, shuffle=shuffle)


def test_batchnorm_running_statistics_of_the_fused_step_equal_the_per_kernel_path():
    ref = _train("batchnorm", "momentum", "float64", False)
    got = _train("batchnorm", "momentum", "float64", True)
    np.testing.assert_allclose(got[0]._stats, ref[0]._stats, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[2]["dev_loss"], ref[2]["dev_loss"], rtol=1e-10)


def test_a_bias_before_batchnorm_takes_the_fused_step_too():
    # its gradient is rounding noise (batch norm removes any shift): with plain gradient descent
    # the noise stays at lr * 1e-17, so both paths can be compared digit by digit
    def net():
        return [Dense(12, None), BatchNorm(), Activation("tanh"), Dense(3, "softmax")]

    NETS["bias-bn"] = (net, "labels")
    try:
        ref = _train("bias-bn", "gd", "float64", False)
        got = _train("bias-bn", "gd", "float64", True)
    finally:
        del NETS["bias-bn"]
    np.testing.assert_allclose(got[0]._params, ref[0]._params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[0]._stats, ref[0]._stats, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[2]["dev_loss"], ref[2]["dev_loss"], rtol=1e-10)


@pytest.mark.parametrize("isa, scale", [("x86-64-v4", 1.0), ("x86-64-v3", 0.5), ("x86-64", 0.25), ("other", 1.0)])
def test_the_serial_limit_scales_with_the_vector_width_of_the_copy_in_use(monkeypatch, isa, scale):
    """A core of narrower vectors spends the team's fixed barrier time on fewer flops."""
    ck = _fused._cython()
    monkeypatch.setattr(ck, "ISA", isa)
    limit = int(_policy.STEP_SERIAL_FLOPS * scale)
    assert _fused.serial_flops() == limit
    # 64-100-10 at 200 rows: 8,880,000 flops, on a team where the limit is below that
    model = Sequential([Dense(100, "relu"), Dense(10, "softmax")], input_dim=64)
    threads, why = _fused.team_choice(model, 200, 2)
    assert threads == (2 if limit <= 8_880_000 else 1)
    assert f"({limit:,})" in why
    assert ("STEP_SERIAL_FLOPS" if scale == 1.0 else f"STEP_SERIAL_FLOPS x {scale:g} on {isa}") in why


def test_small_steps_run_on_one_thread_and_large_ones_on_the_team():
    X, y = blobs(m=256, nf=6)
    small = Sequential([Dense(8, "relu"), Dense(3, "softmax")], input_dim=6)
    run = _Run(Trainer(small, optim.Adam(), batch_size=64, progress=False), X, y, None, 2)
    assert _fused.step_flops(small, 64) == 6 * 64 * (6 * 8 + 8 * 3)
    assert run.fused.n_threads == 1
    big = Sequential([Dense(600, "relu"), Dense(300, "relu"), Dense(3, "softmax")], input_dim=6)
    run = _Run(Trainer(big, optim.Adam(), batch_size=64, progress=False), X, y, None, 2)
    assert _fused.step_flops(big, 64) >= _fused.serial_flops()
    assert run.fused.n_threads == 2
