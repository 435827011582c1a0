"""Argument and input checks shared by the whole package.

Each check raises ``TypeError`` for a value of the wrong type and ``ValueError``
for one out of range, naming the argument, what it must be and what it got
(``"keep_prob must be a real number in (0, 1], got 1.5"``), and returns the
value in its canonical form (``float``, ``int``, ``numpy.dtype``, ndarray).
Checks run before anything changes, once per call or per fit (an optimiser
checks the learning rate it is given at every step: the float fast paths).

This module imports nothing from fusednet, so every other module -- the
layers the model is built from included -- may use it without an import cycle.
The model's own input checks and label encoding build on it
(:mod:`fusednet.model._inputs`).
"""

import math
import numbers

import numpy as np

__all__ = [
    "FLOAT_DTYPES",
    "as_2d",
    "as_array",
    "check_bool",
    "check_finite",
    "check_float_dtype",
    "check_int",
    "check_numeric",
    "check_positive",
    "check_real",
    "describe",
    "is_sparse",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: elements read per chunk by :func:`check_finite`
_FINITE_CHUNK = 1 << 20


def describe(value):
    """Short description of ``value`` for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


# --------------------------------------------------------------------------
# scalars
# --------------------------------------------------------------------------


def check_int(name, value, minimum=None):
    """Return ``value`` as an ``int`` after checking it is an integer >= ``minimum``.

    Raises
    ------
    TypeError
        ``value`` is not an integer (a ``bool`` is refused too).
    ValueError
        ``value`` is below ``minimum``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise TypeError(f"{name} must be {expected}, got {describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _wanted(low, high, low_open, high_open):
    """What :func:`check_real` asks for, in words: ``"a real number in (0, 1]"``."""
    if low is not None and high is not None:
        return f"a real number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite real number {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"a finite real number {'<' if high_open else '<='} {high}"
    return "a finite real number"


def check_real(name, value, low=None, high=None, *, low_open=False, high_open=False):
    """Return ``value`` as a finite ``float`` inside the given interval.

    Parameters
    ----------
    name : str
        Argument name used in the error message.
    value : object
        The value to check; ``bool`` is refused.
    low, high : float or None
        Bounds of the interval (None: unbounded on that side).
    low_open, high_open : bool
        Whether the bound itself is excluded.

    Raises
    ------
    TypeError
        ``value`` is not a real number.
    ValueError
        ``value`` is NaN, infinite or outside the interval.
    """
    if type(value) is not float:  # a float needs no conversion (optimisers check lr every step)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be {_wanted(low, high, low_open, high_open)}, got {describe(value)}")
        value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be {_wanted(low, high, low_open, high_open)}, got nan")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or math.isinf(value):
        raise ValueError(f"{name} must be {_wanted(low, high, low_open, high_open)}, got {value!r}")
    return value


def check_positive(name, value):
    """Return ``value`` as a finite ``float > 0`` (a learning rate, an epsilon)."""
    if type(value) is float and 0.0 < value < math.inf:  # the common case, once per optimiser step
        return value
    return check_real(name, value, 0, low_open=True)


def check_bool(name, value):
    """Return ``value`` as a ``bool``; only ``bool`` and ``numpy.bool_`` are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return bool(value)


def check_float_dtype(name, dtype):
    """Return ``np.dtype(dtype)`` after checking it is float32 or float64."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be 'float32' or 'float64', got {dtype!r}")
    return resolved


# --------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------


def as_array(name, value):
    """``np.asarray`` that turns conversion failures into a TypeError naming ``name``.

    ``np.memmap`` and other ndarrays are returned as they are (no copy, no read).
    """
    if isinstance(value, np.ndarray):
        return value
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like, got {describe(value)}: {exc}") from None
    if array.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got {describe(value)} (object dtype)")
    return array


def check_numeric(name, array):
    """Raise TypeError unless ``array`` has a bool, integer or floating dtype."""
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a numeric dtype, got dtype {array.dtype}")


def is_sparse(X):
    """Whether ``X`` is a scipy.sparse matrix or array (without importing SciPy)."""
    return type(X).__module__.startswith("scipy.sparse") and hasattr(X, "toarray")


def as_2d(X, name="X"):
    """``X`` as a 2-D numeric ndarray with at least one row and one column.

    ndarrays (and memmaps) are not copied; a scipy.sparse matrix is refused with
    the way to densify it.
    """
    if is_sparse(X):
        raise TypeError(
            f"{name} is a scipy.sparse matrix of shape {X.shape}; fusednet trains on dense arrays: "
            f"pass {name}.toarray() (or a dense np.memmap when it does not fit in memory)"
        )
    if not isinstance(X, np.ndarray):
        try:
            X = np.asarray(X)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array, got {type(X).__name__}: {exc}") from None
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a numeric dtype, got {describe(X)}")
    if X.ndim != 2:
        hint = "; use X.reshape(-1, 1) for a single feature" if X.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (m, n_features), got shape {X.shape}{hint}")
    if X.shape[0] < 1:
        raise ValueError(f"{name} must have at least one row, got shape {X.shape}")
    if X.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature, got shape {X.shape}")
    return X


def _position(index):
    """Where an entry is, for messages: ``"row 5, column 2 (index (5, 2))"`` or ``"index (3)"``."""
    where = "index (" + ", ".join(str(int(i)) for i in index) + ")"
    if len(index) == 2:
        return f"row {int(index[0])}, column {int(index[1])} ({where})"
    return where


def check_finite(X, name="X", dtype=None):
    """Raise ValueError if ``X`` holds NaN or inf, or, converted to ``dtype``, would.

    Reads ``X`` (any shape with at least one dimension, e.g. a large
    ``np.memmap``) a few MiB at a time and names the first offending entry.  A
    float64 value beyond float32's range becomes inf when a float32 model
    converts it, so it is refused here too.
    """
    if X.dtype.kind != "f":
        return
    limit = None
    if dtype is not None and np.dtype(dtype).itemsize < X.dtype.itemsize:
        limit = float(np.finfo(dtype).max)
    row_size = max(1, int(np.prod(X.shape[1:], dtype=np.int64)))
    rows = max(1, _FINITE_CHUNK // row_size)
    for s in range(0, X.shape[0], rows):
        block = X[s : s + rows]
        if block.size == 0:
            continue
        # fast path: a finite sum means finite entries (an overflowing sum falls through to the exact check)
        if not math.isfinite(float(np.add.reduce(block, axis=None))):
            bad = ~np.isfinite(block)
            if bad.any():
                index = np.argwhere(bad)[0]
                value = block[tuple(index)]
                index[0] += s
                raise ValueError(f"{name} must be finite, but it holds {value} at {_position(index)}")
        if limit is not None and float(np.abs(block).max()) > limit:
            index = np.argwhere(np.abs(block) > limit)[0]
            value = block[tuple(index)]
            index[0] += s
            raise ValueError(
                f"{name} holds {value} at {_position(index)}, beyond the range of the "
                f"model's dtype {np.dtype(dtype).name} (|x| <= {limit:.4g}); scale the data or use "
                f"dtype='float64'"
            )
