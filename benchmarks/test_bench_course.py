"""The course's own nets, whole fits: fusednet against the textbook NumPy loop, PyTorch eager and JAX.

Four workloads, float32, :func:`fusednet.get_num_threads` threads, synthetic data of the
course's shapes (no download):

* planar: 2-4-1 tanh/sigmoid on the 400-point flower, batch GD, lr 1.2 (C1W3);
* moons: 2-5-2-1 ReLU/sigmoid on 320 moons points, Adam lr 7e-4, batch 64 (C2W2);
* cats: 12288-20-7-5-1 ReLU/sigmoid on 209 uniform [0, 1] "images" with random 0/1
  labels, batch GD, lr 0.0075 (C1W4);
* digits: 64-100-10 ReLU/softmax on the UCI digits / 16, Adam lr 1e-3, batch 200
  (scikit-learn's default net), also against scikit-learn's ``MLPClassifier``.

Each group's entries: ``fusednet`` (a whole ``Trainer.fit`` of the workload's epochs,
default backend), ``textbook`` (the course's NumPy code), ``torch-eager``,
``jax-jit-fit`` (the whole fit in one ``jax.jit``: ``fori_loop`` over epochs, ``scan``
over the mini-batches of each shuffled epoch; compile time excluded, reported in
``extra_info`` and under the ratio table) and, for digits, ``sklearn-mlp``.  Every
figure is a whole fit's wall time divided by its number of steps.  The peers run in
processes of their own (``_course_peers.py``), each started once, and all entries
are timed in turns, one fit each per round, the order rotating; the figures are
the medians over the rounds.  A peer whose package is not installed is left out,
with the reason printed.

Before timing, every implementation trains a few epochs in float64 from the same
initial weights, mini-batches in order, and its last epoch's cost must equal
fusednet's (``history["train_loss"]``).

Targets (the issue "The course's own nets at the hardware limit", float32, 2 threads):
planar and moons >= 2x JAX and >= 40x PyTorch; cats >= 2.5x PyTorch and >= 3.3x JAX;
digits >= 5x scikit-learn; the 784-256-128-10 epoch >= 2.8x PyTorch default Adam and
>= 1.2x JAX's scan epoch (``test_jax_mlp_epoch`` here adds JAX to the epoch groups
of ``test_bench_trainer.py``).

Run:  pytest benchmarks/test_bench_course.py --benchmark-only -s
"""

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from conftest import add_external, add_note
from test_bench_trainer import DIMS as MLP_DIMS
from test_bench_trainer import M_FULL, mnist_like

import fusednet as fn

PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_course_peers.py")
#: entry name -> (the peer program's name, the module it needs)
PEERS = {"textbook": ("textbook", "numpy"), "torch-eager": ("torch", "torch"), "jax-jit-fit": ("jax", "jax"),
         "jax-scan-epoch": ("jax", "jax"), "sklearn-mlp": ("sklearn", "sklearn")}
ROUNDS = 7
#: seconds between two timed fits, so that the other side's spinning threads park
PAUSE = 0.2
#: relative agreement of the float64 check costs with fusednet's; scikit-learn's Adam
#: adds eps to sqrt(v) before the bias correction, not after it (5e-6 apart on digits; equal to
#: rounding with eps = 1e-30)
RTOL = {"sklearn-mlp": 5e-5}
RTOL_DEFAULT = 1e-9

INIT = {"random": lambda n_in: 0.01, "he": lambda n_in: math.sqrt(2.0 / n_in),
        "xavier": lambda n_in: math.sqrt(1.0 / n_in)}


def _planar():
    return fn.datasets.planar_flower(m=400, seed=1)


def _moons():
    return fn.datasets.moons(m=320, noise=0.2, seed=3)


def _cats():
    rng = np.random.default_rng(0)
    return rng.random((209, 12288), dtype=np.float32), rng.integers(0, 2, 209)


def _digits():
    X, y = fn.datasets.digits()
    return X / np.float32(16), y


@dataclass(frozen=True)
class Workload:
    group: str
    data: object  # () -> (X, y)
    dims: tuple
    hidden: str
    output: str
    optimizer: str
    lr: float
    batch: int  # 0: batch gradient descent
    epochs: int  # of a timed fit
    quick_epochs: int  # under --benchmark-disable
    check_epochs: int
    init: str
    peers: tuple = ("textbook", "torch-eager", "jax-jit-fit")
    targets: dict = field(default_factory=dict)  # entry -> the ratio fusednet should reach

    def spec(self, epochs, check_rows):
        return {"dims": list(self.dims), "hidden": self.hidden, "output": self.output, "optimizer": self.optimizer,
                "lr": self.lr, "batch": self.batch, "epochs": epochs, "check_epochs": self.check_epochs,
                "check_rows": check_rows}


WORKLOADS = {
    "planar": Workload(
        group="C1W3 planar 2-4-1 tanh, batch GD, per step", data=_planar, dims=(2, 4, 1),
        hidden="tanh", output="sigmoid", optimizer="gd", lr=1.2, batch=0, epochs=2000, quick_epochs=50,
        check_epochs=10, init="random", targets={"torch-eager": 40, "jax-jit-fit": 2}),
    "moons": Workload(
        group="C2W2 moons 2-5-2-1 ReLU, Adam b64, per step", data=_moons, dims=(2, 5, 2, 1),
        hidden="relu", output="sigmoid", optimizer="adam", lr=7e-4, batch=64, epochs=400, quick_epochs=10,
        check_epochs=3, init="he", targets={"torch-eager": 40, "jax-jit-fit": 2}),
    "cats": Workload(
        group="C1W4 cats 12288-20-7-5-1, batch GD, per step", data=_cats,
        dims=(12288, 20, 7, 5, 1), hidden="relu", output="sigmoid", optimizer="gd", lr=0.0075, batch=0,
        epochs=100, quick_epochs=3, check_epochs=3, init="xavier", targets={"torch-eager": 2.5, "jax-jit-fit": 3.3}),
    "digits": Workload(
        group="digits 64-100-10 ReLU, Adam b200, per step", data=_digits, dims=(64, 100, 10),
        hidden="relu", output="softmax", optimizer="adam", lr=1e-3, batch=200, epochs=50, quick_epochs=2,
        check_epochs=2, init="he", peers=("textbook", "torch-eager", "jax-jit-fit", "sklearn-mlp"),
        targets={"sklearn-mlp": 5}),
}


def initial_weights(dims, init, seed=2):
    """[(W (n_in, n_out), b (n_out,)), ...] in float64."""
    rng = np.random.default_rng(seed)
    scale = INIT[init]
    return [(rng.standard_normal((n_in, n_out)) * scale(n_in), np.zeros(n_out))
            for n_in, n_out in zip(dims[:-1], dims[1:])]


def write_workload(path, spec, X, y, weights):
    arrays = {f"{k}{i}": a for i, (W, b) in enumerate(weights) for k, a in (("W", W), ("b", b))}
    np.savez(path, spec=json.dumps(spec), X=np.asarray(X, np.float64), y=np.asarray(y), **arrays)
    return str(path)


def steps_per_epoch(m, batch):
    return 1 if batch <= 0 or batch >= m else -(-m // batch)


def missing_peers(entries):
    """{entry: reason} for the peers whose package cannot be imported here."""
    return {e: f"{PEERS[e][1]} is not installed (the 'bench' extra installs it): entry '{e}' left out"
            for e in entries if importlib.util.find_spec(PEERS[e][1]) is None}


class PeerProcess:
    """A peer program in a process of its own, started once for every workload of this module.

    ``load`` sends a workload (the process checks, builds and warms its fit meanwhile), ``ready``
    waits for it and returns ``(check cost or None, compile seconds)``, ``time`` times one fit.
    """

    def __init__(self, program, threads, log_path):
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        self.program = program
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, PEER_SCRIPT, program, str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.loads = 0

    def _send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _line(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=60)
            with open(self.log_path) as f:
                tail = f.read().strip().splitlines()[-5:]
            raise RuntimeError(f"the {self.program} process stopped: " + " | ".join(tail))
        return line.split(maxsplit=2)

    def load(self, path):
        self.loads += 1
        self._send(f"load {self.loads} {path}")

    def ready(self):
        check = None
        while True:  # the answers to this load (any left from an earlier, failed test are skipped)
            words = self._line()
            if len(words) < 3 or words[1] != str(self.loads):
                continue
            if words[0] == "check":
                check = float(words[2])
            elif words[0] == "ready":
                return check, float(words[2])
            elif words[0] == "error":
                raise RuntimeError(f"the {self.program} program failed: {words[2]}")

    def time(self):
        self._send("go")
        return float(self._line()[0])

    def close(self):
        """Ask the process to end (its stdin closed); ``wait`` reaps it."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def wait(self):
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def peer_processes(tmp_path_factory):
    """{program: PeerProcess} of every installed peer, all started at once (their imports overlap)."""
    log_dir = tmp_path_factory.mktemp("peers")
    programs = sorted({program for entry, (program, _) in PEERS.items() if not missing_peers([entry])})
    procs = {}
    try:
        for program in programs:
            procs[program] = PeerProcess(program, fn.get_num_threads(), str(log_dir / f"{program}.log"))
        yield procs
    finally:
        for proc in procs.values():
            proc.close()
        for proc in procs.values():
            proc.wait()


def fusednet_trainer(w, weights, epochs, dtype, shuffle):
    """A model of the workload's layers holding ``weights``, and its trainer."""
    layers = [fn.layers.Dense(n, activation=w.hidden) for n in w.dims[1:-1]]
    layers.append(fn.layers.Dense(w.dims[-1], activation=w.output))
    model = fn.Sequential(layers, input_dim=w.dims[0], dtype=dtype, seed=0)
    for (_, param), value in zip(model.parameters(), (a for pair in weights for a in pair)):
        param[...] = value
    opt = fn.optim.Adam(lr=w.lr) if w.optimizer == "adam" else fn.optim.GD(lr=w.lr)
    return fn.Trainer(model, optimizer=opt, batch_size=w.batch or None, epochs=epochs, shuffle=shuffle, seed=0,
                      progress=False)


def fusednet_check(w, X, y, weights, epochs):
    """fusednet's cost of the last of ``epochs`` float64 epochs from ``weights``, mini-batches in order."""
    trainer = fusednet_trainer(w, weights, epochs, "float64", shuffle=False)
    return trainer.fit(np.asarray(X, np.float64), y)["train_loss"][-1]


def assert_agree(reference, checks):
    """Each peer's float64 check cost (``{entry: cost or None}``) equals fusednet's."""
    for entry, cost in checks.items():
        if cost is not None:
            assert cost == pytest.approx(reference, rel=RTOL.get(entry, RTOL_DEFAULT)), (
                f"{entry}'s float64 cost {cost!r} differs from fusednet's {reference!r}")


def in_turns(runners, rounds):
    """{name: [seconds per round]}: one call of each runner per round, the order rotating round by round."""
    names = list(runners)
    times = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            time.sleep(PAUSE)
            times[name].append(runners[name]())
    return times


def timed(func, *args):
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start


def report(benchmark, per_unit, compile_seconds, targets, unit):
    """Medians into the ratio table and ``extra_info``; each peer's median ratio (and target) printed."""
    group = benchmark.group
    for name, ts in per_unit.items():
        add_external(group, name, statistics.median(ts))
        benchmark.extra_info[name] = ts
    ours = statistics.median(per_unit["fusednet"])
    print(f"\n{group}: fusednet {ours * 1e6:.1f} us {unit}")
    for name, ts in per_unit.items():
        if name == "fusednet":
            continue
        ratios = [t / f for t, f in zip(ts, per_unit["fusednet"])]
        benchmark.extra_info[f"ratio {name}"] = ratios
        target = f" (target >= {targets[name]}x)" if name in targets else ""
        print(f"  {name}: {statistics.median(ts) * 1e6:.1f} us, median ratio {statistics.median(ratios):.2f}{target}")
    for name, seconds in compile_seconds.items():
        if seconds:
            benchmark.extra_info[f"{name} compile seconds"] = seconds
            print(f"  {name} compile time (excluded): {seconds:.2f} s")
            add_note(f"{group}: {name} compile time {seconds:.2f} s, excluded")


def load_peers(peer_processes, entries, path):
    """Send the workload to each entry's process; return {entry: process}."""
    peers = {entry: peer_processes[PEERS[entry][0]] for entry in entries}
    for proc in peers.values():
        proc.load(path)
    return peers


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_course_fit_in_turns(benchmark, tmp_path, peer_processes, name):
    w = WORKLOADS[name]
    benchmark.group = w.group
    epochs, rounds = (w.quick_epochs, 1) if benchmark.disabled else (w.epochs, ROUNDS)
    X, y = w.data()
    weights = initial_weights(w.dims, w.init)
    missing = missing_peers(w.peers)
    for reason in missing.values():
        print(f"\n{w.group}: {reason}")
        benchmark.extra_info.setdefault("left out", []).append(reason)
    path = write_workload(tmp_path / "workload.npz", w.spec(epochs, len(X)), X, y, weights)
    peers = load_peers(peer_processes, [e for e in w.peers if e not in missing], path)
    # fusednet's check and warm-up while the peers load theirs
    reference = fusednet_check(w, X, y, weights, w.check_epochs)
    trainer = fusednet_trainer(w, weights, epochs, "float32", shuffle=True)
    X32 = np.asarray(X, np.float32)
    trainer.fit(X32, y)
    last = fn.info()["last_fit"]  # how fusednet trains this workload: serial step or team, epochs per call
    benchmark.extra_info["fusednet path"] = f"{last['step']}; {last['epochs']}"
    print(f"\n{w.group}: fusednet: {benchmark.extra_info['fusednet path']}")
    answers = {entry: proc.ready() for entry, proc in peers.items()}
    assert_agree(reference, {entry: check for entry, (check, _) in answers.items()})
    runners = {"fusednet": lambda: timed(trainer.fit, X32, y), **{e: proc.time for e, proc in peers.items()}}
    times = in_turns(runners, rounds)
    steps = epochs * steps_per_epoch(len(X), w.batch)
    per_step = {name: [t / steps for t in ts] for name, ts in times.items()}
    report(benchmark, per_step, {entry: c for entry, (_, c) in answers.items()}, w.targets, "per step")
    benchmark.pedantic(lambda: None, rounds=1)


# ---------------------------------------------------------------- JAX's epoch of the 784-256-128-10 MLP

#: rows of the float64 check: a partial last batch at every batch size (1000 = 15 x 64 + 40 = 7 x 128 + 104 = 512 + 488)
CHECK_ROWS = 1000
#: the 784-256-128-10 net of test_bench_trainer.py; a timed fit is one epoch
MLP = Workload(group="", data=mnist_like, dims=tuple(MLP_DIMS), hidden="relu", output="softmax", optimizer="adam",
               lr=1e-3, batch=0, epochs=1, quick_epochs=1, check_epochs=1, init="he", peers=("jax-scan-epoch",),
               targets={"jax-scan-epoch": 1.2})


@pytest.mark.parametrize("batch", [64, 128, 512])
def test_jax_mlp_epoch(benchmark, tmp_path, peer_processes, batch):
    """One shuffled epoch compiled as one function (``scan`` over its mini-batches), beside test_mlp_epoch."""
    missing = missing_peers(MLP.peers)
    if missing:
        pytest.skip(" ".join(missing.values()))
    benchmark.group = f"MLP epoch 784-256-128-10 batch {batch}"
    m, reps = (4096, 1) if benchmark.disabled else (M_FULL, 5)
    X, y = mnist_like(m)
    w = replace(MLP, batch=batch)
    weights = initial_weights(w.dims, w.init)
    path = write_workload(tmp_path / "mlp.npz", w.spec(1, CHECK_ROWS), X, y, weights)
    ((entry, proc),) = load_peers(peer_processes, MLP.peers, path).items()
    reference = fusednet_check(w, X[:CHECK_ROWS], y[:CHECK_ROWS], weights, 1)
    check, compile_seconds = proc.ready()
    assert_agree(reference, {entry: check})
    times = [proc.time() for _ in range(reps)]
    add_external(benchmark.group, entry, statistics.median(times))
    benchmark.extra_info[entry] = times
    benchmark.extra_info["compile seconds"] = compile_seconds
    print(f"\n{benchmark.group}: {entry} {statistics.median(times) * 1e3:.0f} ms per epoch "
          f"(compile time {compile_seconds:.2f} s, excluded; target: fusednet's epoch "
          f">= {MLP.targets[entry]}x faster)")
    add_note(f"{benchmark.group}: {entry} compile time {compile_seconds:.2f} s, excluded")
    benchmark.pedantic(lambda: None, rounds=1)


# ---------------------------------------------------------------- the cats step against the own kernels' peak

#: the fraction of the own float32 kernels' 2-thread peak the cats step's products should reach
CATS_PEAK_TARGET = 0.75
#: the peak's product: each of 2 threads computes (512 x 1024) @ (1024 x 256), its half of 1024 rows
PEAK_SHAPE = (512, 1024, 256)


def own_kernels_peak(ck, threads=2, reps=5):
    """GFLOP/s of the own float32 kernels with ``threads`` threads, each on its share of rows of one
    large product (``PEAK_SHAPE``); the best of ``reps`` rounds.

    A round lasts from the first thread's start to the last thread's end, each thread reading the
    clock itself around its product: a clock read by a third thread can run late (two cores, three
    threads) and time less than the product took."""
    import threading

    m, k, n = PEAK_SHAPE
    rng = np.random.default_rng(0)
    A = [rng.standard_normal((m, k), dtype=np.float32) for _ in range(threads)]
    B = rng.standard_normal((k, n), dtype=np.float32)
    C = [np.empty((m, n), np.float32) for _ in range(threads)]
    start = threading.Barrier(threads)
    spans = [[None] * reps for _ in range(threads)]

    def work(i):
        for rep in range(reps):
            start.wait()
            t0 = time.perf_counter()
            ck.gemm_f32(A[i], B, C[i])
            spans[i][rep] = (t0, time.perf_counter())

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    best = min(max(s[rep][1] for s in spans) - min(s[rep][0] for s in spans) for rep in range(reps))
    return 2 * m * k * n * threads / best / 1e9


def test_cats_step_against_the_own_kernels_peak(benchmark):
    """The cats step's product GFLOP/s (its products' flops, :func:`fusednet._fused.step_flops` less the
    first layer's unneeded dX, over a whole step's time) against the own kernels' peak, in turns."""
    from fusednet import _fused
    from fusednet.kernels import _cython

    ck = _cython._ck
    if not getattr(ck, "FUSED_GEMM", False):
        pytest.skip("this copy of the extension has no own products (no AVX2 or AVX-512)")
    w = WORKLOADS["cats"]
    benchmark.group = "cats step against the own kernels' peak"
    epochs, rounds = (w.quick_epochs, 1) if benchmark.disabled else (w.epochs, ROUNDS)
    X, y = w.data()
    trainer = fusednet_trainer(w, initial_weights(w.dims, w.init), epochs, "float32", shuffle=False)
    n_in, n_out = w.dims[0], w.dims[1]
    flops = _fused.step_flops(trainer.model, len(X)) - 2 * len(X) * n_in * n_out
    step, peak = [], []
    for _ in range(rounds):  # in turns, each timed after a warm-up of its own (as the peak's best of
        trainer.fit(X, y)  # reps is): after a pause the first steps here ran up to four times slower
        step.append(timed(trainer.fit, X, y) / epochs)
        time.sleep(PAUSE)
        peak.append(own_kernels_peak(ck))
        time.sleep(PAUSE)
    step_gflops = [flops / t / 1e9 for t in step]
    fraction = [s / p for s, p in zip(step_gflops, peak)]
    benchmark.extra_info.update(step_gflops=step_gflops, peak_gflops=peak, fraction=fraction)
    print(f"\ncats step: {statistics.median(step) * 1e3:.2f} ms, {statistics.median(step_gflops):.0f} GFLOP/s;"
          f" own kernels' 2-thread peak {statistics.median(peak):.0f} GFLOP/s;"
          f" median fraction {statistics.median(fraction):.2f} (target >= {CATS_PEAK_TARGET})")
    benchmark.pedantic(lambda: None, rounds=1)
