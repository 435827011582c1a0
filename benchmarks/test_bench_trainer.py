"""The trainer end to end: fusednet against the course's NumPy code and PyTorch CPU.

* one epoch of a 784-256-128-10 ReLU/softmax MLP with Adam on MNIST-shaped data
  (60k x 784 float32, labels from a random teacher net), batch 64/128/512;
* the course's planar net (2-4-1 tanh/sigmoid, 400 points, full batch), per step.

PyTorch is timed in a process of its own (two thread pools in one process fight).
Run:  pytest benchmarks/test_bench_trainer.py --benchmark-only
"""

import numpy as np
import pytest
from conftest import add_external, run_isolated

import fusednet as fn
from fusednet._textbook import TextbookMLP

M_FULL = 60_000
DIMS = [784, 256, 128, 10]


def mnist_like(m, seed=0):
    """Gaussian inputs, labels from a random 784-64-10 teacher network."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 784), dtype=np.float32)
    W1 = rng.standard_normal((784, 64), dtype=np.float32) / 28
    W2 = rng.standard_normal((64, 10), dtype=np.float32)
    y = np.argmax(np.tanh(X @ W1) @ W2, axis=1)
    return X, y


def _m(benchmark):
    return 4096 if benchmark.disabled else M_FULL


def _fusednet_mlp(seed=0):
    return fn.Sequential(
        [fn.layers.Dense(256, activation="relu"), fn.layers.Dense(128, activation="relu"),
         fn.layers.Dense(10, activation="softmax")],
        input_dim=784, dtype="float32", seed=seed,
    )


# "cython" takes the one-call step (fusednet._fused) when it is available; "cython-per-kernel"
# is the same backend with a Python loop over the kernels and NumPy's multi-threaded matmul
_MLP_IMPLS = ["textbook", *fn.kernels.available()]
if "cython" in _MLP_IMPLS:
    _MLP_IMPLS.append("cython-per-kernel")


@pytest.mark.parametrize("batch", [64, 128, 512])
@pytest.mark.parametrize("impl", _MLP_IMPLS)
def test_mlp_epoch(benchmark, record, batch, impl):
    benchmark.group = f"MLP epoch 784-256-128-10 batch {batch}"
    benchmark.extra_info["impl"] = impl
    X, y = mnist_like(_m(benchmark))
    if impl == "textbook":
        net = TextbookMLP(DIMS, seed=0)
        record(lambda: net.epoch(X, y, batch))
        return
    fused = impl != "cython-per-kernel"
    impl = impl.split("-")[0]
    model = _fusednet_mlp()
    trainer = fn.Trainer(model, optimizer=fn.optim.Adam(lr=1e-3, backend=impl), batch_size=batch, epochs=1,
                         progress=False, fused_step=fused)
    fn.set_backend(impl)
    try:
        trainer.fit(X[:1024], y[:1024])  # warm the workspace and the kernels
        history = record(lambda: trainer.fit(X, y))
    finally:
        fn.set_backend("auto")
    assert np.isfinite(history["train_loss"][-1])


_TORCH_MLP = """
import time, statistics, numpy as np, torch
torch.set_num_threads({threads})
torch.set_flush_denormal({flush})
rng = np.random.default_rng(0)
m = {m}
X = rng.standard_normal((m, 784), dtype=np.float32)
W1 = rng.standard_normal((784, 64), dtype=np.float32) / 28
W2 = rng.standard_normal((64, 10), dtype=np.float32)
y = np.argmax(np.tanh(X @ W1) @ W2, axis=1)
X, y = torch.from_numpy(X), torch.from_numpy(y)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(),
                          torch.nn.Linear(128, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused={fused})
loss_fn = torch.nn.CrossEntropyLoss()
def epoch():
    perm = torch.randperm(m)
    for k in range(0, m, {batch}):
        idx = perm[k:k + {batch}]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(X[idx]), y[idx])
        loss.backward()
        opt.step()
epoch()
ts = []
for _ in range({reps}):
    t0 = time.perf_counter(); epoch(); ts.append(time.perf_counter() - t0)
print(statistics.median(ts))
"""


def _torch_available():
    try:
        run_isolated("import torch")
        return True
    except Exception:
        return False


@pytest.mark.parametrize("batch", [64, 128, 512])
def test_torch_mlp_epoch(benchmark, batch):
    if not _torch_available():
        pytest.skip("PyTorch is not installed (install the 'bench' extra)")
    benchmark.group = f"MLP epoch 784-256-128-10 batch {batch}"
    reps = 1 if benchmark.disabled else 3
    for fused, flush, name in ((False, False, "torch-adam"), (True, True, "torch-adam-fused-ftz")):
        code = _TORCH_MLP.format(threads=fn.get_num_threads(), m=_m(benchmark), batch=batch, fused=fused,
                                 flush=flush, reps=reps)
        add_external(benchmark.group, name, float(run_isolated(code, timeout=1200)))
    benchmark.pedantic(lambda: None, rounds=1)


# Epochs timed in turns: a PyTorch process that stays alive between its epochs, and fusednet
# in this process, one epoch each per round (each side's epoch: shuffle and every step).
# This machine's speed drifts by up to 2x over tens of seconds (a neighbour's load on the shared
# cache), so each round's ratio compares two epochs run seconds apart; the medians of the ratios
# are the figures to read.
_TORCH_SERVER = """
import sys
epoch()
print("ready", flush=True)
for line in sys.stdin:
    t0 = time.perf_counter(); epoch(); print(time.perf_counter() - t0, flush=True)
"""


def _torch_server(batch, m, fused):
    import subprocess
    import sys

    code = _TORCH_MLP.split("epoch()\nts = []")[0].format(
        threads=fn.get_num_threads(), m=m, batch=batch, fused=fused, flush=fused, reps=1
    )
    proc = subprocess.Popen([sys.executable, "-c", code + _TORCH_SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("the PyTorch process did not start")
    return proc


@pytest.mark.parametrize("batch", [128])
def test_mlp_epoch_in_turns_with_torch(benchmark, batch):
    if not _torch_available():
        pytest.skip("PyTorch is not installed (install the 'bench' extra)")
    import statistics
    import time

    benchmark.group = f"MLP epoch 784-256-128-10 batch {batch}, in turns with PyTorch"
    m, rounds = (_m(benchmark), 1) if benchmark.disabled else (M_FULL, 7)
    X, y = mnist_like(m)
    trainer = fn.Trainer(_fusednet_mlp(), optimizer=fn.optim.Adam(lr=1e-3), batch_size=batch, epochs=1,
                         progress=False)
    trainer.fit(X[:1024], y[:1024])
    servers = {"torch-adam": _torch_server(batch, m, False), "torch-adam-fused-ftz": _torch_server(batch, m, True)}
    times = {name: [] for name in (*servers, "fusednet")}
    try:
        for _ in range(rounds):
            for name, proc in servers.items():
                time.sleep(0.2)  # let the other side's BLAS threads park
                proc.stdin.write("go\n")
                proc.stdin.flush()
                times[name].append(float(proc.stdout.readline()))
            time.sleep(0.2)
            # the epoch as the trainer times it (History "time"), like PyTorch's epoch():
            # without fit()'s one-off checks of X and y (about 12 ms here)
            times["fusednet"].append(trainer.fit(X, y)["time"][-1])
    finally:
        for proc in servers.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    for name, ts in times.items():
        add_external(benchmark.group, name, statistics.median(ts))
        benchmark.extra_info[name] = ts
    for name in servers:
        ratios = [t / f for t, f in zip(times[name], times["fusednet"])]
        benchmark.extra_info[f"ratio {name}"] = ratios
        print(f"\nfusednet vs {name}, batch {batch}: median ratio {statistics.median(ratios):.2f} "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    benchmark.pedantic(lambda: None, rounds=1)


# ---------------------------------------------------------------- the planar net, per step


def _textbook_planar_step(X, Y, p, lr=1.2):
    """One iteration of the course's 2-layer planar classifier ((n_x, m) layout)."""
    m = X.shape[1]
    Z1 = np.dot(p["W1"], X) + p["b1"]
    A1 = np.tanh(Z1)
    Z2 = np.dot(p["W2"], A1) + p["b2"]
    A2 = 1 / (1 + np.exp(-Z2))
    cost = -np.sum(np.multiply(np.log(A2), Y) + np.multiply(np.log(1 - A2), 1 - Y)) / m
    dZ2 = A2 - Y
    dW2 = np.dot(dZ2, A1.T) / m
    db2 = np.sum(dZ2, axis=1, keepdims=True) / m
    dZ1 = np.dot(p["W2"].T, dZ2) * (1 - np.power(A1, 2))
    dW1 = np.dot(dZ1, X.T) / m
    db1 = np.sum(dZ1, axis=1, keepdims=True) / m
    p["W1"] = p["W1"] - lr * dW1
    p["b1"] = p["b1"] - lr * db1
    p["W2"] = p["W2"] - lr * dW2
    p["b2"] = p["b2"] - lr * db2
    return cost


@pytest.mark.parametrize("impl", ["textbook", *fn.kernels.available()])
def test_planar_step(benchmark, record, impl):
    benchmark.group = "planar 2-4-1 full batch, 100 steps"
    benchmark.extra_info["impl"] = impl
    X, y = fn.datasets.planar_flower(m=400, seed=1)
    X = X.astype(np.float64)
    if impl == "textbook":
        rng = np.random.default_rng(2)
        p = {"W1": rng.standard_normal((4, 2)) * 0.01, "b1": np.zeros((4, 1)),
             "W2": rng.standard_normal((1, 4)) * 0.01, "b2": np.zeros((1, 1))}
        XT, Y = X.T.copy(), y.reshape(1, -1).astype(np.float64)
        record(lambda: [_textbook_planar_step(XT, Y, p) for _ in range(100)])
        return
    model = fn.Sequential([fn.layers.Dense(4, activation="tanh", init="random"),
                           fn.layers.Dense(1, activation="sigmoid", init="random")],
                          input_dim=2, dtype="float64", seed=2)
    fn.set_backend(impl)
    try:
        trainer = fn.Trainer(model, optimizer=fn.optim.GD(lr=1.2, backend=impl), batch_size=None, epochs=100,
                             progress=False)
        trainer.fit(X, y)
        record(lambda: trainer.fit(X, y))
    finally:
        fn.set_backend("auto")


_TORCH_PLANAR = """
import time, statistics, numpy as np, torch
torch.set_num_threads({threads})
rng = np.random.default_rng(1)
X = torch.from_numpy(rng.standard_normal((400, 2)))
y = torch.from_numpy((rng.random((400, 1)) > 0.5).astype(np.float64))
net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
opt = torch.optim.SGD(net.parameters(), lr=1.2)
loss_fn = torch.nn.BCEWithLogitsLoss()
def steps():
    for _ in range(100):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(X), y)
        loss.backward()
        opt.step()
steps()
ts = []
for _ in range({reps}):
    t0 = time.perf_counter(); steps(); ts.append(time.perf_counter() - t0)
print(statistics.median(ts))
"""


def test_torch_planar_step(benchmark):
    if not _torch_available():
        pytest.skip("PyTorch is not installed (install the 'bench' extra)")
    benchmark.group = "planar 2-4-1 full batch, 100 steps"
    reps = 3 if benchmark.disabled else 50
    torch_time = run_isolated(_TORCH_PLANAR.format(threads=fn.get_num_threads(), reps=reps))
    add_external(benchmark.group, "torch", float(torch_time))
    benchmark.pedantic(lambda: None, rounds=1)
