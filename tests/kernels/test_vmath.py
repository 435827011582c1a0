"""The compiled kernels' vectorisable exp, log, log1p, tanh and sigmoid (``kernels/_vmath.h``).

* each function, in float32 and float64, in every instruction-set copy of the
  extension, is within the bound its C comment states, in ulp of the exact
  value (NumPy in extended precision) rounded to the dtype: relative down to
  the smallest normal number, in subnormal steps below it; over dense grids of
  the whole range, and (slow tier) over random bit patterns;
* special values follow NumPy: inf, 0 and subnormal results of exp, -inf and
  NaN of log, the sign of a zero, NaN in -> NaN out;
* a loop's vector body and its scalar remainder give the same bits, and so do
  the instruction-set copies that share fused multiply-adds (or their absence).
"""

import numpy as np
import pytest

_cython = pytest.importorskip("fusednet.kernels._cython", reason="the Cython extension is not built")

VARIANTS = _cython.VARIANTS
DTYPES = [np.float32, np.float64]
NAMES = ["exp", "log", "log1p", "tanh", "sigmoid"]

#: the bounds stated in kernels/_vmath.h (the same in either dtype)
ULP = {"exp": 1.5, "log": 2.0, "log1p": 2.5, "tanh": 1.5, "sigmoid": 2.5}


def _kind(dtype):
    return "float" if dtype == np.float32 else "double"


def run(variant, name, x):
    out = np.empty_like(x)
    variant.vmath[_kind(x.dtype)](name, x, out)
    return out


def exact(name, x):
    """The function in extended precision (x86 long double: a 64-bit mantissa)."""
    with np.errstate(all="ignore"):
        x = x.astype(np.longdouble)
        if name == "sigmoid":
            return 1 / (1 + np.exp(-x))
        return getattr(np, name)(x)


def ulp_error(got, ref, dtype):
    """|got - ref| in ulp of ref rounded to dtype (the subnormal spacing below the smallest normal)."""
    with np.errstate(all="ignore"):
        rounded = ref.astype(dtype)
        err = np.abs(got.astype(np.longdouble) - ref) / np.spacing(np.abs(rounded)).astype(np.longdouble)
        same = (got == rounded) | (np.isnan(got) & np.isnan(rounded))
        return np.where(same, 0.0, err.astype(np.float64))


def grid(name, dtype):
    """Dense grids of the function's whole range, the subnormal numbers included."""
    fi = np.finfo(dtype)
    tiny = float(fi.smallest_subnormal)
    if name in ("log", "log1p"):
        pos = np.geomspace(tiny, float(fi.max), 2_000_000, dtype=np.longdouble)
        parts = [pos, np.linspace(0.5, 2.0, 500_001)]
        if name == "log1p":
            parts += [np.linspace(-1.0, 1.0, 500_001), -np.geomspace(tiny, 1.0, 200_000)]
    else:
        edge = float(np.log(fi.max)) * 1.01  # past the overflow point of exp
        low = -1.01 * float(np.log(2.0)) * (-fi.minexp + fi.nmant + 1)  # past the underflow point
        pos = np.geomspace(tiny, edge, 300_000)
        parts = [np.linspace(low, edge, 2_000_001), np.linspace(-30.0, 30.0, 600_001), pos, -pos]
    return np.concatenate(parts).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_error_in_ulp_over_the_whole_range(name, dtype):
    x = grid(name, dtype)
    ref = exact(name, x)
    for variant in VARIANTS:
        got = run(variant, name, x)
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref.astype(dtype)), err_msg=f"{variant.ISA} NaN")
        err = ulp_error(got, ref, dtype)
        worst = int(np.argmax(err))
        assert err[worst] <= ULP[name], f"{variant.ISA} {name}: {err[worst]:.3g} ulp at x = {x[worst]!r}"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_error_in_ulp_on_random_bit_patterns(name, dtype):
    """Every binade alike: 4M random bit patterns of the dtype (NaN and inf included)."""
    rng = np.random.default_rng(11)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    x = rng.integers(0, np.iinfo(bits).max, 4_000_000, dtype=bits, endpoint=True).view(dtype)
    ref = exact(name, x)
    for variant in VARIANTS:
        got = run(variant, name, x)
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref.astype(dtype)))
        err = ulp_error(got, ref, dtype)
        worst = int(np.argmax(err))
        assert err[worst] <= ULP[name], f"{variant.ISA} {name}: {err[worst]:.3g} ulp at x = {x[worst]!r}"


SPECIAL = {
    "exp": [(0.0, 1.0), (-0.0, 1.0), (np.inf, np.inf), (-np.inf, 0.0), (1000.0, np.inf), (-1000.0, 0.0)],
    "log": [(1.0, 0.0), (0.0, -np.inf), (-0.0, -np.inf), (np.inf, np.inf), (-1.0, np.nan), (-np.inf, np.nan)],
    "log1p": [(0.0, 0.0), (-0.0, -0.0), (-1.0, -np.inf), (np.inf, np.inf), (-2.0, np.nan), (-np.inf, np.nan)],
    "tanh": [(0.0, 0.0), (-0.0, -0.0), (np.inf, 1.0), (-np.inf, -1.0), (50.0, 1.0), (-50.0, -1.0)],
    "sigmoid": [(0.0, 0.5), (-0.0, 0.5), (np.inf, 1.0), (-np.inf, 0.0), (200.0, 1.0)],
}


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.ISA for v in VARIANTS])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_special_values(name, dtype, variant):
    pairs = [*SPECIAL[name], (np.nan, np.nan)]
    x = np.array([p[0] for p in pairs] * 9, dtype)  # 54+ values: the vector body and the remainder
    want = np.array([p[1] for p in pairs] * 9, dtype)
    got = run(variant, name, x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got[want == 0]), np.signbit(want[want == 0]), err_msg="sign of 0")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_tiny_results_are_not_flushed(dtype):
    """exp and sigmoid down to the smallest subnormal number, within one subnormal step."""
    fi = np.finfo(dtype)
    lo = float(np.log(fi.smallest_subnormal))  # exp(lo) is the smallest subnormal
    x = np.linspace(lo, float(np.log(fi.tiny)), 20_001).astype(dtype)
    for name in ("exp", "sigmoid"):
        ref = exact(name, x)
        for variant in VARIANTS:
            got = run(variant, name, x)
            assert np.all(got[ref.astype(dtype) > 0] > 0), f"{variant.ISA} {name} flushed a subnormal result"
            assert ulp_error(got, ref, dtype).max() <= 1.0


#: the copies whose instruction set has fused multiply-adds (the polynomials use them there)
FMA = {"x86-64-v3", "x86-64-v4"}


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.ISA for v in VARIANTS])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_vector_and_scalar_code_give_the_same_bits(name, dtype, variant):
    """What lets a kernel cut its work anywhere: an element's bits do not depend on its position."""
    rng = np.random.default_rng(3)
    x = grid(name, dtype)
    x = x[rng.integers(0, x.size, 3000)]
    whole = run(variant, name, x)
    one_by_one = np.array([run(variant, name, x[i:i + 1])[0] for i in range(x.size)], dtype)
    np.testing.assert_array_equal(one_by_one.view(np.uint8), whole.view(np.uint8))
    for other in VARIANTS:  # and the copies that share this one's multiply-adds
        if (other.ISA in FMA) == (variant.ISA in FMA):
            np.testing.assert_array_equal(run(other, name, x).view(np.uint8), whole.view(np.uint8),
                                          err_msg=other.ISA)


def test_bad_arguments_raise():
    x = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="no vector function"):
        run(VARIANTS[0], "cosh", x)
    with pytest.raises(ValueError, match="must hold 3 values"):
        VARIANTS[0].vmath["float"]("exp", x, np.zeros(2, np.float32))
