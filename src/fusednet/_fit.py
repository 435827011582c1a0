"""``Sequential.fit``: the Keras-style shortcut over :class:`fusednet.Trainer`.

One call validates its own arguments (naming them as the caller wrote them),
cuts off the validation rows, picks the optimiser and hands everything to a
:class:`~fusednet.Trainer`.  The optimiser is kept on the model
(``model._fit_optimizer``), so a second ``fit`` continues where the first
stopped: Adam's moments and step count carry over.
"""

import math
import numbers

import numpy as np

from . import optim as _optim
from .model import Sequential, as_2d, check_finite
from .trainer import Trainer

__all__ = ["fit", "OPTIMIZERS"]

#: optimiser names accepted by ``fit(optimizer=...)``; each builds the class with its defaults
OPTIMIZERS = {
    "adam": _optim.Adam,
    "sgd": _optim.GD,  # Keras' "sgd": plain gradient descent (momentum 0)
    "gd": _optim.GD,
    "momentum": _optim.Momentum,
    "rmsprop": _optim.RMSProp,
}

#: Trainer arguments ``fit`` passes through
_TRAINER_KWARGS = ("schedule", "kernel_threads", "fused_step")


def _optimizer(model, optimizer):
    """The optimiser of this fit: the stored one, a fresh one by name, or the one given."""
    if optimizer is None:
        opt = getattr(model, "_fit_optimizer", None)
        return _optim.Adam() if opt is None else opt
    if isinstance(optimizer, str):
        cls = OPTIMIZERS.get(optimizer.lower())
        if cls is None:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)} or a fusednet.optim optimiser, "
                             f"got {optimizer!r}")
        return cls()
    if isinstance(optimizer, _optim.Optimizer):
        return optimizer
    raise TypeError(f"optimizer must be None, a name in {sorted(OPTIMIZERS)} or a fusednet.optim optimiser, "
                    f"got {type(optimizer).__name__}")


def _as_rows(a, name):
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like, got {type(a).__name__}: {exc}") from None


def fit(model, X, y, *, epochs=10, batch_size=64, validation_data=None, validation_split=0.0,
        callbacks=(), optimizer=None, shuffle=True, seed=0, progress=False, **trainer_kwargs):
    """Train ``model`` on ``(X, y)``; a thin shortcut over :class:`fusednet.Trainer`.

    Parameters
    ----------
    model : Sequential
    X : array_like or numpy.memmap, shape (m, n_features)
    y : array_like
        Labels as :class:`~fusednet.Sequential` takes them (class ids, 0/1, one-hot
        or values).
    epochs : int, default 10
        Epochs of this call (>= 0).  Every call counts its epochs from 0, so the
        shuffling order, dropout masks and a schedule start over.
    batch_size : int or None, default 64
        None: batch gradient descent.
    validation_data : (X_val, y_val), optional
        Evaluated after every epoch (``history["dev_loss"]``, ``"dev_accuracy"``).
        As in Keras it overrides ``validation_split``.
    validation_split : float in [0, 1), default 0.0
        As Keras: the *last* ``validation_split`` fraction of the rows (before any
        shuffling), ``X[floor(m * (1 - validation_split)):]``, is held out and used
        as ``validation_data``.
    callbacks : sequence of fusednet.callbacks.Callback
    optimizer : None, str or fusednet.optim.Optimizer
        None: the optimiser of the previous ``fit`` of this model (its state
        carries over), or :class:`~fusednet.optim.Adam` ``()`` on the first call.
        A name (``"adam"``, ``"sgd"`` (= ``"gd"``, plain gradient descent, as
        Keras), ``"momentum"``, ``"rmsprop"``) builds a fresh optimiser with
        fusednet's defaults; an instance is used as it is.  Either is kept for
        the next ``fit`` (not when the data or an argument is refused).
    shuffle : bool, default True
    seed : int, numpy.random.Generator or None, default 0
        Seeds the shuffling.
    progress : bool, default False
        A progress bar over the epochs.
    **trainer_kwargs
        ``schedule``, ``kernel_threads``, ``fused_step`` of :class:`~fusednet.Trainer`.

    Returns
    -------
    History

    Raises
    ------
    ValueError, TypeError
        On a bad argument or bad data, naming it, before anything changes.
    fusednet.TrainingDiverged
        As :meth:`fusednet.Trainer.fit`.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fusednet.Sequential, got {type(model).__name__}")
    unknown = sorted(set(trainer_kwargs) - set(_TRAINER_KWARGS))
    if unknown:
        hint = "; for a progress bar use progress=True" if "verbose" in unknown else ""
        raise TypeError(f"fit() got unexpected keyword argument(s) {unknown}; it takes epochs, batch_size, "
                        f"validation_data, validation_split, callbacks, optimizer, shuffle, seed, progress "
                        f"and the Trainer's {list(_TRAINER_KWARGS)}{hint}")
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real):
        raise TypeError(f"validation_split must be a real number in [0, 1), got {validation_split!r}")
    if not (math.isfinite(validation_split) and 0.0 <= validation_split < 1.0):
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    opt = _optimizer(model, optimizer)
    X = as_2d(X, "X")
    y = _as_rows(y, "y")
    m = X.shape[0]
    if y.ndim == 0 or y.shape[0] != m:
        raise ValueError(f"y must have one row per example of X ({m}), got shape {y.shape}")
    dev = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise TypeError("validation_data must be a pair (X_val, y_val)"
                            + (" (sample weights are not supported)" if isinstance(validation_data, (tuple, list))
                               and len(validation_data) == 3 else ""))
        Xv = as_2d(validation_data[0], "validation_data[0] (X_val)")
        if Xv.shape[1] != X.shape[1]:
            raise ValueError(f"validation_data[0] (X_val) has {Xv.shape[1]} features but X has {X.shape[1]}")
        check_finite(Xv, "validation_data[0] (X_val)")
        yv = _as_rows(validation_data[1], "validation_data[1] (y_val)")
        model._targets(yv, Xv.shape[0], "validation_data[1] (y_val)", n_in=X.shape[1])
        dev = (Xv, yv)
    elif validation_split > 0.0:
        split = int(math.floor(m * (1.0 - validation_split)))
        if split < 1 or split >= m:
            raise ValueError(f"validation_split={validation_split!r} of {m} examples leaves "
                             f"{split} for training and {m - split} for validation; both must be >= 1")
        X, dev = X[:split], (X[split:], y[split:])
        y = y[:split]
    # checks every argument and the data before the first step
    trainer = Trainer(model, optimizer=opt, batch_size=batch_size, epochs=epochs, shuffle=shuffle, seed=seed,
                      callbacks=callbacks, progress=progress, **trainer_kwargs)
    t0 = opt.t
    try:
        history = trainer.fit(X, y, dev=dev)
    except BaseException:
        if opt.t != t0:  # it took steps before training diverged or was interrupted: keep it
            model._fit_optimizer = opt
        raise
    model._fit_optimizer = opt
    return history
