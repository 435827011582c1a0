"""Arrays whose data starts on a cache line.

NumPy only promises 16 bytes (its large arrays start 16 bytes past a page).  The compiled
kernels read and write whole 64-byte vectors; from an unaligned start every one of them
straddles two lines.
"""

import math

import numpy as np

#: bytes of a cache line, and of an AVX-512 vector
LINE = 64


def empty_aligned(shape, dtype=np.float64):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` whose data starts on a
    :data:`LINE`-byte boundary."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) if isinstance(shape, tuple) else int(shape)
    extra = LINE // dtype.itemsize
    buf = np.empty(size + extra, dtype)
    start = (-buf.ctypes.data % LINE) // dtype.itemsize
    out = buf[start:start + size]
    return out.reshape(shape) if isinstance(shape, tuple) else out


def zeros_aligned(shape, dtype=np.float64):
    """As :func:`empty_aligned`, filled with zeros."""
    out = empty_aligned(shape, dtype)
    out.fill(0)
    return out
