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

The package, one concern a module:

* :mod:`~fusednet.tune.distributions`: what a hyperparameter is drawn from;
* :mod:`~fusednet.tune.space`: search spaces, sampling a trial, narrowing;
* :mod:`~fusednet.tune.results`: trial records and :class:`SearchResults`;
* :mod:`~fusednet.tune.journal`: the JSON-lines results file, for resuming;
* :mod:`~fusednet.tune.runner`: worker processes and executors;
* :mod:`~fusednet.tune.search`: :func:`random_search` and :func:`coarse_to_fine`;
* :mod:`~fusednet.tune.halving`: successive halving over populations
  (:class:`Halving`, :class:`PopulationTask`).
"""

from .distributions import (
    Choice,
    Distribution,
    IntUniform,
    LogIntUniform,
    LogUniform,
    OneMinusLogUniform,
    Uniform,
)
from .halving import Halving, PopulationTask
from .results import SearchResults
from .search import coarse_to_fine, random_search
from .space import narrow_space, sample_params

__all__ = [
    "Distribution",
    "LogUniform",
    "OneMinusLogUniform",
    "Uniform",
    "IntUniform",
    "LogIntUniform",
    "Choice",
    "SearchResults",
    "Halving",
    "PopulationTask",
    "random_search",
    "coarse_to_fine",
    "sample_params",
    "narrow_space",
]
