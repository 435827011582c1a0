"""Gradient checking: the batched evaluation against the course's per-coordinate loop.

A 64-32-32-10 network (about 3.5k parameters) with dropout, batch norm and L2 on
128 examples.  Run:  pytest benchmarks/test_bench_gradcheck.py --benchmark-only
"""

import numpy as np
import pytest

import fusednet as fn


def _case():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((128, 64))
    y = rng.integers(0, 10, 128)
    model = fn.Sequential(
        [fn.layers.Dense(32, activation="relu"), fn.layers.Dropout(0.8), fn.layers.Dense(32, use_bias=False),
         fn.layers.BatchNorm(), fn.layers.Activation("tanh"), fn.layers.Dense(10, activation="softmax")],
        input_dim=64, l2=0.1, dtype="float64", seed=0,
    )
    return model, X, y


@pytest.mark.parametrize("impl", ["textbook", "batched"])
def test_gradcheck(benchmark, record, impl):
    benchmark.group = "gradcheck 3.5k parameters, 128 examples"
    benchmark.extra_info["impl"] = impl
    model, X, y = _case()
    method = "naive" if impl == "textbook" else "batched"
    if benchmark.disabled:  # keep the untimed run short
        g = record(lambda: fn.gradcheck(model, X, y, method=method, sample=200, seed=0))
    else:
        g = benchmark.pedantic(lambda: fn.gradcheck(model, X, y, method=method), rounds=3, iterations=1)
        from conftest import add_external

        add_external(benchmark.group, impl, benchmark.stats.stats.median)
    assert g.verdict in ("great", "ok")
