"""The Numba point functions mirror the reference's: activation derivatives and optimiser updates.

Each function of ``fusednet.kernels._numba_math`` marked ``# mirrors
fusednet.kernels.reference.NAME`` is run on scalars of float32 and float64
(grids with zeros, signs, tiny and huge values) and compared with the
reference function of that name on the same values as arrays.  The Numba
kernels may fuse a multiply and an add (``contract``, see
``fusednet.kernels._policy``), so a result may differ from NumPy's two
roundings by one rounding of the product: within one unit in the last place
of the largest term, :math:`u \\cdot \\sum |\\text{term}|`; and ``arcp`` lets a division become a
multiply by a reciprocal (one more rounding), so a term with divisions counts once more for each.
"""

import pathlib
import re

import numpy as np
import pytest

pytest.importorskip("numba")

from numba import njit  # noqa: E402

from fusednet.kernels import _numba_math as N  # noqa: E402
from fusednet.kernels import reference as R  # noqa: E402

SOURCE = pathlib.Path(N.__file__)
DTYPES = (np.float32, np.float64)

#: name -> (number of array arguments, scalar arguments, the terms whose magnitudes bound the rounding)
CASES = {
    "sigmoid_grad": (1, (), lambda a: (a, a * a)),
    "tanh_grad": (1, (), lambda a: (1.0, a * a)),
    "relu_grad": (1, (), lambda a: (1.0,)),
    "leaky_relu_grad": (1, (0.01,), lambda a, s: (1.0, s)),
    "decayed": (2, (0.003,), lambda g, w, l2: (g, l2 * w)),
    "ewa": (2, (0.9, 0.1), lambda v, x, b, omb: (b * v, omb * x)),
    "gd_step": (2, (0.05,), lambda w, gp, lr: (w, lr * gp)),
    "momentum_step": (2, (0.05, 0.271), lambda w, v, lr, bc: (w, 2 * lr * v / bc)),
    "rmsprop_step": (3, (0.05, 1e-8), lambda w, gp, s, lr, eps: (w, 3 * lr * gp / (np.sqrt(np.abs(s)) + eps))),
    "adam_step": (3, (0.05, 0.1, 0.001, 1e-8),
                  lambda w, m, v, lr, bc1, bc2, eps: (w, 4 * lr * (m / bc1) / (np.sqrt(np.abs(v) / bc2) + eps))),
}


def _values(dtype, n_args, seed):
    """``n_args`` arrays of the same length: special values, then random ones over many magnitudes."""
    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, -1e-30, 3.0, -7.5, 1e10], dtype)
    out = []
    for _ in range(n_args):
        mags = 10.0 ** rng.uniform(-8, 8, 2000)
        vals = np.concatenate([special, (rng.choice([-1.0, 1.0], 2000) * mags).astype(dtype)])
        out.append(rng.permutation(vals).astype(dtype))
    return out


def _mirrored():
    return set(re.findall(r"#\s*mirrors\s+reference\.(\w+)", SOURCE.read_text()))


def test_every_mirrored_point_function_is_tested():
    assert set(CASES) <= _mirrored(), sorted(set(CASES) - _mirrored())
    for name in _mirrored():
        assert hasattr(R, name) and hasattr(N, name), name
    assert _mirrored() <= set(CASES), sorted(_mirrored() - set(CASES))


def _elementwise(fn, n_arrays):
    """A compiled loop calling ``fn`` on each element (scalars in the arrays' dtype)."""
    if n_arrays == 1:
        @njit
        def run(a, s, out):
            for i in range(out.size):
                out[i] = fn(a[0][i], *s)
    elif n_arrays == 2:
        @njit
        def run(a, s, out):
            for i in range(out.size):
                out[i] = fn(a[0][i], a[1][i], *s)
    else:
        @njit
        def run(a, s, out):
            for i in range(out.size):
                out[i] = fn(a[0][i], a[1][i], a[2][i], *s)
    return run


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_numba_point_function_equals_the_reference(name, dtype):
    n_arrays, scalars, terms = CASES[name]
    arrays = _values(dtype, n_arrays, seed=len(name))
    if name in ("rmsprop_step", "adam_step"):  # a second moment is never negative
        arrays[-1] = np.abs(arrays[-1])
    s = tuple(dtype(v) for v in scalars)
    got = np.empty(arrays[0].size, dtype)
    _elementwise(getattr(N, name), n_arrays)(tuple(arrays), s, got)
    with np.errstate(all="ignore"):
        ref = np.asarray(getattr(R, name)(*arrays, *s), dtype)
        scale = sum(np.abs(np.asarray(t, np.float64)) for t in terms(*(a.astype(np.float64) for a in arrays),
                                                                    *(float(v) for v in s)))
    scale = np.broadcast_to(scale, got.shape)
    assert got.dtype == dtype
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    u = np.finfo(dtype).eps
    gap = np.abs(got[finite].astype(np.float64) - ref[finite].astype(np.float64))
    bound = u * scale[finite] + np.finfo(dtype).smallest_subnormal
    assert np.all(gap <= bound), (name, float(np.max(gap / bound)))
