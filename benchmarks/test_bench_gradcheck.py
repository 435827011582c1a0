"""Gradient checking: the batched compiled evaluator against the course's per-coordinate loop.

A 64-32-32-10 network (3498 parameters) with dropout, batch norm and L2 on
128 examples: 6996 perturbed costs.  Three ways to get them:

* ``textbook``: the course's loop (``backend="numpy"``): set one coordinate,
  evaluate the cost with a forward pass of the model's own (compiled) kernels,
  twice per coordinate;
* ``public-api loop``: the loop a user writes with the public API alone, where
  the training-mode cost comes from ``model.loss_and_grads`` (a forward and a
  backward pass per evaluation);
* ``batched``: one compiled call over all coordinates.
Run:  pytest benchmarks/test_bench_gradcheck.py --benchmark-only
"""

import numpy as np
import pytest

import fusednet as fn

GROUP = "gradcheck 3.5k parameters, 128 examples"
IMPLS = {"textbook": "numpy", "public-api loop": None, "batched": "numba"}


def public_api_loop(model, X, y, eps=1e-7):
    """The naive gradient check over ``parameters()`` views and ``loss_and_grads``."""
    numeric = []
    for _, arr in model.parameters():
        flat = arr.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            j_plus = model.loss_and_grads(X, y)[0]
            flat[i] = old - eps
            j_minus = model.loss_and_grads(X, y)[0]
            flat[i] = old
            numeric.append((j_plus - j_minus) / (2 * eps))
    return np.array(numeric)


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


@pytest.fixture(scope="module", autouse=True)
def _warm_gradcheck():
    """Compile (or load from the cache) the batched evaluator before timing it."""
    from fusednet.kernels import _gradcheck_numba

    _gradcheck_numba.warmup()
    model, X, y = _case()
    fn.gradcheck(model, X, y, sample=10)


def test_case_size():
    model, _, _ = _case()
    assert model.n_params == 3498


@pytest.mark.parametrize("impl", list(IMPLS))
def test_gradcheck(benchmark, record, impl):
    benchmark.group = GROUP
    benchmark.extra_info["impl"] = impl
    model, X, y = _case()
    backend = IMPLS[impl]
    if impl == "public-api loop":
        if benchmark.disabled:  # keep the untimed run short: a small network of the same layers
            model = fn.Sequential([fn.layers.Dense(4, activation="relu"), fn.layers.Dense(3, use_bias=False),
                                   fn.layers.BatchNorm(), fn.layers.Dense(10, activation="softmax")],
                                  input_dim=64, l2=0.1, dtype="float64", seed=0)
            numeric = public_api_loop(model, X, y)
        else:
            numeric = benchmark.pedantic(lambda: public_api_loop(model, X, y), rounds=3, iterations=1)
        g = fn.gradcheck(model, X, y, backend="numba")
        np.testing.assert_allclose(numeric, g.numeric, rtol=1e-5, atol=1e-7)
    elif benchmark.disabled:  # keep the untimed run short
        g = record(lambda: fn.gradcheck(model, X, y, backend=backend, sample=200, seed=0))
    else:
        g = benchmark.pedantic(lambda: fn.gradcheck(model, X, y, backend=backend), rounds=3, iterations=1,
                               warmup_rounds=0 if impl == "textbook" else 1)
    if not benchmark.disabled:
        from conftest import add_external

        add_external(GROUP, impl, benchmark.stats.stats.median)
    assert g.verdict in ("great", "ok"), g


def test_batched_numeric_gradient_equals_the_loop():
    """The speed-up is for the same numbers: every coordinate agrees with the course's loop."""
    model, X, y = _case()
    loop = fn.gradcheck(model, X, y, backend="numpy", sample=300, seed=1)
    batched = fn.gradcheck(model, X, y, backend="numba", sample=300, seed=1)
    np.testing.assert_allclose(batched.numeric, loop.numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(batched.analytic, loop.analytic)
    assert abs(batched.difference - loop.difference) < 1e-7
