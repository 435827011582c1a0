"""Successive halving over populations: the rungs, the best trial, the journal and resuming, executors, bad input."""

import concurrent.futures as cf
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import fusednet
import fusednet as fn
from fusednet.tune import Halving, LogUniform, PopulationTask, coarse_to_fine, random_search

# worker processes unpickle the layer builder by module name
TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

SPACE = {"lr": LogUniform(1e-3, 0.3), "l2": LogUniform(1e-4, 1.0), "hidden": [3, 6], "activation": ["relu", "tanh"]}


def layers_of(hidden, activation):
    return [fn.layers.Dense(hidden, activation=activation), fn.layers.Dense(1, activation="sigmoid")]


def _task(epochs=27, dtype="float64", **kwargs):
    X, y = fn.datasets.moons(m=240, seed=0)
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    return PopulationTask(layers_of, X[:180], y[:180], (X[180:], y[180:]), batch_size=32, epochs=epochs, dtype=dtype,
                          **kwargs)


def _summary(results):
    return [(r["trial"], r["status"], r["score"], r["metrics"].get("rung"), r["metrics"].get("epochs"))
            for r in results]


def test_rungs_as_scikit_learn_counts_them():
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import HalvingRandomSearchCV

    X, y = fn.datasets.moons(m=120, seed=0)
    for n, factor, max_r in ((30, 3, 27), (20, 2, 40), (7, 3, 9)):
        search = HalvingRandomSearchCV(SGDClassifier(), {"alpha": np.logspace(-4, 0, 50)}, n_candidates=n,
                                       factor=factor, resource="max_iter", max_resources=max_r,
                                       min_resources="exhaust", cv=2, random_state=0)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                search.fit(X, y)
        ours = Halving(factor=factor, max_resources=max_r).schedule(n, 100)
        assert [r for r, _ in ours] == list(search.n_resources_)
        assert [c for _, c in ours] == list(search.n_candidates_)


def test_the_best_trial_is_its_own_fit_and_the_rungs_keep_the_best():
    task = _task()
    results = random_search(task, SPACE, 30, seed=1, halving=Halving(factor=3))
    rungs = Halving(factor=3).schedule(30, 27)
    assert len(results) == 30
    reached = [r["metrics"]["rung"] for r in results if r["status"] == "ok"]
    for i, (_, n) in enumerate(rungs):  # n trials entered rung i
        assert sum(rung >= i for rung in reached) <= n
    best = results.best
    assert best["metrics"]["rung"] == len(rungs) - 1 and best["metrics"]["epochs"] == 27
    alone = task(**best["params"])  # one model of 27 epochs: the same trajectory, bit for bit
    assert alone["score"] == best["score"] and alone["dev_loss"] == best["metrics"]["dev_loss"]
    # at the last rung, the best score wins
    last = [r for r in results if r["status"] == "ok" and r["metrics"]["rung"] == len(rungs) - 1]
    assert best["score"] == max(r["score"] for r in last)


def test_journal_and_resume(tmp_path):
    task = _task()
    out = tmp_path / "halving.jsonl"
    first = random_search(task, SPACE, 20, seed=3, halving={"factor": 2}, out=out)
    lines = out.read_text().splitlines()
    assert len(lines) == 20 and {json.loads(line)["trial"] for line in lines} == set(range(20))
    for cut in (5, 14):
        out.write_text("\n".join(lines[:cut]) + "\n")
        again = random_search(task, SPACE, 20, seed=3, halving={"factor": 2}, out=out)
        assert _summary(again) == _summary(first)
        assert len(out.read_text().splitlines()) == 20
    done = random_search(task, SPACE, 20, seed=3, halving={"factor": 2}, out=out)  # all recorded: nothing runs
    assert _summary(done) == _summary(first)


def test_same_results_on_any_executor():
    task = _task(dtype="float32")
    here = random_search(task, SPACE, 12, seed=4, halving=Halving(factor=2))
    with cf.ThreadPoolExecutor(3) as ex:
        threads = random_search(task, SPACE, 12, seed=4, halving=Halving(factor=2), executor=ex)
    assert _summary(threads) == _summary(here)


@pytest.mark.slow
def test_same_results_in_worker_processes_and_on_a_dask_cluster(monkeypatch):
    from dask.distributed import Client, LocalCluster

    task = _task(dtype="float32")
    here = random_search(task, SPACE, 12, seed=4, halving=Halving(factor=2))
    pool = random_search(task, SPACE, 12, seed=4, halving=Halving(factor=2), n_workers=2)
    assert _summary(pool) == _summary(here)
    package_root = str(Path(fusednet.__file__).resolve().parents[1])
    path = os.pathsep.join([TESTS_DIR, package_root, os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path.rstrip(os.pathsep))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        on_dask = random_search(task, SPACE, 12, seed=4, halving=Halving(factor=2), executor=client)
    assert _summary(on_dask) == _summary(here)


def test_diverging_trials_fail_and_coarse_to_fine_rounds():
    task = _task(epochs=8, optimizer="gd")
    space = {"lr": LogUniform(1e150, 1e200), "hidden": [3], "activation": ["relu"]}
    results = random_search(task, space, 4, halving={"factor": 2})
    assert all(r["status"] == "failed" and "diverged" in r["error"] for r in results)
    assert results.best is None
    rounds = coarse_to_fine(_task(epochs=9), SPACE, 9, rounds=2, keep=0.5, seed=2, halving=Halving(factor=3))
    assert sorted({r["round"] for r in rounds}) == [0, 1] and len(rounds) == 18
    assert len(rounds.spaces) == 2 and rounds.spaces[1] != rounds.spaces[0]


def test_bad_input():
    with pytest.raises(TypeError, match="PopulationTask"):
        random_search(lambda lr: {"score": lr}, {"lr": LogUniform(1e-3, 1.0)}, 3, halving=Halving())
    with pytest.raises(ValueError, match="factor"):
        Halving(factor=1)
    with pytest.raises(ValueError, match="min_resources"):
        Halving(min_resources=0)
    with pytest.raises(TypeError, match="halving"):
        random_search(_task(), SPACE, 3, halving=3)
    fixed = PopulationTask(layers_of(4, "relu"), np.zeros((8, 2)), np.zeros(8), (np.zeros((4, 2)), np.zeros(4)))
    with pytest.raises(ValueError, match="hidden"):
        random_search(fixed, SPACE, 3, halving=Halving())
    with pytest.raises(TypeError, match="dev"):
        PopulationTask(layers_of, np.zeros((8, 2)), np.zeros(8), None)
