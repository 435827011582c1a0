"""What only the Cython backend has: its point functions, its thread pieces, its wheel.

* every ``# mirrors fusednet.kernels.reference.<name>`` point function of
  ``kernels/_point.pxd`` equals that reference function (special values included);
* every kernel gives the same bits for any thread count, on shapes that take
  each partition path (wide, narrow, long rows, one column);
* every instruction-set copy of the extension agrees with the reference;
* the extension and the package data are in the installed package.
"""

import importlib.metadata
import importlib.util
import re
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from fusednet.kernels import _codes, reference

_cython = pytest.importorskip("fusednet.kernels._cython", reason="the Cython extension is not built")

VARIANTS = _cython.VARIANTS
VARIANT_IDS = [v.ISA for v in VARIANTS]
DTYPES = [np.float32, np.float64]
PXD = Path(__file__).resolve().parents[2] / "kernels" / "_point.pxd"

# point function -> (reference function, takes slope)
POINTS = {
    "sigmoid": (reference.sigmoid, False),
    "sigmoid_grad": (reference.sigmoid_grad, False),
    "tanh": (reference.tanh, False),
    "tanh_grad": (reference.tanh_grad, False),
    "relu": (reference.relu, False),
    "relu_grad": (reference.relu_grad, False),
    "leaky_relu": (reference.leaky_relu, True),
    "leaky_relu_grad": (reference.leaky_relu_grad, True),
    "flush": (None, False),  # reference._flush works in place
}


# optimiser point function -> its scalar arguments, in the reference's order
UPDATES = {
    "decayed": (0.003,),
    "ewa": (0.9, 0.1),
    "gd_step": (0.05,),
    "momentum_step": (0.05, 0.271),
    "rmsprop_step": (0.05, 1e-8),
    "adam_step": (0.05, 0.1, 0.001, 1e-8),
}


def _special(dtype):
    fi = np.finfo(dtype)
    x = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-3, -1e-3, 8.0, -8.0, 20.0, -20.0, 50.0, -50.0, 100.0, -100.0,
         fi.tiny, -fi.tiny, fi.tiny / 4, -fi.tiny / 4, fi.max, -fi.max, np.inf, -np.inf, np.nan]
    rng = np.random.default_rng(7)
    return np.concatenate([np.array(x), rng.standard_normal(997) * 4, rng.uniform(-1, 1, 211)]).astype(dtype)


def _ref_point(name, x, slope):
    fn, takes_slope = POINTS[name]
    if fn is None:
        y = x.copy()
        reference._flush(y)
        return y
    with np.errstate(over="ignore", invalid="ignore"):
        y = fn(x, x.dtype.type(slope)) if takes_slope else fn(x)
    return np.asarray(y).astype(x.dtype)


def test_pxd_mirrors_are_all_tested():
    """Each `# mirrors` comment names a reference function that the parity tests cover."""
    if not PXD.exists():
        pytest.skip("not run from a source checkout")
    mirrored = set(re.findall(r"#\s*mirrors\s+fusednet\.kernels\.reference\.(\w+)", PXD.read_text()))
    assert mirrored, "no '# mirrors' comments found"
    for name in mirrored:
        assert hasattr(reference, name), f"_point.pxd mirrors a missing reference.{name}"
    tested = {"_flush" if n == "flush" else n for n in POINTS} | {"fmix32", "dropout_hash"} | set(UPDATES)
    assert mirrored <= tested, f"untested point functions: {sorted(mirrored - tested)}"


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(POINTS))
def test_point_function_parity(variant, dtype, name):
    x = _special(dtype)
    got = np.empty_like(x)
    variant.point["float" if dtype == np.float32 else "double"](name, x, 0.01, got)
    ref = _ref_point(name, x, 0.01)
    rtol = 4e-7 if dtype == np.float32 else 4e-15
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(UPDATES))
def test_optimiser_point_function_parity(variant, dtype, name):
    """The compiled optimiser updates give NumPy's bits: no contraction (-ffp-contract=off), same order."""
    x = _special(dtype)
    rng = np.random.default_rng(11)
    a, b, c = (rng.permutation(x) for _ in range(3))
    c = np.abs(c)  # a second moment is never negative
    n_arrays = variant.UPDATES[name][0]
    assert variant.UPDATES[name][1] == len(UPDATES[name])
    got = np.empty_like(x)
    variant.point_update["float" if dtype == np.float32 else "double"](
        name, a, b, c, np.array(UPDATES[name], np.float64), got)
    scalars = tuple(dtype(v) for v in UPDATES[name])
    with np.errstate(all="ignore"):
        ref = np.asarray(getattr(reference, name)(*(a, b, c)[:n_arrays], *scalars), dtype)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_dropout_hash_parity(variant):
    rng = np.random.default_rng(3)
    i = np.concatenate([np.arange(1000, dtype=np.uint64),
                        rng.integers(0, 2**63, 1000, dtype=np.uint64),  # truncated to 32 bits
                        np.array([2**32 - 1, 2**32, 2**64 - 1], dtype=np.uint64)])
    for key in (0, 1, 2**32 - 1, 2**32, 2**64 - 1, _codes.dropout_key(5, 1, 2, 3)):
        got = np.empty(i.size, np.uint32)
        variant.point_hash(i, key, got)
        np.testing.assert_array_equal(got, reference.dropout_hash(i, key))
    h = rng.integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32)
    got = np.empty_like(h)
    variant.point_fmix32(h, got)
    np.testing.assert_array_equal(got, reference.fmix32(h))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_blocks_of_rows_have_each_row_s_bits(variant, dtype):
    """loss_forward runs rows of up to 64 classes 16 at a time, one per vector lane; every row's
    cost and A equal the single-row formula's bits (NaN and inf logits, ties, soft targets,
    partial blocks)."""
    rng = np.random.default_rng(5)
    kind = "float" if dtype == np.float32 else "double"
    for n in (1, 2, 3, 10, 17, 64):
        for m in (1, 15, 16, 17, 45):
            Z = (rng.standard_normal((m, n)) * rng.choice([0.1, 3.0, 60.0])).astype(dtype)
            b = (rng.standard_normal(n) * 0.1).astype(dtype)
            Y = rng.random((m, n)).astype(dtype)
            Y[::2] = np.eye(n, dtype=dtype)[rng.integers(0, n, (m + 1) // 2)]
            if n >= 3 and m >= 8:
                Z[1, 0] = Z[1, 1]
                Z[2, :] = 5.0
                Z[3, 1], Z[4, 2], Z[5, 0] = np.nan, np.inf, -np.inf
            want_A, want_cost = np.empty_like(Z), np.empty(m)
            variant.cce_by_row[kind](Z, b, Y, want_A, want_cost)
            A = np.empty_like(Z)
            variant.loss_forward[kind](Z, b, Y, _codes.CCE, A, 1)
            np.testing.assert_array_equal(A, want_A)
            for i in range(m):
                one = np.empty((1, n), dtype)
                cost = variant.loss_forward[kind](Z[i:i + 1], b, Y[i:i + 1], _codes.CCE, one, 1)
                np.testing.assert_array_equal(cost, want_cost[i])


def test_codes_match():
    want = dict(_codes.ACTIVATIONS)
    want.update(_codes.LOSSES)
    for variant in VARIANTS:
        assert variant.CODES == want


# ----------------------------------------------------------------------------------
# thread-count invariance
# ----------------------------------------------------------------------------------


@pytest.fixture
def low_thresholds():
    """Every kernel parallel from 1 element on, so small arrays exercise the pieces."""
    saved = [v.parallel_thresholds() for v in VARIANTS]
    for v in VARIANTS:
        v.set_parallel_thresholds(1, 1, 1, 1)
    yield
    for v, s in zip(VARIANTS, saved):
        v.set_parallel_thresholds(**s)


# wide (column blocks), narrow (row chunks), long rows (segments), one column, tiny
SHAPES = [(300, 517), (3001, 7), (3, 5000), (20000, 1), (2, 3)]


def _run_all(shape, dtype, n_threads, mod):
    """Every kernel once on fixed data; returns a dict of all outputs."""
    rng = np.random.default_rng(11)
    m, n = shape
    Z = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    dA = rng.standard_normal(shape).astype(dtype)
    Y = rng.random(shape).astype(dtype)
    out = {}
    for act in _codes.ACTIVATIONS.values():
        A = np.empty(shape, dtype)
        mod.bias_act_forward(Z, b, act, 0.01, A, n_threads)
        dZ, db = np.empty(shape, dtype), np.empty(n, dtype)
        mod.act_backward(dA, A, act, 0.01, dZ, db, n_threads)
        out[f"fwd{act}"], out[f"bwd{act}"], out[f"db{act}"] = A, dZ, db
    for loss in _codes.LOSSES.values():
        A = np.empty(shape, dtype)
        out[f"cost{loss}"] = mod.loss_forward(Z, b, Y, loss, A, n_threads)
        out[f"lossA{loss}"] = A
    dZ, db = np.empty(shape, dtype), np.empty(n, dtype)
    mod.loss_backward(Y, dA, dZ, db, n_threads)
    out["lossdZ"], out["lossdb"] = dZ, db
    X = np.empty(shape, dtype)
    mod.dropout_apply(Z, _codes.dropout_key(1, 2), _codes.dropout_threshold(0.7), 1 / 0.7, X, n_threads)
    out["dropout"] = X
    gamma, beta = rng.random(n).astype(dtype) + 0.5, rng.standard_normal(n).astype(dtype)
    bufs = [np.empty(shape, dtype), np.empty(shape, dtype)] + [np.empty(n, dtype) for _ in range(3)]
    mod.batchnorm_forward_train(Z, gamma, beta, 1e-5, *bufs, n_threads)
    out.update({f"bn{i}": a for i, a in enumerate(bufs)})
    inf = np.empty(shape, dtype)
    mod.batchnorm_forward_infer(Z, gamma, beta, bufs[2], bufs[3], 1e-5, inf, n_threads)
    out["bninfer"] = inf
    dZ, dg, dbt = np.empty(shape, dtype), np.empty(n, dtype), np.empty(n, dtype)
    mod.batchnorm_backward(dA, bufs[0], gamma, bufs[4], dZ, dg, dbt, n_threads)
    out.update(bnb_dZ=dZ, bnb_dg=dg, bnb_db=dbt)
    w, g = Z.ravel().copy(), dA.ravel() * dtype(1e-2)
    s1, s2 = np.abs(Y.ravel()) * dtype(1e-3), np.abs(Y.ravel()) * dtype(1e-6)
    nd = w.size // 3
    mod.gd_update(w, g, 0.1, 0.01, nd, n_threads)
    mod.momentum_update(w, g, s1, 0.1, 0.9, 0.5, 0.01, nd, n_threads)
    mod.rmsprop_update(w, g, s2, 0.01, 0.99, 1e-8, 0.01, nd, n_threads)
    mod.adam_update(w, g, s1, s2, 0.01, 0.9, 0.999, 1e-8, 0.1, 0.01, 0.01, nd, n_threads)
    mod.ewa_update(s1, g, 0.9, n_threads)
    out.update(w=w, s1=s1, s2=s2)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}" for m, n in SHAPES])
def test_same_bits_for_any_thread_count(low_thresholds, dtype, shape):
    with np.errstate(all="ignore"):
        one = _run_all(shape, dtype, 1, _cython)
        for n_threads in (2, 3, 5):
            many = _run_all(shape, dtype, n_threads, _cython)
            for key, value in one.items():
                np.testing.assert_array_equal(many[key], value, err_msg=f"{key}, {n_threads} threads")


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_isa_copy_matches_the_reference(variant, dtype):
    """Each instruction-set copy of the extension, called directly, equals the reference."""
    kind = "float" if dtype == np.float32 else "double"
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    rng = np.random.default_rng(5)
    Z = (rng.standard_normal((257, 129)) * 3).astype(dtype)
    b = rng.standard_normal(129).astype(dtype)
    for act in _codes.ACTIVATIONS.values():
        ref, got = np.empty_like(Z), np.empty_like(Z)
        reference.bias_act_forward(Z, b, act, 0.01, ref, 1)
        variant.bias_act_forward[kind](Z, b, act, 0.01, got, 2)
        np.testing.assert_allclose(got, ref, **tol)
    Y = np.eye(129, dtype=dtype)[rng.integers(0, 129, 257)]
    for loss in _codes.LOSSES.values():
        ref, got = np.empty_like(Z), np.empty_like(Z)
        c_ref = reference.loss_forward(Z, b, Y, loss, ref, 1)
        c_got = variant.loss_forward[kind](Z, b, Y, loss, got, 2)
        np.testing.assert_allclose(got, ref, **tol)
        assert c_got == pytest.approx(c_ref, rel=tol["rtol"])


def test_float64_accuracy_for_gradient_checking():
    """Float64 kernels agree with the reference to about 1e-14 relative."""
    rng = np.random.default_rng(2)
    Z = rng.standard_normal((64, 33)) * 4
    b = rng.standard_normal(33)
    for act in (_codes.SIGMOID, _codes.TANH, _codes.SOFTMAX):
        ref, got = np.empty_like(Z), np.empty_like(Z)
        reference.bias_act_forward(Z, b, act, 0.01, ref, 1)
        _cython.bias_act_forward(Z, b, act, 0.01, got, 1)
        np.testing.assert_allclose(got, ref, rtol=2e-14, atol=0)


# ----------------------------------------------------------------------------------
# behaviour at the edges
# ----------------------------------------------------------------------------------


def test_nan_propagates_through_activations_and_cost():
    Z = np.array([[np.nan, 1.0, -1.0]], np.float32)
    b = np.zeros(3, np.float32)
    for act in (_codes.SIGMOID, _codes.TANH, _codes.RELU, _codes.LEAKY_RELU, _codes.LINEAR):
        A = np.empty_like(Z)
        _cython.bias_act_forward(Z, b, act, 0.01, A, 1)
        assert np.isnan(A[0, 0]) and np.isfinite(A[0, 1:]).all()
    Y = np.array([[0, 1, 0]], np.float32)
    for loss in _codes.LOSSES.values():
        assert np.isnan(_cython.loss_forward(Z, b, Y, loss, np.empty_like(Z), 1))


def test_optimiser_flushes_subnormal_state_and_restores_the_fpu():
    n = 4096
    w = np.ones(n, np.float32)
    g = np.zeros(n, np.float32)
    m = np.full(n, 1e-39, np.float32)  # subnormal
    v = np.full(n, np.finfo(np.float32).tiny, np.float32)  # normal, decays below the smallest normal
    _cython.adam_update(w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.01, 0.0, 0, 2)
    assert not m.any() and not v.any()
    assert (w == 1).all()
    # the caller's floating-point mode is intact: subnormal results still appear
    tiny = np.array([np.finfo(np.float32).tiny], np.float32)
    assert (tiny / np.float32(4))[0] > 0


def test_l2_applies_to_the_first_n_decay_only_and_not_at_zero():
    w = np.array([np.inf, 1.0, 1.0, 1.0], np.float64)
    g = np.ones(4)
    _cython.gd_update(w, g, 0.5, 0.0, 4, 1)  # l2 = 0: w's inf never meets 0 * inf
    assert w[0] == np.inf
    w = np.ones(4)
    _cython.gd_update(w, g, 0.5, 1.0, 2, 1)
    np.testing.assert_array_equal(w, [0.0, 0.0, 0.5, 0.5])


def test_readonly_inputs_and_dtype_mismatch():
    Z = np.ones((3, 4), np.float32)
    Z.flags.writeable = False
    b = np.zeros(4, np.float32)
    b.flags.writeable = False
    A = np.empty((3, 4), np.float32)
    _cython.bias_act_forward(Z, b, _codes.TANH, 0.01, A, 1)
    with pytest.raises(ValueError):
        _cython.bias_act_forward(Z, b, _codes.TANH, 0.01, np.empty((3, 4), np.float64), 1)
    with pytest.raises(ValueError, match="activation code"):
        _cython.bias_act_forward(Z, b, 99, 0.01, A, 1)


def test_dropout_accepts_any_shape_and_keep_all():
    X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = np.empty_like(X)
    _cython.dropout_apply(X, 123, 2**32, 1.0, out, 2)
    np.testing.assert_array_equal(out, X)
    _cython.dropout_apply(X, 123, 0, 2.0, out, 2)
    assert not out.any()


# ----------------------------------------------------------------------------------
# the installed package
# ----------------------------------------------------------------------------------


def test_extension_is_installed_in_the_package():
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    kernels_dir = Path(importlib.util.find_spec("fusednet.kernels").origin).parent
    for variant in VARIANTS:
        path = Path(variant.__file__)
        assert path.parent == kernels_dir
        assert path.name.endswith(suffix)
    assert (kernels_dir / f"_ckernels{suffix}").exists()  # the baseline copy is always built
    assert _cython.ISA == VARIANTS[0].ISA


def test_wheel_records_the_extension_and_package_data():
    try:
        files = importlib.metadata.files("fusednet")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fusednet is not installed from a wheel")
    if not files:
        pytest.skip("no RECORD (editable or source install)")
    names = {str(f) for f in files}
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert f"fusednet/kernels/_ckernels{suffix}" in names
    assert any(n.startswith("fusednet/datasets/") and n.endswith(".npz") for n in names)
