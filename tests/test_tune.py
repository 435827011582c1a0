"""Tests of fusednet.tune: distributions, reproducible random search on any
executor, failures and dead workers, resuming from a results file, coarse to
fine, and a dask cluster."""

import json
import math
import multiprocessing
import os
import pickle
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import fusednet
from fusednet import tune
from fusednet.tune import (
    Choice,
    IntUniform,
    LogIntUniform,
    LogUniform,
    OneMinusLogUniform,
    Uniform,
    coarse_to_fine,
    narrow_space,
    random_search,
    sample_params,
)

# Worker processes import the train functions by module name: put their
# directory on sys.path (spawned workers inherit it; dask workers get PYTHONPATH).
TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
import _tune_helpers as helpers  # noqa: E402

SPACE = {
    "lr": LogUniform(1e-4, 1e-1),
    "beta": OneMinusLogUniform(0.9, 0.999),
    "hidden": IntUniform(16, 256),
    "activation": ["relu", "tanh"],
}
SPAWN = multiprocessing.get_context("spawn")


def by_trial(results):
    return {(r.get("round"), r["trial"]): (r["params"], r["score"], r["status"]) for r in results}


def expected(space, seed, n_trials):
    return [sample_params(space, seed, i) for i in range(n_trials)]


# --------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------


def test_log_uniform_is_uniform_in_log10():
    dist = LogUniform(1e-4, 1e-1)
    x = dist.sample(np.random.default_rng(0), size=4000)
    assert x.min() >= 1e-4 and x.max() <= 1e-1
    assert stats.kstest(np.log10(x), "uniform", args=(-4, 3)).pvalue > 1e-3
    # the test has power: linear sampling is far from log-uniform
    linear = Uniform(1e-4, 1e-1).sample(np.random.default_rng(0), size=4000)
    assert stats.kstest(np.log10(linear), "uniform", args=(-4, 3)).pvalue < 1e-12


def test_one_minus_log_uniform_is_uniform_in_log10_of_one_minus():
    dist = OneMinusLogUniform(0.9, 0.999)
    b = dist.sample(np.random.default_rng(1), size=4000)
    assert b.min() >= 0.9 and b.max() <= 0.999
    assert stats.kstest(np.log10(1 - b), "uniform", args=(-3, 2)).pvalue > 1e-3
    # most of the mass is close to 1, unlike Uniform(0.9, 0.999)
    assert np.mean(b > 0.99) == pytest.approx(0.5, abs=0.05)


def test_one_minus_log_uniform_from_zero():
    b = OneMinusLogUniform(0.0, 0.99).sample(np.random.default_rng(2), size=2000)
    assert b.min() >= 0.0 and b.max() <= 0.99
    assert stats.kstest(np.log10(1 - b), "uniform", args=(-2, 2)).pvalue > 1e-3


def test_int_uniform_is_inclusive_and_uniform():
    x = IntUniform(3, 7).sample(np.random.default_rng(3), size=5000)
    assert x.dtype.kind == "i"
    counts = np.bincount(x - 3, minlength=5)
    assert set(np.unique(x)) == {3, 4, 5, 6, 7}
    assert stats.chisquare(counts).pvalue > 1e-3


def test_log_int_uniform_is_log_scaled():
    dist = LogIntUniform(16, 256)
    x = dist.sample(np.random.default_rng(4), size=5000)
    assert x.min() >= 16 and x.max() <= 256 and x.dtype.kind == "i"
    assert np.mean(x <= 64) == pytest.approx(0.5, abs=0.04)  # the geometric middle of 16..256
    assert LogIntUniform(1, 1).sample(0) == 1


def test_uniform_bounds_and_choice_options():
    x = Uniform(-2.0, 3.0).sample(np.random.default_rng(5), size=2000)
    assert x.min() >= -2 and x.max() <= 3
    assert stats.kstest(x, "uniform", args=(-2, 5)).pvalue > 1e-3
    options = ["relu", "tanh", (64, 32), None]
    drawn = Choice(options).sample(np.random.default_rng(6), size=400)
    assert all(any(d == o for o in options) for d in drawn)
    assert {repr(d) for d in drawn} == {repr(o) for o in options}


@pytest.mark.parametrize(
    "dist, kind",
    [
        (LogUniform(1e-3, 1.0), float),
        (OneMinusLogUniform(0.9, 0.99), float),
        (Uniform(0, 1), float),
        (IntUniform(0, 10), int),
        (LogIntUniform(1, 100), int),
        (Choice(["a", "b"]), str),
    ],
)
def test_one_sample_is_a_plain_python_value_and_one_draw(dist, kind):
    value = dist.sample(np.random.default_rng(7))
    assert type(value) is kind
    # one value consumes one draw of the generator, the same as sample(size=1)
    assert dist.sample(np.random.default_rng(7), size=1)[0] == value
    assert dist.sample(11) == dist.sample(np.random.default_rng(11))


@settings(max_examples=60, deadline=None)
@given(
    low=st.floats(1e-8, 1e3),
    ratio=st.floats(1.001, 1e6),
    seed=st.integers(0, 2**32 - 1),
)
def test_log_uniform_samples_in_bounds_and_narrow_spans_them(low, ratio, seed):
    dist = LogUniform(low, low * ratio)
    x = dist.sample(np.random.default_rng(seed), size=20)
    assert np.all((x >= dist.low) & (x <= dist.high))
    narrowed = dist.narrow(x)
    assert type(narrowed) is LogUniform
    assert narrowed.low == x.min() and narrowed.high == x.max()
    assert dist.low <= narrowed.low <= narrowed.high <= dist.high


@settings(max_examples=60, deadline=None)
@given(low=st.floats(0.0, 0.98), gap=st.floats(1e-4, 1.0), seed=st.integers(0, 2**32 - 1))
def test_one_minus_log_uniform_bounds_property(low, gap, seed):
    high = low + (1 - low) * min(gap, 0.999)
    if not low < high < 1:
        return
    dist = OneMinusLogUniform(low, high)
    b = dist.sample(np.random.default_rng(seed), size=20)
    assert np.all((b >= low) & (b <= high))
    assert type(dist.narrow(b)) is OneMinusLogUniform


def test_narrow_keeps_the_kind_and_spans_the_values():
    assert LogUniform(1e-4, 1e-1).narrow([1e-3, 3e-3, 2e-3]) == LogUniform(1e-3, 3e-3)
    assert OneMinusLogUniform(0.9, 0.999).narrow([0.95, 0.99]) == OneMinusLogUniform(0.95, 0.99)
    assert Uniform(0, 1).narrow(np.array([0.2, 0.7])) == Uniform(0.2, 0.7)
    assert IntUniform(16, 256).narrow([32, 64.0, 48]) == IntUniform(32, 64)
    assert LogIntUniform(16, 256).narrow([20, 100]) == LogIntUniform(20, 100)
    assert Choice(["relu", "tanh", "sigmoid"]).narrow(["sigmoid", "relu", "relu"]) == Choice(["relu", "sigmoid"])
    # every kept trial had the same value: a point, which samples that value
    point = LogUniform(1e-4, 1e-1).narrow([2e-3, 2e-3])
    assert isinstance(point, LogUniform) and point.low == point.high == 2e-3
    assert point.sample(0) == 2e-3
    assert pickle.loads(pickle.dumps(point)) == point
    with pytest.raises(ValueError, match="not one of the options"):
        Choice(["relu"]).narrow(["tanh"])
    with pytest.raises(ValueError, match="at least one value"):
        Uniform(0, 1).narrow([])
    with pytest.raises(ValueError, match="> 0"):
        LogUniform(1e-3, 1).narrow([0.0, 0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        OneMinusLogUniform(0.9, 0.99).narrow([1.0])


def test_repr_equality_hash_and_pickle():
    dists = [LogUniform(1e-4, 0.1), OneMinusLogUniform(0.9, 0.999), Uniform(-1, 1), IntUniform(1, 9),
             LogIntUniform(2, 64), Choice(["relu", (64, 32)])]
    for dist in dists:
        assert eval(repr(dist), vars(tune)) == dist
        assert pickle.loads(pickle.dumps(dist)) == dist
        assert hash(pickle.loads(pickle.dumps(dist))) == hash(dist)
    assert repr(LogUniform(1e-4, 0.1)) == "LogUniform(0.0001, 0.1)"
    assert repr(Choice(["relu", "tanh"])) == "Choice(['relu', 'tanh'])"
    assert LogUniform(1e-4, 0.1) != Uniform(1e-4, 0.1)
    with pytest.raises(AttributeError):
        LogUniform(1e-4, 0.1).low = 1.0


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: LogUniform(0, 1), ValueError, "0 < low < high"),
        (lambda: LogUniform(0.1, 0.01), ValueError, "low=0.1, high=0.01"),
        (lambda: LogUniform("a", 1), TypeError, "low must be a real number; got str"),
        (lambda: LogUniform(1e-3, float("inf")), ValueError, "finite"),
        (lambda: OneMinusLogUniform(0.9, 1.0), ValueError, "0 <= low < high < 1"),
        (lambda: OneMinusLogUniform(-0.1, 0.5), ValueError, "0 <= low < high < 1"),
        (lambda: Uniform(1, 1), ValueError, "low < high"),
        (lambda: Uniform(0, float("nan")), ValueError, "finite"),
        (lambda: IntUniform(1.5, 3), TypeError, "low must be an int; got float"),
        (lambda: IntUniform(5, 2), ValueError, "low <= high"),
        (lambda: IntUniform(True, 2), TypeError, "low must be an int; got bool"),
        (lambda: LogIntUniform(0, 5), ValueError, "1 <= low"),
        (lambda: Choice([]), ValueError, "at least one option"),
        (lambda: Choice("abc"), TypeError, "list or tuple"),
        (lambda: Choice({"a": 1}), TypeError, "list or tuple"),
        (lambda: LogUniform(1e-3, 1).sample(rng="seed"), TypeError, "rng must be"),
        (lambda: LogUniform(1e-3, 1).sample(0, size=-1), ValueError, "size"),
    ],
)
def test_distribution_arguments_are_checked(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --------------------------------------------------------------------------
# sampling a space
# --------------------------------------------------------------------------


def test_params_depend_only_on_seed_and_trial_index():
    space = dict(SPACE, epochs=20, layers=(64, 32))
    first = expected(space, 5, 8)
    # trial i of a longer search draws the same; the streams are SeedSequence(seed).spawn(n)[i]
    assert expected(space, 5, 3) == first[:3]
    children = np.random.SeedSequence(5).spawn(8)
    for i, child in enumerate(children):
        rng = np.random.default_rng(child)
        draws = {key: None for key in sorted(SPACE)}
        draws["activation"] = SPACE["activation"][int(rng.integers(0, 2))]
        draws["beta"] = 1 - 10 ** rng.uniform(math.log10(1 - 0.999), math.log10(1 - 0.9))
        draws["hidden"] = int(rng.integers(16, 257))
        draws["lr"] = 10 ** rng.uniform(-4, -1)
        assert first[i]["activation"] == draws["activation"] and first[i]["hidden"] == draws["hidden"]
        assert first[i]["beta"] == pytest.approx(draws["beta"], rel=1e-15)
        assert first[i]["lr"] == pytest.approx(draws["lr"], rel=1e-15)
        # constants pass through unchanged, the list became a Choice
        assert first[i]["epochs"] == 20 and first[i]["layers"] == (64, 32)
    assert expected(space, 6, 8) != first
    assert len({p["lr"] for p in first}) == 8


def test_scipy_distributions_are_accepted():
    space = {"lr": stats.loguniform(1e-4, 1e-1), "hidden": 32}
    params = [sample_params(space, 0, i) for i in range(50)]
    assert all(1e-4 <= p["lr"] <= 1e-1 and type(p["lr"]) is float for p in params)
    assert params == [sample_params(space, 0, i) for i in range(50)]


# --------------------------------------------------------------------------
# running trials
# --------------------------------------------------------------------------


def test_same_params_and_scores_for_any_executor_and_completion_order(tmp_path):
    n = 6
    space = dict(SPACE, delay=0.0)
    reference = expected(space, 3, n)
    runs = {
        "local, 1 worker": random_search(helpers.slow_peaked, space, n, seed=3, n_workers=1),
        "local, 2 workers": random_search(helpers.slow_peaked, space, n, seed=3, n_workers=2),
    }
    with ProcessPoolExecutor(2, mp_context=SPAWN) as pool:
        runs["process pool"] = random_search(helpers.slow_peaked, space, n, seed=3, executor=pool)
    # threads that finish in a scrambled order (sleeps set by the parameters)
    slow = dict(SPACE, delay=0.2)
    out = tmp_path / "order.jsonl"
    with ThreadPoolExecutor(n) as pool:
        runs["threads"] = random_search(helpers.slow_peaked, slow, n, seed=3, executor=pool, out=out)
    finished = [json.loads(line)["trial"] for line in out.read_text().splitlines()]
    assert sorted(finished) == list(range(n)) and finished != list(range(n))

    for name, results in runs.items():
        assert sorted(r["trial"] for r in results) == list(range(n)), name
        for r in results:
            assert r["status"] == "ok", (name, r["error"])
            want = dict(reference[r["trial"]], delay=r["params"]["delay"])
            assert r["params"] == want, name
            assert r["score"] == helpers.peaked(**{k: want[k] for k in SPACE})["score"], name
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True), name
    base = {k: (p["lr"], s) for k, (p, s, _) in by_trial(runs["local, 1 worker"]).items()}
    for results in runs.values():
        assert {k: (p["lr"], s) for k, (p, s, _) in by_trial(results).items()} == base
    # the default executor ran the trials in worker processes
    pids = {r["metrics"]["pid"] for r in runs["local, 2 workers"]}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_local_workers_use_one_compute_thread():
    results = random_search(helpers.thread_report, {"x": Uniform(0, 1)}, 2, n_workers=2)
    for r in results:
        assert r["status"] == "ok", r["error"]
        assert r["metrics"]["omp_env"] == "1" and r["metrics"]["numba_env"] == "1"
        assert r["metrics"]["max_threads"] == 1
        assert r["metrics"]["kernel_threads"] == 1


def test_closures_run_in_local_worker_processes():
    offset = 0.25

    def train_fn(x):
        return {"score": x + offset, "pid": os.getpid()}

    results = random_search(train_fn, {"x": Uniform(0, 1)}, 2, n_workers=1)
    assert all(r["status"] == "ok" for r in results)
    assert [r["score"] for r in results] == sorted(p["x"] + offset for p in expected({"x": Uniform(0, 1)}, 0, 2))[::-1]
    assert results[0]["metrics"]["pid"] != os.getpid()


def test_failing_trials_are_recorded_and_the_others_complete():
    space = {"x": Uniform(0, 1), "threshold": 0.6}
    params = expected(space, 0, 8)
    n_bad = sum(p["x"] > 0.6 for p in params)
    assert 0 < n_bad < 8
    with ThreadPoolExecutor(3) as pool:
        results = random_search(helpers.fail_above, space, 8, executor=pool)
    assert [r["status"] for r in results] == ["ok"] * (8 - n_bad) + ["failed"] * n_bad
    for r in results:
        assert r["params"] == params[r["trial"]]
        if r["status"] == "failed":
            assert r["score"] is None and r["error"].startswith("ValueError: x=")
            assert "is above 0.6" in r["error"] and "Traceback" in r["traceback"]
        else:
            assert r["score"] == -params[r["trial"]]["x"] and r["error"] is None
    assert [r["trial"] for r in results[-n_bad:]] == sorted(r["trial"] for r in results[-n_bad:])
    assert results.best is results[0] and results.best_params == results[0]["params"]


@pytest.mark.parametrize(
    "kind, message",
    [
        ("list", "must return a dict with a 'score'; it returned list"),
        ("none", "must return a dict with a 'score'; it returned NoneType"),
        ("no_score", "without 'score'"),
        ("nan", "must be finite; got nan"),
        ("inf", "must be finite; got -inf"),
        ("str", "must be a real number; got str"),
        ("bool", "must be a real number; got bool"),
    ],
)
def test_bad_train_fn_results_fail_the_trial(kind, message):
    with ThreadPoolExecutor(1) as pool:
        results = random_search(helpers.returns, {"kind": kind}, 1, executor=pool)
    assert results[0]["status"] == "failed" and message in results[0]["error"]
    assert results.best is None and results.best_score is None


def test_numpy_scores_and_metrics_are_kept(tmp_path):
    out = tmp_path / "np.jsonl"
    with ThreadPoolExecutor(1) as pool:
        results = random_search(helpers.returns, {"kind": "numpy"}, 1, executor=pool, out=out)
    assert results[0]["score"] == 0.5 and type(results[0]["score"]) is float
    np.testing.assert_array_equal(results[0]["metrics"]["curve"], [0.0, 1.0, 2.0])
    assert json.loads(out.read_text())["metrics"]["curve"] == [0.0, 1.0, 2.0]


def test_sys_exit_in_train_fn_fails_only_that_trial():
    with ThreadPoolExecutor(2) as pool:
        results = random_search(helpers.exits, {"x": Uniform(0, 1)}, 2, executor=pool)
    assert [r["status"] for r in results] == ["failed", "failed"]
    assert results[0]["error"] == "SystemExit: 3"


@pytest.mark.parametrize("executor", ["local", "process pool"])
def test_a_worker_that_dies_fails_its_trial_only(executor):
    n, bad_trial = 5, 3
    bad = sample_params({"x": Uniform(0, 1)}, 0, bad_trial)["x"]
    space = {"x": Uniform(0, 1), "bad": bad}
    if executor == "local":
        results = random_search(helpers.crash_on, space, n, n_workers=2)
    else:
        pool = ProcessPoolExecutor(2, mp_context=SPAWN)
        try:
            results = random_search(helpers.crash_on, space, n, executor=pool)
        finally:
            pool.shutdown()
    by_index = {r["trial"]: r for r in results}
    assert sorted(by_index) == list(range(n))
    assert by_index[bad_trial]["status"] == "failed"
    assert "worker process died" in by_index[bad_trial]["error"]
    assert "BrokenProcessPool" in by_index[bad_trial]["error"]
    for trial, r in by_index.items():
        if trial != bad_trial:
            assert r["status"] == "ok" and r["score"] == r["params"]["x"], r["error"]
    assert results[-1]["trial"] == bad_trial


def test_resume_skips_finished_trials(tmp_path):
    out, counter = tmp_path / "search.jsonl", tmp_path / "calls.txt"
    space = {"x": Uniform(0, 1), "counter": str(counter)}
    n = 6
    first = random_search(helpers.counted, space, n, out=out, n_workers=2)
    assert len(counter.read_text().splitlines()) == n
    lines = out.read_text().splitlines()
    assert len(lines) == n and sorted(json.loads(line)["trial"] for line in lines) == list(range(n))

    # the same search again: every trial is read back, none is run
    with ThreadPoolExecutor(2) as pool:
        again = random_search(helpers.counted, space, n, out=out, executor=pool)
    assert len(counter.read_text().splitlines()) == n
    assert by_trial(again) == by_trial(first)
    assert [r["metrics"] for r in again] == [r["metrics"] for r in first]
    assert len(out.read_text().splitlines()) == n

    # a search stopped after two trials, its last line cut short by the crash
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:17])
    with ThreadPoolExecutor(2) as pool, pytest.warns(RuntimeWarning, match="1 unreadable line"):
        resumed = random_search(helpers.counted, space, n, out=out, executor=pool)
    assert len(counter.read_text().splitlines()) == 2 * n - 2
    assert by_trial(resumed) == by_trial(first)
    saved = [json.loads(line) for line in out.read_text().splitlines()[:2] + out.read_text().splitlines()[3:]]
    assert sorted(r["trial"] for r in saved) == list(range(n))

    # another seed draws other parameters: nothing matches, everything runs
    with ThreadPoolExecutor(2) as pool, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        random_search(helpers.counted, space, n, seed=1, out=out, executor=pool)
    assert len(counter.read_text().splitlines()) == 3 * n - 2


def test_resume_keeps_failed_trials_unless_retried(tmp_path):
    out = tmp_path / "fail.jsonl"
    space = {"x": Uniform(0, 1), "threshold": 0.6}
    with ThreadPoolExecutor(2) as pool:
        first = random_search(helpers.fail_above, space, 6, executor=pool, out=out)
    n_failed = sum(r["status"] == "failed" for r in first)
    assert n_failed > 0

    def must_not_run(x, threshold):
        raise AssertionError("a finished trial ran again")

    with ThreadPoolExecutor(2) as pool:
        again = random_search(must_not_run, space, 6, executor=pool, out=out)
    assert by_trial(again) == by_trial(first)
    assert [r["error"] for r in again] == [r["error"] for r in first]
    with ThreadPoolExecutor(2) as pool:
        retried = random_search(must_not_run, space, 6, executor=pool, out=out, retry_failed=True)
    assert sum("a finished trial ran again" in (r["error"] or "") for r in retried) == n_failed
    assert len(out.read_text().splitlines()) == 6 + n_failed


# --------------------------------------------------------------------------
# coarse to fine
# --------------------------------------------------------------------------


def log_width(dist):
    if isinstance(dist, LogUniform):
        return math.log10(dist.high / dist.low)
    if isinstance(dist, OneMinusLogUniform):
        return math.log10((1 - dist.low) / (1 - dist.high))
    return dist.high - dist.low


def test_coarse_to_fine_narrows_around_the_best():
    n, rounds, keep = 12, 3, 0.25
    with ThreadPoolExecutor(4) as pool:
        results = coarse_to_fine(helpers.peaked, SPACE, n, rounds=rounds, keep=keep, seed=0, executor=pool)
        first_round = random_search(helpers.peaked, SPACE, n, seed=0, executor=pool)
    assert len(results) == n * rounds and len(results.spaces) == rounds == len(results.seeds)
    assert results.seeds[0] == 0 and len(set(results.seeds)) == rounds
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert sorted({r["round"] for r in results}) == list(range(rounds))
    # round 0 is random_search with the same seed
    assert by_trial(first_round) == {(None, t): v for (rnd, t), v in by_trial(results).items() if rnd == 0}
    for rnd in range(rounds):
        trials = [r for r in results if r["round"] == rnd]
        assert len(trials) == n
        for r in trials:
            assert r["params"] == sample_params(results.spaces[rnd], results.seeds[rnd], r["trial"])
        if rnd + 1 == rounds:
            break
        old, new = results.spaces[rnd], results.spaces[rnd + 1]
        assert new == narrow_space(old, trials, keep)
        best = sorted(trials, key=lambda r: -r["score"])[:3]  # ceil(0.25 * 12)
        for key in ("lr", "beta", "hidden"):
            assert type(new[key]) is type(old[key])
            assert old[key].low <= new[key].low <= new[key].high <= old[key].high
            assert log_width(new[key]) < log_width(old[key])
            values = [r["params"][key] for r in best]
            assert new[key].low == min(values) and new[key].high == max(values)
        assert set(new["activation"].options) == {r["params"]["activation"] for r in best}
    # zooming in found a better model than the coarse round alone
    assert results.best_score >= max(r["score"] for r in results if r["round"] == 0)
    assert log_width(results.spaces[-1]["lr"]) < 0.5 * log_width(SPACE["lr"])


def test_narrow_space_keeps_at_least_two_trials_and_constants():
    space = {"lr": LogUniform(1e-4, 1e-1), "epochs": 10, "kind": ["a", "b", "c"]}
    trials = [
        {"trial": 0, "params": {"lr": 1e-3, "epochs": 10, "kind": "a"}, "score": 0.9, "status": "ok"},
        {"trial": 1, "params": {"lr": 5e-3, "epochs": 10, "kind": "c"}, "score": 0.8, "status": "ok"},
        {"trial": 2, "params": {"lr": 5e-2, "epochs": 10, "kind": "b"}, "score": 0.1, "status": "ok"},
        {"trial": 3, "params": {"lr": 9e-2, "epochs": 10, "kind": "b"}, "score": None, "status": "failed"},
    ]
    narrowed = narrow_space(space, trials, keep=0.1)
    assert narrowed == {"lr": LogUniform(1e-3, 5e-3), "epochs": 10, "kind": Choice(["a", "c"])}
    with pytest.raises(ValueError, match="at least 2 successful trials"):
        narrow_space(space, trials[2:], keep=0.5)
    with pytest.raises(ValueError, match="keep"):
        narrow_space(space, trials, keep=0.0)


def test_coarse_to_fine_reuses_local_workers_and_resumes(tmp_path):
    out, counter = tmp_path / "c2f.jsonl", tmp_path / "calls.txt"
    space = {"x": Uniform(0, 1), "counter": str(counter)}
    results = coarse_to_fine(helpers.counted, space, 4, rounds=2, keep=0.5, out=out, n_workers=2)
    assert len(counter.read_text().splitlines()) == 8
    assert results.spaces[1]["x"].high - results.spaces[1]["x"].low < 1
    saved = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["round"], r["trial"]) for r in saved) == [(r, t) for r in range(2) for t in range(4)]
    with ThreadPoolExecutor(2) as pool:
        again = coarse_to_fine(helpers.counted, space, 4, rounds=2, keep=0.5, out=out, executor=pool)
    assert len(counter.read_text().splitlines()) == 8
    assert by_trial(again) == by_trial(results) and again.spaces == results.spaces
    # a third round continues from the file: only its trials run
    with ThreadPoolExecutor(2) as pool:
        more = coarse_to_fine(helpers.counted, space, 4, rounds=3, keep=0.5, out=out, executor=pool)
    assert len(counter.read_text().splitlines()) == 12 and len(more) == 12


def test_coarse_to_fine_keeps_the_space_after_a_failed_round():
    space = {"x": Uniform(0, 1), "threshold": -1.0}  # every trial fails
    with ThreadPoolExecutor(2) as pool, pytest.warns(RuntimeWarning, match="round 1 searches the same space"):
        results = coarse_to_fine(helpers.fail_above, space, 3, rounds=2, executor=pool)
    assert results.spaces[0] == results.spaces[1] and all(r["status"] == "failed" for r in results)
    assert pickle.loads(pickle.dumps(results)).spaces == results.spaces


# --------------------------------------------------------------------------
# a cluster
# --------------------------------------------------------------------------


def test_dask_distributed_cluster(monkeypatch):
    from dask.distributed import Client, LocalCluster

    # cluster workers import fusednet and the helpers by name
    package_root = str(Path(fusednet.__file__).resolve().parents[1])
    path = os.pathsep.join([TESTS_DIR, package_root, os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path.rstrip(os.pathsep))
    n = 4
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        results = random_search(helpers.peaked, SPACE, n, seed=9, executor=client.get_executor())
        via_client = random_search(helpers.peaked, SPACE, n, seed=9, executor=client)
    reference = expected(SPACE, 9, n)
    assert len(results) == n
    for r in results:
        assert r["status"] == "ok", r["error"]
        assert r["params"] == reference[r["trial"]]
        assert r["score"] == helpers.peaked(**reference[r["trial"]])["score"]
        assert r["metrics"]["pid"] != os.getpid()
    assert by_trial(via_client) == by_trial(results)


# --------------------------------------------------------------------------
# the tune command's trial function
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names, n_classes",
    [
        (["1", "2", "3"], 3),  # labels 1..k are k classes, not k + 1
        (["1", "2"], 2),  # two classes: a sigmoid output
        (["setosa", "virginica", "versicolor"], 3),  # words, as the train command takes them
    ],
)
def test_tune_command_trials_encode_labels_by_sorted_value(tmp_path, names, n_classes):
    from fusednet.tune_cli import _trial_data, train_trial

    rng = np.random.default_rng(0)
    labels = np.array(names)[np.arange(60) % len(names)]
    X = rng.normal(size=(60, 3)) + (np.searchsorted(np.unique(labels), labels) * 2.0)[:, None]
    path = tmp_path / "data.csv"
    path.write_text("".join(f"{a:.6f},{b:.6f},{c:.6f},{label}\n" for (a, b, c), label in zip(X, labels)))
    X_read, ids, k = _trial_data(str(path), -1)
    assert k == n_classes and X_read.shape == (60, 3)
    np.testing.assert_array_equal(ids, np.searchsorted(sorted(set(names)), labels))
    result = train_trial(lr=1e-2, beta1=0.9, hidden=8, activation="relu", l2=0.0, epochs=2, seed=0, data=str(path))
    assert 0.0 <= result["score"] <= 1.0 and math.isfinite(result["dev_loss"])


# --------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(train_fn="peaked"), TypeError, "train_fn must be callable.*got str"),
        (dict(space=[("lr", 0.1)]), TypeError, "space must be a dict.*got list"),
        (dict(space={}), ValueError, "space must hold at least one parameter"),
        (dict(space={1: Uniform(0, 1)}), TypeError, "space keys must be str"),
        (dict(space={"x": []}), ValueError, r"space\['x'\] is an empty list"),
        (dict(n_trials=0), ValueError, "n_trials must be a positive int; got 0"),
        (dict(n_trials=2.5), TypeError, "n_trials must be a positive int; got float"),
        (dict(n_trials=True), TypeError, "n_trials must be a positive int; got bool"),
        (dict(seed=-1), ValueError, "seed must be >= 0; got -1"),
        (dict(seed=1.0), TypeError, "seed must be an int; got float"),
        (dict(seed=np.random.default_rng(0)), TypeError, "seed must be an int; got Generator"),
        (dict(executor="threads"), TypeError, "executor must be None.*got str"),
        (dict(n_workers=0), ValueError, "n_workers must be None or a positive int; got 0"),
        (dict(executor=ThreadPoolExecutor(1), n_workers=2), ValueError, "n_workers applies only with executor=None"),
        (dict(out=3), TypeError, "out must be None or a file path; got int"),
        (dict(progress="yes"), TypeError, "progress must be True or False"),
        (
            dict(space={"lr": Uniform(0, 1), "typo": 1}),
            ValueError,
            "train_fn cannot be called with the space's parameters",
        ),
    ],
)
def test_random_search_arguments_are_checked(kwargs, error, match):
    args = dict(train_fn=helpers.fail_above, space={"x": Uniform(0, 1), "threshold": 2.0}, n_trials=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        random_search(**args)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rounds=0), ValueError, "rounds must be a positive int; got 0"),
        (dict(rounds=1.5), TypeError, "rounds must be a positive int; got float"),
        (dict(keep=0.0), ValueError, r"keep must be a fraction in \(0, 1\]; got 0.0"),
        (dict(keep=1.5), ValueError, "keep must be a fraction"),
    ],
)
def test_coarse_to_fine_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        coarse_to_fine(helpers.fail_above, {"x": Uniform(0, 1), "threshold": 2.0}, 2, **kwargs)


def test_unpicklable_train_fn_is_refused_before_running():
    class WithLock:
        def __init__(self):
            self.lock = threading.Lock()

        def __call__(self, x):
            return {"score": x}

    with pytest.raises(TypeError, match="train_fn must be picklable.*ThreadPoolExecutor"):
        random_search(WithLock(), {"x": Uniform(0, 1)}, 2, n_workers=1)
    with ThreadPoolExecutor(1) as pool:  # threads need no pickling
        assert random_search(WithLock(), {"x": Uniform(0, 1)}, 2, executor=pool)[0]["status"] == "ok"
