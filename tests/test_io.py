"""Model files: round trips, and every way a file can be wrong."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import fusednet as fn
from fusednet import io


def small_model(dtype="float32", bn=True):
    layers = [fn.layers.Dense(8, activation="relu")]
    if bn:
        layers += [fn.layers.Dense(6, use_bias=False), fn.layers.BatchNorm(), fn.layers.Activation("tanh")]
    layers += [fn.layers.Dropout(0.8), fn.layers.Dense(3, activation="softmax")]
    return fn.Sequential(layers, input_dim=5, l2=0.01, dtype=dtype, seed=3)


@pytest.fixture
def trained():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = small_model()
    fn.Trainer(model, optimizer=fn.optim.Adam(lr=0.01), batch_size=16, epochs=3, progress=False).fit(X, y)
    return model, X


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bn", [True, False])
def test_round_trip_predicts_bit_identically(tmp_path, dtype, bn):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 5)).astype(dtype)
    y = rng.integers(0, 3, 40)
    model = small_model(dtype, bn)
    fn.Trainer(model, batch_size=8, epochs=2, progress=False).fit(X, y)
    path = tmp_path / "m.npz"
    model.save(path)
    back = fn.load(path)
    assert back.get_config()["layers"] == model.get_config()["layers"]
    assert back.dtype == model.dtype
    np.testing.assert_array_equal(back.forward(X), model.forward(X))
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    for (n1, a1), (n2, a2) in zip(model.parameters(), back.parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(a1, a2)


def test_normalizer_is_saved(tmp_path, trained):
    model, X = trained
    model.normalizer = fn.data.Normalizer().fit(X)
    model.save(tmp_path / "m.npz")
    back = fn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.normalizer.mean_, model.normalizer.mean_)
    np.testing.assert_array_equal(back.normalizer.std_, model.normalizer.std_)


def test_file_is_plain_npz_without_pickle(tmp_path, trained):
    model, _ = trained
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert set(z.files) == {"header", "params", "running"}
        header = json.loads(z["header"].tobytes())
    assert header["format"] == "fusednet.model" and header["version"] == 1


def test_save_is_atomic(tmp_path, trained, monkeypatch):
    """A crash while writing leaves the previous file intact and no temporary behind."""
    model, X = trained
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fn.load(tmp_path / "nope.npz")


def test_truncated_file(tmp_path, trained):
    model, _ = trained
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="m.npz"):
            fn.load(path)


def test_corrupted_bytes(tmp_path, trained):
    model, _ = trained
    path = tmp_path / "m.npz"
    model.save(path)
    data = bytearray(path.read_bytes())
    # flip bytes inside the params array's data: the zip CRC catches it
    i = data.find(b"params.npy")
    for k in range(i + 200, i + 260):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        fn.load(path)


def test_pickle_file_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError):
        fn.load(path)
    assert not marker.exists()


def test_object_array_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, header=np.array([{"a": 1}], dtype=object), params=np.zeros(3), running=np.zeros(0))
    with pytest.raises(ValueError):
        fn.load(path)


def test_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, X=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(ValueError, match="not a fusednet model"):
        fn.load(path)


def _rewrite_header(path, change):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes())
    change(header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_newer_version_is_refused(tmp_path, trained):
    model, _ = trained
    path = tmp_path / "m.npz"
    model.save(path)
    _rewrite_header(path, lambda h: h.update(version=99))
    with pytest.raises(ValueError, match="newer"):
        fn.load(path)


def test_wrong_sized_params(tmp_path, trained):
    model, _ = trained
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["params"] = arrays["params"][:-1]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="damaged"):
        fn.load(path)


def test_unknown_layer_in_config(tmp_path, trained):
    model, _ = trained
    path = tmp_path / "m.npz"
    model.save(path)
    _rewrite_header(path, lambda h: h["config"]["layers"].append({"type": "Lambda", "code": "import os"}))
    with pytest.raises(ValueError):
        fn.load(path)


def test_not_a_zip(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip file")
    with pytest.raises(ValueError):
        fn.load(path)
    assert zipfile.is_zipfile(path) is False


def test_unbuilt_model_cannot_be_saved(tmp_path):
    model = fn.Sequential([fn.layers.Dense(2, activation="softmax")])
    with pytest.raises(ValueError, match="not built"):
        model.save(tmp_path / "m.npz")


def test_checkpoint_callback_writes_loadable_files(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 5)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = small_model(bn=False)
    path = tmp_path / "ckpt.npz"
    fn.Trainer(model, batch_size=8, epochs=2, progress=False, callbacks=[fn.callbacks.Checkpoint(path)]).fit(X, y)
    back = io.load_model(path)
    np.testing.assert_array_equal(back.forward(X), model.forward(X))
