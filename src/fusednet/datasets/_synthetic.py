r"""Two-dimensional toy classification sets: the course's flower, moons, circles, spirals.

Every generator takes ``m`` (number of examples), a ``noise`` level and ``seed=``
(int or :class:`numpy.random.Generator`); it computes in float64 and returns
``(X, y)`` with ``X`` of shape ``(m, 2)`` in the requested float dtype and ``y``
int64 class ids ``0..K-1``.  Rows come grouped by class, in class order, as in
the course's ``load_planar_dataset``; :func:`fusednet.data.split` and the
trainer shuffle them.
"""

import math

import numpy as np

from ..data import _check_float_dtype, _check_int, _check_real, as_generator

__all__ = ["circles", "moons", "planar_flower", "spirals"]


def _class_sizes(m, n_classes):
    """Sizes of ``n_classes`` groups summing to ``m``, the first ``m % n_classes`` one larger."""
    base, extra = divmod(m, n_classes)
    return [base + (j < extra) for j in range(n_classes)]


def _finish(parts, dtype):
    """Stack per-class ``(points, label)`` pairs into ``(X, y)``."""
    X = np.concatenate([p for p, _ in parts]).astype(dtype, copy=False)
    y = np.concatenate([np.full(len(p), j, dtype=np.int64) for p, j in parts])
    return np.ascontiguousarray(X), y


def planar_flower(m=400, seed=1, noise=0.2, *, dtype="float32"):
    r"""The course's "flower": two interleaved classes of petals (C1W3's planar data).

    For class :math:`j \in \{0, 1\}` with :math:`N` points,

    .. math::

        t = \mathrm{linspace}(3.12\, j,\ 3.12\, (j+1),\ N) + \epsilon_t, \qquad
        r = a \sin(4 t) + \epsilon_r, \qquad
        x = (r \sin t,\ r \cos t),

    with :math:`a = 4` and :math:`\epsilon_t, \epsilon_r \sim \mathcal{N}(0, \mathrm{noise}^2)`
    drawn in that order, class 0 first.  This is the formula of the course's
    ``load_planar_dataset`` (``noise=0.2``), drawn from a
    :class:`numpy.random.Generator` rather than the legacy global state, so the
    points are the same in distribution, not bit for bit.

    Parameters
    ----------
    m : int, default 400
        Number of examples, >= 2; class 0 gets ``ceil(m / 2)``, class 1 ``floor(m / 2)``.
    seed : int, numpy.random.Generator or None, default 1
    noise : float, default 0.2
        Standard deviation of the angle and radius noise, >= 0.
    dtype : {"float32", "float64"}, default "float32"

    Returns
    -------
    X : ndarray, shape (m, 2)
    y : ndarray of int64, shape (m,)
        0 (the course's "red") or 1 ("blue").

    Examples
    --------
    >>> X, y = planar_flower(m=400, seed=1)
    >>> X.shape, y.shape, int(y.sum())
    ((400, 2), (400,), 200)
    """
    m = _check_int("m", m, 2)
    noise = _check_real("noise", noise, 0.0)
    dtype = _check_float_dtype("dtype", dtype)
    rng = as_generator(seed)
    a = 4.0
    parts = []
    for j, n in enumerate(_class_sizes(m, 2)):
        t = np.linspace(j * 3.12, (j + 1) * 3.12, n) + rng.standard_normal(n) * noise
        r = a * np.sin(4.0 * t) + rng.standard_normal(n) * noise
        parts.append((np.column_stack([r * np.sin(t), r * np.cos(t)]), j))
    return _finish(parts, dtype)


def moons(m=200, noise=0.1, seed=0, *, dtype="float32"):
    r"""Two interleaving half circles.

    Class 0 lies on the upper unit half circle :math:`(\cos s, \sin s)`, class 1 on
    the lower one shifted right and up, :math:`(1 - \cos s,\ 0.5 - \sin s)`, with
    :math:`s` evenly spaced in :math:`[0, \pi]`; Gaussian noise of standard
    deviation ``noise`` is added to both coordinates (the layout of
    scikit-learn's ``make_moons``).

    Parameters
    ----------
    m : int, default 200
        Number of examples, >= 2; class 0 gets ``ceil(m / 2)``.
    noise : float, default 0.1
        Standard deviation of the added noise, >= 0.
    seed : int, numpy.random.Generator or None, default 0
    dtype : {"float32", "float64"}, default "float32"

    Returns
    -------
    X : ndarray, shape (m, 2)
    y : ndarray of int64, shape (m,)
    """
    m = _check_int("m", m, 2)
    noise = _check_real("noise", noise, 0.0)
    dtype = _check_float_dtype("dtype", dtype)
    rng = as_generator(seed)
    n0, n1 = _class_sizes(m, 2)
    s0 = np.linspace(0.0, math.pi, n0)
    s1 = np.linspace(0.0, math.pi, n1)
    outer = np.column_stack([np.cos(s0), np.sin(s0)])
    inner = np.column_stack([1.0 - np.cos(s1), 0.5 - np.sin(s1)])
    outer += rng.standard_normal(outer.shape) * noise
    inner += rng.standard_normal(inner.shape) * noise
    return _finish([(outer, 0), (inner, 1)], dtype)


def circles(m=200, noise=0.05, factor=0.5, seed=0, *, dtype="float32"):
    r"""A small circle inside a large one.

    Class 0 lies on the unit circle, class 1 on the circle of radius ``factor``,
    at evenly spaced angles in :math:`[0, 2\pi)`; Gaussian noise of standard
    deviation ``noise`` is added to both coordinates.

    Parameters
    ----------
    m : int, default 200
        Number of examples, >= 2; class 0 (outer) gets ``ceil(m / 2)``.
    noise : float, default 0.05
        Standard deviation of the added noise, >= 0.
    factor : float, default 0.5
        Radius of the inner circle relative to the outer one, in ``[0, 1)``.
    seed : int, numpy.random.Generator or None, default 0
    dtype : {"float32", "float64"}, default "float32"

    Returns
    -------
    X : ndarray, shape (m, 2)
    y : ndarray of int64, shape (m,)
        0 for the outer circle, 1 for the inner one.
    """
    m = _check_int("m", m, 2)
    noise = _check_real("noise", noise, 0.0)
    factor = _check_real("factor", factor, 0.0, 1.0, high_open=True)
    dtype = _check_float_dtype("dtype", dtype)
    rng = as_generator(seed)
    parts = []
    for j, (n, radius) in enumerate(zip(_class_sizes(m, 2), (1.0, factor))):
        s = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
        points = radius * np.column_stack([np.cos(s), np.sin(s)])
        points += rng.standard_normal(points.shape) * noise
        parts.append((points, j))
    return _finish(parts, dtype)


def spirals(m=300, n_classes=3, noise=0.2, seed=0, *, dtype="float32"):
    r"""``n_classes`` interleaved spiral arms (the classic softmax-classifier toy set).

    Class :math:`j` of :math:`N_j` points has radii :math:`r` evenly spaced in
    :math:`[0, 1]` and angles

    .. math::

        t = \mathrm{linspace}(0, 4, N_j) + \frac{2 \pi j}{K} + \epsilon,
        \qquad \epsilon \sim \mathcal{N}(0, \mathrm{noise}^2),

    giving :math:`x = (r \sin t,\ r \cos t)`; the :math:`K` arms start at equally
    spaced angles.

    Parameters
    ----------
    m : int, default 300
        Number of examples, >= ``n_classes``; the classes differ in size by at most one.
    n_classes : int, default 3
        Number of arms ``K``, >= 2; labels are ``0..K-1``.
    noise : float, default 0.2
        Standard deviation of the angle noise, >= 0.
    seed : int, numpy.random.Generator or None, default 0
    dtype : {"float32", "float64"}, default "float32"

    Returns
    -------
    X : ndarray, shape (m, 2)
    y : ndarray of int64, shape (m,)
    """
    n_classes = _check_int("n_classes", n_classes, 2)
    m = _check_int("m", m, 1)
    if m < n_classes:
        raise ValueError(f"m must be >= n_classes={n_classes} (one example per class), got {m}")
    noise = _check_real("noise", noise, 0.0)
    dtype = _check_float_dtype("dtype", dtype)
    rng = as_generator(seed)
    parts = []
    for j, n in enumerate(_class_sizes(m, n_classes)):
        r = np.linspace(0.0, 1.0, n)
        t = np.linspace(0.0, 4.0, n) + 2.0 * math.pi * j / n_classes + rng.standard_normal(n) * noise
        parts.append((np.column_stack([r * np.sin(t), r * np.cos(t)]), j))
    return _finish(parts, dtype)
