"""The searches: :func:`random_search` and :func:`coarse_to_fine`.

They check every argument before any trial runs, draw each trial's
parameters from the space (:mod:`fusednet.tune.space`), skip the trials a
results file already holds (:mod:`fusednet.tune.journal`), run the others
(:mod:`fusednet.tune.runner`) and rank the records (:mod:`fusednet.tune.results`).
"""

import inspect
import os
import warnings

import numpy as np

from . import _checks
from . import halving as _halving
from .journal import _Journal
from .results import SearchResults, _make_record, _ok_score, _rank
from .runner import _check_executor, _Runner, limit_threads
from .space import _normalise_space, _sample, narrow_space

__all__ = ["random_search", "coarse_to_fine"]


def _check_args(train_fn, n_trials, executor, n_workers, out, progress, retry_failed):
    if not callable(train_fn):
        raise TypeError(
            f"train_fn must be callable, train_fn(**params) -> dict with 'score'; got {type(train_fn).__name__}"
        )
    n_trials = _checks.integer_at_least("n_trials", n_trials, 1, "a positive int")
    executor, n_workers = _check_executor(executor, n_workers)
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be None or a file path; got {type(out).__name__}")
    for name, flag in (("progress", progress), ("retry_failed", retry_failed)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False; got {type(flag).__name__} {flag!r}")
    return n_trials, executor, n_workers


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
                  progress=False, retry_failed=False, halving=None):
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
    halving : fusednet.tune.Halving, dict or None, keyword-only
        Successive halving (:mod:`fusednet.tune.halving`): ``train_fn`` must be
        a :class:`~fusednet.tune.PopulationTask`; the trials of each
        architecture train as one population, and at each rung the best
        ``1 / factor`` of all the trials go on with ``factor`` times the epochs.
        Each group and rung is one job: here, on this process's threads, with
        ``executor=None`` (or in ``n_workers`` processes when given), else on
        ``executor``.

    Returns
    -------
    SearchResults
        A list of one dict per trial, best first, failed trials last (keys:
        see :class:`SearchResults`); ``.best``, ``.best_params``,
        ``.best_score``, ``.spaces``, ``.seeds``.  With ``halving``, the trials
        that reached a later rung come first, and ``metrics`` holds each trial's
        ``rung`` and ``epochs``.

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
    halving = _halving.check(halving)
    if halving is not None:
        return _halving_search(train_fn, space, n_trials, 1, None, seed, executor, n_workers, out, progress,
                               retry_failed, halving)
    n_trials, executor, n_workers = _check_args(train_fn, n_trials, executor, n_workers, out, progress, retry_failed)
    space = _normalise_space(space)
    seed = _checks.seed(seed)
    _check_signature(train_fn, space)
    with _Search(train_fn, executor, n_workers, out, progress, retry_failed) as search:
        records = search.run(space, n_trials, seed)
    return SearchResults(sorted(records, key=_rank), spaces=[space], seeds=[seed])


def _halving_search(task, space, n_trials, rounds, keep, seed, executor, n_workers, out, progress, retry_failed,
                    halving):
    """:func:`random_search` (``rounds`` None) or :func:`coarse_to_fine` with successive halving over populations."""
    given_workers = n_workers
    n_trials, executor, n_workers = _check_args(task, n_trials, executor, n_workers, out, progress, retry_failed)
    if not isinstance(task, _halving.PopulationTask):
        raise TypeError(f"halving needs a fusednet.tune.PopulationTask as train_fn; got {type(task).__name__}")
    space = _normalise_space(space)
    seed = _checks.seed(seed)
    own = None
    if executor is None and given_workers is not None:
        import concurrent.futures as cf
        import multiprocessing

        own = executor = cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=limit_threads)
    spaces, seeds, everything = [], [], []
    try:
        for round_ in range(rounds):
            round_seed = _round_seed(seed, round_)
            spaces.append(space)
            seeds.append(round_seed)
            trials = [(trial, _sample(space, round_seed, trial)) for trial in range(n_trials)]
            records = _halving.run(task, trials, halving, executor, out, progress, retry_failed,
                                   round_=None if keep is None else round_)
            everything.extend(records)
            if round_ + 1 < rounds and sum(_ok_score(r) is not None for r in records) >= 2:
                space = narrow_space(space, records, keep)
    finally:
        if own is not None:
            own.shutdown(wait=True)
    return SearchResults(_halving.sort_records(everything), spaces=spaces, seeds=seeds)


def _round_seed(seed, round_):
    if round_ == 0:  # round 0 is random_search(..., seed=seed)
        return seed
    return int(np.random.SeedSequence([seed, round_]).generate_state(1, dtype=np.uint64)[0])


def coarse_to_fine(train_fn, space, n_trials, rounds=2, keep=0.25, seed=0, executor=None, *, n_workers=None,
                   out=None, progress=False, retry_failed=False, halving=None):
    """Coarse-to-fine random search: rounds of :func:`random_search`, each in a narrower space.

    After each round, every numeric range shrinks to the span of that
    round's best ``keep`` fraction of trials on the distribution's own scale,
    and a :class:`Choice` keeps the options they used (:func:`narrow_space`).

    Parameters
    ----------
    train_fn, space, executor, n_workers, out, progress, retry_failed, halving
        As for :func:`random_search` (with ``halving``, each round is a halving search). With
        ``executor=None`` the worker processes are started once and reused by every round. One ``out``
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
    halving = _halving.check(halving)
    if halving is not None:
        rounds = _checks.integer_at_least("rounds", rounds, 1, "a positive int")
        return _halving_search(train_fn, space, n_trials, rounds, _checks.keep(keep), seed, executor, n_workers,
                               out, progress, retry_failed, halving)
    n_trials, executor, n_workers = _check_args(train_fn, n_trials, executor, n_workers, out, progress, retry_failed)
    space = _normalise_space(space)
    seed = _checks.seed(seed)
    rounds = _checks.integer_at_least("rounds", rounds, 1, "a positive int")
    keep = _checks.keep(keep)
    _check_signature(train_fn, space)
    spaces, seeds, everything = [], [], []
    with _Search(train_fn, executor, n_workers, out, progress, retry_failed) as search:
        for round_ in range(rounds):
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
