"""The record of a training run: per-epoch curves that behave like a dict."""

import json
import math
import numbers
from collections.abc import Mapping

__all__ = ["History"]


class EpochCount(int):
    """The number of epochs run; iterating over it gives the epoch indices.

    ``history.epochs == 3``, ``len(history.epochs) == 3`` and
    ``list(history.epochs) == [0, 1, 2]`` all hold.
    """

    def __iter__(self):
        return iter(range(int(self)))

    def __len__(self):
        return int(self)

    def __eq__(self, other):
        if isinstance(other, (list, tuple, range)):
            return list(self) == list(other)
        return int(self) == other

    def __ne__(self, other):
        return not self == other

    __hash__ = int.__hash__

    def __repr__(self):
        return str(int(self))


class History(Mapping):
    """Per-epoch values recorded by :meth:`fusednet.Trainer.fit`.

    A read-only mapping ``name -> list of floats`` (one per epoch):

    ``"train_loss"``
        The cost of epoch ``e``: the sum over its mini-batches of (batch cost x
        batch size) / m, each batch cost computed in the forward pass before
        that batch's update, L2 term included.  With batch gradient descent it
        is the course's "cost after iteration e".
    ``"lr"``
        The learning rate of the epoch's first step.
    ``"time"``
        Wall-clock seconds of the epoch (its steps and the dev evaluation).
    ``"train_accuracy"`` (classifiers)
        The mean accuracy over the epoch's mini-batches, read from the
        training forward passes (before each update, dropout active): free to
        compute, and close to but not the same as an inference pass after the
        epoch.
    ``"dev_loss"``, ``"dev_accuracy"`` (with ``dev=``)
        Inference-mode cost (L2 term included) and accuracy on the dev set after
        the epoch.

    ``history.epochs`` is the number of epochs run.  ``to_dict()`` gives plain
    JSON-able data; ``plot(path)`` draws the curves (needs matplotlib).
    """

    def __init__(self, data=None):
        self._cols = {}
        self._pending = []
        if data is not None:
            if not isinstance(data, Mapping):
                raise TypeError(f"History data must be a mapping, got {type(data).__name__}")
            for k, v in data.items():
                if k == "epochs":
                    continue
                self._cols[str(k)] = [float(x) for x in v]

    @classmethod
    def _of_floats(cls, data):
        """A History holding ``data`` ({name: list of Python floats}) as it is: no copy, no conversion."""
        history = cls()
        history._cols = data
        return history

    @property
    def _data(self):
        """``{name: list of Python floats}``, after converting what :meth:`_extend` left as arrays."""
        pending = self._pending
        while pending:
            for k, v in pending.pop(0).items():
                self._cols.setdefault(k, []).extend(v.tolist())
        return self._cols

    # ---- mapping -------------------------------------------------------------

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        last = {k: (round(v[-1], 6) if v else None) for k, v in self._data.items()}
        return f"History(epochs={int(self.epochs)}, last={last})"

    # ---- recording -----------------------------------------------------------

    @property
    def epochs(self):
        """The number of epochs recorded (iterable as ``range(epochs)``)."""
        return EpochCount(len(self._data.get("train_loss", ())))

    def append(self, logs):
        """Record one epoch: ``{name: number}``."""
        for k, v in logs.items():
            self._data.setdefault(k, []).append(float(v))

    def _extend(self, columns):
        """Record several epochs at once: ``{name: 1-D float64 array}``, every array one epoch per
        element, not written to afterwards; the same record as :meth:`append` called row by row.

        The arrays become lists of Python floats when the history is first read, so a fit whose
        history is not read does not convert them.
        """
        self._pending.append(columns)

    def to_dict(self):
        """``{name: [float, ...]}``, plain data for :func:`json.dump`."""
        return {k: list(v) for k, v in self._data.items()}

    def to_json(self):
        """:meth:`to_dict` as a JSON string (NaN/inf written as null)."""
        clean = {
            k: [x if isinstance(x, numbers.Real) and math.isfinite(x) else None for x in v]
            for k, v in self._data.items()
        }
        return json.dumps(clean)

    @classmethod
    def from_dict(cls, data):
        """The inverse of :meth:`to_dict`."""
        return cls(data)

    # ---- plotting ------------------------------------------------------------

    def plot(self, path=None, *, title=None):
        """Draw the cost curves (and accuracies, when recorded).

        Parameters
        ----------
        path : str or path-like, optional
            Where to save the figure (the format follows the suffix, e.g. ``.png``).
        title : str, optional

        Returns
        -------
        matplotlib.figure.Figure

        Raises
        ------
        ImportError
            When matplotlib is not installed (``pip install 'fusednet[plot]'``).
        """
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError(
                "History.plot needs matplotlib, an optional extra: "
                "pip install 'fusednet[plot]' (or pip install matplotlib)"
            ) from None
        accs = [k for k in ("train_accuracy", "dev_accuracy") if k in self._data]
        fig = Figure(figsize=(10 if accs else 6, 4), layout="constrained")
        axes = fig.subplots(1, 2 if accs else 1, squeeze=False)[0]
        epochs = list(range(int(self.epochs)))
        ax = axes[0]
        for key, label in (("train_loss", "train"), ("dev_loss", "dev")):
            if key in self._data:
                ax.plot(epochs[: len(self._data[key])], self._data[key], label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("cost")
        ax.set_title(title or "cost")
        ax.legend()
        ax.grid(True, alpha=0.3)
        if accs:
            ax = axes[1]
            for key in accs:
                ax.plot(epochs[: len(self._data[key])], self._data[key], label=key.split("_")[0])
            ax.set_xlabel("epoch")
            ax.set_ylabel("accuracy")
            ax.set_title("accuracy")
            ax.legend()
            ax.grid(True, alpha=0.3)
        if path is not None:
            fig.savefig(path)
        return fig
