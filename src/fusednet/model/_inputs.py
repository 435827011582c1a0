"""The model's input checks and label encoding.

Everything :class:`~fusednet.model.Sequential` checks before it changes any
state: its constructor arguments, ``X`` against the model (2-D, numeric,
finite in the model's dtype, the model's width, through its normaliser) and the
labels, which :func:`encode_targets` turns into the ``(m, k)`` targets of the
output's loss.  The generic checks (:func:`~fusednet._validation.as_2d`,
:func:`~fusednet._validation.check_finite`, ...) come from
:mod:`fusednet._validation`, shared with the rest of the package.
"""

import numbers

import numpy as np

from .._validation import as_2d, check_finite, check_float_dtype, check_real, describe
from ..kernels import _codes
from ..layers import Activation, Dense, Layer

__all__ = [
    "as_2d",
    "check_dtype",
    "check_finite",
    "check_input_dim",
    "check_l2",
    "check_layers",
    "check_n_features",
    "check_normalizer",
    "check_seed",
    "check_softmax_width",
    "encode_targets",
    "finite_and_normalized",
]

#: the loss each output activation implies
OUTPUT_LOSS = {
    _codes.LINEAR: _codes.MSE,
    _codes.SIGMOID: _codes.BCE,
    _codes.SOFTMAX: _codes.CCE,
}


# --------------------------------------------------------------------------
# constructor arguments
# --------------------------------------------------------------------------


def check_layers(layers):
    """Check the layer list; return the loss code its output activation implies."""
    if isinstance(layers, Layer) or not isinstance(layers, (list, tuple)):
        raise TypeError(f"layers must be a list of fusednet.layers objects, got {type(layers).__name__}")
    if len(layers) == 0:
        raise ValueError("layers must not be empty")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"layers[{i}] must be a fusednet.layers.Dense, Activation, Dropout or "
                f"BatchNorm, got {type(layer).__name__}"
            )
    last = layers[-1]
    if not isinstance(last, (Dense, Activation)):
        raise ValueError(
            f"the last layer must be a Dense or an Activation (its activation picks the "
            f"loss), got {type(last).__name__}"
        )
    if last.act not in OUTPUT_LOSS:
        raise ValueError(
            f"the output activation must be 'sigmoid' (binary cross-entropy), 'softmax' "
            f"(categorical cross-entropy) or 'linear'/None (mean squared error), got "
            f"{last.activation!r}"
        )
    return OUTPUT_LOSS[last.act]


def check_dtype(dtype):
    """The model's dtype: float32 or float64."""
    return check_float_dtype("dtype", dtype)


def check_l2(l2):
    """:math:`\\lambda` of L2 regularisation: a finite float >= 0."""
    return check_real("l2", l2, 0)


def check_seed(seed):
    """``(seed as an int, generator or None)``: the generator when ``seed`` is one, which draws the weights.

    None draws a fresh seed; a :class:`numpy.random.Generator` gives the seed
    (for dropout masks) and is kept for the initial weights.
    """
    if seed is None:
        seed = int(np.random.default_rng().integers(2**63))
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63)), seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed}")
        return int(seed), None
    raise TypeError(f"seed must be an int >= 0, a numpy.random.Generator or None, got {seed!r}")


def check_input_dim(input_dim):
    """``n_features`` given to the constructor: an int >= 1."""
    if isinstance(input_dim, bool) or not isinstance(input_dim, numbers.Integral) or input_dim < 1:
        raise ValueError(f"input_dim must be an int >= 1 or None, got {input_dim!r}")
    return int(input_dim)


def check_softmax_width(loss, width):
    """A softmax output needs two classes at least."""
    if loss == _codes.CCE and width < 2:
        raise ValueError(f"a softmax output needs at least 2 units, got {width}")


def check_normalizer(norm, input_dim):
    """A fitted normaliser of the model's width, or None."""
    if norm is not None:
        n = getattr(norm, "n_features_in_", None)
        if not callable(getattr(norm, "transform", None)) or n is None:
            raise TypeError(f"normalizer must be a fitted fusednet.data.Normalizer or None, got {norm!r}")
        if input_dim is not None and n != input_dim:
            raise ValueError(f"normalizer was fitted on {n} features but the model takes {input_dim}")
    return norm


# --------------------------------------------------------------------------
# X
# --------------------------------------------------------------------------


def check_n_features(X, name, input_dim):
    """``X`` (2-D) must have the model's number of columns."""
    if X.shape[1] != input_dim:
        raise ValueError(
            f"{name} has {X.shape[1]} features (columns) but the model expects {input_dim} (n_features)"
        )


def finite_and_normalized(X, name, dtype, normalizer):
    """``X`` finite in ``dtype``, then standardised by ``normalizer`` (when given) and checked again."""
    check_finite(X, name, dtype)
    if normalizer is not None:
        X = normalizer.transform(X)
        check_finite(X, f"{name} after the model's normalizer", dtype)
    return X


# --------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------


def _rows_ok(y, m, name):
    if y.ndim == 0 or y.shape[0] != m:
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} rows"
        raise ValueError(f"{name} must have one row per example of X ({m}), got {got} (shape {y.shape})")


def _is_binary(v):
    if v.dtype.kind == "b":
        return True
    return bool(np.all((v == 0) | (v == 1)))


def _class_ids(y, m, k, name):
    """Softmax labels -> int class ids ``(m,)`` in ``[0, k)``: ids ``(m,)`` / ``(m, 1)`` or one-hot ``(m, k)``."""
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        ids = y.reshape(m)
        if ids.dtype.kind == "f" and np.any(ids != np.floor(ids)):
            i = int(np.argmax(ids != np.floor(ids)))
            raise ValueError(f"{name} must hold integer class ids, got {ids[i]!r} at index {i}")
        ids = ids.astype(np.intp)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            i = int(np.argmax(ids == bad))
            raise ValueError(
                f"{name} holds the label {bad} at index {i}, out of range for "
                f"{k} classes (labels must be in [0, {k - 1}])"
            )
        return ids
    if y.ndim == 2 and y.shape[1] == k:
        if not (_is_binary(y) and np.all(y.sum(axis=1) == 1)):
            raise ValueError(
                f"{name} of shape {y.shape} must be one-hot (one 1 per row, 0 elsewhere) "
                f"or hold class ids of shape ({m},)"
            )
        return np.argmax(y, axis=1).astype(np.intp)
    raise ValueError(
        f"{name} must hold class ids of shape ({m},) or one-hot rows of shape "
        f"({m}, {k}) for a softmax output of {k} units, got shape {y.shape}"
    )


def _columns(y, m, k, name, output):
    """Labels of a sigmoid or linear output as ``(m, k)``: ``(m,)`` or ``(m, 1)`` when ``k == 1``."""
    if k == 1 and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        return y.reshape(m, 1)
    if y.ndim == 2 and y.shape[1] == k:
        return y
    want = f"({m},) or ({m}, 1)" if k == 1 else f"({m}, {k})"
    raise ValueError(f"{name} must have shape {want} for a {output} output of {k} unit(s), got shape {y.shape}")


def encode_targets(y, m, k, loss, dtype, name="y"):
    """Labels -> ``(Y, ids)``: targets ``(m, k)`` in ``dtype`` for the loss, class ids ``(m,)`` or None.

    Softmax (``loss`` CCE): int ids ``(m,)`` (or ``(m, 1)``) in ``[0, k)``, or
    one-hot ``(m, k)``; ``Y`` is one-hot.  Sigmoid (BCE): 0/1 of shape ``(m,)``
    or ``(m, 1)`` (k = 1; ids are the labels), or ``(m, k)`` (ids None).
    Linear (MSE): floats ``(m,)`` (k = 1) or ``(m, k)``; ids None.
    """
    if not isinstance(y, np.ndarray):
        try:
            y = np.asarray(y)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array: {exc}") from None
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a numeric dtype, got {describe(y)}")
    _rows_ok(y, m, name)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{name} must be finite, but it holds NaN or inf")
    if loss == _codes.CCE:
        ids = _class_ids(y, m, k, name)
        Y = np.zeros((m, k), dtype)
        Y[np.arange(m), ids] = 1.0
        return Y, ids
    if loss == _codes.BCE:
        Yv = _columns(y, m, k, name, "sigmoid")
        if not _is_binary(Yv):
            bad = Yv[(Yv != 0) & (Yv != 1)].ravel()[0]
            raise ValueError(f"{name} must hold 0/1 labels for a sigmoid output, got {bad!r}")
        Y = np.ascontiguousarray(Yv, dtype=dtype)
        ids = Y[:, 0].astype(np.intp) if k == 1 else None
        return Y, ids
    return np.ascontiguousarray(_columns(y, m, k, name, "linear"), dtype=dtype), None


def n_correct(loss, A, Y, ids):
    """Correct predictions in a batch of outputs ``A`` (allocates; used once per evaluate chunk)."""
    if loss == _codes.CCE:
        return int(np.count_nonzero(np.argmax(A, axis=1) == ids))
    return int(np.count_nonzero((A > 0.5) == (Y > 0.5)))
