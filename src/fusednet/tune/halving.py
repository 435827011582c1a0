r"""Successive halving over populations: the trials of one architecture trained as one :class:`~fusednet.Population`.

With ``halving=Halving(...)``, :func:`~fusednet.tune.random_search` and
:func:`~fusednet.tune.coarse_to_fine` take a :class:`PopulationTask` as
``train_fn``.  The trials are grouped by the parameters that shape the
network (those that are not a per-model config key, e.g. a width or an
activation); each group trains as one population, and at every rung all the
trials still running are ranked together by their dev score and the best
``1 / factor`` go on (scikit-learn's ``HalvingRandomSearchCV`` with the
number of epochs as the resource):

.. math::

    r_i = r_{\min}\, \text{factor}^i, \qquad
    n_{i+1} = \lceil n_i / \text{factor} \rceil .

A dropped trial stops costing compute: its population compacts.  Training
continues from rung to rung (a trial at rung ``i`` has trained ``r_i``
epochs in all, exactly as one fit of ``r_i`` epochs).  Each group and rung
is the same job wherever it runs, so the results are the same for any
executor and number of workers.  A model's trajectory does not depend on
which other models share its population either (but for first layers wide
enough to be batched on BLAS, see :class:`~fusednet.Population`, where it
agrees to rounding), which is what lets a resumed search train the missing
trials alone.

Each trial is written to the search's JSON-lines file when it stops: its
score and metrics at the last rung it reached (``metrics["rung"]``,
``metrics["epochs"]``).  Rerunning an interrupted search with the same file
trains again only the trials that file does not hold (from scratch, to the
rung where the search stopped) and ends with the same results.
"""

import math
import time

from ..population import MODEL_KEYS, Population, _optimizer_args, _optimizer_class
from . import _checks
from .journal import _canonical, _Journal
from .results import SearchResults

__all__ = ["Halving", "PopulationTask"]


class Halving:
    """The settings of successive halving, named as scikit-learn's ``HalvingRandomSearchCV`` names them.

    Parameters
    ----------
    factor : int or float, default 3
        ``> 1``: each rung keeps the best ``1 / factor`` of its trials and
        gives them ``factor`` times the epochs.
    min_resources : int or "exhaust", default "exhaust"
        Epochs of the first rung. ``"exhaust"``: the most that lets the last
        rung reach ``max_resources`` (scikit-learn's meaning).
    max_resources : int or None
        Epochs of a trial that reaches the last rung; None: the task's ``epochs``.
    aggressive_elimination : bool, default False
        Repeat the first rung's budget until few enough trials are left for the
        last rung to hold at most ``factor`` of them (scikit-learn's meaning).
    """

    resource = "epochs"

    def __init__(self, factor=3, min_resources="exhaust", max_resources=None, aggressive_elimination=False):
        self.factor = _checks.finite("factor", factor)
        if self.factor <= 1:
            raise ValueError(f"factor must be > 1; got {factor!r}")
        if min_resources != "exhaust":
            min_resources = _checks.integer_at_least("min_resources", min_resources, 1, 'an int >= 1 or "exhaust"')
        self.min_resources = min_resources
        if max_resources is not None:
            max_resources = _checks.integer_at_least("max_resources", max_resources, 1, "an int >= 1 or None")
        self.max_resources = max_resources
        if not isinstance(aggressive_elimination, bool):
            raise TypeError(f"aggressive_elimination must be True or False; got {aggressive_elimination!r}")
        self.aggressive_elimination = aggressive_elimination

    def schedule(self, n_candidates, max_epochs):
        """``[(epochs, n_trials), ...]`` per rung for ``n_candidates`` trials of at most ``max_epochs`` epochs."""
        max_r = self.max_resources or max_epochs
        f = self.factor
        n_required = 1 + int(math.floor(math.log(n_candidates, f) + 1e-9))
        if self.min_resources == "exhaust":
            min_r = max(1, int(max_r // f ** (n_required - 1)))
        else:
            min_r = self.min_resources
        if min_r > max_r:
            raise ValueError(f"min_resources={min_r} is above max_resources={max_r}")
        n_possible = 1 + int(math.floor(math.log(max_r // min_r, f) + 1e-9))
        n_iter = n_required if self.aggressive_elimination else min(n_required, n_possible)
        extra = max(0, n_iter - n_possible)  # aggressive: rungs at the first budget
        rungs, n = [], n_candidates
        for i in range(n_iter):
            power = max(0, i - extra)
            rungs.append((int(min(max_r, min_r * f**power)), n))
            n = int(math.ceil(n / f))
        return rungs

    def __repr__(self):
        return (f"Halving(factor={self.factor:g}, min_resources={self.min_resources!r}, "
                f"max_resources={self.max_resources!r}, aggressive_elimination={self.aggressive_elimination})")


class PopulationTask:
    r"""A search's ``train_fn`` that trains populations: the data, the layer list and the training settings.

    Called as ``task(**params)`` it trains one model (a :class:`~fusednet.Trainer`
    fit) and returns ``{"score", "dev_loss", "dev_accuracy", "epochs"}``, so it
    works with any search; with ``halving=`` the search trains the trials of
    each architecture as one :class:`~fusednet.Population` instead.

    Parameters
    ----------
    layers : list of Layer, or callable
        The layer list, or ``layers(**arch) -> list`` of the parameters that are
        not per-model config keys (e.g. ``hidden``, ``activation``).
    X, y : the training data.
    dev : (X_dev, y_dev)
        Scores every trial.
    optimizer, batch_size, epochs, dtype, shuffle, seed
        As :class:`~fusednet.Population` takes them (``epochs``: a trial's most).
    metric : {"dev_accuracy", "dev_loss"}
        The score: the dev accuracy, or minus the dev loss (higher is better).
    """

    def __init__(self, layers, X, y, dev, *, optimizer="adam", batch_size=64, epochs=10, dtype="float32",
                 shuffle=True, seed=0, metric="dev_accuracy"):
        if not (callable(layers) or isinstance(layers, (list, tuple))):
            raise TypeError(f"layers must be a list of layers or a callable returning one; got {type(layers).__name__}")
        if not (isinstance(dev, (tuple, list)) and len(dev) == 2):
            raise TypeError("dev must be a pair (X_dev, y_dev): it scores the trials")
        if metric not in ("dev_accuracy", "dev_loss"):
            raise ValueError(f"metric must be 'dev_accuracy' or 'dev_loss'; got {metric!r}")
        self.optimizer_class = _optimizer_class(optimizer)
        self.layers, self.X, self.y, self.dev = layers, X, y, tuple(dev)
        self.optimizer, self.batch_size, self.epochs = optimizer, batch_size, int(epochs)
        self.dtype, self.shuffle, self.seed, self.metric = dtype, shuffle, seed, metric
        self.config_keys = frozenset(_optimizer_args(self.optimizer_class)) | frozenset(MODEL_KEYS)

    def split(self, params):
        """``(architecture params, config)`` of a trial's parameters."""
        arch = {k: v for k, v in params.items() if k not in self.config_keys}
        return arch, {k: v for k, v in params.items() if k in self.config_keys}

    def layer_list(self, arch):
        if callable(self.layers):
            return list(self.layers(**arch))
        if arch:
            raise ValueError(f"parameters {sorted(arch)} are not config keys and layers is a fixed list")
        return list(self.layers)

    def population(self, arch, configs, epochs):
        """An untrained :class:`~fusednet.Population` of ``configs`` for the architecture ``arch``."""
        X = self.X
        return Population(self.layer_list(arch), input_dim=len(X[0]), configs=configs, optimizer=self.optimizer,
                          batch_size=self.batch_size, epochs=epochs, seed=self.seed, dtype=self.dtype,
                          shuffle=self.shuffle)

    def score(self, history):
        """The trial's score from its last epoch, and its metrics."""
        metrics = {k: history[k][-1] for k in ("dev_loss", "dev_accuracy") if k in history and history[k]}
        if self.metric not in metrics:
            return None, metrics
        value = metrics[self.metric]
        return (value if self.metric == "dev_accuracy" else -value), metrics

    def __call__(self, **params):
        arch, config = self.split(params)
        pop = self.population(arch, [config], self.epochs)
        history = pop.fit(self.X, self.y, dev=self.dev)[0]
        if pop.diverged[0] is not None:
            d = pop.diverged[0]
            raise FloatingPointError(f"training diverged ({d['what']}) at epoch {d['epoch']}, step {d['step']}")
        score, metrics = self.score(history)
        return {"score": score, **metrics, "epochs": history.epochs}


def _train_group(task, arch, pop, configs, e0, e1):
    """One job: train the group's population (a new one when ``pop`` is None) from epoch ``e0`` to ``e1``.

    Returns ``(pop, [(score, metrics, error) per model])``; runs in a worker (any executor) or here.
    """
    if pop is None:
        pop = task.population(arch, configs, e1)
        histories = pop.histories
        pop.epochs = e1
        data = pop._data(task.X, task.y, task.dev)
        pop._run(data, 0, e1, histories)
    else:
        pop.epochs = e1
        data = pop._data(task.X, task.y, task.dev)
        pop._run(data, e0, e1, pop.histories)
    out = []
    for h, div in zip(pop.histories, pop.diverged):
        if div is not None:
            out.append((None, {}, f"FloatingPointError: training diverged ({div['what']}) at epoch {div['epoch']}, "
                                  f"step {div['step']}"))
        else:
            score, metrics = task.score(h)
            out.append((score, metrics, None if score is not None else "no dev score"))
    return pop, out


def _order_key(record):
    """Trials that reached a later rung first, then by score; failed last; ties by round and trial."""
    ok = record["status"] == "ok"
    rung = record["metrics"].get("rung", 0) if isinstance(record.get("metrics"), dict) else 0
    return (0 if ok else 1, -rung if ok else 0, -(record["score"] or 0.0), record.get("round") or 0, record["trial"])


def run(task, trials, halving, executor, out, progress, retry_failed, round_=None):
    """Successive halving over ``trials`` (a list of ``(trial, params)``); returns their records.

    ``executor``: None (here, the populations on this process's threads) or a
    ``concurrent.futures.Executor`` (a process pool or a dask client's): one job
    per architecture group and rung.
    """
    if not isinstance(task, PopulationTask):
        raise TypeError(f"halving needs a fusednet.tune.PopulationTask as train_fn; got {type(task).__name__}")
    for _, params in trials:
        arch, _config = task.split(params)
        task.layer_list(arch)  # raises on a fixed list with architecture params
    rungs = halving.schedule(len(trials), task.epochs)
    journal = None if out is None else _Journal(out)
    try:
        return _run(task, trials, rungs, executor, journal, progress, retry_failed, round_)
    finally:
        if journal is not None:
            journal.close()


def _run(task, trials, rungs, executor, journal, progress, retry_failed, round_):
    records = {}
    for trial, params in trials:
        saved = None if journal is None else journal.done(round_, trial, params, retry_failed)
        if saved is not None:
            records[trial] = {**saved, "params": params}
    alive = [(t, p) for t, p in trials if t not in records]
    start = 0
    if records:  # resume: the last rung whose entrants are the unrecorded trials and those it recorded
        for i, (_, n_i) in enumerate(rungs):
            entrants = len(alive) + sum(1 for r in records.values() if _rung_of(r) >= i)
            if entrants == n_i:
                start = i
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rungs) - start, desc="rungs", unit="rung")
    params_of = dict(trials)
    state = {}  # group key -> (population, [trial per model])
    spent = dict.fromkeys(params_of, 0.0)  # each trial's share of the rungs' wall time
    done_epochs = 0
    try:
        for i in range(start, len(rungs)):
            epochs, _ = rungs[i]
            t0 = time.perf_counter()
            results = _train_rung(task, alive, state, done_epochs if i > start else 0, epochs, executor)
            for t, _ in alive:
                spent[t] += (time.perf_counter() - t0) / len(alive)
            done_epochs = epochs
            entrants = [(t, results[t]) for t, _ in alive]
            entrants += [(t, (r["score"] if r["status"] == "ok" else None, None, r["error"]))
                         for t, r in records.items() if _rung_of(r) == i]
            n_keep = rungs[i + 1][1] if i + 1 < len(rungs) else 0
            ranked = sorted(entrants, key=lambda e: (e[1][0] is None, -(e[1][0] or 0.0), e[0]))
            keep = {t for t, _ in ranked[:n_keep] if t in results and results[t][0] is not None}
            for t, (score, metrics, error) in entrants:
                if t in keep or t in records:
                    continue
                record = _record(t, params_of[t], score, metrics, error, i, epochs, round_, spent[t])
                records[t] = record
                if journal is not None:
                    journal.append(record)
            alive = [(t, p) for t, p in alive if t in keep]
            _compact(state, keep)
            if bar is not None:
                bar.update(1)
            if not alive:
                break
    finally:
        if bar is not None:
            bar.close()
    return [records[t] for t, _ in trials]


def _rung_of(record):
    metrics = record.get("metrics")
    return metrics.get("rung", 0) if isinstance(metrics, dict) else 0


def _record(trial, params, score, metrics, error, rung, epochs, round_, duration):
    record = {"trial": trial}
    if round_ is not None:
        record["round"] = round_
    ok = score is not None and math.isfinite(score)
    record.update(params=params, score=float(score) if ok else None, status="ok" if ok else "failed",
                  error=None if ok else (error or "no dev score"),
                  metrics={**(metrics or {}), "rung": rung, "epochs": epochs}, duration=duration, traceback=None)
    return record


def _group_key(task, params):
    arch, _ = task.split(params)
    return _canonical(arch)


def _train_rung(task, alive, state, e0, e1, executor):
    """Train every group's survivors from ``e0`` to ``e1`` epochs; ``{trial: (score, metrics, error)}``."""
    groups = {}
    for t, p in alive:
        groups.setdefault(_group_key(task, p), []).append((t, p))
    jobs = []
    for key, members in groups.items():
        pop, order = state.get(key, (None, None))
        if pop is None:
            arch, _ = task.split(members[0][1])
            configs = [task.split(p)[1] for _, p in members]
            args = (task, arch, None, configs, 0, e1)
            order = [t for t, _ in members]
        else:
            args = (task, None, pop, None, e0, e1)
        jobs.append((key, order, args))
    results = {}
    if executor is None:
        outcomes = [_train_group(*args) for _, _, args in jobs]
    else:
        futures = [executor.submit(_train_group, *args) for _, _, args in jobs]
        outcomes = [f.result() for f in futures]
    for (key, order, _), (pop, per_model) in zip(jobs, outcomes):
        state[key] = (pop, order)
        for t, res in zip(order, per_model):
            results[t] = res
    return results


def _compact(state, keep):
    for key in list(state):
        pop, order = state[key]
        idx = [i for i, t in enumerate(order) if t in keep]
        if not idx:
            del state[key]
            continue
        if len(idx) < len(order):
            pop._compact(idx)
            state[key] = (pop, [order[i] for i in idx])


def sort_records(records):
    """Records best first: later rungs first, then by score; failed last."""
    return SearchResults(sorted(records, key=_order_key))


def check(halving):
    """``halving`` as a :class:`Halving`: one, a dict of its arguments, or None."""
    if halving is None or isinstance(halving, Halving):
        return halving
    if isinstance(halving, dict):
        return Halving(**halving)
    raise TypeError(f"halving must be None, a fusednet.tune.Halving or a dict of its arguments; got {halving!r}")

