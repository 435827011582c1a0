"""The typed boundary of the compiled step: the plan's dtypes mirror the C structs, the codes are the
compiled ones, and every mismatch between a plan and what it is given raises ValueError naming it."""

import re

import numpy as np
import pytest

from fusednet import _fused, optim
from fusednet.kernels import _blas, _codes, _plan
from fusednet.layers import Activation, BatchNorm, Dense, Dropout
from fusednet.model import Sequential
from fusednet.trainer import Trainer, _Run

ck = _fused._cython()
pytestmark = pytest.mark.skipif(ck is None or not _blas.AVAILABLE, reason="the compiled step is not built here")


def test_the_dtypes_mirror_the_c_structs_field_by_field():
    for dtype, struct in ((_plan.LAYER_DTYPE, "LayerSpec"), (_plan.OPT_DTYPE, "OptSpec")):
        size, offsets = ck._ck.layouts()[struct]
        assert dtype.itemsize == size, struct
        assert dtype.names == tuple(offsets), struct
        for name, off in offsets.items():
            assert dtype.fields[name][1] == off, (struct, name)


def test_the_compiled_codes_are_the_codes_module():
    for name, value in ck._ck.codes().items():
        assert getattr(_codes, name) == value, name


def _net():
    return [Dense(12, None, use_bias=False), BatchNorm(), Activation("tanh"), Dropout(0.8), Dense(7, "relu"),
            Dense(3, "softmax")]


def _fit_parts(dtype="float32"):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 64)
    X = (rng.standard_normal((64, 5)) + np.eye(3, 5)[y]).astype(dtype)
    model = Sequential(_net(), input_dim=5, dtype=dtype, l2=0.1)
    opt = optim.Adam(0.01)
    run = _Run(Trainer(model, opt, batch_size=16, progress=False), X, y, None, 2)
    return model, opt, run


def _plan_args(run):
    step = run.fused
    table = step.table.copy()
    P, G = run.model._params, run.model._grads
    s1, s2 = step.state
    v = run.v_full
    ws = run.model._workspace(v.n, train=True)
    nv, nodes = v.nodes, run.model._nodes
    _, blocks = _fused.layer_table(run.model)

    def each(key, get):
        return [get(b[key]) if key in b else None for b in blocks]

    buffers = {"Z": [nv[b["dense"]].Z for b in blocks], "Dr": each("drop", lambda i: nv[i].A),
               "xhat": each("bn", lambda i: nv[i].xhat), "Bo": each("bn", lambda i: nv[i].A),
               "Ao": each("act", lambda i: nv[i].A), "A": nv[-1].A, "D0": ws.delta[0], "D1": ws.delta[1],
               "zeros": run.model._zeros, "scratch": run.model._scratch, "X": v.X, "Y": v.Y}
    for name, attr in (("mean", "mean"), ("var", "var"), ("invstd", "invstd"), ("rmean", "running_mean"),
                       ("rvar", "running_var")):
        buffers[name] = each("bn", lambda i, attr=attr: getattr(nodes[i], attr))
    kw = dict(params=P, grads=G, state1=s1, state2=s2, buffers=buffers, gemm=_blas.gemm_capsule(P.dtype),
              rows=v.n, loss=run.model._loss, l2=run.model._l2, n_decay=run.model._n_decay, n_threads=2)
    return table, kw


def test_a_plan_built_from_the_model_is_accepted():
    _, _, run = _fit_parts()
    table, kw = _plan_args(run)
    ck._ck.StepPlan(table, **kw)


@pytest.mark.parametrize(
    "field, value, message",
    [
        # the first layer's input width is the batch buffer's; a wider layer 0 outgrows its Z buffer
        ("n_in", 6, r"buffers\['X'\] must be \(16, 6\), got \(16, 5\)"),
        ("n_out", 13, r"buffers\['Z'\]\[0\] holds 192 values; the plan needs 208"),
        ("w_off", 10**9, r"layers\[0\].w_off"),
        ("b_off", 10**9, r"layers\[0\].b_off"),
        ("gamma_off", 10**9, r"layers\[0\].gamma_off"),
        ("beta_off", -1, r"layers\[0\].gamma_off/beta_off"),
        ("act", 99, r"layers\[0\].act"),
        ("drop_scale", 0.0, r"layers\[0\].drop_scale"),
        ("bn_eps", 0.0, r"layers\[0\].bn_eps"),
        ("bn_momentum", 1.5, r"layers\[0\].bn_eps / bn_momentum"),
    ],
)
def test_each_layer_field_that_does_not_fit_is_named(field, value, message):
    _, _, run = _fit_parts()
    table, kw = _plan_args(run)
    table[0][field] = value
    with pytest.raises(ValueError, match=message):
        ck._ck.StepPlan(table, **kw)


def test_softmax_in_a_hidden_layer_and_dropout_after_the_output_are_named():
    _, _, run = _fit_parts()
    table, kw = _plan_args(run)
    table[1]["act"] = _codes.SOFTMAX
    with pytest.raises(ValueError, match=r"layers\[1\].act"):
        ck._ck.StepPlan(table, **kw)
    table, kw = _plan_args(run)
    table[2]["drop_index"] = 5
    with pytest.raises(ValueError, match=r"layers\[2\].drop_index"):
        ck._ck.StepPlan(table, **kw)


def _shifted(dtype, name, by):
    """``dtype`` with field ``name`` moved ``by`` bytes later (the record grown to fit)."""
    names = dtype.names
    offsets = [dtype.fields[n][1] + (by if n == name else 0) for n in names]
    return np.dtype({"names": names, "formats": [dtype.fields[n][0] for n in names], "offsets": offsets,
                     "itemsize": dtype.itemsize + by})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.astype(np.dtype([(n, t.dtype.fields[n][0]) for n in ("n_out", "n_in") + t.dtype.names[2:]],
                                     align=True)), "the fields"),
        (lambda t: t.astype(_shifted(t.dtype, "bn_momentum", 8)), "field 'bn_momentum' is at byte"),
        (lambda t: t.astype(t.dtype.descr[:-1] + [("bn_momentum", "<f4")]), "'bn_momentum'"),
        (lambda t: t[["n_in", "n_out"]], "fields"),
        (lambda t: np.zeros(3, np.float64), "structured array"),
        (lambda t: t[:2], r"buffers\['A'\] holds 48 values"),  # two layers: a 7-unit output
    ],
)
def test_a_table_whose_dtype_does_not_mirror_the_struct_is_named(change, message):
    _, _, run = _fit_parts()
    table, kw = _plan_args(run)
    with pytest.raises(ValueError, match=message):
        ck._ck.StepPlan(np.ascontiguousarray(change(table)), **kw)


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("params", lambda a: a.astype(np.float64), "grads must be an ndarray of float64|params"),
        ("grads", lambda a: a[:-1].copy(), "grads holds"),
        ("state1", lambda a: a[:10].copy(), "state1 holds 10 values"),
        ("gemm", lambda a: _blas.gemm_capsule(np.float64), "gemm must be"),
        ("gemm", lambda a: 12345, "gemm must be"),
        ("rows", lambda a: 0, "rows must be"),
        ("loss", lambda a: 7, "loss"),
        ("l2", lambda a: float("nan"), "l2 must be"),
    ],
)
def test_each_argument_that_does_not_fit_is_named(name, change, message):
    _, _, run = _fit_parts()
    table, kw = _plan_args(run)
    kw[name] = change(kw[name])
    with pytest.raises(ValueError, match=message):
        ck._ck.StepPlan(table, **kw)


@pytest.mark.parametrize(
    "name, layer, change, message",
    [
        ("Z", 0, lambda a: a[:3].copy(), r"buffers\['Z'\]\[0\] holds"),
        ("Z", 1, lambda a: None, r"buffers\['Z'\]\[1\] is missing"),
        ("Dr", 0, lambda a: None, r"buffers\['Dr'\]\[0\] is missing"),
        ("xhat", 0, lambda a: np.zeros(a.shape, np.float64), r"buffers\['xhat'\]\[0\] must be an ndarray of float32"),
        ("var", 0, lambda a: a[:5].copy(), r"buffers\['var'\]\[0\] holds 5"),
        ("Ao", 0, lambda a: np.asfortranarray(np.ones((a.shape[1], a.shape[0]), a.dtype).T),
         r"buffers\['Ao'\]\[0\] must be C-contiguous"),
        ("A", None, lambda a: a[:2].copy(), r"buffers\['A'\] holds"),
        ("D1", None, lambda a: None, r"buffers\['D1'\] must be an ndarray"),
        ("X", None, lambda a: a[:3], r"buffers\['X'\] must be \(16, 5\)"),
    ],
)
def test_each_buffer_that_does_not_fit_is_named(name, layer, change, message):
    _, _, run = _fit_parts()
    table, kw = _plan_args(run)
    bufs = dict(kw["buffers"])
    if layer is None:
        bufs[name] = change(bufs[name])
    else:
        bufs[name] = list(bufs[name])
        bufs[name][layer] = change(bufs[name][layer])
    kw["buffers"] = bufs
    with pytest.raises(ValueError, match=message):
        ck._ck.StepPlan(table, **kw)


def test_a_read_only_workspace_buffer_is_refused():
    _, _, run = _fit_parts()
    table, kw = _plan_args(run)
    ro = kw["buffers"]["A"].copy()
    ro.flags.writeable = False
    kw["buffers"] = dict(kw["buffers"], A=ro)
    with pytest.raises(ValueError, match=r"buffers\['A'\] must be C-contiguous and writable"):
        ck._ck.StepPlan(table, **kw)


def test_a_stale_plan_is_refused_before_it_steps():
    model, opt, run = _fit_parts()
    v = run.v_full
    before = model._params.copy()
    model.l2 = 0.5  # the plan was built for l2 = 0.1
    with pytest.raises(ValueError, match="l2"):
        run.fused(v, v.X, v.Y, None, None, None, 0.01)
    model.l2 = 0.1
    opt.reset()  # new state buffers on the next bind
    with pytest.raises(ValueError, match="state buffers"):
        run.fused(v, v.X, v.Y, None, None, None, 0.01)
    np.testing.assert_array_equal(model._params, before)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.__setitem__("kind", 9) or r, "opt.kind"),
        (lambda r: r.__setitem__("bias_correction", 5) or r, "opt.bias_correction"),
        (lambda r: r.__setitem__("t", -1) or r, "opt.t"),
        (lambda r: np.zeros(2, r.dtype), "1 records"),
        (lambda r: np.zeros(1, np.float64), "structured array"),
    ],
)
def test_an_optimiser_record_that_does_not_fit_is_named(change, message):
    model, opt, run = _fit_parts()
    step = run.fused
    rec = change(step._opt().copy())
    v = run.v_full
    with pytest.raises(ValueError, match=message):
        ck._ck.dense_step(step.plan, rec, v.X, v.Y, None, 0.01, step.keys, step.out)


def test_gd_state_cannot_drive_adam():
    model, opt, run = _fit_parts()
    step = run.fused
    P = model._params
    gd = _fused.FusedStep(model, optim.GD(0.1), run.v_full, 2)  # a plan without optimiser state
    rec = step._opt().copy()  # Adam's record
    v = run.v_full
    with pytest.raises(ValueError, match="needs the optimiser state"):
        ck._ck.dense_step(gd.plan, rec, v.X, v.Y, None, 0.01, gd.keys, gd.out)
    assert P is model._params


def test_the_entry_points_take_at_most_eight_arguments():
    import inspect

    for fn in (ck._ck.dense_step, ck._ck.dense_epoch, ck._ck.dense_fit):
        text = fn.__doc__ or ""
        sig = inspect.signature(fn) if not text.startswith(fn.__name__) else None
        args = re.sub(r"\[[^]]*\]", "", text.split("(", 1)[1].split(")")[0])  # memoryview shapes hold commas
        n = len(sig.parameters) if sig is not None else args.count(",") + 1
        assert n <= 8, (fn.__name__, n)
