"""``fusednet bench``: the kernel and trainer speed table against NumPy (and PyTorch).

A quick, dependency-free cousin of the pytest-benchmark suites in
``benchmarks/``: each figure is the median of several timed calls, and each row
is divided into the textbook NumPy time of its group.  PyTorch, when installed,
runs in a process of its own so the two thread pools never fight.
"""

import statistics
import subprocess
import sys
import time

import numpy as np

from . import _textbook as tb
from . import kernels as K
from .kernels import _codes


def median_time(func, *args, reps=7, min_time=0.05):
    """Median seconds of ``func(*args)``, each sample repeating the call to last ``min_time``."""
    func(*args)
    t0 = time.perf_counter()
    func(*args)
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / once))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            func(*args)
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def _torch_time(code):
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip())


def kernel_rows(quick=False, torch=True):
    """``[(group, impl, seconds), ...]`` for the main kernels."""
    n = 100_000 if quick else 10_000_000
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((n // 1000, 1000), dtype=np.float32)
    b = rng.standard_normal(1000, dtype=np.float32)
    A = np.empty_like(Z)
    dZ, db = np.empty_like(Z), np.empty(1000, np.float32)
    Acache = np.abs(Z) / 4
    T = K.get_num_threads()
    rows = []
    for act in ("sigmoid", "tanh", "relu"):
        group = f"{act} forward {n:.0e}"
        rows.append((group, "textbook", median_time(tb.FORWARD[act], Z, b)))
        for backend in K.available():
            kern = K.resolve("bias_act_forward", backend)
            rows.append((group, backend, median_time(kern, Z, b, _codes.ACTIVATIONS[act], 0.01, A, T)))
        group = f"{act} backward {n:.0e}"
        rows.append((group, "textbook", median_time(tb.BACKWARD[act], Z, Acache)))
        for backend in K.available():
            kern = K.resolve("act_backward", backend)
            rows.append((group, backend, median_time(kern, Z, Acache, _codes.ACTIVATIONS[act], 0.01, dZ, db, T)))
    group = f"dropout {n:.0e}"
    rows.append((group, "textbook", median_time(tb.dropout, Z, 0.8, np.random.default_rng(0))))
    for backend in K.available():
        kern = K.resolve("dropout_apply", backend)
        rows.append((group, backend, median_time(kern, Z, K.dropout_key(0, 1), K.dropout_threshold(0.8), 1.25, A, T)))
    for size in ((250_000, n) if not quick else (n,)):
        w = rng.standard_normal(size, dtype=np.float32)
        g = rng.standard_normal(size, dtype=np.float32) * 1e-3
        m, v = np.zeros_like(w), np.zeros_like(w)
        group = f"adam {size:.1e}"
        rows.append((group, "textbook", median_time(tb.adam_update, w, g, m, v, 10)))
        for backend in K.available():
            kern = K.resolve("adam_update", backend)
            rows.append((group, backend, median_time(kern, w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.65, 0.01, 0.0, 0, T)))
        t = _torch_time(_TORCH_ADAM.format(n=size, threads=T)) if torch else None
        if t is not None:
            rows.append((group, "torch-adam-fused", t))
    return rows


_TORCH_ADAM = """
import time, statistics, torch
torch.set_num_threads({threads})
p = torch.nn.Parameter(torch.randn({n})); p.grad = torch.randn({n}) * 1e-3
opt = torch.optim.Adam([p], lr=1e-3, fused=True)
for _ in range(10): opt.step()
ts = []
for _ in range(30):
    t0 = time.perf_counter(); opt.step(); ts.append(time.perf_counter() - t0)
print(statistics.median(ts))
"""

_TORCH_EPOCH = """
import time, statistics, numpy as np, torch
torch.set_num_threads({threads})
rng = np.random.default_rng(0)
X = torch.from_numpy(rng.standard_normal(({m}, 784), dtype=np.float32))
y = torch.from_numpy(rng.integers(0, 10, {m}))
net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(),
                          torch.nn.Linear(128, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
loss_fn = torch.nn.CrossEntropyLoss()
def epoch():
    perm = torch.randperm({m})
    for k in range(0, {m}, 128):
        idx = perm[k:k + 128]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(X[idx]), y[idx]).backward()
        opt.step()
epoch()
ts = []
for _ in range(3):
    t0 = time.perf_counter(); epoch(); ts.append(time.perf_counter() - t0)
print(statistics.median(ts))
"""


def trainer_rows(quick=False, torch=True):
    """One epoch of a 784-256-128-10 ReLU/softmax MLP, Adam, batch 128."""
    from .layers import Dense
    from .model import Sequential
    from .optim import Adam
    from .trainer import Trainer

    m = 2048 if quick else 20_000
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, 784), dtype=np.float32)
    y = rng.integers(0, 10, m)
    group = f"MLP epoch 784-256-128-10, batch 128, m={m}"
    rows = []
    net = tb.TextbookMLP([784, 256, 128, 10])
    rows.append((group, "textbook", median_time(net.epoch, X, y, 128, reps=3, min_time=0)))
    model = Sequential([Dense(256, activation="relu"), Dense(128, activation="relu"), Dense(10, activation="softmax")],
                       input_dim=784, seed=0)
    trainer = Trainer(model, optimizer=Adam(lr=1e-3), batch_size=128, epochs=1, progress=False)
    rows.append((group, f"fusednet ({K.get_backend()})", median_time(trainer.fit, X, y, reps=3, min_time=0)))
    if torch:
        t = _torch_time(_TORCH_EPOCH.format(m=m, threads=K.get_num_threads()))
        if t is not None:
            rows.append((group, "torch (Adam)", t))
    return rows


def format_rows(rows):
    """Aligned table: group, implementation, median, ratio to the group's textbook time."""
    base = {g: s for g, impl, s in rows if impl == "textbook"}
    lines = [f"{'group':<46} {'implementation':<22} {'median':>12} {'vs textbook':>12}"]
    lines.append("-" * len(lines[0]))
    for group, impl, sec in rows:
        ratio = base.get(group, sec) / sec
        lines.append(f"{group:<46} {impl:<22} {sec * 1e3:>9.3f} ms {ratio:>11.2f}x")
    return "\n".join(lines)


def run_bench(quick=False, torch=True):
    """Print the kernel and trainer tables; returns the exit code 0."""
    from tqdm import tqdm

    steps = [lambda: kernel_rows(quick, torch), lambda: trainer_rows(quick, torch)]
    rows = []
    for step in tqdm(steps, desc="benchmarking", leave=False):
        rows += step()
    print(f"threads: {K.get_num_threads()}   backends: {', '.join(K.available())}   dtype: float32")
    print(format_rows(rows))
    return 0
