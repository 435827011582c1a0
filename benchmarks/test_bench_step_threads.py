"""The one-call step on one thread against a team of two, by the size of the step.

Chooses ``fusednet.kernels._policy.STEP_SERIAL_FLOPS``: below it a team's start and barriers
cost more than the second core saves.  Each net's step is timed in-process,
alternating one thread and two, as the median of several rounds; the printed
line gives the step's product flops and time(1 thread) / time(2 threads)
(above 1: the team pays).
"""

import statistics
import time

import numpy as np
import pytest

import fusednet as fn
from fusednet import _fused
from fusednet.kernels import _policy
from fusednet.trainer import Trainer, _Run

#: name -> (widths, rows): the course's nets and a few in between
NETS = {
    "planar 2-4-1 x400": ((2, 4, 1), 400),
    "moons 2-5-2-1 x64": ((2, 5, 2, 1), 64),
    "64-32-10 x64": ((64, 32, 10), 64),
    "digits 64-100-10 x200": ((64, 100, 10), 200),
    "784-64-10 x64": ((784, 64, 10), 64),
    "784-256-128-10 x32": ((784, 256, 128, 10), 32),
    "784-256-128-10 x128": ((784, 256, 128, 10), 128),
}


def _step_time(widths, rows, n_threads, calls):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, widths[0])).astype(np.float32)
    k = widths[-1]
    y = rng.integers(0, 2 if k == 1 else k, rows)
    out = "sigmoid" if k == 1 else "softmax"
    model = fn.Sequential([fn.layers.Dense(w, activation="tanh") for w in widths[1:-1]]
                          + [fn.layers.Dense(k, activation=out)], input_dim=widths[0], seed=0)
    run = _Run(Trainer(model, fn.optim.Adam(1e-3), batch_size=None, progress=False), X, y, None, n_threads)
    step = _fused.FusedStep(model, run.opt, run.v_full, n_threads)  # the whole set is the batch
    rec = step._opt()
    for _ in range(20):
        step._step(step.plan, rec, run.X, run.Y, None, 1e-3, step.keys, step.out)
    t = time.perf_counter()
    for _ in range(calls):
        step._step(step.plan, rec, run.X, run.Y, None, 1e-3, step.keys, step.out)
    return (time.perf_counter() - t) / calls


@pytest.mark.parametrize("name", sorted(NETS))
def test_step_one_thread_against_two(benchmark, name, monkeypatch):
    widths, rows = NETS[name]
    benchmark.group = "one-call step: 1 thread / 2 threads"
    # time both team sizes whatever the threshold says
    monkeypatch.setattr(_policy, "STEP_SERIAL_FLOPS", 0)
    rounds, calls = (1, 5) if benchmark.disabled else (7, 300)
    times = {1: [], 2: []}
    for _ in range(rounds):
        for n in (1, 2):
            times[n].append(_step_time(widths, rows, n, calls))
    flops = 6 * rows * sum(a * b for a, b in zip(widths, widths[1:]))
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    benchmark.extra_info.update(flops=flops, one=times[1], two=times[2])
    if not benchmark.disabled:
        print(f"\n{name}: {flops:,} flops, 1 thread {t1 * 1e6:.1f} us, 2 threads {t2 * 1e6:.1f} us, "
              f"ratio {t1 / t2:.2f}")
    benchmark.pedantic(lambda: None, rounds=1)
