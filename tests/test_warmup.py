"""Compiling ahead of time: ``fusednet warmup`` / ``fusednet.kernels.warmup``, and the kernels a run compiles.

The Numba kernels compile on first use, per activation, loss and dtype, and are
cached on disk; ``fusednet warmup`` compiles every one the CLI can use, so that
no later command waits.  How long a cold start takes is measured by
``benchmarks/test_bench_compile.py``.
"""

import subprocess
import sys

import numpy as np
import pytest

import fusednet as fn
from fusednet._cli_train import COMPILE_SECONDS, CompileWatch

numba = pytest.importorskip("numba")

from fusednet.kernels import _codes  # noqa: E402
from fusednet.kernels import _numba as N  # noqa: E402
from fusednet.kernels import _numba_dense as D  # noqa: E402

#: run in a fresh process: ``fusednet warmup``, then the commands and the population engine, in-process; prints
#: every compiled kernel the commands used that the warmup had not loaded (one per line), then "checked"
_COVERAGE_SCRIPT = """
import gc, sys
import numpy as np
from numba.core.dispatcher import Dispatcher
import fusednet as fn
from fusednet import cli

def loaded():
    return {(d.py_func.__module__ + "." + d.py_func.__qualname__, id(d), sig) for d in gc.get_objects()
            if isinstance(d, Dispatcher) and d.py_func.__module__.startswith("fusednet") for sig in d.signatures}

assert cli.main(["warmup"]) == 0
warm = loaded()
assert warm
out = sys.argv[1]
for args in (["train", "--epochs", "1", "--no-progress", "--out", out],
             ["train", "--epochs", "1", "--no-progress", "--dtype", "float64", "--activation", "tanh",
              "--batch-norm", "--keep-prob", "0.8", "--optimizer", "rmsprop"],
             ["gradcheck"],
             ["gradcheck", "--activation", "relu", "--batch-norm"]):
    assert cli.main(args) == 0, args
X = np.random.default_rng(0).standard_normal((64, 3))
y = (X[:, 0] > 0).astype(int)
for dtype in ("float32", "float64"):
    pop = fn.Population([fn.layers.Dense(4, activation="tanh"), fn.layers.Dense(1, activation="sigmoid")],
                        input_dim=3, configs=[{"lr": 0.01}] * 3, batch_size=8, epochs=2, dtype=dtype)
    data = pop._data(X, y, None)
    for team in (False, True):
        pop._run(data, 0, 1, pop.histories, team=team)
after = loaded()
for name, _, sig in sorted(after - warm, key=str):
    print("not warmed:", name, sig)
# the control: a network with the squared-error loss, which no command builds and the warmup skips
model = fn.Sequential([fn.layers.Dense(3, activation="relu"), fn.layers.Dense(2)], input_dim=3, dtype="float64")
fn.gradcheck(model, X[:8], X[:8, :2], backend="numba")
for name, _, sig in sorted(loaded() - after, key=str):
    print("control:", name)
print("checked")
"""


@pytest.mark.slow
def test_warmup_compiles_what_the_commands_use(tmp_path):
    """After ``fusednet warmup``, train, gradcheck and the population engine use no kernel it did not load.

    One fresh process runs the warmup, notes every compiled signature of every
    kernel it loaded, runs the commands (both dtypes, batch norm, dropout, both
    gradcheck networks) and the population engine (serial and on the team, both
    dtypes), and lists the signatures that appeared after the warmup; then a
    gradcheck of a network no command builds, which must show up the same way
    (the check is not vacuous).  Whether a signature came from Numba's disk
    cache or was compiled does not matter: on an empty cache it would have been
    compiled.  So the process shares the test session's cache instead of
    compiling every kernel from scratch.
    """
    run = subprocess.run([sys.executable, "-c", _COVERAGE_SCRIPT, str(tmp_path / "m.npz")], capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, run.stderr
    assert "every Numba kernel compiled" in run.stdout
    assert run.stdout.rstrip().endswith("checked"), run.stdout
    missing = [line for line in run.stdout.splitlines() if line.startswith("not warmed:")]
    assert not missing, "\n".join(missing)
    # and the check sees a kernel the warmup did not load: the control's walker
    assert "control: fusednet.kernels._gradcheck_numba.perturbed_losses_share__mse_relu" in run.stdout, run.stdout



def test_kernels_warmup_reports_progress(monkeypatch):
    """``progress(done, total)`` counts up to ``total``; the steps themselves are not run here."""
    calls = []
    monkeypatch.setattr(N, "_WARMUP_STEPS", [lambda arrays: None] * 3)
    from fusednet.kernels import _gradcheck_numba

    monkeypatch.setattr(_gradcheck_numba, "CLI_FEATURES", _gradcheck_numba.CLI_FEATURES[:1])  # one walker
    from fusednet import population

    engines = []
    monkeypatch.setattr(population, "warmup", lambda dtypes: engines.extend(np.dtype(d).name for d in dtypes))
    assert fn.kernels.warmup(progress=lambda done, total: calls.append((done, total))) is True
    assert calls == [(k, 9) for k in range(1, 10)]  # 3 steps x 2 dtypes, 1 walker, the population engine x 2
    assert engines == ["float32", "float64"]


def test_warmup_in_worker_processes_reports_each_task_and_loads_every_kernel_here():
    """``jobs=2``: two spawned workers run the tasks (here they load the session's cache), then this process
    loads every kernel; ``progress`` counts the workers' tasks, each once."""
    from fusednet.kernels import _warmup

    calls = []
    assert fn.kernels.warmup(dtypes=("float32",), jobs=2, progress=lambda done, total: calls.append((done, total)))
    from fusednet.kernels import _gradcheck_numba

    total = len(_warmup.tasks(("float32",)))
    assert total == N.warmup_steps(("float32",)) + len(_gradcheck_numba.CLI_FEATURES) + 1
    assert calls == [(k, total) for k in range(1, total + 1)]
    general = D.FORWARD[_codes.TANH][False][0]
    assert any(str(sig[0].dtype) == "float32" for sig in general.signatures)


def test_warmup_compiles_here_when_the_cache_is_this_process_only(monkeypatch):
    """A cache of this process only (a read-only install without a cache directory) would lose what workers
    compile: every task then runs here, with its progress."""
    from fusednet.kernels import _numba_cache, _warmup

    monkeypatch.setattr(_numba_cache, "FALLBACK_DIR", "/nonexistent/fusednet-numba")
    assert not _warmup.shared_cache()

    def no_workers(*args):
        raise AssertionError("no worker process may start")

    monkeypatch.setattr(_warmup, "compile_in_workers", no_workers)
    ran = []
    monkeypatch.setattr(_warmup, "run", ran.append)
    calls = []
    assert fn.kernels.warmup(jobs=4, progress=lambda done, total: calls.append(done)) is True
    assert ran == _warmup.tasks(("float32", "float64")) and calls == list(range(1, len(ran) + 1))


@pytest.mark.parametrize("jobs, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError),
                                         (True, TypeError)])
def test_warmup_rejects_a_bad_job_count(jobs, error):
    with pytest.raises(error, match="jobs must be an integer >= 1"):
        fn.kernels.warmup(jobs=jobs)


def test_warmup_command_rejects_a_bad_job_count(capsys):
    from fusednet import cli

    assert cli.main(["warmup", "--jobs", "0"]) == 2
    assert "expected a positive int" in capsys.readouterr().err


def test_compile_line_says_about_how_long():
    said = []
    with CompileWatch(said.append, estimate=COMPILE_SECONDS["train"]):
        numba.njit(lambda x: x + 4)(1)  # a new function: never cached
    assert len(said) == 1 and said[0].startswith(CompileWatch.MESSAGE + ", about ")
    assert f"about {COMPILE_SECONDS['train']:.0f} s" in said[0] and "fusednet warmup" in said[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_calls_take_the_in_place_kernel(dtype):
    """A call with ``out is Z`` runs the kernel compiled for in-place use only; any other, the general one."""
    act = _codes.RELU
    Z = np.linspace(-1.0, 1.0, 12, dtype=dtype).reshape(3, 4)
    b = np.zeros(4, dtype)
    general, in_place = D.FORWARD[act][False][0], D.FORWARD[act][True][0]
    A = np.empty_like(Z)
    N.bias_act_forward(Z, b, act, 0.0, A, 1)
    N.bias_act_forward(Z, b, act, 0.0, Z, 1)
    np.testing.assert_array_equal(Z, A)
    name = np.dtype(dtype).name
    assert any(str(sig[0].dtype) == name for sig in in_place.signatures)
    assert any(str(sig[0].dtype) == name for sig in general.signatures)


def test_one_kernel_pair_per_activation_and_loss():
    assert len(D.FORWARD) == len(D.BACKWARD) == len(_codes.ACTIVATIONS)
    assert len(D.LOSS) == len(_codes.LOSSES)
    for code in _codes.ACTIVATIONS.values():
        for in_place in (False, True):
            serial, parallel = D.FORWARD[code][in_place]
            assert serial is not parallel
            band, parallel = D.BACKWARD[code][in_place]
            assert (parallel is None) == (code == _codes.SOFTMAX)
