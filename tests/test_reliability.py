"""Promises that break quietly when they break: threads sharing a model, fork after training,
a model's normaliser, data beyond float32's range, sparse input."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fusednet as fn
from fusednet import kernels
from fusednet.layers import BatchNorm, Dense, Dropout
from fusednet.model import Sequential

BACKENDS = kernels.available()


def _trained(dtype="float32"):
    X, y = fn.datasets.digits()
    model = Sequential([Dense(48, "relu"), Dropout(0.9), Dense(20, use_bias=False), BatchNorm(),
                        Dense(10, "softmax")], input_dim=64, dtype=dtype, seed=0)
    fn.Trainer(model, batch_size=64, epochs=2, progress=False).fit(X, y)
    return model, X


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_threads_sharing_a_model_predict_what_a_serial_call_predicts(backend):
    model, X = _trained()
    rng = np.random.default_rng(0)
    batches = [X[rng.permutation(len(X))[:1000]] for _ in range(8)]  # the same batch size in every thread
    serial = [(model.predict(b), model.predict_proba(b), model.forward(b)) for b in batches]
    wrong = []
    start = threading.Barrier(8)

    def work(i):
        start.wait()
        for k in range(60):
            b = batches[(i + k) % 8]
            want = serial[(i + k) % 8]
            got = (model.predict(b), model.predict_proba(b), model.forward(b))
            if not all(np.array_equal(g, w) for g, w in zip(got, want)):
                wrong.append((i, k))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_threads_sharing_a_model_evaluate_what_a_serial_call_evaluates(backend):
    model, X = _trained("float64")
    _, y = fn.datasets.digits()
    want = model.evaluate(X, y)
    got = []

    def work():
        for _ in range(20):
            got.append(model.evaluate(X, y))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(g == want for g in got)


_FORK_SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import sys

    import numpy as np

    import fusednet as fn

    fn.set_backend(sys.argv[1])
    fn.set_num_threads(2)
    X, y = fn.datasets.digits()

    def net():
        return fn.Sequential([fn.layers.Dense(64, activation="relu"), fn.layers.Dense(10, activation="softmax")],
                             input_dim=64, seed=0)

    # the parent trains on the fused step's team and the per-kernel path, and predicts a large batch
    model = net()
    fn.Trainer(model, batch_size=64, epochs=2, progress=False).fit(X, y)
    fn.Trainer(model, batch_size=512, epochs=1, progress=False, fused_step=False).fit(X, y)
    big = np.tile(X, (40, 1))
    want = model.predict(big)

    def child(i):
        m2 = net()
        h = fn.Trainer(m2, batch_size=64, epochs=2, progress=False).fit(X, y)
        fn.Trainer(m2, batch_size=512, epochs=1, progress=False, fused_step=False).fit(X, y)
        ok = bool((model.predict(big) == want).all()) and h["train_loss"][-1] < h["train_loss"][0]
        check = fn.gradcheck(m2.copy(dtype="float64"), X[:32], y[:32], sample=64).verdict
        return ok, check, fn.info()["forked_serial"]

    with mp.get_context("fork").Pool(2) as pool:
        print(pool.map_async(child, range(2)).get(timeout=240))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKENDS)
def test_a_forked_child_of_a_process_that_trained_can_train_and_predict(tmp_path, name):
    script = tmp_path / "fork_after_training.py"
    script.write_text(_FORK_SCRIPT)
    out = subprocess.run([sys.executable, str(script), name], capture_output=True, text=True, timeout=420,
                         env={**os.environ, "PYTHONHASHSEED": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str([(True, "great", True)] * 2), out.stdout


_POPULATION_FORK_SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import numpy as np
    import fusednet as fn

    fn.set_num_threads(2)
    X, y = fn.datasets.digits()
    configs = [{"lr": lr} for lr in (0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5)]

    def population():
        return fn.Population([fn.layers.Dense(16, activation="relu"), fn.layers.Dense(10, activation="softmax")],
                             input_dim=64, configs=configs, batch_size=128, epochs=2, seed=0)

    # the parent trains a population on its team of threads
    pop = population()
    pop._run(pop._data(X, y, None), 0, 2, pop.histories, team=True)
    want = np.stack([m._params for m in pop.models])

    def child(i):
        p = population()
        p._run(p._data(X, y, None), 0, 2, p.histories, team=True)
        return bool((np.stack([m._params for m in p.models]) == want).all())

    with mp.get_context("fork").Pool(2) as pool:
        print(pool.map_async(child, range(2)).get(timeout=240))
    """
)


@pytest.mark.slow
def test_a_forked_child_trains_a_population_on_its_team(tmp_path):
    """A population's team is plain threads: a forked child of a process that ran one runs its own, same models."""
    script = tmp_path / "population_after_fork.py"
    script.write_text(_POPULATION_FORK_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[True, True]", out.stdout


def test_a_model_with_a_normalizer_takes_raw_input(tmp_path):
    X, y = fn.datasets.digits()
    X = X * 3.0 + 10.0  # raw features far from standardised
    norm = fn.data.Normalizer().fit(X)
    model = Sequential([Dense(32, "relu"), Dense(10, "softmax")], input_dim=64, seed=0)
    model.normalizer = norm
    fn.Trainer(model, fn.optim.Adam(0.01), batch_size=64, epochs=5, progress=False).fit(X, y, dev=(X[:100], y[:100]))
    plain = model.copy()
    plain.normalizer = None
    Z = norm.transform(X)
    np.testing.assert_array_equal(model.predict(X), plain.predict(Z))
    np.testing.assert_array_equal(model.forward(X), plain.forward(Z))
    assert model.evaluate(X, y) == plain.evaluate(Z, y)
    assert model.evaluate(X, y)["accuracy"] > 0.9
    # saved and loaded, the model still takes raw input
    model.save(tmp_path / "m.npz")
    loaded = fn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    # the gradient check sees the network on normalised input
    assert fn.gradcheck(model.copy(dtype="float64"), X[:16], y[:16], sample=50).verdict == "great"


def test_a_normalizer_of_another_width_is_refused():
    model = Sequential([Dense(3, "softmax")], input_dim=4)
    with pytest.raises(ValueError, match="5 features"):
        model.normalizer = fn.data.Normalizer().fit(np.random.default_rng(0).standard_normal((10, 5)))
    with pytest.raises(TypeError, match="normalizer"):
        model.normalizer = "standard"


def test_float64_data_beyond_float32_range_is_refused_by_a_float32_model():
    model = Sequential([Dense(2, "softmax")], input_dim=3)
    X = np.ones((4, 3))
    X[2, 1] = 1e39
    for call in (model.predict, model.forward, model.predict_proba):
        with pytest.raises(ValueError, match=r"row 2, column 1.*float32"):
            call(X)
    with pytest.raises(ValueError, match="float32"):
        fn.Trainer(model, progress=False).fit(X, np.array([0, 1, 0, 1]))
    # a float64 model takes it
    Sequential([Dense(2, "softmax")], input_dim=3, dtype="float64").predict(X)


def test_sparse_input_gets_a_message_that_says_how_to_densify():
    sparse = pytest.importorskip("scipy.sparse")
    model = Sequential([Dense(2, "softmax")], input_dim=3)
    with pytest.raises(TypeError, match=r"scipy.sparse.*toarray\(\)"):
        model.predict(sparse.csr_matrix(np.eye(3)))
