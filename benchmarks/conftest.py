"""Shared fixtures for the benchmark suites, and the ratio table printed at the end.

Every group (a workload) holds a ``textbook`` entry, the course's NumPy formula
as a student would write it, beside fusednet's backends and, where installed,
the peers timed in processes of their own (entries named ``torch...``; a
``jax...`` or ``sklearn...`` entry gets a column of its own).  At the
end of a timed run one table gives, per workload, fusednet's median and each
other implementation's median divided by it: a ratio above 1 means fusednet is
faster.  Under ``--benchmark-disable`` (one untimed run of each benchmark, as
the test command does) nothing is printed.

pytest-benchmark's own per-test tables are switched off (they are wide, and
the entries timed in another process appear there as an empty function run
once); ``--benchmark-columns=min,median,max`` brings them back, without those
entries.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusednet as fn

#: group -> {implementation: median seconds}, in the order the groups were first timed
_results = {}
#: node ids of the tests that reported a figure timed elsewhere (see ``add_external``)
_external_nodes = set()
_current = {"nodeid": None}
#: footnote lines printed under the ratio table (e.g. a peer's compile time, excluded from its figure)
_notes = []

#: entries that are fusednet itself: its compiled backends, the one-call step taken by
#: "cython", its own matrix products, the batched gradient check, an epoch timed in turns
FUSEDNET = ("numba", "cython", "cython-per-kernel", "fusednet-own", "batched", "fusednet")
#: the peers, by the prefix of their entries' names
PEERS = (("PyTorch", ("torch",)), ("JAX", ("jax",)), ("scikit-learn", ("sklearn", "scikit-learn")))
#: fusednet's pure-NumPy reference backend: the readable baseline of the kernel tests, not a comparison
NOT_SHOWN = ("numpy",)
#: a word after an entry's name that splits its group into rows (quiet and busy machine)
CONDITIONS = ("quiet", "busy")
MAX_WIDTH = 120


def pytest_collection_modifyitems(config, items):
    """Every benchmark belongs to the slow tier (``pytest -m "not slow"`` leaves them out)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if os.path.abspath(str(item.fspath)).startswith(here + os.sep):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """pytest-benchmark's per-test tables only when asked for with ``--benchmark-columns`` or a histogram."""
    option = config.option
    if hasattr(option, "benchmark_quiet") and not option.benchmark_columns and not option.benchmark_histogram:
        option.benchmark_quiet = True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _current["nodeid"] = item.nodeid
    try:
        return (yield)
    finally:
        _current["nodeid"] = None


@pytest.hookimpl(wrapper=True)
def pytest_benchmark_group_stats(config, benchmarks, group_by):
    """Leave out of pytest-benchmark's tables the empty runs of tests whose figures were timed elsewhere."""
    groups = yield
    kept = []
    for name, benches in groups:
        benches = [b for b in benches if not (b["fullname"] in _external_nodes and b["rounds"] <= 1)]
        if benches:
            kept.append((name, benches))
    return kept


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
    """Record a figure timed in another process or by hand (PyTorch, epochs in turns) for the ratio table.

    The test's own pytest-benchmark entry (``benchmark.pedantic(lambda: None, rounds=1)``,
    which only keeps pytest-benchmark from warning) is then left out of pytest-benchmark's tables.
    """
    if _current["nodeid"] is not None:
        _external_nodes.add(_current["nodeid"])
    _results.setdefault(group, {})[impl] = median_seconds


def add_note(text):
    """A footnote line under the ratio table (printed in timed runs only)."""
    _notes.append(text)


# ---------------------------------------------------------------- the ratio table


def _role(impl):
    """"fusednet", "textbook", a peer's name, None (not shown) or "other" (another baseline)."""
    if impl in FUSEDNET:
        return "fusednet"
    if impl == "textbook" or impl in NOT_SHOWN:
        return "textbook" if impl == "textbook" else None
    for peer, prefixes in PEERS:
        if impl.startswith(prefixes):
            return peer
    return "other"


def _rows(results):
    """One row per workload: (label, fusednet entry, its median, {column: [(ratio, entry), ...]})."""
    rows = []
    for group, impls in results.items():
        by_condition = {}
        for impl, median in impls.items():
            name, _, word = impl.rpartition(" ")
            if name and word in CONDITIONS:
                by_condition.setdefault(word, {})[name] = median
            else:
                by_condition.setdefault(None, {})[impl] = median
        for condition, entries in by_condition.items():
            ours = {i: t for i, t in entries.items() if _role(i) == "fusednet" and t > 0}
            if not ours:
                continue
            best = min(ours, key=ours.get)
            columns = {}
            for impl, t in entries.items():
                role = _role(impl)
                if role not in (None, "fusednet"):
                    columns.setdefault(role, []).append((t / ours[best], impl))
            if columns:
                label = group if condition is None else f"{group} ({condition})"
                rows.append((label, best, ours[best], columns))
    return rows


def _seconds(t):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            break
    v = t / scale
    return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"


def _ratio(r):
    return f"{r:.2f}" if r < 10 else f"{r:.1f}" if r < 100 else f"{r:.0f}"


def _cell(column, pairs):
    """A peer's variants as a range of ratios; another baseline named by its entry."""
    if column == "other":
        r, impl = min(pairs)
        return f"{_ratio(r)}x {impl}"
    lo, hi = min(r for r, _ in pairs), max(r for r, _ in pairs)
    return f"{_ratio(lo)}x" if _ratio(lo) == _ratio(hi) else f"{_ratio(lo)}-{_ratio(hi)}x"


def ratio_table(results, width=MAX_WIDTH):
    """The lines of the table, at most ``width`` columns wide (workload names wrap)."""
    rows = _rows(results)
    if not rows:
        return []
    present = {c for *_, cols in rows for c in cols}
    order = ["textbook", *(p for p, _ in PEERS), "other"]
    columns = [c for c in order if c in present]
    heads = {"textbook": "textbook", "other": "other baseline"}
    cells = [[_seconds(t), best, *(_cell(c, cols[c]) if c in cols else "-" for c in columns)]
             for _, best, t, cols in rows]
    titles = ["fusednet", "entry", *(heads.get(c, c) for c in columns)]
    widths = [max(len(s) for s in col) for col in zip(titles, *cells)]
    rest = sum(widths) + 2 * len(widths)
    name_width = max(16, min(max(len(label) for label, *_ in rows), width - rest))
    aligns = ["<" if k == 1 or titles[k] == "other baseline" else ">" for k in range(len(titles))]

    def line(first, values):
        return (f"{first:<{name_width}}" + "".join(f"  {v:{a}{w}}" for v, a, w in zip(values, aligns, widths))).rstrip()

    out = [line("workload", titles)]
    out.append("-" * len(out[0]))
    for (label, *_), values in zip(rows, cells):
        parts = textwrap.wrap(label, name_width) or [""]
        out.extend(parts[:-1])
        out.append(line(parts[-1], values))
    return out


def _timed(config):
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        return not session.disabled
    return not getattr(config.option, "benchmark_disable", True)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    if not _timed(config):
        return
    lines = ratio_table(_results)
    if not lines:
        return
    tr = terminalreporter
    tr.section("fusednet against the textbook NumPy code and its peers (ratio = their median / fusednet's)")
    tr.write_line("Above 1: fusednet is faster. 'entry': fusednet's fastest entry in the group (a backend, 'cython'")
    tr.write_line("being the one-call step for the trainer); a peer's range spans its variants (default, fused).")
    for text in lines:
        tr.write_line(text)
    for text in _notes:
        tr.write_line(text)


def sizes():
    return [1_000, 100_000, 10_000_000]


def matrix(n_elements, dtype=np.float32, width=None, seed=0):
    """A (m, width) standard-normal matrix with about ``n_elements`` entries."""
    width = width or min(1000, n_elements)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((max(1, n_elements // width), width), dtype=np.float32).astype(dtype)
