r"""Learning-rate schedules: plain callables ``(epoch, step) -> lr``.

``epoch`` counts from 0; ``step`` is the mini-batch index *within* the epoch,
also from 0.  During epoch ``e`` the trainer calls ``schedule(e, step)`` before
each update and passes the result to the optimiser's ``step(..., lr=...)``.

Every schedule checks its arguments when it is built (a bad one raises
``ValueError`` naming it) and never touches arrays; a call is a few float
operations.  Any plain callable ``(epoch, step) -> lr`` works as a schedule too,
see :func:`as_schedule`.

The course's learning-rate decay (C2W2):

.. math::

    \alpha = \frac{\alpha_0}{1 + \text{decay\_rate} \cdot \text{epoch\_num}}, \qquad
    \alpha = 0.95^{\text{epoch\_num}} \alpha_0, \qquad
    \alpha = \frac{k}{\sqrt{\text{epoch\_num}}} \alpha_0,

and "manual decay" (:class:`Piecewise`).  The course counts epochs from 1; here
they count from 0, hence ``sqrt(epoch + 1)`` in :class:`InverseSqrtDecay`.
"""

import bisect
import math
import numbers

from ._validation import check_int as _int
from ._validation import check_positive as _positive
from ._validation import check_real as _real

__all__ = [
    "Schedule",
    "Constant",
    "InverseTimeDecay",
    "ExponentialDecay",
    "InverseSqrtDecay",
    "Piecewise",
    "as_schedule",
]

_PER = ("epoch", "step")


def _per(per):
    if per not in _PER:
        raise ValueError(f"per must be one of {_PER}, got {per!r}")
    return per


def _counters(epoch, step):
    if epoch < 0 or step < 0:
        raise ValueError(f"epoch and step count from 0, got epoch={epoch!r}, step={step!r}")


class Schedule:
    """Base class: a callable ``(epoch, step) -> lr`` with a readable repr.

    Subclasses set ``_fields`` (the constructor arguments, in order, stored as
    attributes of the same names) and implement :meth:`__call__`.
    """

    _fields = ()

    def __call__(self, epoch, step):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    r"""A constant learning rate, :math:`\alpha = \alpha_0`.

    Parameters
    ----------
    lr0 : float
        The learning rate, finite and > 0.
    """

    _fields = ("lr0",)

    def __init__(self, lr0):
        self.lr0 = _positive("lr0", lr0)

    def __call__(self, epoch, step):
        _counters(epoch, step)
        return self.lr0


class InverseTimeDecay(Schedule):
    r"""The course's decay, :math:`\alpha_0 / (1 + \text{decay\_rate} \lfloor e / T \rfloor)`.

    .. math::

        \alpha(e) = \frac{\alpha_0}{1 + r \, \lfloor e / T \rfloor}

    with ``e`` the epoch (from 0), ``r = decay_rate`` and ``T = time_interval``:
    the rate drops every ``time_interval`` epochs.

    .. warning::
       Keras' ``InverseTimeDecay`` counts optimiser steps and divides by
       ``decay_steps`` without flooring unless ``staircase=True``; this one
       counts epochs and always floors (the course's ``epoch_num``).

    Parameters
    ----------
    lr0 : float
        Initial learning rate :math:`\alpha_0`, finite and > 0.
    decay_rate : float
        :math:`r \ge 0` (0 gives a constant rate).
    time_interval : int, default 1
        Epochs per decay step, >= 1.
    """

    _fields = ("lr0", "decay_rate", "time_interval")

    def __init__(self, lr0, decay_rate, time_interval=1):
        self.lr0 = _positive("lr0", lr0)
        self.decay_rate = _real("decay_rate", decay_rate)
        if self.decay_rate < 0.0:
            raise ValueError(f"decay_rate must be >= 0, got {decay_rate!r}")
        self.time_interval = _int("time_interval", time_interval, 1)

    def __call__(self, epoch, step):
        _counters(epoch, step)
        return self.lr0 / (1.0 + self.decay_rate * (epoch // self.time_interval))


class ExponentialDecay(Schedule):
    r"""Exponential decay per epoch, :math:`\alpha(e) = \alpha_0 \, \text{base}^e`.

    Parameters
    ----------
    lr0 : float
        Initial learning rate :math:`\alpha_0`, finite and > 0.
    base : float, default 0.95
        Decay factor per epoch, in (0, 1] (1 gives a constant rate).
    """

    _fields = ("lr0", "base")

    def __init__(self, lr0, base=0.95):
        self.lr0 = _positive("lr0", lr0)
        self.base = _real("base", base)
        if not 0.0 < self.base <= 1.0:
            raise ValueError(f"base must be in (0, 1], got {base!r}")

    def __call__(self, epoch, step):
        _counters(epoch, step)
        return self.lr0 * self.base**epoch


class InverseSqrtDecay(Schedule):
    r"""Decay with the inverse square root of the epoch (or step) count.

    .. math::

        \alpha = \frac{k \, \alpha_0}{\sqrt{e + 1}} \quad (\text{per="epoch"}), \qquad
        \alpha = \frac{k \, \alpha_0}{\sqrt{s + 1}} \quad (\text{per="step"})

    The course writes :math:`k \alpha_0 / \sqrt{\text{epoch\_num}}` with epochs
    counted from 1; ``e + 1`` is the same count here.

    Parameters
    ----------
    lr0 : float
        Initial learning rate :math:`\alpha_0`, finite and > 0.
    k : float, default 1.0
        Constant factor, finite and > 0.
    per : {"epoch", "step"}, default "epoch"
        ``"step"`` uses the ``step`` argument the trainer passes, the mini-batch
        index *within* the current epoch, so the decay starts again at
        ``k * lr0`` at the beginning of every epoch.
    """

    _fields = ("lr0", "k", "per")

    def __init__(self, lr0, k=1.0, per="epoch"):
        self.lr0 = _positive("lr0", lr0)
        self.k = _positive("k", k)
        self.per = _per(per)
        self._by_step = per == "step"

    def __call__(self, epoch, step):
        _counters(epoch, step)
        n = step if self._by_step else epoch
        return self.lr0 * self.k / math.sqrt(n + 1)


class Piecewise(Schedule):
    r"""Manual decay: a constant rate on each interval between boundaries.

    .. math::

        \alpha(x) = \text{values}[i] \quad \text{for} \quad
        \text{boundaries}[i-1] \le x < \text{boundaries}[i]

    with ``boundaries[-1] = -inf`` and ``boundaries[n] = +inf``: ``values[0]``
    before ``boundaries[0]``, ``values[i]`` from ``boundaries[i-1]`` on.

    Parameters
    ----------
    boundaries : sequence of int
        Strictly increasing, >= 0 (may be empty: a constant rate).
    values : sequence of float
        ``len(boundaries) + 1`` learning rates, each finite and > 0.
    per : {"epoch", "step"}, default "epoch"
        Which counter ``x`` is; ``"step"`` is the mini-batch index *within* the
        current epoch, as the trainer passes it.
    """

    _fields = ("boundaries", "values", "per")

    def __init__(self, boundaries, values, per="epoch"):
        if isinstance(boundaries, (str, bytes)) or not hasattr(boundaries, "__len__"):
            raise TypeError(f"boundaries must be a sequence of ints, got {boundaries!r}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError(f"values must be a sequence of floats, got {values!r}")
        b = tuple(_int(f"boundaries[{i}]", x, 0) for i, x in enumerate(boundaries))
        v = tuple(_positive(f"values[{i}]", x) for i, x in enumerate(values))
        if any(b1 <= b0 for b0, b1 in zip(b, b[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {list(b)}")
        if len(v) != len(b) + 1:
            raise ValueError(
                f"values must have len(boundaries) + 1 = {len(b) + 1} entries, got {len(v)}"
            )
        self.boundaries = b
        self.values = v
        self.per = _per(per)
        self._by_step = per == "step"

    def __call__(self, epoch, step):
        _counters(epoch, step)
        x = step if self._by_step else epoch
        return self.values[bisect.bisect_right(self.boundaries, x)]


def as_schedule(x):
    """Turn what a user passes as ``schedule=`` (or ``lr=``) into a schedule.

    Parameters
    ----------
    x : None, float or callable
        ``None`` stays ``None`` (the optimiser's own ``lr`` is used), a number
        becomes :class:`Constant`, a callable ``(epoch, step) -> lr`` is returned
        as it is.

    Returns
    -------
    callable or None

    Raises
    ------
    TypeError
        For anything else.
    """
    if x is None:
        return None
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return Constant(x)
    if callable(x):
        return x
    raise TypeError(
        f"a schedule must be None, a number or a callable (epoch, step) -> lr, "
        f"got {type(x).__name__}"
    )
