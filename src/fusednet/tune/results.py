"""Search results: one record per trial, ranked best first.

A worker's outcome (see :mod:`fusednet.tune.runner`) becomes a trial record
checked here: ``train_fn`` must have returned a dict with a finite real
``"score"``; anything else fails the trial with a message saying why.
"""

import math
import numbers
from collections.abc import Mapping

import numpy as np

__all__ = ["SearchResults"]


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


def _ok_score(record):
    """A successful record's score as a float; None for a failed or malformed one."""
    if not isinstance(record, Mapping) or record.get("status") != "ok":
        return None
    score = record.get("score")
    if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
        return None
    return float(score)


def _rank(record):
    """Sort key: successful trials by score, best first, then failed ones; ties by round and trial."""
    score = _ok_score(record)
    order = (record.get("round") or 0, record["trial"])
    return (0, -score, *order) if score is not None else (1, 0.0, *order)


def _make_record(trial, params, outcome, round_):
    """The record of one finished trial from its worker's outcome dict."""
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

