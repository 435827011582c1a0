"""The transcendental kernels over the whole float range, on every backend.

sigmoid and tanh (``bias_act_forward``), softmax (its exp) and the output
activations and costs of the cross-entropy losses (``loss_forward``, with their
log), called through the public kernel functions, against NumPy in extended
precision rounded to the dtype, on a dense grid of [-1000, 1000] plus tiny
arguments, +-inf and NaN.  Errors are counted in ulp of that rounded value, so
they are relative where the result is tiny: ``sigmoid(-80)`` in float32 is
1.8e-35 and must not be 0.  Below the subnormal range 0 is the right answer,
and inside it the ulp is the subnormal spacing.
"""

import numpy as np
import pytest

import fusednet
import fusednet.kernels as K

BACKENDS = K.available()
DTYPES = [np.float32, np.float64]
#: "a few ulp": the bound of every backend on sigmoid, tanh and softmax
ULP = 4.0

#: ``1 / (1 + exp(-z))`` gives 0 where ``exp(-z)`` overflows although the
#: answer is a subnormal number (float32 z in (-103.97, -88.72], float64 z in
#: (-745.13, -709.78]); every backend writes it as ``e / (1 + e)``, e = exp(-|z|).


def grid(dtype):
    tiny = np.finfo(dtype).smallest_subnormal
    pos = np.geomspace(float(tiny), 1e3, 20_000)
    g = np.concatenate([
        np.linspace(-1000.0, 1000.0, 2_000_001),
        np.linspace(-30.0, 30.0, 600_001),
        pos, -pos,
        [0.0, -0.0, np.inf, -np.inf, np.nan],
    ])
    return g.astype(dtype)


def exact(name, x):
    """The function in extended precision (x86 long double: 64-bit mantissa)."""
    x = x.astype(np.longdouble)
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "sigmoid":
            return 1 / (1 + np.exp(-x))
        if name == "tanh":
            return np.tanh(x)
    raise ValueError(name)


def ulp_error(got, ref, dtype):
    """``|got - ref|`` in units of the last place of ``ref`` rounded to ``dtype``.

    The subnormal spacing below the smallest normal number; NaN where ``ref`` is NaN.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = ref.astype(dtype)
        err = np.abs(got.astype(np.longdouble) - ref) / np.spacing(np.abs(rounded)).astype(np.longdouble)
        return np.where(got == ref, 0.0, err.astype(np.float64))


def subnormal(ref, dtype):
    r = np.abs(ref.astype(dtype))
    return (r > 0) & (r < np.finfo(dtype).tiny)


def _activate(name, x, backend):
    Z = x.reshape(-1, 1)
    return K.bias_act_forward(Z, np.zeros(1, x.dtype), name, backend=backend).ravel()


def _assert_ulp(err, x, bound, what):
    worst = int(np.nanargmax(err))
    assert err[worst] <= bound, f"{what}: {err[worst]:.3g} ulp at z = {x[worst]!r}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_activation_error_in_ulp_over_whole_range(name, dtype, backend):
    """Within a few ulp, relative where the result is tiny; the subnormal band is tested below."""
    x = grid(dtype)
    got = _activate(name, x, backend)
    ref = exact(name, x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))
    keep = ~np.isnan(x) & ~subnormal(ref, dtype)
    _assert_ulp(ulp_error(got[keep], ref[keep], dtype), x[keep], ULP, f"{backend} {name}")
    lo = -1.0 if name == "tanh" else 0.0
    assert np.all((got[keep] >= lo) & (got[keep] <= 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kernel, dtype",
    # the float32 BCE output is computed in float64: no float32 logit reaches its subnormal band
    [("activation", np.float32), ("activation", np.float64), ("bce_output", np.float64)],
    ids=["activation-float32", "activation-float64", "bce_output-float64"],
)
def test_sigmoid_subnormal_results_are_not_flushed_to_zero(kernel, backend, dtype):
    """Where sigmoid(z) is a subnormal number the kernel returns it, not 0.

    Within 2 subnormal steps: ``e = exp(-|z|)`` is near the subnormal range itself there,
    so ``e / (1 + e)`` may round twice at the smallest step.
    """
    x = grid(dtype)
    ref = exact("sigmoid", x)
    band = subnormal(ref, dtype)
    x, ref = x[band], ref[band]
    if kernel == "activation":
        got = _activate("sigmoid", x, backend)
    else:
        Z = x.reshape(-1, 1)
        _, A = K.loss_forward(Z, np.zeros(1, dtype), np.zeros_like(Z), "bce", backend=backend)
        got = A.ravel()
    _assert_ulp(ulp_error(got, ref, dtype), x, 2.0, f"{backend} sigmoid, subnormal band")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_far_negative_logit_keeps_relative_precision(backend):
    """float32 sigmoid(z) for z <= -16 is tiny, not 0 (the case that made predict_proba say [1, 0])."""
    z = np.array([-10.0, -16.0, -20.0, -40.0, -80.0, -87.0], np.float32)
    got = _activate("sigmoid", z, backend)
    ref = exact("sigmoid", z)
    assert np.all(got > 0)
    _assert_ulp(ulp_error(got, ref, np.float32), z, ULP, f"{backend} sigmoid")


def test_predict_proba_far_negative_logit():
    """A sigmoid unit at logit -20 gives [1 - p, p] with p = 2.06e-9, not [1, 0] (default backend)."""
    model = fusednet.Sequential([fusednet.layers.Dense(1, activation="sigmoid")], input_dim=1)
    state = model.state_dict()
    state["params"][:] = [1.0, 0.0]  # W, b
    model.load_state_dict(state)
    z = np.array([[-20.0], [-80.0]], np.float32)
    proba = model.predict_proba(z)
    np.testing.assert_allclose(proba[:, 1], exact("sigmoid", z.ravel()).astype(np.float64), rtol=1e-6)
    np.testing.assert_array_equal(proba[:, 0], [1.0, 1.0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_softmax_error_in_ulp_over_whole_range(backend, dtype):
    """Rows ``[0, x]``: softmax is ``[sigmoid(-x), sigmoid(x)]``, and the max subtraction is exact.

    So the error is that of the kernel's exp and normalisation alone, subnormal
    results included.
    """
    x = grid(dtype)
    x = x[np.isfinite(x)]
    Z = np.stack([np.zeros_like(x), x], axis=1)
    A = K.bias_act_forward(Z, np.zeros(2, dtype), "softmax", backend=backend)
    for col, ref in ((0, exact("sigmoid", -x)), (1, exact("sigmoid", x))):
        _assert_ulp(ulp_error(A[:, col], ref, dtype), x, ULP, f"{backend} softmax column {col}")
    np.testing.assert_array_equal(np.isnan(K.bias_act_forward(
        np.array([[0.0, np.nan], [np.inf, 1.0]], dtype), np.zeros(2, dtype), "softmax", backend=backend)),
        True)


#: ulp of the output activations of the losses, computed in float64 and
#: rounded: 1 in float32; in float64 BCE's sigmoid is within a few ulp and
#: CCE's ``exp(z - lse)`` carries the rounding of ``lse``, amplified by |z - lse|
#: (the same on every backend)
LOSS_OUTPUT_ULP = {(np.float32, "bce"): 1.0, (np.float32, "cce"): 1.0,
                   (np.float64, "bce"): ULP, (np.float64, "cce"): 48.0}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("loss", ["bce", "cce"])
def test_loss_output_error_in_ulp_over_whole_range(loss, dtype, backend):
    x = grid(dtype)
    x = x[np.isfinite(x)]
    sx = exact("sigmoid", x)
    if loss == "bce":
        Z = x.reshape(-1, 1)
        refs = [sx]
    else:
        Z = np.stack([np.zeros_like(x), x], axis=1)
        refs = [exact("sigmoid", -x), sx]
    _, A = K.loss_forward(Z, np.zeros(Z.shape[1], dtype), np.zeros_like(Z), loss, backend=backend)
    for col, ref in enumerate(refs):
        keep = ~subnormal(ref, dtype)
        _assert_ulp(ulp_error(A[keep, col], ref[keep], dtype), x[keep], LOSS_OUTPUT_ULP[(dtype, loss)],
                    f"{backend} {loss} output column {col}")


def _cost_points(dtype):
    pos = np.geomspace(1e-30, 1e3, 200)
    x = np.concatenate([np.linspace(-1000.0, 1000.0, 401), np.linspace(-40.0, 40.0, 801), pos, -pos, [0.0]])
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["bce", "cce"])
def test_loss_cost_relative_error_over_whole_range(loss, backend, dtype):
    """One example at a time: the cost is ``softplus(-x)`` or ``softplus(x)`` (float64, a few ulp).

    BCE of logit x with target 1 or 0, CCE of logits [0, x] with target class
    0 or 1; both are ``log(1 + exp(-+x))`` exactly.  The cost is float64 for
    either dtype, so the bound is in float64 ulp, relative down to
    ``softplus(-1000)`` = 0.
    """
    worst = 0.0
    for x in _cost_points(dtype):
        for target in (0, 1):
            if loss == "bce":
                Z, Y = np.array([[x]], dtype), np.array([[target]], dtype)
            else:
                Z, Y = np.array([[0.0, x]], dtype), np.eye(2, dtype=dtype)[[target]]
            cost, _ = K.loss_forward(Z, np.zeros(Z.shape[1], dtype), Y, loss, backend=backend)
            # BCE target 1 and CCE class 1 pay softplus(-x); the others softplus(x)
            sign = -1 if target == 1 else 1
            ref = np.logaddexp(np.longdouble(0), sign * np.longdouble(x))
            err = abs(np.longdouble(cost) - ref) / max(ref, np.longdouble(np.finfo(np.float64).tiny))
            worst = max(worst, float(err / np.finfo(np.float64).eps))
    assert worst <= ULP, f"{backend} {loss}: {worst:.3g} ulp"
