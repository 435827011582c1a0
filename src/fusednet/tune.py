r"""Hyperparameter search, as taught in course 2, week 3.

* **Random, not grid.** Each trial draws every hyperparameter at random, so
  ``n`` trials try ``n`` distinct values of the one that matters most.
* **The right scale.** A learning rate in :math:`[10^{-4}, 10^{-1}]` is drawn
  with :class:`LogUniform` (:math:`r \sim U(-4, -1)`, :math:`\alpha = 10^r`), an
  EWA :math:`\beta` in :math:`[0.9, 0.999]` with :class:`OneMinusLogUniform`
  (:math:`1 - \beta` on a log scale), a layer width with :class:`IntUniform` or
  :class:`LogIntUniform`, an activation with :class:`Choice`.
* **Coarse to fine.** :func:`coarse_to_fine` runs rounds of random search and,
  after each, shrinks every numeric range to the span of the best trials
  (:func:`narrow_space`).
* **Caviar, not panda.** Many models train at once: in local worker processes
  (one compute thread each), in any :class:`concurrent.futures.Executor`, or on
  a cluster through a ``dask.distributed`` client.

Example
-------
::

    import fusednet as fn

    def train_fn(lr, beta, hidden, activation):
        ...  # build, fit, evaluate on the dev set
        return {"score": dev_accuracy, "dev_loss": dev_loss}

    space = {"lr": fn.tune.LogUniform(1e-4, 1e-1),
             "beta": fn.tune.OneMinusLogUniform(0.9, 0.999),
             "hidden": fn.tune.IntUniform(16, 256),
             "activation": ["relu", "tanh"]}            # a list is a Choice
    results = fn.tune.random_search(train_fn, space, n_trials=40)
    results[0]["params"], results[0]["score"]           # the best trial

A trial's parameters depend only on ``seed`` and the trial's index: the same
for any executor, any number of workers and any completion order
(:func:`sample_params` gives them without running anything).
"""

import concurrent.futures as cf
import inspect
import json
import math
import multiprocessing
import numbers
import os
import pickle
import warnings
from collections import deque
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from . import _tune_worker

__all__ = [
    "Distribution",
    "LogUniform",
    "OneMinusLogUniform",
    "Uniform",
    "IntUniform",
    "LogIntUniform",
    "Choice",
    "SearchResults",
    "random_search",
    "coarse_to_fine",
    "sample_params",
    "narrow_space",
]


# --------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------


def _as_generator(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None; got {type(rng).__name__}")


def _check_size(size):
    if isinstance(size, numbers.Integral) and not isinstance(size, bool) and size >= 0:
        return int(size)
    raise ValueError(f"size must be None or a non-negative int; got {size!r}")


def _finite(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner} {name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner} {name} must be finite; got {value!r}")
    return value


def _integer(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner} {name} must be an int; got {type(value).__name__} {value!r}")
    return int(value)


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
        return _finite(type(self).__name__ + ".narrow", "value", value)


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
        low, high = _finite("Uniform", "low", low), _finite("Uniform", "high", high)
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
        low, high = _finite("LogUniform", "low", low), _finite("LogUniform", "high", high)
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
        low = _finite("OneMinusLogUniform", "low", low)
        high = _finite("OneMinusLogUniform", "high", high)
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
        low, high = _integer(name, "low", low), _integer(name, "high", high)
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
        return _integer(name, "value", value)


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


# --------------------------------------------------------------------------
# search spaces
# --------------------------------------------------------------------------


def _is_scipy_like(value):
    return not isinstance(value, type) and callable(getattr(value, "rvs", None))


def _normalise_space(space):
    if not isinstance(space, Mapping):
        raise TypeError(
            "space must be a dict mapping parameter names to distributions, lists (choices) "
            f"or constants; got {type(space).__name__}"
        )
    if not space:
        raise ValueError("space must hold at least one parameter; got an empty dict")
    out = {}
    for key, value in space.items():
        if not isinstance(key, str):
            raise TypeError(f"space keys must be str (train_fn's keyword names); got {type(key).__name__} {key!r}")
        if isinstance(value, list):
            try:
                value = Choice(value)
            except ValueError:
                raise ValueError(f"space[{key!r}] is an empty list; a choice needs at least one option") from None
        out[key] = value
    return out


def _draw_value(dist, rng):
    if isinstance(dist, Distribution):
        return dist.sample(rng)
    if _is_scipy_like(dist):  # a scipy.stats frozen distribution, as RandomizedSearchCV takes
        value = dist.rvs(random_state=rng)
        return value.item() if isinstance(value, np.generic) else value
    return dist  # a constant


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int; got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0; got {seed!r}")
    return int(seed)


def _trial_rng(seed, trial):
    # The same stream as np.random.SeedSequence(seed).spawn(n)[trial] for any n > trial.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(trial,)))


def _sample(space, seed, trial):
    rng = _trial_rng(seed, trial)
    drawn = {key: _draw_value(space[key], rng) for key in sorted(space)}
    return {key: drawn[key] for key in space}  # the space's order, for display


def sample_params(space, seed=0, trial=0):
    """The parameters of trial ``trial`` of a search with ``seed``, without running it.

    Parameters
    ----------
    space : dict
        Parameter name -> :class:`Distribution`, list (a :class:`Choice`), a
        ``scipy.stats`` frozen distribution (anything with ``rvs``), or a
        constant passed through unchanged.
    seed : int
        The search's seed, ``>= 0``.
    trial : int
        The trial's index, ``>= 0``.

    Returns
    -------
    dict
        Parameter name -> value. Each trial draws from its own generator,
        ``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(trial,)))``,
        the parameters in sorted-name order, one draw each (constants draw
        nothing), so the result depends only on ``space``, ``seed`` and ``trial``.
    """
    space = _normalise_space(space)
    seed = _check_seed(seed)
    if isinstance(trial, bool) or not isinstance(trial, numbers.Integral):
        raise TypeError(f"trial must be an int >= 0; got {type(trial).__name__} {trial!r}")
    if trial < 0:
        raise ValueError(f"trial must be an int >= 0; got {trial!r}")
    return _sample(space, seed, int(trial))


def _check_keep(keep):
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1]; got {keep!r}")
    return float(keep)


def _ok_score(record):
    if not isinstance(record, Mapping) or record.get("status") != "ok":
        return None
    score = record.get("score")
    if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
        return None
    return float(score)


def narrow_space(space, results, keep=0.25):
    """Shrink every numeric range of ``space`` to the span of the best trials.

    The coarse-to-fine step: the best ``keep`` fraction of the successful
    trials (at least two of them, so a range does not collapse to the best
    single point) decide the new ranges, each on its distribution's own scale
    (see :meth:`Distribution.narrow`); a :class:`Choice` keeps the options
    those trials used. Constants and ``scipy.stats`` distributions are kept
    as they are.

    Parameters
    ----------
    space : dict
        The space the trials were drawn from.
    results : list of dict
        Trials as returned by :func:`random_search` (``"params"``, ``"score"``,
        ``"status"``); failed trials are ignored.
    keep : float
        Fraction in ``(0, 1]``; ``ceil(keep * n_ok)`` trials are kept, at least 2.

    Returns
    -------
    dict
        A new space with the same keys.

    Raises
    ------
    ValueError
        When fewer than two trials succeeded, or a trial lacks a parameter.
    """
    space = _normalise_space(space)
    keep = _check_keep(keep)
    ok = [(s, i, r) for i, r in enumerate(results) if (s := _ok_score(r)) is not None]
    if len(ok) < 2:
        raise ValueError(f"results need at least 2 successful trials to narrow the space; got {len(ok)}")
    ok.sort(key=lambda item: (-item[0], item[1]))
    n_keep = min(len(ok), max(2, math.ceil(keep * len(ok))))
    best = [r for _, _, r in ok[:n_keep]]
    narrowed = {}
    for key, dist in space.items():
        if not isinstance(dist, Distribution):
            narrowed[key] = dist
            continue
        try:
            values = [r["params"][key] for r in best]
        except (KeyError, TypeError):
            raise ValueError(
                f"results hold a trial without parameter {key!r}; were they drawn from this space?"
            ) from None
        narrowed[key] = dist.narrow(values)
    return narrowed


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------


class SearchResults(list):
    """The trials of a search: a list of dicts, best first.

    Each trial is a dict with the keys

    ``"trial"``
        index within its round (its parameters depend only on the seed and this)
    ``"round"``
        (:func:`coarse_to_fine` only) the round, from 0
    ``"params"``
        the keyword arguments ``train_fn`` was called with
    ``"score"``
        the float ``train_fn`` returned under ``"score"``; None when failed
    ``"status"``
        ``"ok"`` or ``"failed"``
    ``"error"``
        None, or why the trial failed, ``"ExceptionType: message"``
    ``"metrics"``
        every other key of the dict ``train_fn`` returned
    ``"duration"``
        seconds ``train_fn`` took (None when its worker died)
    ``"traceback"``
        None, or the traceback of the exception ``train_fn`` raised

    Successful trials come first, highest score first; failed trials last;
    ties by round, then trial index.

    Attributes
    ----------
    spaces : list of dict
        The space each round sampled from (one entry for :func:`random_search`).
    seeds : list of int
        The seed of each round.
    """

    def __init__(self, trials=(), spaces=(), seeds=()):
        super().__init__(trials)
        self.spaces = list(spaces)
        self.seeds = list(seeds)

    @property
    def best(self):
        """The best successful trial (a dict), or None when every trial failed."""
        for trial in self:
            if trial.get("status") == "ok":
                return trial
        return None

    @property
    def best_params(self):
        """The best trial's parameters, or None when every trial failed."""
        best = self.best
        return None if best is None else best["params"]

    @property
    def best_score(self):
        """The best score, or None when every trial failed."""
        best = self.best
        return None if best is None else best["score"]


def _rank(record):
    score = _ok_score(record)
    order = (record.get("round") or 0, record["trial"])
    return (0, -score, *order) if score is not None else (1, 0.0, *order)


def _make_record(trial, params, outcome, round_):
    record = {"trial": trial}
    if round_ is not None:
        record["round"] = round_
    record.update(
        params=params, score=None, status="failed", error=None, metrics={},
        duration=outcome.get("duration"), traceback=outcome.get("traceback"),
    )
    if not outcome["ok"]:
        record["error"] = outcome["error"]
        return record
    value = outcome["value"]
    if not isinstance(value, Mapping):
        record["error"] = (
            f"train_fn must return a dict with a 'score'; it returned {type(value).__name__} {_short(value)}"
        )
        return record
    if "score" not in value:
        record["error"] = f"train_fn returned a dict without 'score' (keys: {sorted(map(str, value))})"
        return record
    score = value["score"]
    if isinstance(score, np.ndarray) and score.shape == ():
        score = score[()]
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        record["error"] = f"train_fn's 'score' must be a real number; got {type(score).__name__} {_short(score)}"
    elif not math.isfinite(score):
        record["error"] = f"train_fn's 'score' must be finite; got {float(score)!r}"
    else:
        record.update(score=float(score), status="ok")
    record["metrics"] = {k: v for k, v in value.items() if k != "score"}
    return record


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------
# the results file: one JSON line per finished trial
# --------------------------------------------------------------------------


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    return repr(obj)


def _canonical(params):
    return json.dumps(params, sort_keys=True, default=_json_default)


class _Journal:
    """Appends finished trials to a JSON-lines file and reads back earlier ones."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.records = {}  # (round, trial) -> records in file order
        bad = 0
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:  # a line cut short by a crash
                        bad += 1
                        continue
                    if _valid_saved(record):
                        self.records.setdefault((record.get("round"), record["trial"]), []).append(record)
                    else:
                        bad += 1
        if bad:
            warnings.warn(f"out={self.path!r}: ignored {bad} unreadable line(s)", RuntimeWarning, stacklevel=4)
        self._fh = open(self.path, "a", encoding="utf-8")
        if self._fh.tell() > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # finish a line cut short, so the next one stands alone
                    self._fh.write("\n")

    def done(self, round_, trial, params, retry_failed):
        """The last saved record of this trial with these exact params, if it counts as done."""
        key = _canonical(params)
        found = None
        for record in self.records.get((round_, trial), ()):
            if _canonical(record["params"]) == key:
                found = record
        if found is None or (found["status"] == "failed" and retry_failed):
            return None
        return found

    def append(self, record):
        self._fh.write(json.dumps(record, default=_json_default) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self):
        self._fh.close()


def _valid_saved(record):
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        return False
    trial = record.get("trial")
    if isinstance(trial, bool) or not isinstance(trial, int):
        return False
    if record.get("status") == "ok":
        return _ok_score(record) is not None
    return record.get("status") == "failed"


# --------------------------------------------------------------------------
# running trials
# --------------------------------------------------------------------------


def _available_cpus():
    if hasattr(os, "process_cpu_count"):  # Python >= 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _dumps_fn(train_fn):
    try:
        import cloudpickle
    except ImportError:
        dumps = pickle.dumps
    else:  # by value for functions of __main__ (a notebook), lambdas and closures
        dumps = cloudpickle.dumps
    try:
        return dumps(train_fn)
    except Exception as exc:
        raise TypeError(
            f"train_fn must be picklable to run in worker processes; {train_fn!r} is not "
            f"({_tune_worker.describe(exc)}). Define it at module level, or pass "
            "executor=concurrent.futures.ThreadPoolExecutor()"
        ) from exc


def _shutdown(pool, kill=False):
    if kill:
        # Interrupted: end our workers now instead of after their current trial
        # (taken before shutdown, which forgets them).
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
    else:
        pool.shutdown(wait=True)


def _clone_process_pool(pool):
    """A fresh ProcessPoolExecutor with ``pool``'s settings (to replace a broken one), or None."""
    try:
        kwargs = dict(max_workers=pool._max_workers, mp_context=pool._mp_context,
                      initializer=pool._initializer, initargs=pool._initargs)
        if getattr(pool, "_max_tasks_per_child", None) is not None:
            kwargs["max_tasks_per_child"] = pool._max_tasks_per_child
        return type(pool)(**kwargs)
    except Exception:
        return None


class _Runner:
    """Runs trials on an executor and survives worker processes that die.

    At most as many trials as the executor has workers are in flight, so when
    a process pool breaks the suspects are few: if one trial was running it
    is recorded failed; if several, the pool is recreated and each suspect is
    rerun alone, so only the trial that kills its worker again is recorded
    failed and the others complete.
    """

    def __init__(self, train_fn, executor, n_workers):
        self._owned = []  # pools we created and must shut down
        self._pool = None
        if executor is None:
            self._mode = "own"
            self._n_workers = n_workers
            self._payload = _dumps_fn(train_fn)
        elif isinstance(executor, cf.ProcessPoolExecutor):
            self._mode = "process"
            self._pool = executor
            self._payload = _dumps_fn(train_fn)
        else:
            self._mode = "other"
            self._pool = executor
            self._train_fn = train_fn

    def _ensure_pool(self, n_todo):
        if self._pool is None:  # our own: spawn, not fork (a forked child of a process that used OpenMP can hang)
            self._pool = cf.ProcessPoolExecutor(
                max_workers=max(1, min(self._n_workers, n_todo)),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_tune_worker.init_worker,
                initargs=(self._payload,),
            )
            self._owned.append(self._pool)

    def _limit(self):
        workers = getattr(self._pool, "_max_workers", None)
        if isinstance(workers, int) and workers > 0:
            return workers
        return math.inf  # e.g. a dask executor: its scheduler queues the trials

    def _submit(self, params):
        if self._mode == "own":
            return self._pool.submit(_tune_worker.run_loaded, params)
        if self._mode == "process":
            return self._pool.submit(_tune_worker.run_payload, self._payload, params)
        return self._pool.submit(_tune_worker.run_trial, self._train_fn, params)

    def _replace_pool(self):
        old = self._pool
        if self._mode == "own":
            self._pool = None  # a new one is made on the next submission
        elif self._mode == "process":
            new = _clone_process_pool(old)
            if new is None:
                return
            self._pool = new
            self._owned.append(new)
        else:
            return
        if old in self._owned:
            self._owned.remove(old)
            old.shutdown(wait=True)

    def close(self, kill=False):
        """Shut down the pools this runner created (never the caller's executor)."""
        for pool in self._owned:
            _shutdown(pool, kill=kill)
        self._owned = []
        if self._mode == "own":
            self._pool = None

    def run(self, todo, on_outcome):
        """Run ``todo``, a list of ``(trial, params)``, calling ``on_outcome(trial, params, outcome)``."""
        pending = deque(todo)
        suspects = deque()
        in_flight = {}  # future -> (trial, params)
        while pending or suspects or in_flight:
            if self._mode == "own" and (pending or suspects):
                self._ensure_pool(len(pending) + len(suspects))
            self._fill(pending, suspects, in_flight, on_outcome)
            if not in_flight:
                continue
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            broken = self._collect(done, in_flight, on_outcome)
            if broken:
                # The pool is broken: every other trial in flight fails with it at once.
                rest, _ = cf.wait(list(in_flight))
                broken += self._collect(rest, in_flight, on_outcome)
                if len(broken) == 1:  # it ran alone: it is the one that killed its worker
                    trial, params, exc = broken[0]
                    on_outcome(trial, params, _died(exc))
                else:
                    suspects.extend((trial, params) for trial, params, _ in broken)
                self._replace_pool()

    def _fill(self, pending, suspects, in_flight, on_outcome):
        while pending or suspects:
            if suspects:  # a suspect of a broken pool runs alone
                if in_flight:
                    return
                trial, params = suspects.popleft()
            elif len(in_flight) < self._limit():
                trial, params = pending.popleft()
            else:
                return
            try:
                try:
                    future = self._submit(params)
                except BrokenProcessPool:  # broke while idle: replace it and try once more
                    self._replace_pool()
                    if self._mode == "own":
                        self._ensure_pool(len(pending) + len(suspects) + 1)
                    future = self._submit(params)
            except Exception as exc:
                on_outcome(trial, params, {
                    "ok": False, "error": f"could not submit the trial ({_tune_worker.describe(exc)})",
                    "traceback": None, "duration": None,
                })
                continue
            in_flight[future] = (trial, params)

    def _collect(self, done, in_flight, on_outcome):
        """Report finished futures; return the trials lost to a broken pool."""
        broken = []
        for future in sorted(done, key=lambda f: in_flight[f][0]):
            trial, params = in_flight.pop(future)
            try:
                outcome = future.result()
            except BrokenProcessPool as exc:
                broken.append((trial, params, exc))
                continue
            except Exception as exc:  # the executor's own failure (e.g. dask's KilledWorker)
                outcome = {"ok": False, "error": _tune_worker.describe(exc), "traceback": None, "duration": None}
            on_outcome(trial, params, outcome)
        return broken


def _died(exc):
    return {
        "ok": False,
        "error": f"the worker process died while running this trial ({_tune_worker.describe(exc)})",
        "traceback": None,
        "duration": None,
    }


# --------------------------------------------------------------------------
# the searches
# --------------------------------------------------------------------------


def _check_args(train_fn, n_trials, executor, n_workers, out, progress, retry_failed):
    if not callable(train_fn):
        raise TypeError(
            f"train_fn must be callable, train_fn(**params) -> dict with 'score'; got {type(train_fn).__name__}"
        )
    if isinstance(n_trials, bool) or not isinstance(n_trials, numbers.Integral):
        raise TypeError(f"n_trials must be a positive int; got {type(n_trials).__name__} {n_trials!r}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be a positive int; got {n_trials!r}")
    if executor is not None:
        if not isinstance(executor, cf.Executor) and callable(getattr(executor, "get_executor", None)):
            executor = executor.get_executor()  # a dask.distributed Client
        if not isinstance(executor, cf.Executor):
            raise TypeError(
                "executor must be None (local worker processes), a concurrent.futures.Executor "
                f"or a dask.distributed Client; got {type(executor).__name__}"
            )
        if n_workers is not None:
            raise ValueError("n_workers applies only with executor=None (the executor sets its own workers); got both")
    elif n_workers is None:
        n_workers = _available_cpus()
    elif isinstance(n_workers, bool) or not isinstance(n_workers, numbers.Integral) or n_workers < 1:
        raise ValueError(f"n_workers must be None or a positive int; got {n_workers!r}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be None or a file path; got {type(out).__name__}")
    for name, flag in (("progress", progress), ("retry_failed", retry_failed)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False; got {type(flag).__name__} {flag!r}")
    return int(n_trials), executor, None if n_workers is None else int(n_workers)


def _check_signature(train_fn, space):
    try:
        signature = inspect.signature(train_fn)
    except (TypeError, ValueError):  # some builtins have none: find out when called
        return
    try:
        signature.bind(**dict.fromkeys(space))
    except TypeError as exc:
        raise ValueError(
            f"train_fn cannot be called with the space's parameters {sorted(space)} as keywords: {exc}"
        ) from None


class _Search:
    """One search's executor, results file and progress display."""

    def __init__(self, train_fn, executor, n_workers, out, progress, retry_failed):
        self._runner = _Runner(train_fn, executor, n_workers)
        self._journal = None if out is None else _Journal(out)
        self._progress = bool(progress)
        self._retry_failed = bool(retry_failed)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._runner.close(kill=exc_type is not None)
        if self._journal is not None:
            self._journal.close()
        return False

    def run(self, space, n_trials, seed, round_=None, desc="trials"):
        records = {}
        todo = []
        for trial in range(n_trials):
            params = _sample(space, seed, trial)
            saved = None if self._journal is None else self._journal.done(round_, trial, params, self._retry_failed)
            if saved is None:
                todo.append((trial, params))
            else:  # done by an earlier run: merged, with this run's (unserialised) params
                records[trial] = {**saved, "params": params}
        bar = None
        if self._progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_trials, initial=n_trials - len(todo), desc=desc, unit="trial")
        best = [max((s for r in records.values() if (s := _ok_score(r)) is not None), default=None)]

        def on_outcome(trial, params, outcome):
            record = _make_record(trial, params, outcome, round_)
            records[trial] = record
            if self._journal is not None:
                self._journal.append(record)
            if bar is not None:
                score = record["score"]
                if score is not None and (best[0] is None or score > best[0]):
                    best[0] = score
                if best[0] is not None:
                    bar.set_postfix(best=f"{best[0]:.4g}", refresh=False)
                bar.update(1)

        try:
            self._runner.run(todo, on_outcome)
        finally:
            if bar is not None:
                bar.close()
        return [records[trial] for trial in range(n_trials)]


def random_search(train_fn, space, n_trials, seed=0, executor=None, *, n_workers=None, out=None,
                  progress=False, retry_failed=False):
    """Random search: ``n_trials`` models trained in parallel, each with randomly drawn hyperparameters.

    Parameters
    ----------
    train_fn : callable
        ``train_fn(**params) -> dict`` with at least ``"score"``, a finite
        real number, higher is better (e.g. dev accuracy, or minus the dev
        loss). Other keys are kept under the trial's ``"metrics"``. Runs in
        worker processes unless ``executor`` is a thread pool, so it must be
        picklable there (a module-level function; with cloudpickle installed,
        functions of a notebook and closures work too), must import what it
        needs, and must not rely on state of the calling process.
    space : dict
        Parameter name -> :class:`LogUniform`, :class:`OneMinusLogUniform`,
        :class:`Uniform`, :class:`IntUniform`, :class:`LogIntUniform`,
        :class:`Choice`; a plain list means a :class:`Choice`; an object with
        an ``rvs`` method (a ``scipy.stats`` frozen distribution) is sampled
        with ``rvs(random_state=rng)``; anything else (a number, a string, a
        tuple) is a constant passed to every trial.
    n_trials : int
        Number of trials, ``>= 1``.
    seed : int
        Trial ``i``'s parameters are :func:`sample_params` ``(space, seed, i)``:
        they depend only on ``seed`` and ``i``, never on the executor, the
        number of workers or the order in which trials finish.
    executor : concurrent.futures.Executor, dask.distributed.Client or None
        None: local worker processes, started with ``spawn`` (a forked child of
        a process that used OpenMP can hang), each limited to one compute
        thread (OpenMP, Numba, BLAS), so ``n_workers`` models train at once
        without oversubscribing the cores. Otherwise any executor: a
        ``ThreadPoolExecutor`` (no pickling; the training code must release the
        GIL to gain), a ``ProcessPoolExecutor``, or a ``dask.distributed``
        client (or its ``get_executor()``) for a cluster, whose workers need
        fusednet installed. A given executor is used as it is and not shut down.
    n_workers : int or None, keyword-only
        With ``executor=None``: number of worker processes (None: the number of
        CPUs this process may use).
    out : str, os.PathLike or None, keyword-only
        A JSON-lines file: each finished trial is appended as one line
        (flushed and fsynced), so a crash loses no finished work. If the file
        exists, the trials it holds with the same index and identical
        parameters are not run again but merged into the results; rerunning
        an interrupted search with the same arguments finishes it.
    progress : bool, keyword-only
        Show a tqdm progress bar with the best score so far.
    retry_failed : bool, keyword-only
        With ``out``: run again the trials the file records as failed
        (default: a failed trial counts as done).

    Returns
    -------
    SearchResults
        A list of one dict per trial, best first, failed trials last (keys:
        see :class:`SearchResults`); ``.best``, ``.best_params``,
        ``.best_score``, ``.spaces``, ``.seeds``.

    Raises
    ------
    TypeError, ValueError
        On bad arguments, before any trial runs. A trial whose ``train_fn``
        raises, returns no finite ``"score"``, or whose worker process dies
        (``os._exit``, a segfault, the OOM killer) is recorded as failed with
        its error; the search runs the other trials (a broken process pool
        is recreated).

    Notes
    -----
    Run searches with the default executor from a script guarded by
    ``if __name__ == "__main__":``: spawned workers import the main module.

    Examples
    --------
    ::

        results = random_search(train_fn, {"lr": LogUniform(1e-4, 1e-1)}, n_trials=20,
                                out="search.jsonl", progress=True)
        results.best_params     # {'lr': 0.0031...}
    """
    n_trials, executor, n_workers = _check_args(train_fn, n_trials, executor, n_workers, out, progress, retry_failed)
    space = _normalise_space(space)
    seed = _check_seed(seed)
    _check_signature(train_fn, space)
    with _Search(train_fn, executor, n_workers, out, progress, retry_failed) as search:
        records = search.run(space, n_trials, seed)
    return SearchResults(sorted(records, key=_rank), spaces=[space], seeds=[seed])


def _round_seed(seed, round_):
    if round_ == 0:  # round 0 is random_search(..., seed=seed)
        return seed
    return int(np.random.SeedSequence([seed, round_]).generate_state(1, dtype=np.uint64)[0])


def coarse_to_fine(train_fn, space, n_trials, rounds=2, keep=0.25, seed=0, executor=None, *, n_workers=None,
                   out=None, progress=False, retry_failed=False):
    """Coarse-to-fine random search: rounds of :func:`random_search`, each in a narrower space.

    After each round, every numeric range shrinks to the span of that
    round's best ``keep`` fraction of trials on the distribution's own scale,
    and a :class:`Choice` keeps the options they used (:func:`narrow_space`).

    Parameters
    ----------
    train_fn, space, executor, n_workers, out, progress, retry_failed
        As for :func:`random_search`. With ``executor=None`` the worker
        processes are started once and reused by every round. One ``out``
        file holds every round's trials (each line with its ``"round"``);
        rerunning with it resumes where the search stopped.
    n_trials : int
        Trials per round, ``>= 1``.
    rounds : int
        Number of rounds, ``>= 1``.
    keep : float
        Fraction of a round's successful trials, in ``(0, 1]``, that sets the
        next round's ranges (at least 2 trials). A round with fewer than two
        successful trials leaves the space as it was (with a warning).
    seed : int
        Round 0 uses ``seed`` (it is ``random_search(..., seed=seed)``);
        round ``r`` uses a seed derived from ``seed`` and ``r``
        (``SearchResults.seeds``).

    Returns
    -------
    SearchResults
        Every trial of every round, best first, each with a ``"round"`` key;
        ``.spaces[r]`` is the space round ``r`` sampled from, ``.seeds[r]``
        its seed. To go on zooming in, pass
        ``narrow_space(results.spaces[-1], [t for t in results if t["round"] == rounds - 1], keep)``
        to another search.

    Examples
    --------
    ::

        results = coarse_to_fine(train_fn, {"lr": LogUniform(1e-5, 1.0)}, n_trials=16, rounds=3)
        results.spaces  # [{'lr': LogUniform(1e-05, 1.0)}, {'lr': LogUniform(0.0008..., 0.03...)}, ...]
    """
    n_trials, executor, n_workers = _check_args(train_fn, n_trials, executor, n_workers, out, progress, retry_failed)
    space = _normalise_space(space)
    seed = _check_seed(seed)
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral):
        raise TypeError(f"rounds must be a positive int; got {type(rounds).__name__} {rounds!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be a positive int; got {rounds!r}")
    keep = _check_keep(keep)
    _check_signature(train_fn, space)
    spaces, seeds, everything = [], [], []
    with _Search(train_fn, executor, n_workers, out, progress, retry_failed) as search:
        for round_ in range(int(rounds)):
            round_seed = _round_seed(seed, round_)
            spaces.append(space)
            seeds.append(round_seed)
            records = search.run(space, n_trials, round_seed, round_=round_, desc=f"round {round_}")
            everything.extend(records)
            if round_ + 1 < rounds:
                n_ok = sum(_ok_score(r) is not None for r in records)
                if n_ok < 2:
                    warnings.warn(
                        f"coarse_to_fine: round {round_} had {n_ok} successful trial(s), fewer than the 2 "
                        f"needed to narrow the space; round {round_ + 1} searches the same space",
                        RuntimeWarning, stacklevel=2,
                    )
                else:
                    space = narrow_space(space, records, keep)
    return SearchResults(sorted(everything, key=_rank), spaces=spaces, seeds=seeds)
