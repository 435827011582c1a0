"""Callbacks: hooks the trainer calls between epochs (never between batches).

A callback subclasses :class:`Callback` and overrides any of

* ``on_train_begin(trainer)``
* ``on_epoch_begin(trainer, epoch)``
* ``on_epoch_end(trainer, epoch, logs)`` -- ``logs`` holds the epoch's values
  (the keys of :class:`fusednet.History`); set ``trainer.stop_training = True``
  to stop after this epoch
* ``on_train_end(trainer)`` -- after the last epoch (not when training diverged)

``trainer.model`` is the model, ``trainer.history`` the history so far and
``trainer.metric_names`` the keys this fit records.  ``check_metrics(names)``
runs during the fit's validation, before anything changes, so a callback can
refuse a fit (EarlyStopping monitoring ``"dev_loss"`` without a dev set).
"""

import math
import numbers
import os

import numpy as np

from ._validation import check_real

__all__ = ["Callback", "EarlyStopping", "Checkpoint"]


class Callback:
    """Base class: every hook does nothing."""

    def check_metrics(self, names):
        """Called before training changes anything; raise ValueError to refuse the fit."""

    def on_train_begin(self, trainer):
        pass

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer):
        pass


class EarlyStopping(Callback):
    """Stop when a monitored value stops improving; restore the best weights (C2W1).

    Parameters
    ----------
    monitor : str
        A key of the history, e.g. ``"dev_loss"`` (default) or ``"dev_accuracy"``.
    patience : int
        Training stops after this many epochs in a row without improvement
        (>= 0; 0 and 1 both stop at the first epoch that does not improve).
    min_delta : float
        The smallest change that counts as an improvement (>= 0).
    restore_best : bool
        At the end of training, put back the parameters (and BatchNorm running
        statistics) of the best epoch.
    mode : {"auto", "min", "max"}
        Whether lower or higher is better; "auto": higher for names containing
        "acc", lower otherwise.

    Attributes
    ----------
    curve : list of float
        The monitored value of every epoch (the dev curve).
    best : float
        The best value seen.
    best_epoch : int or None
        The epoch it was seen in.
    stopped_epoch : int or None
        The epoch after which training stopped (None: it ran to the end).
    """

    def __init__(self, monitor="dev_loss", patience=5, min_delta=0.0, restore_best=True, mode="auto"):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a history key (str), got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        min_delta = check_real("min_delta", min_delta, 0)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.restore_best = bool(restore_best)
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.mode = mode
        self._reset()

    def _reset(self):
        self.curve = []
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self.wait = 0
        self._snapshot = None

    def check_metrics(self, names):
        """Called by the trainer before training: the monitored key must be recorded."""
        if self.monitor not in names:
            hint = " (pass dev=(X_dev, y_dev) to fit)" if self.monitor.startswith("dev_") else ""
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, which this fit does not record{hint}; "
                f"recorded: {sorted(names)}"
            )

    def on_train_begin(self, trainer):
        names = getattr(trainer, "metric_names", None)
        if names:
            self.check_metrics(names)
        self._reset()

    def _improved(self, value):
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def observe(self, epoch, value):
        """Record epoch ``epoch``'s monitored value; return whether it improved on the best.

        The whole decision of :meth:`on_epoch_end` but the snapshot and the trainer's flag
        (``stopped_epoch`` is set when patience runs out).  The trainer's whole-fit call makes
        the same decision in compiled code (``dense_fit``) and replays it here afterwards.
        """
        self.curve.append(value)
        if self._improved(value):
            self.best = value
            self.best_epoch = epoch
            self.wait = 0
            return True
        self.wait += 1
        if self.wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
        return False

    def on_epoch_end(self, trainer, epoch, logs):
        if self.observe(epoch, float(logs[self.monitor])):
            if self.restore_best:
                self._save(trainer.model)
        elif self.stopped_epoch == epoch:
            trainer.stop_training = True

    def _save(self, model):
        params, stats = model._params, model._stats
        if self._snapshot is None or self._snapshot[0].shape != params.shape:
            self._snapshot = (params.copy(), stats.copy())
        else:
            np.copyto(self._snapshot[0], params)
            np.copyto(self._snapshot[1], stats)

    def on_train_end(self, trainer):
        if self.restore_best and self._snapshot is not None:
            np.copyto(trainer.model._params, self._snapshot[0])
            np.copyto(trainer.model._stats, self._snapshot[1])

    def __repr__(self):
        return (
            f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
            f"min_delta={self.min_delta}, restore_best={self.restore_best})"
        )


class Checkpoint(Callback):
    """Save the model and the optimiser's state every ``every`` epochs (after epochs ``every-1``, ``2*every-1``, ...).

    Each file is a model file (``fusednet.load`` reads it) that also holds the
    optimiser's state and the number of epochs done, so a run continues
    exactly where it stopped::

        model, opt, epoch = fusednet.io.load_checkpoint(path)
        Trainer(model, opt, epochs=E, seed=...).fit(X, y, initial_epoch=epoch)

    Parameters
    ----------
    path : str or path-like
        Where to save; ``"{epoch}"`` in it is replaced by the epoch number
        (otherwise each save replaces the previous file, atomically).
    every : int
        >= 1.

    Attributes
    ----------
    saved : list of str
        The paths written, in order.
    """

    def __init__(self, path, every=1):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or path-like, got {type(path).__name__}")
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.path = os.fspath(path)
        self.every = int(every)
        self.saved = []

    def on_epoch_end(self, trainer, epoch, logs):
        if (epoch + 1) % self.every == 0:
            from .io import save_checkpoint

            path = self.path.format(epoch=epoch) if "{epoch" in self.path else self.path
            save_checkpoint(trainer.model, trainer.optimizer, epoch + 1, path)
            self.saved.append(path)

    def __repr__(self):
        return f"Checkpoint({self.path!r}, every={self.every})"
