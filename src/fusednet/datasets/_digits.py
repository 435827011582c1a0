"""The UCI optical handwritten digits (8x8), shipped inside the package."""

import functools
from importlib import resources

import numpy as np

from ..data import _check_float_dtype

__all__ = ["digits"]

_RESOURCE = "digits.npz"


@functools.lru_cache(maxsize=1)
def _raw_digits():
    """The stored uint8 arrays, read once per process (callers must not write to them)."""
    with resources.files(__package__).joinpath(_RESOURCE).open("rb") as fh:
        with np.load(fh, allow_pickle=False) as archive:
            X = archive["X"]
            y = archive["y"]
    if X.shape != (1797, 64) or y.shape != (1797,):
        raise RuntimeError(
            f"the packaged {_RESOURCE} is damaged: shapes X {X.shape}, y {y.shape}; reinstall fusednet"
        )
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


def digits(*, dtype="float32"):
    """Load the UCI "Optical Recognition of Handwritten Digits" test set (8x8 images).

    1797 images of handwritten digits by 13 writers, each an 8x8 grid of
    counts of "on" pixels in 4x4 blocks of a 32x32 bitmap, so every value is an
    integer in ``0..16``; ten classes (the digits 0-9), about 180 examples each.
    The data (Alpaydin & Kaynak, 1998, UCI Machine Learning Repository, CC BY
    4.0) ship inside fusednet; see ``DIGITS_LICENSE.txt`` next to this module.

    Parameters
    ----------
    dtype : {"float32", "float64"}, default "float32"
        Float type of ``X``.

    Returns
    -------
    X : ndarray, shape (1797, 64)
        Pixel values ``0..16`` (not scaled), row ``i`` being image ``i`` read
        row by row.  A new array on every call.
    y : ndarray of int64, shape (1797,)
        The digit shown, ``0..9``.

    Examples
    --------
    >>> X, y = digits()
    >>> X.shape, X.dtype, y.dtype, int(X.max())
    ((1797, 64), dtype('float32'), dtype('int64'), 16)
    """
    dtype = _check_float_dtype("dtype", dtype)
    X, y = _raw_digits()
    return X.astype(dtype), y.astype(np.int64)
