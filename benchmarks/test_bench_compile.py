"""Cold start: how long the first run after an install waits for Numba to compile.

Each command runs as ``python -m fusednet ...`` in a fresh process, first with
an empty ``NUMBA_CACHE_DIR`` (cold: what a user sees right after ``pip install
.``), then again with the cache that run left (warm).  The figure is the wall
time of the cold run minus that of the warm one, the smallest of
:data:`ROUNDS` pairs (each with a new empty cache), printed at the end of the
run beside its target:

==============================================  ======  ==================
command                                          target  before the change
==============================================  ======  ==================
``fusednet train --epochs 1 --out m.npz``        1.5 s   4.2-4.9 s
``fusednet gradcheck``                           3 s     22 s
==============================================  ======  ==================

``fusednet._cli_train.COMPILE_SECONDS``, the "about N s" of the compile line,
comes from these figures.  Under ``--benchmark-disable`` each command runs
once, cold then warm, and only the compile line is checked (said once when
cold, not at all when warm); no figure is printed.
"""

import os
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("numba")

#: cold/warm pairs per command; the smallest difference is reported
ROUNDS = 3
#: command -> (arguments after ``python -m fusednet``, target seconds)
COMMANDS = {
    "train": (["train", "--epochs", "1", "--no-progress"], 1.5),
    "gradcheck": (["gradcheck"], 3.0),
}


def _run(args, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fusednet", *args], capture_output=True, text=True, env=env,
                          timeout=900)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    return seconds, proc.stderr


def cold_and_warm(args):
    """``(cold seconds, warm seconds, cold stderr, warm stderr)`` of one command on a new empty cache."""
    with tempfile.TemporaryDirectory(prefix="fusednet-cold-") as tmp:
        cache = os.path.join(tmp, "numba-cache")
        if "train" in args:
            args = [*args, "--out", os.path.join(tmp, "model.npz")]
        cold, cold_err = _run(args, cache)
        warm, warm_err = _run(args, cache)
    return cold, warm, cold_err, warm_err


@pytest.fixture(scope="module")
def report(request):
    lines = []
    yield lines
    if lines:
        plugins = request.config.pluginmanager
        head = f"{'cold start (empty Numba cache)':<34}{'cold':>8}{'warm':>8}{'cold - warm':>13}{'target':>9}"
        with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
            for line in ["", head, *lines]:
                plugins.get_plugin("terminalreporter").write_line(line)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cold_start(benchmark, report, command):
    from fusednet._cli_train import CompileWatch

    args, target = COMMANDS[command]
    rounds = 1 if benchmark.disabled else ROUNDS
    runs = [cold_and_warm(args) for _ in range(rounds)]
    for _, _, cold_err, warm_err in runs:
        assert cold_err.count(CompileWatch.MESSAGE) == 1, cold_err
        assert CompileWatch.MESSAGE not in warm_err, warm_err
    if benchmark.disabled:
        return
    benchmark.pedantic(lambda: None, rounds=1)  # the figures are timed above, in other processes
    cold = min(r[0] for r in runs)
    warm = min(r[1] for r in runs)
    extra = min(r[0] - r[1] for r in runs)
    benchmark.extra_info.update(cold=cold, warm=warm, extra=extra, target=target)
    report.append(f"fusednet {' '.join(args):<25}{cold:>7.2f}s{warm:>7.2f}s{extra:>12.2f}s{target:>8.1f}s")
