r"""Search-space distributions: what one hyperparameter is drawn from, on which scale.

The course's scales (course 2, week 3): a learning rate on a log scale
(:class:`LogUniform`), an EWA :math:`\beta` with :math:`1 - \beta` on a log
scale (:class:`OneMinusLogUniform`), widths as integers (:class:`IntUniform`,
:class:`LogIntUniform`), linear ranges (:class:`Uniform`) and options
(:class:`Choice`). Each draws with :meth:`Distribution.sample` and, for coarse to
fine, narrows to the span of some values on its own scale with
:meth:`Distribution.narrow`.
"""

import math
import numbers

import numpy as np

from ..data import as_generator
from . import _checks

__all__ = ["Distribution", "Uniform", "LogUniform", "OneMinusLogUniform", "IntUniform", "LogIntUniform", "Choice"]


def _as_generator(rng):
    """``rng`` as a Generator by :func:`fusednet.data.as_generator`, its errors naming ``rng``."""
    try:
        return as_generator(rng)
    except (TypeError, ValueError) as exc:
        raise type(exc)(
            f"rng must be a numpy.random.Generator, an int seed >= 0 or None; got {type(rng).__name__} {rng!r}"
        ) from None


def _check_size(size):
    if isinstance(size, numbers.Integral) and not isinstance(size, bool) and size >= 0:
        return int(size)
    raise ValueError(f"size must be None or a non-negative int; got {size!r}")


def _same(a, b):
    """``a == b`` as a plain bool, False when the comparison is not a bool (arrays)."""
    if a is b:
        return True
    try:
        equal = a == b
    except Exception:
        return False
    return bool(equal) if isinstance(equal, (bool, np.bool_)) else False


class Distribution:
    """Base class of the search-space distributions.

    A distribution draws one value with :meth:`sample` and, for coarse to
    fine, returns a copy of itself restricted to the span of some values with
    :meth:`narrow`. Distributions are immutable and compare equal when they
    are of the same kind with the same arguments.
    """

    __slots__ = ()

    def sample(self, rng=None, size=None):
        """Draw from the distribution.

        Parameters
        ----------
        rng : numpy.random.Generator, int or None
            Source of randomness (an int or None seeds a new Generator). One
            value consumes exactly one draw of ``rng``.
        size : int or None
            None: one value, as a plain Python ``float``, ``int`` or option.
            An int: that many values (a NumPy array, a list for :class:`Choice`).

        Returns
        -------
        float, int, object, numpy.ndarray or list
        """
        rng = _as_generator(rng)
        if size is None:
            return self._to_python(self._draw(rng, None))
        return self._draw(rng, _check_size(size))

    def narrow(self, values):
        """A distribution of the same kind spanning ``values`` on its own scale."""
        raise NotImplementedError

    def _draw(self, rng, size):
        raise NotImplementedError

    def _to_python(self, value):
        return value

    def _args(self):
        raise NotImplementedError

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(a, b) for a, b in zip(self._args(), other._args()))

    def __hash__(self):
        return hash((type(self).__name__, repr(self)))

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(repr(a) for a in self._args())})"

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self):
        return (_rebuild, (type(self), self._args()))


def _rebuild(cls, args):
    """Unpickle a distribution (degenerate narrowed ranges included)."""
    try:
        return cls(*args)
    except ValueError:
        return cls._spanning(*args)


class _Range(Distribution):
    """A numeric range ``[low, high]``; narrowing takes the values' min and max."""

    __slots__ = ("_low", "_high")

    def __init__(self, low, high):
        low, high = self._check_bounds(low, high)
        object.__setattr__(self, "_low", low)
        object.__setattr__(self, "_high", high)

    @classmethod
    def _spanning(cls, low, high):
        # A range narrowed to a single point (every kept trial had the same
        # value): valid, sampling returns that value, but not something a
        # user should write by hand, so the constructor rejects it.
        if low < high or cls is IntUniform or cls is LogIntUniform:
            return cls(low, high)
        new = object.__new__(cls)
        object.__setattr__(new, "_low", low)
        object.__setattr__(new, "_high", high)
        return new

    @property
    def low(self):
        """The smallest value the distribution can return."""
        return self._low

    @property
    def high(self):
        """The largest value the distribution can return."""
        return self._high

    def _args(self):
        return (self._low, self._high)

    def narrow(self, values):
        """A distribution of the same kind from ``min(values)`` to ``max(values)``.

        The distribution's scale is monotone, so the span of the values on
        its own scale (log, log of ``1 - x``, linear) is the interval between
        the smallest and the largest of them. Values outside the current
        range are allowed: the result spans what it is given.

        Parameters
        ----------
        values : iterable of numbers
            At least one value, each valid for this kind of distribution.

        Returns
        -------
        Distribution
            Same class, ``low = min(values)``, ``high = max(values)``.
        """
        checked = [self._check_value(v) for v in _nonempty(values, type(self).__name__)]
        return type(self)._spanning(min(checked), max(checked))

    def _to_python(self, value):
        return float(value)

    def _check_value(self, value):
        return _checks.finite(f"{type(self).__name__}.narrow value", value)


def _nonempty(values, owner):
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{owner}.narrow values must be an iterable of values; got {type(values).__name__}")
    values = list(values)
    if not values:
        raise ValueError(f"{owner}.narrow needs at least one value; got none")
    return values


class Uniform(_Range):
    r"""Uniform on ``[low, high]`` on a linear scale.

    For hyperparameters whose effect is linear over the range, such as the
    number of layers or ``keep_prob`` in ``[0.5, 1]``.

    Parameters
    ----------
    low, high : float
        Finite, ``low < high``.
    """

    __slots__ = ()

    @staticmethod
    def _check_bounds(low, high):
        low, high = _checks.finite("Uniform low", low), _checks.finite("Uniform high", high)
        if not low < high:
            raise ValueError(f"Uniform needs low < high; got low={low!r}, high={high!r}")
        return low, high

    def _draw(self, rng, size):
        return np.clip(rng.uniform(self._low, self._high, size), self._low, self._high)


class LogUniform(_Range):
    r"""Uniform on a log scale: :math:`r \sim U(\log_{10} a, \log_{10} b)`, value :math:`10^r`.

    The course's scale for the learning rate: between :math:`10^{-4}` and
    :math:`10^{-1}` each decade gets the same share of the trials, where a
    linear scale would spend 90 % of them in :math:`[10^{-2}, 10^{-1}]`.

    Parameters
    ----------
    low, high : float
        ``0 < low < high``.
    """

    __slots__ = ()

    @staticmethod
    def _check_bounds(low, high):
        low, high = _checks.finite("LogUniform low", low), _checks.finite("LogUniform high", high)
        if not 0 < low < high:
            raise ValueError(f"LogUniform needs 0 < low < high; got low={low!r}, high={high!r}")
        return low, high

    def _draw(self, rng, size):
        r = rng.uniform(math.log10(self._low), math.log10(self._high), size)
        return np.clip(10.0**r, self._low, self._high)

    def _check_value(self, value):
        value = super()._check_value(value)
        if value <= 0:
            raise ValueError(f"LogUniform.narrow values must be > 0; got {value!r}")
        return value


class OneMinusLogUniform(_Range):
    r"""A value close to 1 whose distance to 1 is log-uniform: :math:`\beta = 1 - 10^r`.

    With :math:`r \sim U(\log_{10}(1 - b), \log_{10}(1 - a))`. The course's
    scale for an exponentially weighted average's :math:`\beta` (momentum,
    RMSProp, Adam): :math:`\beta \in [0.9, 0.999]` averages over
    :math:`1/(1-\beta)` from 10 to 1000 steps, and :math:`\beta` from 0.9990
    to 0.9995 matters as much as from 0.9 to 0.95 — ``1 - beta`` is sampled on
    a log scale, ``r`` in ``[-3, -1]``.

    Parameters
    ----------
    low, high : float
        ``0 <= low < high < 1``.
    """

    __slots__ = ()

    @staticmethod
    def _check_bounds(low, high):
        low = _checks.finite("OneMinusLogUniform low", low)
        high = _checks.finite("OneMinusLogUniform high", high)
        if not 0 <= low < high < 1:
            raise ValueError(f"OneMinusLogUniform needs 0 <= low < high < 1; got low={low!r}, high={high!r}")
        return low, high

    def _draw(self, rng, size):
        r = rng.uniform(math.log10(1.0 - self._high), math.log10(1.0 - self._low), size)
        return np.clip(1.0 - 10.0**r, self._low, self._high)

    def _check_value(self, value):
        value = super()._check_value(value)
        if not 0 <= value < 1:
            raise ValueError(f"OneMinusLogUniform.narrow values must be in [0, 1); got {value!r}")
        return value


class IntUniform(_Range):
    """Integers from ``low`` to ``high`` inclusive, each equally likely.

    Parameters
    ----------
    low, high : int
        ``low <= high`` (equal bounds give that one integer).
    """

    __slots__ = ()

    @classmethod
    def _check_bounds(cls, low, high):
        name = cls.__name__
        low, high = _checks.integer(f"{name} low", low), _checks.integer(f"{name} high", high)
        if not low <= high:
            raise ValueError(f"{name} needs low <= high; got low={low!r}, high={high!r}")
        return low, high

    def _draw(self, rng, size):
        return rng.integers(self._low, self._high, size, endpoint=True)

    def _to_python(self, value):
        return int(value)

    def _check_value(self, value):
        name = type(self).__name__ + ".narrow"
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
            if math.isfinite(value) and float(value).is_integer():
                value = int(value)  # 32.0 read back from a JSON file
        return _checks.integer(f"{name} value", value)


class LogIntUniform(IntUniform):
    r"""Integers from ``low`` to ``high`` inclusive, on a log scale.

    :math:`x = e^r` with :math:`r \sim U(\ln(\mathrm{low} - 1/2), \ln(\mathrm{high} + 1/2))`,
    rounded to the nearest integer: each integer ``k`` gets the share
    :math:`\ln\frac{k + 1/2}{k - 1/2}`, so 16 to 32 units is as likely as 128 to 256.

    Parameters
    ----------
    low, high : int
        ``1 <= low <= high``.
    """

    __slots__ = ()

    @classmethod
    def _check_bounds(cls, low, high):
        low, high = super()._check_bounds(low, high)
        if low < 1:
            raise ValueError(f"LogIntUniform needs 1 <= low <= high; got low={low!r}, high={high!r}")
        return low, high

    def _draw(self, rng, size):
        r = rng.uniform(math.log(self._low - 0.5), math.log(self._high + 0.5), size)
        return np.clip(np.rint(np.exp(r)), self._low, self._high).astype(np.int64)

    def _check_value(self, value):
        value = super()._check_value(value)
        if value < 1:
            raise ValueError(f"LogIntUniform.narrow values must be >= 1; got {value!r}")
        return value


class Choice(Distribution):
    """One of a list of options, each equally likely.

    Parameters
    ----------
    options : list or tuple
        At least one option, of any type (strings, numbers, None, tuples
        such as layer sizes). In a search space a plain list means a Choice.

    Notes
    -----
    ``narrow(values)`` keeps the options present among ``values``, in their
    original order.
    """

    __slots__ = ("_options",)

    def __init__(self, options):
        if isinstance(options, (str, bytes)) or not isinstance(options, (list, tuple)):
            raise TypeError(
                f"Choice options must be a list or tuple of options; got {type(options).__name__} {options!r}"
            )
        if len(options) == 0:
            raise ValueError("Choice options must hold at least one option; got an empty list")
        object.__setattr__(self, "_options", tuple(options))

    @property
    def options(self):
        """The options, as a list."""
        return list(self._options)

    def _args(self):
        return (list(self._options),)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return len(self._options) == len(other._options) and all(
            _same(a, b) for a, b in zip(self._options, other._options)
        )

    def __hash__(self):
        return super().__hash__()

    def _draw(self, rng, size):
        index = rng.integers(0, len(self._options), size)
        if size is None:
            return self._options[int(index)]
        return [self._options[i] for i in index]

    def narrow(self, values):
        """A Choice of the options present in ``values``, in their original order.

        Parameters
        ----------
        values : iterable
            At least one value, each one of the options.

        Returns
        -------
        Choice
        """
        values = _nonempty(values, "Choice")
        for value in values:
            if not any(_same(option, value) for option in self._options):
                raise ValueError(f"Choice.narrow value {value!r} is not one of the options {list(self._options)!r}")
        return Choice([o for o in self._options if any(_same(o, v) for v in values)])
