"""Train functions for tests/test_tune.py.

They live in their own small module, importable by name, so that worker
processes (spawned by a process pool, or on a dask cluster) can import them
without importing the test module and pytest.
"""

import math
import os
import time


def peaked(lr, beta, hidden, activation):
    """A deterministic score, best at lr=1e-2, beta=0.99, hidden=64 and relu."""
    score = (
        -((math.log10(lr) + 2.0) ** 2)
        - (math.log10(1.0 - beta) + 2.0) ** 2
        - ((hidden - 64) / 64) ** 2
        + (0.1 if activation == "relu" else 0.0)
    )
    return {"score": score, "pid": os.getpid()}


def slow_peaked(lr, beta, hidden, activation, delay):
    """:func:`peaked` after sleeping ``delay * (1 - beta) / 0.1``, to scramble completion order."""
    time.sleep(delay * (1.0 - beta) / 0.1)
    return peaked(lr, beta, hidden, activation)


def fail_above(x, threshold):
    """Raise for ``x > threshold``."""
    if x > threshold:
        raise ValueError(f"x={x:.3f} is above {threshold}")
    return {"score": -x}


def crash_on(x, bad):
    """Kill the worker process (no exception, no cleanup) when ``x == bad``.

    The short sleep keeps other trials in flight when it dies, so the search
    must find which of them killed the pool.
    """
    time.sleep(0.05)
    if x == bad:
        os._exit(1)
    return {"score": x}


def counted(x, counter):
    """Append ``x`` to the file ``counter`` (one line per call) and score closeness to 0.3."""
    with open(counter, "a", encoding="utf-8") as fh:
        fh.write(f"{x!r}\n")
    return {"score": -abs(x - 0.3), "x_squared": x * x}


def returns(kind):
    """Return a good or a bad result, by name."""
    import numpy as np

    return {
        "list": [1.0],
        "no_score": {"loss": 1.0},
        "nan": {"score": float("nan")},
        "inf": {"score": float("-inf")},
        "str": {"score": "high"},
        "bool": {"score": True},
        "none": None,
        "ok": {"score": 1.0},
        "numpy": {"score": np.float32(0.5), "curve": np.arange(3.0)},
    }[kind]


def exits(x):
    """Call ``sys.exit``, which must not end the search."""
    import sys

    sys.exit(3)


def thread_report(x):
    """The compute-thread limits seen inside the worker."""
    import numpy  # noqa: F401  (loads the BLAS library)
    from threadpoolctl import threadpool_info

    import fusednet

    return {
        "score": x,
        "omp_env": os.environ.get("OMP_NUM_THREADS"),
        "numba_env": os.environ.get("NUMBA_NUM_THREADS"),
        "max_threads": max((info["num_threads"] for info in threadpool_info()), default=1),
        "kernel_threads": fusednet.kernels.get_num_threads(),  # the one-call step's team too
        "pid": os.getpid(),
    }
