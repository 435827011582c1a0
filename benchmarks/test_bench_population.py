"""Many models at once: a Population against the same fits one after another, JAX and scikit-learn.

* moons 2-5-2-1 ReLU/sigmoid, 320 points, Adam, batch 64, 200 epochs, K = 32
  configurations with log-uniform learning rates and L2;
* the digits net 64-64-10 ReLU/softmax, 1408 points, Adam, batch 64, 20
  epochs, K = 32;
* a successive-halving search on moons, 81 candidates (log-uniform learning
  rate and L2), factor 3, 1 to 81 epochs: ``fn.tune.random_search`` with
  ``halving=`` over a :class:`~fusednet.tune.PopulationTask` against
  scikit-learn's successive halving over ``MLPClassifier``.  Both sides get
  the same 81 candidates (the search's own draws, ``fn.tune.sample_params``,
  handed to scikit-learn as a list: ``HalvingGridSearchCV`` over 81
  one-point grids, which halves exactly as ``HalvingRandomSearchCV`` does
  once the candidates are drawn), the same factor and epochs (``max_iter``,
  ``min_resources="exhaust"``), and the same split: train on the 240
  training points, score on the 80 dev points (``cv`` is that one split, so
  scikit-learn ranks the candidates by the same dev accuracy the search
  ranks by, and fits each candidate once per rung).  The best dev score is
  on both sides the dev accuracy of the candidate left at the last rung
  (scikit-learn's ``best_score_``, the search's ``best_score``).  What still
  differs is each library's own training: scikit-learn refits a candidate
  from scratch at every rung where the search continues it (the same
  result for a fixed number of epochs, at more cost), and its
  ``MLPClassifier`` has its own initialisation and stops early when the
  loss stalls (``tol``, ``n_iter_no_change``).

Every implementation runs in a process of its own that stays alive and does
one run per round, the rounds taken in turns (the machine's speed drifts);
float32, 2 threads.  ``sequential-trainer`` is the same K fits one after
another with :class:`~fusednet.Trainer`; ``jax-vmap`` is ``jit(vmap(fit))``
over the K configurations with the compile time left out (it drops the last
partial batch: the sizes here have none).  JAX or scikit-learn missing: their
entries are left out.  Under ``--benchmark-disable`` every process runs once,
on a shorter schedule.
"""

import statistics
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import add_external

_COMMON = """
import sys, time
import numpy as np
import fusednet as fn
K, EPOCHS = {K}, {epochs}
rng = np.random.default_rng(0)
LRS = 10 ** rng.uniform(-4, -1, K)
L2S = 10 ** rng.uniform(-4, -1, K)
if "{data}" == "moons":
    X, y = fn.datasets.moons(m=320, seed=0)
    SIZES, OUT = [2, 5, 2, 1], "sigmoid"
else:
    X, y = fn.datasets.digits()
    X, y = X[:1408] / 16.0, y[:1408]
    SIZES, OUT = [64, 64, 10], "softmax"
X = np.ascontiguousarray(X, np.float32)
def layers():
    return [fn.layers.Dense(n, activation="relu") for n in SIZES[1:-1]] + [fn.layers.Dense(SIZES[-1], activation=OUT)]
"""

_IMPLS = {
    "fusednet": """
def run():
    pop = fn.Population(layers(), input_dim=SIZES[0], configs=[{"lr": a, "l2": b} for a, b in zip(LRS, L2S)],
                        batch_size=64, epochs=EPOCHS)
    pop.fit(X, y)
""",
    "sequential-trainer": """
def run():
    for a, b in zip(LRS, L2S):
        model = fn.Sequential(layers(), input_dim=SIZES[0], l2=b)
        fn.Trainer(model, optimizer=fn.optim.Adam(lr=a), batch_size=64, epochs=EPOCHS, progress=False).fit(X, y)
""",
    "jax-vmap": """
import jax, jax.numpy as jnp
Xj = jnp.asarray(X)
if OUT == "sigmoid":
    Yj = jnp.asarray(y, jnp.float32).reshape(-1, 1)
else:
    Yj = jax.nn.one_hot(jnp.asarray(y), SIZES[-1])
B, n = 64, X.shape[0]
def init(key):
    ps = []
    for a, b in zip(SIZES[:-1], SIZES[1:]):
        key, k = jax.random.split(key)
        ps.append((jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), jnp.zeros(b)))
    return ps
def loss_fn(ps, xb, yb, l2):
    a = xb
    for i, (W, b) in enumerate(ps):
        a = a @ W + b
        if i < len(ps) - 1:
            a = jax.nn.relu(a)
    if OUT == "sigmoid":
        loss = jnp.mean(jnp.maximum(a, 0) - a * yb + jnp.log1p(jnp.exp(-jnp.abs(a))))
    else:
        loss = -jnp.mean(jnp.sum(yb * jax.nn.log_softmax(a), axis=1))
    return loss + l2 / (2 * xb.shape[0]) * sum(jnp.sum(W * W) for W, _ in ps)
def fit(lr, l2, key):
    ps = init(jax.random.PRNGKey(0))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, ps)
    def epoch(carry, k):
        perm = jax.random.permutation(k, n)
        def step(carry, i):
            ps, m, v, t = carry
            idx = jax.lax.dynamic_slice(perm, (i * B,), (B,))
            g = jax.grad(loss_fn)(ps, Xj[idx], Yj[idx], l2)
            t = t + 1
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
            ps = jax.tree_util.tree_map(
                lambda p, m, v: p - lr * (m / (1 - 0.9 ** t)) / (jnp.sqrt(v / (1 - 0.999 ** t)) + 1e-8), ps, m, v)
            return (ps, m, v, t), None
        return jax.lax.scan(step, carry, jnp.arange(n // B))[0], None
    return jax.lax.scan(epoch, (ps, zeros, zeros, 0.0), jax.random.split(key, EPOCHS))[0][0]
many = jax.jit(jax.vmap(fit, in_axes=(0, 0, None)))
lrs, l2s, key = jnp.asarray(LRS, jnp.float32), jnp.asarray(L2S, jnp.float32), jax.random.PRNGKey(1)
def run():
    jax.block_until_ready(many(lrs, l2s, key))
""",
}

_HALVING = {
    "fusednet": """
from fusednet.tune import Halving, LogUniform, PopulationTask, random_search
task = PopulationTask(layers(), Xtr, ytr, (Xdv, ydv), batch_size=64, epochs=EPOCHS)
space = {"lr": LogUniform(1e-4, 1e-1), "l2": LogUniform(1e-4, 1e-1)}
def run():
    global SCORE
    results = random_search(task, space, N, seed=0, halving=Halving(factor=3, max_resources=EPOCHS))
    SCORE = results.best_score
""",
    "sklearn-halving": """
import warnings
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import HalvingGridSearchCV
from sklearn.neural_network import MLPClassifier
from fusednet.tune import LogUniform, sample_params
space = {"lr": LogUniform(1e-4, 1e-1), "l2": LogUniform(1e-4, 1e-1)}
candidates = [sample_params(space, seed=0, trial=t) for t in range(N)]
grid = [{"learning_rate_init": [c["lr"]], "alpha": [c["l2"]]} for c in candidates]
Xall, yall = np.concatenate([Xtr, Xdv]), np.concatenate([ytr, ydv])
split = [(np.arange(len(Xtr)), np.arange(len(Xtr), len(Xall)))]
def run():
    global SCORE
    search = HalvingGridSearchCV(
        MLPClassifier(hidden_layer_sizes=tuple(SIZES[1:-1]), batch_size=64, solver="adam", random_state=0),
        grid, factor=3, resource="max_iter", max_resources=EPOCHS, min_resources="exhaust", cv=split,
        refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(Xall, yall)
    SCORE = search.best_score_
""",
}

_SERVE = """
run()
print("ready", flush=True)
for line in sys.stdin:
    t0 = time.perf_counter(); run(); print(time.perf_counter() - t0, globals().get("SCORE", ""), flush=True)
"""


def _server(code):
    """A process that runs ``run()`` once (compiles, warms up), then once per line it reads, printing the time."""
    proc = subprocess.Popen([sys.executable, "-c", code + _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        err = proc.stderr.read().strip().splitlines()
        raise RuntimeError(err[-1] if err else "the process did not start")
    return proc


def _available(module):
    try:
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True, timeout=120)
        return True
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False


def _in_turns(benchmark, codes, rounds):
    """Time each implementation's ``run()`` in its own process, one run each per round; medians to the table."""
    servers = {name: _server(code) for name, code in codes.items()}
    times = {name: [] for name in servers}
    scores = {}
    try:
        for _ in range(rounds):
            for name, proc in servers.items():
                time.sleep(0.2)  # let the previous process's threads park
                proc.stdin.write("go\n")
                proc.stdin.flush()
                seconds, _, score = proc.stdout.readline().partition(" ")
                times[name].append(float(seconds))
                if score.strip():
                    scores[name] = float(score)
    finally:
        for proc in servers.values():
            proc.stdin.close()
            proc.wait(timeout=120)
    for name, ts in times.items():
        add_external(benchmark.group, name, statistics.median(ts))
        benchmark.extra_info[name] = ts
    for name, ts in times.items():
        if name != "fusednet":
            ratios = [t / f for t, f in zip(ts, times["fusednet"])]
            benchmark.extra_info[f"ratio {name}"] = ratios
            print(f"\n{benchmark.group}: {name} / fusednet, median {statistics.median(ratios):.2f} "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    if scores:
        benchmark.extra_info["best dev score"] = scores
        print(f"{benchmark.group}: best dev accuracy {scores}")
    benchmark.pedantic(lambda: None, rounds=1)
    return times, scores


def _impls(table):
    peers = {"jax-vmap": "jax", "sklearn-halving": "sklearn"}
    return {name: code for name, code in table.items() if name not in peers or _available(peers[name])}


@pytest.mark.parametrize("data", ["moons", "digits"])
def test_population_against_sequential_fits_and_jax(benchmark, data):
    benchmark.group = f"{data} population K=32, float32, 2 threads"
    epochs = {"moons": 200, "digits": 20}[data]
    if benchmark.disabled:
        epochs = 2
    common = _COMMON.format(K=32, epochs=epochs, data=data)
    codes = {name: common + textwrap.dedent(code) for name, code in _impls(_IMPLS).items()}
    times, _ = _in_turns(benchmark, codes, rounds=1 if benchmark.disabled else 7)
    assert all(t > 0 for ts in times.values() for t in ts)


def test_halving_search_against_scikit_learn(benchmark):
    benchmark.group = "halving search moons, 81 candidates, factor 3, float32, 2 threads"
    n, epochs = (9, 9) if benchmark.disabled else (81, 81)
    common = _COMMON.format(K=1, epochs=epochs, data="moons") + textwrap.dedent(f"""
        N = {n}
        order = np.random.default_rng(1).permutation(len(X))
        Xtr, ytr, Xdv, ydv = X[order[:240]], y[order[:240]], X[order[240:]], y[order[240:]]
        """)
    codes = {name: common + textwrap.dedent(code) for name, code in _impls(_HALVING).items()}
    _, scores = _in_turns(benchmark, codes, rounds=1 if benchmark.disabled else 3)
    assert 0.0 <= scores["fusednet"] <= 1.0
