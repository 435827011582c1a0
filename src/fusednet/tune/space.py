"""Search spaces: a dict of parameter name -> distribution, list (a choice) or constant.

A trial's parameters depend only on the search's seed and the trial's index
(:func:`sample_params`); :func:`narrow_space` is the coarse-to-fine step that
shrinks a space to the span of its best trials.
"""

import math
from collections.abc import Mapping

import numpy as np

from . import _checks
from .distributions import Choice, Distribution
from .results import _ok_score

__all__ = ["sample_params", "narrow_space"]


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
    seed = _checks.seed(seed)
    trial = _checks.integer_at_least("trial", trial, 0, "an int >= 0")
    return _sample(space, seed, trial)


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
    keep = _checks.keep(keep)
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

