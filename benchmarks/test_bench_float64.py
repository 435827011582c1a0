"""float64 on the one-call step: the course's nets against the textbook NumPy loop and the per-kernel path.

The course's exercises are float64.  Three workloads of ``test_bench_course.py`` -- planar
2-4-1 in one batch of 400 rows, moons 2-5-2-1 in batches of 64, digits 64-100-10 in batches
of 200 -- trained in float64 by:

* ``fusednet``: ``Trainer.fit`` as a user runs it (the one-call step, every epoch in one
  compiled call: ``fn.info()["last_fit"]`` is printed);
* ``per-kernel path``: the same fit with ``fused_step=False`` (one call per kernel, NumPy's
  matmul for the products);
* ``textbook``: the course's NumPy loop (``_course_peers.textbook_program``), in this process.

Then the 784-256-128-10 MLP (Adam) in float64 at batches of 128 to 16384 rows, one epoch of
8192 rows (16384 for the largest batch): the step on a team against the per-kernel path, the
measurement behind ``fusednet._fused.MAX_ROWS_F64`` (the step is timed above it too; what the
policy chooses is printed).

Every entry is timed in turns, one fit each per round, the order rotating; the figures are the
medians over the rounds, per step, and each other entry's median ratio to fusednet's is printed.
Before timing, the textbook loop's cost after a few float64 epochs (mini-batches in order) must
equal fusednet's.  Under ``--benchmark-disable`` each runs once on a few epochs, untimed.

Run:  pytest benchmarks/test_bench_float64.py --benchmark-only -s
"""

import numpy as np
import pytest
from _course_peers import textbook_program
from test_bench_course import (
    WORKLOADS,
    assert_agree,
    fusednet_check,
    fusednet_trainer,
    in_turns,
    initial_weights,
    report,
    steps_per_epoch,
    timed,
)
from test_bench_trainer import DIMS as MLP_DIMS
from test_bench_trainer import mnist_like

import fusednet as fn
from fusednet import _fused

ROUNDS = 7


@pytest.mark.parametrize("name", ["planar", "moons", "digits"])
def test_course_fit_float64(benchmark, name):
    w = WORKLOADS[name]
    benchmark.group = f"float64 {w.group}"
    epochs, rounds = (w.quick_epochs, 1) if benchmark.disabled else (w.epochs, ROUNDS)
    X, y = w.data()
    X = np.asarray(X, np.float64)
    weights = initial_weights(w.dims, w.init)
    spec = w.spec(epochs, len(X))
    textbook = textbook_program(spec, X, y, weights, fn.get_num_threads())
    assert_agree(fusednet_check(w, X, y, weights, w.check_epochs),
                 {"textbook": textbook(np.float64, False)(w.check_epochs)})
    ours = fusednet_trainer(w, weights, epochs, "float64", shuffle=True)
    ours.fit(X, y)
    last = fn.info()["last_fit"]
    path = benchmark.extra_info["fusednet path"] = f"{last['step']}; {last['epochs']}"
    print(f"\n{benchmark.group}: fusednet: {path}")
    assert last["dtype"] == "float64" and last["step"].startswith("one-call step"), path
    per_kernel = fusednet_trainer(w, weights, epochs, "float64", shuffle=True)
    per_kernel.fused_step = False
    per_kernel.fit(X, y)
    fit_textbook = textbook(np.float64, True)
    fit_textbook(epochs)
    times = in_turns({"fusednet": lambda: timed(ours.fit, X, y),
                      "per-kernel path": lambda: timed(per_kernel.fit, X, y),
                      "textbook": lambda: timed(fit_textbook, epochs)}, rounds)
    steps = epochs * steps_per_epoch(len(X), w.batch)
    report(benchmark, {k: [t / steps for t in ts] for k, ts in times.items()}, {}, {}, "per step")
    benchmark.pedantic(lambda: None, rounds=1)


@pytest.mark.parametrize("batch", [128, 1024, 8192, 16384])
def test_mlp_float64_team_step_rows(benchmark, monkeypatch, batch):
    """The step on a team against the per-kernel path as the batch grows (``_fused.MAX_ROWS_F64``).

    The step is timed past the limit too (the limit raised for the test): the figures are what set it.
    """
    benchmark.group = f"float64 MLP 784-256-128-10 Adam, batch {batch}, per step"
    m, rounds = (256, 1) if benchmark.disabled else (max(8192, batch), 5)
    X, y = mnist_like(m)
    X = X.astype(np.float64)
    trainers = {}
    for name, fused in (("fusednet", True), ("per-kernel path", False)):
        model = fn.Sequential([fn.layers.Dense(n, activation="relu") for n in MLP_DIMS[1:-1]]
                              + [fn.layers.Dense(MLP_DIMS[-1], activation="softmax")],
                              input_dim=MLP_DIMS[0], dtype="float64", seed=0)
        trainers[name] = fn.Trainer(model, fn.optim.Adam(1e-3), batch_size=batch, epochs=1, seed=0, progress=False,
                                    fused_step=fused)
    policy = _fused.rows_why_not(trainers["fusednet"].model, min(batch, m), fn.get_num_threads())
    print(f"\n{benchmark.group}: the policy: {policy or 'the one-call step'}")
    monkeypatch.setattr(_fused, "MAX_ROWS_F64", max(_fused.MAX_ROWS_F64, batch))
    for name, trainer in trainers.items():
        trainer.fit(X, y)
        if trainer.fused_step:
            last = fn.info()["last_fit"]
            assert last["step"].startswith("one-call step"), last["step"]
            benchmark.extra_info["fusednet path"] = f"{last['step']}; {last['epochs']}"
            print(f"{benchmark.group}: fusednet: {benchmark.extra_info['fusednet path']}")
    times = in_turns({name: (lambda t=t: timed(t.fit, X, y)) for name, t in trainers.items()}, rounds)
    steps = steps_per_epoch(m, batch)
    report(benchmark, {k: [t / steps for t in ts] for k, ts in times.items()}, {}, {}, "per step")
    benchmark.pedantic(lambda: None, rounds=1)
