r"""Data preparation: train/dev/test splits, input normalisation, label encoding.

The course's first practical advice (C2W1) is to hold out dev and test sets and
to normalise the inputs with statistics computed on the training set only.  This
module does both, with the conventions of the rest of fusednet: rows are
examples (``X`` has shape ``(m, n_features)``), every random operation takes
``seed=`` (an int or a :class:`numpy.random.Generator`), and bad input raises a
``ValueError`` or ``TypeError`` naming the argument, what was expected and what
was given.

Functions
---------
split
    Shuffled train/dev/test split, optionally stratified by class.
Normalizer
    Per-feature standardisation with the training mean and standard deviation.
one_hot, from_one_hot
    Class ids to one-hot rows and back.
as_generator
    ``seed=`` argument to a :class:`numpy.random.Generator`.
"""

import numbers

import numpy as np

# the argument checks shared by the data-facing modules (datasets too), under their names here
from ._validation import as_array as _as_array
from ._validation import check_finite
from ._validation import check_float_dtype as _check_float_dtype
from ._validation import check_int as _check_int
from ._validation import check_numeric as _check_numeric
from ._validation import check_real as _check_real
from ._validation import describe as _describe

__all__ = ["Normalizer", "as_generator", "from_one_hot", "one_hot", "split"]

#: rows read per chunk when streaming over a large (e.g. memory-mapped) array
_CHUNK_BYTES = 1 << 24


# --------------------------------------------------------------------------
# streaming and label checks
# --------------------------------------------------------------------------


def _row_chunks(array):
    """Yield ``slice`` objects covering the rows of ``array`` a few MiB at a time."""
    m = array.shape[0]
    row_bytes = max(1, array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, m, step):
        yield slice(start, min(start + step, m))


def _as_class_ids(name, y):
    """Return 1-D int64 class ids from ``y`` of shape ``(m,)`` or ``(m, 1)``.

    Integer-valued floats are accepted; negative, fractional or non-finite labels
    raise ValueError.
    """
    y = _as_array(name, y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must hold class ids of shape (m,) or (m, 1), got shape {y.shape}")
    _check_numeric(name, y)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{name} must hold finite class ids, but it contains NaN or inf")
        fractional = y != np.floor(y)
        if fractional.any():
            i = int(np.argmax(fractional))
            raise ValueError(
                f"{name} must hold integer class ids, got the non-integer {float(y[i])!r} at index {i}"
            )
    ids = y.astype(np.int64)
    if ids.size and ids.min() < 0:
        i = int(np.argmin(ids))
        raise ValueError(f"{name} must hold class ids >= 0, got {ids[i]} at index {i}")
    return ids


# --------------------------------------------------------------------------
# random generators
# --------------------------------------------------------------------------


def as_generator(seed):
    """Turn a ``seed=`` argument into a :class:`numpy.random.Generator`.

    Parameters
    ----------
    seed : int, numpy.random.Generator or None
        An integer >= 0 seeds a new PCG64 generator, so the same integer always
        gives the same stream.  A ``Generator`` is returned unchanged (the caller
        shares its state).  ``None`` gives a generator seeded from the operating
        system (not reproducible).

    Returns
    -------
    numpy.random.Generator

    Raises
    ------
    TypeError
        ``seed`` is of any other type (a legacy ``RandomState``, a float, a bool...).
    ValueError
        ``seed`` is a negative integer.

    Examples
    --------
    >>> rng = as_generator(0)
    >>> as_generator(rng) is rng
    True
    """
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, (bool, np.bool_)):
        if seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {int(seed)}")
        return np.random.default_rng(int(seed))
    raise TypeError(
        f"seed must be an int >= 0, a numpy.random.Generator or None, got {_describe(seed)}"
    )


# --------------------------------------------------------------------------
# train / dev / test split
# --------------------------------------------------------------------------


def _take_rows(array, index):
    """``array[index]`` for an int index; reads a memmap in ascending row order.

    For an ``np.memmap`` the rows are gathered chunk by chunk in sorted order
    (sequential reads, bounded scratch memory) and placed where ``index`` puts
    them, so the result equals ``array[index]`` without touching the other rows.
    """
    if not isinstance(array, np.memmap):
        return np.asarray(array)[index]
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    out = np.empty((len(index),) + array.shape[1:], dtype=array.dtype)
    for rows in _row_chunks(out):
        out[order[rows]] = array[sorted_index[rows]]
    return out


def _apportion(total, sizes, caps, rng):
    """Split ``total`` items between groups proportionally to ``sizes``, capped by ``caps``.

    Largest-remainder apportionment: each group gets ``floor(total * size / sum)``
    (at most its cap), then the items left go one by one to the groups with the
    largest fractional parts (ties broken at random) that are still below cap.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    exact = total * sizes / sizes.sum() if sizes.sum() else np.zeros_like(sizes)
    counts = np.minimum(np.floor(exact).astype(np.int64), caps)
    remainder = exact - counts
    tie_break = rng.random(len(sizes))
    order = np.lexsort((tie_break, -remainder))
    left = total - int(counts.sum())
    while left > 0:
        for g in order:
            if left == 0:
                break
            if counts[g] < caps[g]:
                counts[g] += 1
                left -= 1
    return counts


def split(X, y, dev=0.1, test=0.1, seed=0, stratify=False):
    """Shuffle the examples and split them into train, dev and test sets.

    Parameters
    ----------
    X : array_like, shape (m, ...)
        Examples in rows.  An ``np.memmap`` is read row by row in ascending
        order, split by split, so only the selected rows are loaded.
    y : array_like, shape (m,) or (m, k)
        Labels or targets, one row per example.
    dev, test : float, default 0.1
        Fractions of the examples for the dev and test sets, each in ``[0, 1)``
        with ``dev + test < 1``.  The set sizes are ``round(dev * m)`` and
        ``round(test * m)``; the training set gets the rest and must not be empty.
    seed : int, numpy.random.Generator or None, default 0
        Seed of the shuffle (see :func:`as_generator`).
    stratify : bool, default False
        Keep the class proportions of ``y`` (class ids ``(m,)``/``(m, 1)`` or
        one-hot ``(m, k)``) in every set: each class is split with the same
        fractions, the per-class counts rounded so the set sizes stay exactly
        those above.

    Returns
    -------
    (X_train, y_train), (X_dev, y_dev), (X_test, y_test) : tuple of tuples
        New in-memory arrays of the input dtypes, rows shuffled.  An empty set
        has zero rows.

    Raises
    ------
    ValueError
        ``X`` and ``y`` differ in length, a fraction is outside ``[0, 1)``, the
        fractions leave no training example, or ``stratify`` is set with labels
        that are not class ids.
    TypeError
        A fraction is not a number, ``seed`` is not a valid seed, ``stratify``
        is not a bool.

    Examples
    --------
    >>> X = np.arange(20.0).reshape(10, 2); y = np.arange(10) % 2
    >>> (Xtr, ytr), (Xdv, ydv), (Xte, yte) = split(X, y, dev=0.2, test=0.2)
    >>> len(Xtr), len(Xdv), len(Xte)
    (6, 2, 2)
    """
    X = _as_array("X", X)
    y = _as_array("y", y)
    if X.ndim < 1 or y.ndim < 1:
        raise ValueError(
            f"X and y must have one row per example, got shapes X {X.shape} and y {y.shape}"
        )
    m = X.shape[0]
    if y.shape[0] != m:
        raise ValueError(
            f"X and y must have the same number of rows, got X {X.shape} and y {y.shape}"
        )
    dev = _check_real("dev", dev, 0.0, 1.0, high_open=True)
    test = _check_real("test", test, 0.0, 1.0, high_open=True)
    if dev + test >= 1.0:
        raise ValueError(f"dev + test must be < 1, got dev={dev} and test={test} (sum {dev + test})")
    if not isinstance(stratify, (bool, np.bool_)):
        raise TypeError(f"stratify must be a bool, got {_describe(stratify)}")
    rng = as_generator(seed)
    n_dev = int(round(dev * m))
    n_test = int(round(test * m))
    n_train = m - n_dev - n_test
    if n_train < 1:
        raise ValueError(
            f"dev={dev} and test={test} of m={m} examples leave no training example "
            f"(dev {n_dev}, test {n_test})"
        )

    if stratify:
        if y.ndim == 2 and y.shape[1] > 1:
            classes = from_one_hot(y)
        else:
            classes = _as_class_ids("y", y)
        _, classes = np.unique(classes, return_inverse=True)
        members = [rng.permutation(np.flatnonzero(classes == c)) for c in range(classes.max() + 1)]
        sizes = np.array([len(g) for g in members], dtype=np.int64)
        dev_counts = _apportion(n_dev, sizes, sizes, rng)
        test_counts = _apportion(n_test, sizes, sizes - dev_counts, rng)
        parts = ([], [], [])
        for group, nd, nt in zip(members, dev_counts, test_counts):
            parts[1].append(group[:nd])
            parts[2].append(group[nd : nd + nt])
            parts[0].append(group[nd + nt :])
        index = [rng.permutation(np.concatenate(p).astype(np.int64)) for p in parts]
    else:
        perm = rng.permutation(m)
        index = [perm[:n_train], perm[n_train : n_train + n_dev], perm[n_train + n_dev :]]

    return tuple((_take_rows(X, idx), _take_rows(y, idx)) for idx in index)


# --------------------------------------------------------------------------
# input normalisation
# --------------------------------------------------------------------------


def _output_dtype(X):
    """float32/float64 inputs keep their dtype; anything else becomes float64."""
    if X.dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        return X.dtype
    return np.dtype(np.float64)


class Normalizer:
    r"""Standardise each feature with the mean and standard deviation of the training set.

    The course's input normalisation (C2W1): with the training examples
    :math:`x^{(i)}`, :math:`i = 1..m`,

    .. math::

        \mu = \frac{1}{m} \sum_i x^{(i)}, \qquad
        \sigma^2 = \frac{1}{m} \sum_i (x^{(i)} - \mu)^2, \qquad
        x \mapsto \frac{x - \mu}{\sigma},

    per feature, the statistics computed once on the training set and reused,
    unchanged, on the dev and test sets (and at prediction time).  A feature
    that is constant on the training set (zero variance) is only centred: its
    divisor is 1, never 0.

    Attributes
    ----------
    mean_ : ndarray of float64, shape (n_features,)
        Training mean :math:`\mu`.
    std_ : ndarray of float64, shape (n_features,)
        The divisor of each feature: the training standard deviation
        :math:`\sigma` (``ddof=0``), or 1 where the feature is constant.
    zero_variance_ : ndarray of bool, shape (n_features,)
        True where the feature was constant on the training set.
    n_features_in_ : int
        Number of features seen by :meth:`fit`.

    Examples
    --------
    >>> Xtr = np.array([[0.0, 5.0], [2.0, 5.0]])
    >>> norm = Normalizer().fit(Xtr)
    >>> norm.transform(Xtr)
    array([[-1.,  0.],
           [ 1.,  0.]])
    """

    def __init__(self):
        self.mean_ = None
        self.std_ = None
        self.zero_variance_ = None
        self.n_features_in_ = None

    def __repr__(self):
        if self.n_features_in_ is None:
            return "Normalizer()"
        return f"Normalizer(n_features_in_={self.n_features_in_})"

    # -- checks -------------------------------------------------------------

    @staticmethod
    def _check_X(X, name="X"):
        X = _as_array(name, X)
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D of shape (m, n_features), got shape {X.shape}")
        _check_numeric(name, X)
        return X

    def _check_fitted(self):
        if self.mean_ is None:
            raise RuntimeError("this Normalizer is not fitted yet: call fit(X_train) first")

    def _check_features(self, X, name="X"):
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{name} has {X.shape[1]} features, but the Normalizer was fitted with "
                f"n_features={self.n_features_in_}"
            )

    # -- API ------------------------------------------------------------------

    def fit(self, X):
        """Compute the per-feature mean and standard deviation of ``X``.

        The statistics are accumulated in float64 over row chunks (two passes),
        so a large ``np.memmap`` is streamed rather than copied.

        Parameters
        ----------
        X : array_like, shape (m, n_features)
            Training examples, numeric and finite, ``m >= 1``.

        Returns
        -------
        self : Normalizer

        Raises
        ------
        ValueError
            ``X`` is not 2-D, has no rows, or contains NaN or inf.
        TypeError
            ``X`` is not numeric.
        """
        X = self._check_X(X)
        m, n = X.shape
        if m < 1:
            raise ValueError(f"X must have at least one row to fit a Normalizer, got shape {X.shape}")
        total = np.zeros(n, dtype=np.float64)
        low = np.full(n, np.inf)
        high = np.full(n, -np.inf)
        for rows in _row_chunks(X):
            block = np.asarray(X[rows], dtype=np.float64)
            if not np.isfinite(block).all():
                check_finite(X, "X")
            total += block.sum(axis=0)
            np.minimum(low, block.min(axis=0, initial=np.inf), out=low)
            np.maximum(high, block.max(axis=0, initial=-np.inf), out=high)
        mean = total / m
        constant = low == high
        # a constant feature is centred exactly onto zero
        mean[constant] = low[constant]
        squares = np.zeros(n, dtype=np.float64)
        for rows in _row_chunks(X):
            block = np.asarray(X[rows], dtype=np.float64) - mean
            squares += np.einsum("ij,ij->j", block, block)
        std = np.sqrt(squares / m)
        constant |= std == 0.0
        std[constant] = 1.0
        self.mean_ = mean
        self.std_ = std
        self.zero_variance_ = constant
        self.n_features_in_ = n
        return self

    def transform(self, X, *, copy=True):
        """Standardise ``X`` with the fitted statistics: ``(X - mean_) / std_``.

        Computed in float64, a chunk of rows at a time, then stored in the
        output dtype, so float32 data far from zero keep their precision.

        Parameters
        ----------
        X : array_like, shape (m, n_features)
            Finite numeric examples with the fitted number of features.
        copy : bool, default True
            If False and ``X`` is a writable float32/float64 ndarray, normalise
            it in place and return it.

        Returns
        -------
        ndarray, shape (m, n_features)
            Of the input's dtype for float32/float64 input, float64 otherwise.

        Raises
        ------
        RuntimeError
            The Normalizer is not fitted.
        ValueError
            Wrong number of features, or NaN/inf in ``X``.
        """
        self._check_fitted()
        X = self._check_X(X)
        self._check_features(X)
        check_finite(X, "X")
        dtype = _output_dtype(X)
        if not copy and X.dtype == dtype and X.flags.writeable and type(X) is np.ndarray:
            out = X
        else:
            out = np.empty(X.shape, dtype=dtype)
        for rows in _row_chunks(X):
            out[rows] = (np.asarray(X[rows], dtype=np.float64) - self.mean_) / self.std_
        return out

    def fit_transform(self, X):
        """``fit(X)`` then ``transform(X)``.

        Parameters
        ----------
        X : array_like, shape (m, n_features)

        Returns
        -------
        ndarray, shape (m, n_features)
        """
        return self.fit(X).transform(X)

    def inverse_transform(self, X):
        """Undo :meth:`transform`: ``X * std_ + mean_``.

        Parameters
        ----------
        X : array_like, shape (m, n_features)
            Normalised examples.

        Returns
        -------
        ndarray, shape (m, n_features)
            Of the input's dtype for float32/float64 input, float64 otherwise.
        """
        self._check_fitted()
        X = self._check_X(X)
        self._check_features(X)
        check_finite(X, "X")
        out = np.empty(X.shape, dtype=_output_dtype(X))
        for rows in _row_chunks(X):
            out[rows] = np.asarray(X[rows], dtype=np.float64) * self.std_ + self.mean_
        return out

    def to_dict(self):
        """The fitted state as plain Python data (JSON-serialisable).

        Returns
        -------
        dict
            ``{"mean": [float, ...], "std": [float, ...],
            "zero_variance": [bool, ...], "n_features_in": int}``.
            Floats round-trip exactly through JSON.

        Raises
        ------
        RuntimeError
            The Normalizer is not fitted.
        """
        self._check_fitted()
        return {
            "mean": [float(v) for v in self.mean_],
            "std": [float(v) for v in self.std_],
            "zero_variance": [bool(v) for v in self.zero_variance_],
            "n_features_in": int(self.n_features_in_),
        }

    @classmethod
    def from_dict(cls, d):
        """Rebuild a fitted Normalizer from :meth:`to_dict` output.

        Parameters
        ----------
        d : mapping
            With ``"mean"`` and ``"std"`` (lists or 1-D arrays of equal length,
            finite, std > 0); ``"zero_variance"`` and ``"n_features_in"`` are
            optional and checked when present.

        Returns
        -------
        Normalizer

        Raises
        ------
        ValueError
            Missing keys, lengths that disagree, non-finite values or std <= 0.
        TypeError
            ``d`` is not a mapping or holds non-numeric values.
        """
        if not hasattr(d, "keys"):
            raise TypeError(f"d must be a dict from Normalizer.to_dict(), got {_describe(d)}")
        missing = [k for k in ("mean", "std") if k not in d]
        if missing:
            raise ValueError(f"Normalizer state is missing {missing}; found keys {sorted(d.keys())}")
        arrays = {}
        for key in ("mean", "std"):
            try:
                value = np.array(d[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise TypeError(
                    f"Normalizer state {key!r} must be a list of numbers, got {_describe(d[key])}"
                ) from None
            if value.ndim != 1:
                raise ValueError(f"Normalizer state {key!r} must be 1-D, got shape {value.shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"Normalizer state {key!r} must be finite")
            arrays[key] = value
        mean, std = arrays["mean"], arrays["std"]
        if mean.shape != std.shape:
            raise ValueError(
                f"Normalizer state 'mean' and 'std' differ in length: {mean.size} and {std.size}"
            )
        if (std <= 0).any():
            raise ValueError("Normalizer state 'std' must be > 0 (zero-variance features store 1)")
        zero_variance = np.array(d.get("zero_variance", np.zeros(mean.size, bool)))
        if zero_variance.shape != mean.shape or zero_variance.dtype != np.bool_:
            raise ValueError(
                f"Normalizer state 'zero_variance' must be {mean.size} booleans, "
                f"got {_describe(zero_variance)}"
            )
        n = d.get("n_features_in", mean.size)
        if isinstance(n, np.ndarray) and n.ndim == 0:
            n = n.item()
        if _check_int("n_features_in", n, 0) != mean.size:
            raise ValueError(
                f"Normalizer state 'n_features_in' is {n} but 'mean' has {mean.size} values"
            )
        norm = cls()
        norm.mean_ = mean
        norm.std_ = std
        norm.zero_variance_ = zero_variance
        norm.n_features_in_ = int(mean.size)
        return norm


# --------------------------------------------------------------------------
# label encoding
# --------------------------------------------------------------------------


def one_hot(y, n_classes=None, dtype="float32"):
    """Encode class ids as one-hot rows.

    Parameters
    ----------
    y : array_like, shape (m,) or (m, 1)
        Class ids: integers >= 0 (integer-valued floats are accepted).
    n_classes : int or None, default None
        Number of classes ``k``; must exceed every label.  None: ``max(y) + 1``
        (0 for an empty ``y``).
    dtype : {"float32", "float64"}, default "float32"

    Returns
    -------
    ndarray, shape (m, k)
        ``Y[i, y[i]] = 1``, zeros elsewhere.

    Raises
    ------
    ValueError
        Negative, fractional or non-finite labels; a label >= ``n_classes``.
    TypeError
        ``y`` is not numeric, ``n_classes`` is not an integer.

    Examples
    --------
    >>> one_hot([0, 2, 1])
    array([[1., 0., 0.],
           [0., 0., 1.],
           [0., 1., 0.]], dtype=float32)
    """
    ids = _as_class_ids("y", y)
    dtype = _check_float_dtype("dtype", dtype)
    largest = int(ids.max()) if ids.size else -1
    if n_classes is None:
        n_classes = largest + 1
    else:
        n_classes = _check_int("n_classes", n_classes, 1)
        if largest >= n_classes:
            raise ValueError(
                f"y holds the label {largest}, out of range for n_classes={n_classes} "
                f"(labels must be in 0..{n_classes - 1})"
            )
    out = np.zeros((ids.size, n_classes), dtype=dtype)
    out[np.arange(ids.size), ids] = 1
    return out


def from_one_hot(Y):
    """Decode one-hot rows (or class probabilities) into class ids.

    Parameters
    ----------
    Y : array_like, shape (m, k), k >= 2
        One-hot rows, or rows of scores/probabilities: each row gives the index
        of its largest entry (the first one on ties).

    Returns
    -------
    ndarray of int64, shape (m,)

    Raises
    ------
    ValueError
        ``Y`` is not 2-D with at least two columns, or contains NaN/inf.
    TypeError
        ``Y`` is not numeric.

    Examples
    --------
    >>> from_one_hot([[0, 1], [1, 0]])
    array([1, 0])
    """
    Y = _as_array("Y", Y)
    if Y.ndim != 2 or Y.shape[1] < 2:
        hint = ""
        if Y.ndim == 2 and Y.shape[1] == 1:
            hint = " (a single column holds binary labels, not one-hot rows)"
        raise ValueError(f"Y must be one-hot rows of shape (m, k) with k >= 2, got shape {Y.shape}{hint}")
    _check_numeric("Y", Y)
    check_finite(Y, "Y")
    return np.argmax(Y, axis=1).astype(np.int64)
