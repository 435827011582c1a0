"""Shared fixtures for the benchmark suites, and the ratio table printed at the end.

Every group holds a ``textbook`` entry: the course's NumPy formula as a student
would write it.  At the end of the run each entry's median is divided into the
textbook median of its group: ``ratio > 1`` means faster than the textbook.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fusednet as fn

_results = {}


def pytest_collection_modifyitems(config, items):
    """Every benchmark belongs to the slow tier (``pytest -m "not slow"`` leaves them out)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if os.path.abspath(str(item.fspath)).startswith(here + os.sep):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _warm_kernels():
    """Compile (or load from cache) every Numba kernel before timing anything."""
    if "numba" in fn.kernels.available():
        from fusednet.kernels import _numba

        warm = getattr(_numba, "warmup", None)
        if warm is not None:
            warm()
    yield


@pytest.fixture
def record(benchmark):
    """Run ``benchmark(fn)`` and remember its median for the ratio table."""

    def run(func, *args):
        result = benchmark(func, *args)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None:
            _results.setdefault(benchmark.group, {})[benchmark.extra_info.get("impl", benchmark.name)] = (
                stats.stats.median
            )
        return result

    return run


def run_isolated(code, timeout=600):
    """Run a timing snippet in a fresh interpreter (its own thread pools) and return its stdout."""
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "isolated run failed")
    return proc.stdout.strip()


def add_external(group, impl, median_seconds):
    """Record a figure timed in another process (PyTorch) into the ratio table."""
    _results.setdefault(group, {})[impl] = median_seconds


def pytest_terminal_summary(terminalreporter, config):
    if not _results:
        return
    tr = terminalreporter
    tr.section("fusednet speed-ups (median time; ratio = baseline median / this median)")
    for group in sorted(_results):
        impls = _results[group]
        base_name = "textbook" if "textbook" in impls else next(iter(impls))
        base = impls[base_name]
        tr.write_line(f"{group}")
        for impl, med in sorted(impls.items(), key=lambda kv: kv[1]):
            tr.write_line(f"    {impl:<24} {med * 1e3:10.4f} ms   x{base / med:7.2f} vs {base_name}")


def sizes():
    return [1_000, 100_000, 10_000_000]


def matrix(n_elements, dtype=np.float32, width=None, seed=0):
    """A (m, width) standard-normal matrix with about ``n_elements`` entries."""
    width = width or min(1000, n_elements)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((max(1, n_elements // width), width), dtype=np.float32).astype(dtype)
