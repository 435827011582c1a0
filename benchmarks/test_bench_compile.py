"""Cold start: how long the first run after an install waits for Numba to compile.

Each command runs as ``python -m fusednet ...`` in a fresh process, first with
an empty ``NUMBA_CACHE_DIR`` (cold: what a user sees right after ``pip install
.``), then again with the cache that run left (warm).  The figure is the wall
time of the cold run minus that of the warm one, the median of :data:`ROUNDS`
pairs (each with a new empty cache), printed at the end of the run beside its
range, its target and the load average of the machine while it ran (compiling
runs on one core: other processes on a 2-core machine slow it).  The CPU time
of the cold run minus that of the warm one (user + system, median) is printed
beside it: the compile work itself, which a busy machine stretches less.

==============================================  ======  ==================
command                                          target  before the change
==============================================  ======  ==================
``fusednet train --epochs 1 --out m.npz``        1.5 s   4.2-4.9 s
``fusednet gradcheck``                           3 s     22 s
==============================================  ======  ==================

``docs/PERFORMANCE.md`` ("First run after install") keeps the figures.

``fusednet._cli_train.COMPILE_SECONDS``, the "about N s" of the compile line,
comes from these figures.  Under ``--benchmark-disable`` each command runs
once, cold then warm, and only the compile line is checked (said once when
cold, not at all when warm); no figure is printed.
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("numba")

#: cold/warm pairs per command; the median difference is reported
ROUNDS = 5
#: command -> (arguments after ``python -m fusednet``, target seconds)
COMMANDS = {
    "train": (["train", "--epochs", "1", "--no-progress"], 1.5),
    "gradcheck": (["gradcheck"], 3.0),
}


def _run(args, cache_dir):
    """``(wall seconds, CPU seconds, stderr)`` of ``python -m fusednet *args``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fusednet", *args], capture_output=True, text=True, env=env,
                          timeout=900)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stderr


def cold_and_warm(args):
    """``(cold seconds, warm seconds, cold stderr, warm stderr, cold - warm CPU seconds)`` on a new empty cache."""
    with tempfile.TemporaryDirectory(prefix="fusednet-cold-") as tmp:
        cache = os.path.join(tmp, "numba-cache")
        if "train" in args:
            args = [*args, "--out", os.path.join(tmp, "model.npz")]
        cold, cold_cpu, cold_err = _run(args, cache)
        warm, warm_cpu, warm_err = _run(args, cache)
    return cold, warm, cold_err, warm_err, cold_cpu - warm_cpu


@pytest.fixture(scope="module")
def report(request):
    lines = []
    yield lines
    if lines:
        plugins = request.config.pluginmanager
        head = (f"{'cold start (empty Numba cache), medians':<42}{'cold':>7}{'warm':>7}{'cold - warm':>12}"
                f"{'range':>13}{'cpu':>7}{'target':>8}{'load':>6}")
        with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
            for line in ["", head, *lines]:
                plugins.get_plugin("terminalreporter").write_line(line)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cold_start(benchmark, report, command):
    from fusednet._cli_train import CompileWatch

    args, target = COMMANDS[command]
    rounds = 1 if benchmark.disabled else ROUNDS
    runs = [cold_and_warm(args) for _ in range(rounds)]
    for _, _, cold_err, warm_err, _ in runs:
        assert cold_err.count(CompileWatch.MESSAGE) == 1, cold_err
        assert CompileWatch.MESSAGE not in warm_err, warm_err
    if benchmark.disabled:
        return
    benchmark.pedantic(lambda: None, rounds=1)  # the figures are timed above, in other processes
    load = os.getloadavg()[1]  # over the last 5 minutes, about the span of the rounds
    cold = statistics.median(r[0] for r in runs)
    warm = statistics.median(r[1] for r in runs)
    extras = [r[0] - r[1] for r in runs]
    extra = statistics.median(extras)
    cpu = statistics.median(r[4] for r in runs)
    benchmark.extra_info.update(cold=cold, warm=warm, extra=extra, extra_min=min(extras), extra_max=max(extras),
                                extra_cpu=cpu, rounds=rounds, target=target, load=load)
    spread = f"{min(extras):.2f}-{max(extras):.2f}s"
    report.append(f"fusednet {' '.join(args):<33}{cold:>6.2f}s{warm:>6.2f}s{extra:>11.2f}s{spread:>13}"
                  f"{cpu:>6.2f}s{target:>7.1f}s{load:>6.2f}")
