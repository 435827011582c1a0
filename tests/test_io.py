"""Model files: round trips, and every way a file can be wrong."""

import json
import math
import os
import pickle
import stat
import subprocess
import sys
import time
import tracemalloc
import zipfile
from io import BytesIO

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


@pytest.mark.parametrize(
    "change",
    [
        lambda h: h["config"]["layers"][0].update(leaky_slope=10**400),
        lambda h: h["config"].update(l2=10**400),
    ],
    ids=["layer", "model"],
)
def test_config_number_too_large_for_a_float_is_a_value_error(tmp_path, trained, change):
    model, _ = trained
    path = tmp_path / "m.npz"
    model.save(path)
    _rewrite_header(path, change)
    with pytest.raises(ValueError, match=r"m\.npz: damaged"):
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


# ---- crafted files ------------------------------------------------------------------------


def _npy(a):
    buf = BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _npy_claiming(shape, descr, data=b""):
    """A .npy member whose header claims ``shape`` but holds only ``data``."""
    buf = BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"shape": shape, "fortran_order": False, "descr": descr})
    return buf.getvalue() + data


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _header_bytes(layers, input_dim, dtype="float32"):
    header = {
        "format": "fusednet.model",
        "version": 1,
        "fusednet": fn.__version__,
        "config": {"layers": layers, "input_dim": input_dim, "l2": 0.0, "dtype": dtype, "seed": 0},
        "normalizer": None,
    }
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _write(path, header, params, running=None):
    running = np.zeros(0, params.dtype) if running is None else running
    np.savez(path, header=header, params=params, running=running)


def _load_measured(path, match):
    """Load ``path`` expecting a ValueError; return (seconds, peak traced bytes)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=match):
            fn.load(path)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return elapsed, peak


def dense(units, activation=None, use_bias=True):
    return fn.layers.Dense(units, activation=activation, use_bias=use_bias).get_config()


# ---- sizes are checked before anything is allocated ------------------------------------------


@pytest.mark.parametrize(
    "layers, input_dim",
    [
        ([dense(10**4, "relu"), dense(2, "softmax")], 1000),
        ([dense(10**6, "relu"), dense(10**6, "relu"), dense(2, "softmax")], 10**6),
    ],
    ids=["1e7-params", "1e12-params"],
)
def test_small_file_claiming_huge_layers_fails_fast_without_allocating(tmp_path, layers, input_dim):
    path = tmp_path / "big.npz"
    _write(path, _header_bytes(layers, input_dim), np.zeros(10, np.float32))
    assert path.stat().st_size < 4096
    elapsed, peak = _load_measured(path, r"big\.npz.*implies \d+ values in 'params', the file holds 10")
    assert elapsed < 0.5
    assert peak < 1 << 20


def test_array_header_claiming_more_data_than_the_file_holds(tmp_path):
    n = 10**8  # one sigmoid unit without bias over n features: n parameters, all claimed
    path = tmp_path / "claims.npz"
    _zip(
        path,
        {
            "header.npy": _npy(_header_bytes([dense(1, "sigmoid", use_bias=False)], n)),
            "params.npy": _npy_claiming((n,), "<f4", b"\0" * 16),
            "running.npy": _npy(np.zeros(0, np.float32)),
        },
    )
    elapsed, peak = _load_measured(path, r"claims\.npz.*params claims 400000000 bytes")
    assert elapsed < 0.5
    assert peak < 1 << 20


def test_json_header_over_the_size_limit_is_refused(tmp_path, trained, monkeypatch):
    model, _ = trained
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    padded = arrays["header"].tobytes() + b" " * 3000  # trailing whitespace is valid JSON
    arrays["header"] = np.frombuffer(padded, dtype=np.uint8)
    np.savez(path, **arrays)
    monkeypatch.setattr(io, "MAX_HEADER_BYTES", 2000)
    with pytest.raises(ValueError, match=r"m\.npz.*header of \d+ bytes, over the limit of 2000"):
        fn.load(path)


def test_wide_model_without_parameters_is_refused(tmp_path):
    path = tmp_path / "wide.npz"
    layers = [fn.layers.Activation("softmax").get_config()]
    _write(path, _header_bytes(layers, 10**8), np.zeros(0, np.float32))
    elapsed, peak = _load_measured(path, r"wide\.npz.*no parameters to back it")
    assert elapsed < 0.5
    assert peak < 1 << 20


def test_model_without_parameters_round_trips(tmp_path):
    model = fn.Sequential([fn.layers.Activation("softmax")], input_dim=3)
    model.save(tmp_path / "m.npz")
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(fn.load(tmp_path / "m.npz").forward(X), model.forward(X))


@pytest.mark.parametrize(
    "layers",
    [
        lambda: small_model().layers,
        lambda: [fn.layers.BatchNorm(), fn.layers.Dense(4, activation="tanh"), fn.layers.Dense(1, "sigmoid")],
        lambda: [fn.layers.Dense(6, use_bias=False), fn.layers.BatchNorm(), fn.layers.Dense(2, "softmax")],
        lambda: [fn.layers.Dropout(0.5), fn.layers.Activation("softmax")],
    ],
    ids=["small", "batchnorm-first", "no-bias", "no-params"],
)
def test_arena_sizes_from_the_config_match_build(layers):
    model = fn.Sequential(layers(), input_dim=7)
    n_params, n_stats, widths = io._arena_sizes(model.layers, 7)
    assert n_params == model.n_params
    assert n_stats == model.state_dict()["running"].size
    assert widths[1:] == [node.n_out for node in model._nodes]


# ---- foreign files ------------------------------------------------------------------------------


def _zip_bytes(members):
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npz_bytes(**arrays):
    buf = BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


FOREIGN = {
    "npy": lambda: _npy(np.arange(5.0)),
    "npy-object": lambda: _npy(np.array([{"a": 1}], dtype=object)),
    "text": lambda: b"label,x\n1,2\n",
    "empty": lambda: b"",
    "random-bytes": lambda: np.random.default_rng(0).bytes(4096),
    "pickle": lambda: pickle.dumps({"params": [1.0]}),
    "zip-without-our-members": lambda: _zip_bytes({"readme.txt": b"hello"}),
    "npz-other-arrays": lambda: _npz_bytes(X=np.zeros((3, 2)), y=np.zeros(3)),
    "npz-object-arrays": lambda: _npz_bytes(
        header=np.array([{"a": 1}], dtype=object), params=np.zeros(3), running=np.zeros(0)
    ),
    "npz-members-not-npy": lambda: _zip_bytes({f"{m}.npy": b"junk" for m in ("header", "params", "running")}),
    "npz-2d-params": lambda: _npz_bytes(
        header=np.zeros(3, np.uint8), params=np.zeros((2, 2)), running=np.zeros(0)
    ),
    "npz-other-format": lambda: _npz_bytes(
        header=np.frombuffer(b'{"format": "other"}', np.uint8), params=np.zeros(3), running=np.zeros(0)
    ),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_foreign_file_is_not_a_fusednet_model_file(tmp_path, kind):
    path = tmp_path / "foreign.npz"
    path.write_bytes(FOREIGN[kind]())
    with pytest.raises(ValueError, match=r"foreign\.npz: not a fusednet model file"):
        fn.load(path)


# ---- permissions, temporaries, durability ---------------------------------------------------------

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions and pids")


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
def test_replacing_a_file_keeps_its_mode(tmp_path, trained, mode):
    model, _ = trained
    path = tmp_path / "m.npz"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    model.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode


@posix_only
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_new_file_gets_0666_minus_umask(tmp_path, trained, umask):
    model, _ = trained
    old = os.umask(umask)
    try:
        model.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o666 & ~umask


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@posix_only
def test_orphaned_temp_of_a_killed_save_is_removed(tmp_path, trained):
    model, _ = trained
    orphan = tmp_path / io._temp_name("m.npz", _dead_pid())
    orphan.write_bytes(b"half a model")
    model.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == ["m.npz"]


@posix_only
def test_temps_of_live_processes_and_other_targets_stay(tmp_path, trained):
    model, _ = trained
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [
            io._temp_name("m.npz", child.pid),  # a save in progress elsewhere
            io._temp_name("m.npz", os.getpid()),  # one in another thread of this process
            io._temp_name("other.npz", _dead_pid()),  # another target's
            ".m.npz.fusednet-unrelated.tmp",  # not ours
        ]
        for name in keep:
            (tmp_path / name).write_bytes(b"busy")
        model.save(tmp_path / "m.npz")
        assert sorted(os.listdir(tmp_path)) == sorted(keep + ["m.npz"])
    finally:
        child.kill()
        child.wait()


def test_save_fsyncs_the_folder_after_the_rename(tmp_path, trained, monkeypatch):
    model, _ = trained
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model.save(tmp_path / "m.npz")
    assert events == ["fsync file", "rename", "fsync folder"]


def test_save_succeeds_where_folders_cannot_be_fsynced(tmp_path, trained, monkeypatch):
    model, X = trained
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(fn.load(tmp_path / "m.npz").forward(X), model.forward(X))


# ---- the label mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "classes, expected",
    [
        (["cat", "dog", "eel"], ["cat", "dog", "eel"]),
        ([3, 5, 7], [3, 5, 7]),
        ([0.5, 1.5, 2.5], [0.5, 1.5, 2.5]),
        (np.array([10, 20, 30]), [10, 20, 30]),
        (np.array(["a", "b", "c"]), ["a", "b", "c"]),
        ((-1, "x", 2.5), [-1, "x", 2.5]),
    ],
    ids=["str", "int", "float", "int-array", "str-array", "mixed-tuple"],
)
def test_classes_round_trip_as_a_list_of_plain_values(tmp_path, trained, classes, expected):
    model, X = trained
    model.classes = classes
    model.save(tmp_path / "m.npz")
    back = fn.load(tmp_path / "m.npz")
    assert type(back.classes) is list
    assert back.classes == expected
    assert [type(v) for v in back.classes] == [type(v) for v in expected]
    np.testing.assert_array_equal(back.predict(X), model.predict(X))


def test_bool_classes_of_one_sigmoid_unit_round_trip(tmp_path):
    model = fn.Sequential([fn.layers.Dense(4, "relu"), fn.layers.Dense(1, "sigmoid")], input_dim=5)
    model.classes = [np.False_, np.True_]
    model.save(tmp_path / "m.npz")
    back = fn.load(tmp_path / "m.npz")
    assert back.classes == [False, True]
    assert all(type(v) is bool for v in back.classes)


def test_model_without_classes_attribute_saves_null(tmp_path, trained):
    model, _ = trained
    model.__dict__.pop("classes", None)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert json.loads(z["header"].tobytes())["classes"] is None
    assert fn.load(tmp_path / "m.npz").classes is None


def test_file_without_classes_key_loads_with_none(tmp_path, trained):
    """Files written before the label mapping existed are still version 1 and load unchanged."""
    model, X = trained
    path = tmp_path / "m.npz"
    model.save(path)
    _rewrite_header(path, lambda h: h.pop("classes", None))
    back = fn.load(path)
    assert back.classes is None
    np.testing.assert_array_equal(back.forward(X), model.forward(X))


@pytest.mark.parametrize(
    "bad",
    [[0, 1], [0, 1, 2, 3], {"0": "a"}, "abc", 3, [[0], [1], [2]], [None, 1, 2], ["a", "a", "b"], [math.nan, 1, 2]],
    ids=["too-few", "too-many", "dict", "string", "int", "nested", "null", "duplicate", "nan"],
)
def test_bad_classes_in_a_file_are_a_value_error(tmp_path, trained, bad):
    model, _ = trained
    path = tmp_path / "m.npz"
    model.save(path)
    _rewrite_header(path, lambda h: h.update(classes=bad))
    with pytest.raises(ValueError, match=r"m\.npz.*classes"):
        fn.load(path)


@pytest.mark.parametrize(
    "bad", [[0, 1], [object(), 1, 2], "abc", [1, 1, 2]], ids=["too-few", "object", "string", "duplicate"]
)
def test_bad_classes_are_refused_before_writing(tmp_path, trained, bad):
    model, _ = trained
    model.classes = bad
    with pytest.raises(ValueError, match="model.classes"):
        model.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


def test_classes_of_a_regression_model_are_refused(tmp_path):
    model = fn.Sequential([fn.layers.Dense(2)], input_dim=3)
    model.classes = [0, 1]
    with pytest.raises(ValueError, match="regression"):
        model.save(tmp_path / "m.npz")


# ---- the normaliser ------------------------------------------------------------------------------------


def test_normalizer_of_the_wrong_length_in_a_file_is_a_value_error(tmp_path, trained):
    model, X = trained
    model.normalizer = fn.data.Normalizer().fit(X)
    path = tmp_path / "m.npz"
    model.save(path)
    four = fn.data.Normalizer().fit(X[:, :4]).to_dict()
    _rewrite_header(path, lambda h: h.update(normalizer=four))
    with pytest.raises(ValueError, match=r"m\.npz.*normalizer has 4 features, the model takes 5"):
        fn.load(path)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_normalizer_in_a_file_is_a_value_error(tmp_path, trained, value):
    model, X = trained
    model.normalizer = fn.data.Normalizer().fit(X)
    path = tmp_path / "m.npz"
    model.save(path)

    def spoil(h):
        h["normalizer"]["mean"][2] = value

    _rewrite_header(path, spoil)
    with pytest.raises(ValueError, match=r"m\.npz.*must be finite"):
        fn.load(path)
