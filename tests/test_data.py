"""fusednet.data: seeds, train/dev/test split, Normalizer, one-hot encoding."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusednet.data as data_module
from fusednet.data import Normalizer, as_generator, from_one_hot, one_hot, split

# --------------------------------------------------------------------------
# as_generator
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2**40, np.int64(7), np.uint8(3)])
def test_as_generator_int_is_reproducible(seed):
    a = as_generator(seed).standard_normal(5)
    b = as_generator(seed).standard_normal(5)
    assert isinstance(as_generator(seed), np.random.Generator)
    np.testing.assert_array_equal(a, b)


def test_as_generator_passes_a_generator_through():
    rng = np.random.default_rng(3)
    assert as_generator(rng) is rng


def test_as_generator_none_gives_a_fresh_generator():
    assert isinstance(as_generator(None), np.random.Generator)


@pytest.mark.parametrize("seed", [1.5, "0", True, [1], np.random.RandomState(0), np.float64(2.0)])
def test_as_generator_rejects_other_types(seed):
    with pytest.raises(TypeError, match="seed must be"):
        as_generator(seed)


def test_as_generator_rejects_negative():
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        as_generator(-1)


# --------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------


def _indexed(m, n=3):
    """X whose first column is the row id, y = row id: splits can be traced back."""
    X = np.tile(np.arange(m, dtype=np.float64)[:, None], (1, n))
    X[:, 1:] *= np.arange(2, n + 1)
    return X, np.arange(m)


def _check_partition(m, parts, n_dev, n_test):
    (Xtr, ytr), (Xdv, ydv), (Xte, yte) = parts
    assert (len(ytr), len(ydv), len(yte)) == (m - n_dev - n_test, n_dev, n_test)
    ids = [X[:, 0].astype(np.int64) for X in (Xtr, Xdv, Xte)]
    for i, y in zip(ids, (ytr, ydv, yte)):
        np.testing.assert_array_equal(i, y)  # rows of X and y stay paired
    everything = np.concatenate(ids)
    assert len(np.unique(everything)) == m  # disjoint
    np.testing.assert_array_equal(np.sort(everything), np.arange(m))  # union is everything


@pytest.mark.parametrize(
    ("m", "dev", "test", "n_dev", "n_test"),
    [
        (100, 0.1, 0.1, 10, 10),
        (1000, 0.2, 0.05, 200, 50),
        (7, 0.1, 0.1, 1, 1),
        (10, 0.0, 0.0, 0, 0),
        (10, 0.0, 0.3, 0, 3),
        (1, 0.1, 0.1, 0, 0),
        (3, 0.33, 0.33, 1, 1),
    ],
)
def test_split_partitions_the_rows(m, dev, test, n_dev, n_test):
    X, y = _indexed(m)
    parts = split(X, y, dev=dev, test=test, seed=0)
    _check_partition(m, parts, n_dev, n_test)
    for Xs, ys in parts:
        assert Xs.dtype == X.dtype and ys.dtype == y.dtype
        assert Xs.shape[1:] == X.shape[1:]


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 300),
    dev=st.floats(0.0, 0.6),
    test=st.floats(0.0, 0.39),
    seed=st.integers(0, 2**32),
    stratify=st.booleans(),
)
def test_split_invariants_property(m, dev, test, seed, stratify):
    n_dev, n_test = round(dev * m), round(test * m)
    X, y = _indexed(m)
    if m - n_dev - n_test < 1:
        with pytest.raises(ValueError, match="no training example"):
            split(X, y, dev=dev, test=test, seed=seed)
        return
    if stratify:
        labels = np.arange(m) % 3
        parts = split(X, labels, dev=dev, test=test, seed=seed, stratify=True)
        for Xs, ys in parts:  # labels follow their rows
            np.testing.assert_array_equal(ys, Xs[:, 0].astype(np.int64) % 3)
        parts = tuple((Xs, Xs[:, 0].astype(np.int64)) for Xs, _ in parts)
    else:
        parts = split(X, y, dev=dev, test=test, seed=seed)
    _check_partition(m, parts, n_dev, n_test)


def test_split_is_shuffled_and_deterministic():
    X, y = _indexed(200)
    a = split(X, y, seed=5)
    b = split(X, y, seed=5)
    c = split(X, y, seed=6)
    for (Xa, ya), (Xb, yb) in zip(a, b):
        np.testing.assert_array_equal(Xa, Xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][1], c[0][1])
    assert not np.array_equal(a[0][1], np.sort(a[0][1]))  # shuffled, not in file order


def test_split_accepts_a_generator_and_advances_it():
    X, y = _indexed(50)
    rng = np.random.default_rng(0)
    first = split(X, y, seed=rng)[0][1]
    second = split(X, y, seed=rng)[0][1]
    assert not np.array_equal(first, second)


def test_split_accepts_lists_and_multidimensional_x():
    X = np.arange(10 * 2 * 3).reshape(10, 2, 3)
    (Xtr, ytr), (Xdv, _), _ = split(X, list(range(10)), dev=0.2, test=0.2)
    assert Xtr.shape == (6, 2, 3) and Xdv.shape == (2, 2, 3)
    np.testing.assert_array_equal(Xtr, X[ytr])


def test_split_empty_dev_keeps_feature_shape():
    X, y = _indexed(10, n=4)
    (_, _), (Xdv, ydv), (_, _) = split(X, y, dev=0.0, test=0.2)
    assert Xdv.shape == (0, 4) and ydv.shape == (0,)


@pytest.mark.parametrize(
    ("counts", "dev", "test"),
    [([700, 200, 100], 0.1, 0.1), ([50, 30, 20], 0.2, 0.2), ([90, 10], 0.15, 0.05), ([5, 3, 2], 0.2, 0.2)],
)
def test_split_stratified_keeps_class_proportions(counts, dev, test):
    y = np.repeat(np.arange(len(counts)), counts)
    m = len(y)
    rng = np.random.default_rng(1)
    y = rng.permutation(y)
    X = np.arange(m, dtype=np.float32)[:, None]
    parts = split(X, y, dev=dev, test=test, seed=0, stratify=True)
    sizes = [round(dev * m), round(test * m)]
    assert [len(parts[1][1]), len(parts[2][1])] == sizes
    for (Xs, ys), fraction in zip(parts, (1 - dev - test, dev, test)):
        np.testing.assert_array_equal(ys, y[Xs[:, 0].astype(np.int64)])
        per_class = np.bincount(ys, minlength=len(counts))
        expected = np.array(counts) * fraction
        assert np.all(np.abs(per_class - expected) <= 1.0 + 1e-9), (per_class, expected)


def test_split_stratified_accepts_one_hot_and_column_labels():
    y = np.repeat([0, 1], [80, 20])
    X = np.arange(100.0)[:, None]
    by_ids = split(X, y, dev=0.2, test=0.2, seed=3, stratify=True)
    by_column = split(X, y[:, None], dev=0.2, test=0.2, seed=3, stratify=True)
    by_one_hot = split(X, one_hot(y), dev=0.2, test=0.2, seed=3, stratify=True)
    for a, b, c in zip(by_ids, by_column, by_one_hot):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[0], c[0])
        assert np.bincount(a[1]).tolist() == np.bincount(from_one_hot(c[1])).tolist()


def test_split_stratified_is_not_the_unstratified_split():
    y = np.repeat([0, 1], [90, 10])
    X = np.arange(100.0)[:, None]
    for seed in range(5):
        (_, _), (_, ydv), (_, yte) = split(X, y, dev=0.1, test=0.1, seed=seed, stratify=True)
        assert ydv.sum() == 1 and yte.sum() == 1


@pytest.mark.parametrize("chunk_bytes", [1 << 24, 64])
def test_split_of_a_memmap_equals_the_in_memory_split(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(data_module, "_CHUNK_BYTES", chunk_bytes)
    X, y = _indexed(123, n=5)
    X = X.astype(np.float32)
    path = tmp_path / "X.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
    got = split(ro, y, seed=4)
    want = split(X, y, seed=4)
    for (Xg, yg), (Xw, yw) in zip(got, want):
        assert type(Xg) is np.ndarray  # a plain in-memory array, not a view of the file
        np.testing.assert_array_equal(Xg, Xw)
        np.testing.assert_array_equal(yg, yw)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "fragment"),
    [
        ((np.zeros((5, 2)), np.zeros(4)), {}, ValueError, "same number of rows"),
        ((np.zeros((5, 2)), np.zeros(5)), {"dev": 1.0}, ValueError, "dev must be"),
        ((np.zeros((5, 2)), np.zeros(5)), {"test": -0.1}, ValueError, "test must be"),
        ((np.zeros((5, 2)), np.zeros(5)), {"dev": 0.5, "test": 0.5}, ValueError, "dev \\+ test must be < 1"),
        ((np.zeros((2, 2)), np.zeros(2)), {"dev": 0.4, "test": 0.4}, ValueError, "no training example"),
        ((np.zeros((5, 2)), np.zeros(5)), {"dev": "0.1"}, TypeError, "dev must be"),
        ((np.zeros((5, 2)), np.zeros(5)), {"stratify": "yes"}, TypeError, "stratify"),
        ((np.zeros((5, 2)), np.zeros(5)), {"seed": 0.5}, TypeError, "seed"),
        ((np.zeros((4, 2)), np.array([0.0, 1.5, 1.0, 0.0])), {"stratify": True}, ValueError, "integer class ids"),
        ((np.zeros((4, 2)), np.array([0, -1, 1, 0])), {"stratify": True}, ValueError, ">= 0"),
        ((np.float64(3.0), np.zeros(1)), {}, ValueError, "one row per example"),
    ],
)
def test_split_bad_input(args, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        split(*args, **kwargs)


# --------------------------------------------------------------------------
# Normalizer
# --------------------------------------------------------------------------


def _features(m=200, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 4)) * [1.0, 10.0, 0.01, 3.0] + [0.0, -5.0, 100.0, 7.0]
    X[:, 3] = 7.0  # a constant feature
    return X.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalizer_standardises_the_training_set(dtype):
    X = _features(dtype=dtype)
    norm = Normalizer().fit(X)
    Z = norm.transform(X)
    assert Z.dtype == dtype and Z.shape == X.shape
    assert norm.mean_.dtype == np.float64 and norm.std_.dtype == np.float64
    assert norm.n_features_in_ == 4
    tol = 1e-5 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(Z[:, :3].mean(axis=0), 0.0, atol=tol)
    np.testing.assert_allclose(Z[:, :3].std(axis=0), 1.0, atol=tol * 10)
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(norm.mean_[:3], X64[:, :3].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(norm.std_[:3], X64[:, :3].std(axis=0), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalizer_zero_variance_feature_is_only_centred(dtype):
    X = _features(dtype=dtype)
    norm = Normalizer().fit(X)
    assert norm.zero_variance_.tolist() == [False, False, False, True]
    assert norm.std_[3] == 1.0 and norm.mean_[3] == 7.0
    Z = norm.transform(X)
    assert np.all(Z[:, 3] == 0.0)  # exactly zero: centred, never divided by 0
    dev = np.full((3, 4), 9.0, dtype=dtype)
    assert np.all(norm.transform(dev)[:, 3] == 2.0)  # shifted, unscaled
    assert np.isfinite(norm.transform(dev)).all()


def test_normalizer_single_row_and_all_constant():
    norm = Normalizer().fit(np.array([[1.0, -2.0, 0.1]]))
    assert norm.zero_variance_.all()
    np.testing.assert_array_equal(norm.transform(np.array([[1.0, -2.0, 0.1]])), [[0.0, 0.0, 0.0]])


def test_normalizer_reuses_train_statistics_on_dev_and_test():
    X = _features(300, seed=1)
    Xtr, Xdv = X[:200], X[200:] + 1.0  # a shifted dev set stays shifted
    norm = Normalizer().fit(Xtr)
    Zdv = norm.transform(Xdv)
    np.testing.assert_allclose(Zdv, (Xdv - Xtr.mean(0)) / np.where(Xtr.std(0) > 0, Xtr.std(0), 1.0))
    assert not np.allclose(Zdv[:, :3].mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_array_equal(norm.transform(Xdv), Zdv)  # transform does not refit


def test_normalizer_fit_returns_self_and_fit_transform_matches():
    X = _features()
    norm = Normalizer()
    assert norm.fit(X) is norm
    np.testing.assert_array_equal(Normalizer().fit_transform(X), norm.transform(X))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalizer_inverse_transform_round_trips(dtype):
    X = _features(dtype=dtype)
    norm = Normalizer().fit(X)
    back = norm.inverse_transform(norm.transform(X))
    assert back.dtype == dtype
    np.testing.assert_allclose(back, X, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4)


def test_normalizer_integer_input_gives_float64():
    X = np.arange(12).reshape(6, 2)
    Z = Normalizer().fit_transform(X)
    assert Z.dtype == np.float64
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-12)


def test_normalizer_does_not_modify_input_unless_asked():
    X = _features()
    before = X.copy()
    norm = Normalizer().fit(X)
    norm.transform(X)
    np.testing.assert_array_equal(X, before)
    out = norm.transform(X, copy=False)
    assert out is X
    np.testing.assert_array_equal(X, norm.transform(before))


def test_normalizer_large_offset_is_accurate():
    rng = np.random.default_rng(0)
    X = (1e6 + rng.standard_normal((1000, 1))).astype(np.float32)
    norm = Normalizer().fit(X)
    assert norm.std_[0] == pytest.approx(X.astype(np.float64).std(), rel=1e-9)


@pytest.mark.parametrize("chunk_bytes", [64, 1 << 24])
def test_normalizer_fits_a_memmap_in_chunks(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(data_module, "_CHUNK_BYTES", chunk_bytes)
    X = _features(257, dtype=np.float32)
    mm = np.memmap(tmp_path / "X.dat", dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    a = Normalizer().fit(mm)
    b = Normalizer().fit(X.astype(np.float64))
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-13)
    np.testing.assert_allclose(a.std_, b.std_, rtol=1e-12)
    assert a.zero_variance_.tolist() == b.zero_variance_.tolist()


def test_normalizer_to_dict_round_trips_through_json():
    X = _features()
    norm = Normalizer().fit(X)
    state = json.loads(json.dumps(norm.to_dict()))
    again = Normalizer.from_dict(state)
    np.testing.assert_array_equal(again.mean_, norm.mean_)
    np.testing.assert_array_equal(again.std_, norm.std_)
    np.testing.assert_array_equal(again.zero_variance_, norm.zero_variance_)
    np.testing.assert_array_equal(again.transform(X), norm.transform(X))
    assert again.n_features_in_ == 4
    arrays = {k: np.asarray(v) for k, v in norm.to_dict().items()}
    np.testing.assert_array_equal(Normalizer.from_dict(arrays).std_, norm.std_)


@pytest.mark.parametrize(
    ("state", "error", "fragment"),
    [
        ({"mean": [0.0]}, ValueError, "missing"),
        ({"mean": [0.0, 1.0], "std": [1.0]}, ValueError, "differ in length"),
        ({"mean": [0.0], "std": [0.0]}, ValueError, "> 0"),
        ({"mean": [float("nan")], "std": [1.0]}, ValueError, "finite"),
        ({"mean": [[0.0]], "std": [[1.0]]}, ValueError, "1-D"),
        ({"mean": ["a"], "std": [1.0]}, TypeError, "list of numbers"),
        ({"mean": [0.0], "std": [1.0], "n_features_in": 2}, ValueError, "n_features_in"),
        ({"mean": [0.0], "std": [1.0], "zero_variance": [1, 0]}, ValueError, "zero_variance"),
        ([1, 2], TypeError, "dict"),
    ],
)
def test_normalizer_from_dict_rejects_bad_state(state, error, fragment):
    with pytest.raises(error, match=fragment):
        Normalizer.from_dict(state)


def test_normalizer_wrong_number_of_features():
    norm = Normalizer().fit(_features())
    with pytest.raises(ValueError, match="n_features=4") as info:
        norm.transform(np.zeros((2, 3)))
    assert "3 features" in str(info.value)
    with pytest.raises(ValueError, match="n_features=4"):
        norm.inverse_transform(np.zeros((2, 5)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_normalizer_rejects_non_finite(bad):
    X = _features()
    X[5, 2] = bad
    with pytest.raises(ValueError, match=r"finite.*\(5, 2\)"):
        Normalizer().fit(X)
    norm = Normalizer().fit(_features())
    with pytest.raises(ValueError, match="finite"):
        norm.transform(X)


def test_normalizer_before_fit():
    norm = Normalizer()
    assert repr(norm) == "Normalizer()"
    for call in (norm.transform, norm.inverse_transform):
        with pytest.raises(RuntimeError, match="not fitted"):
            call(np.zeros((2, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        norm.to_dict()
    assert repr(norm.fit(np.zeros((2, 2)))) == "Normalizer(n_features_in_=2)"


@pytest.mark.parametrize(
    ("X", "error", "fragment"),
    [
        (np.zeros(5), ValueError, "2-D"),
        (np.zeros((0, 3)), ValueError, "at least one row"),
        (np.array([["a", "b"]]), TypeError, "numeric"),
        (np.zeros((2, 2, 2)), ValueError, "2-D"),
    ],
)
def test_normalizer_fit_bad_input(X, error, fragment):
    with pytest.raises(error, match=fragment):
        Normalizer().fit(X)


# --------------------------------------------------------------------------
# one_hot / from_one_hot
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float64])
def test_one_hot_round_trip(dtype):
    y = np.array([2, 0, 1, 2, 4])
    Y = one_hot(y, dtype=dtype)
    assert Y.shape == (5, 5) and Y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(Y.sum(axis=1), 1.0)
    assert Y[0, 2] == 1.0 and Y[4, 4] == 1.0
    got = from_one_hot(Y)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, y)


def test_one_hot_n_classes_and_label_forms():
    np.testing.assert_array_equal(one_hot([1.0, 0.0], n_classes=3), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(one_hot(np.array([[1], [0]]), n_classes=2), [[0, 1], [1, 0]])
    assert one_hot(np.array([], dtype=np.int64), n_classes=3).shape == (0, 3)


def test_from_one_hot_of_probabilities_is_argmax():
    P = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    np.testing.assert_array_equal(from_one_hot(P), [1, 0])


@pytest.mark.parametrize(
    ("y", "kwargs", "error", "fragment"),
    [
        ([0, -1, 2], {}, ValueError, ">= 0"),
        ([0, 1.5], {}, ValueError, "non-integer 1.5 at index 1"),
        ([0, np.nan], {}, ValueError, "finite"),
        ([0, 3], {"n_classes": 3}, ValueError, "out of range for n_classes=3"),
        ([[0, 1], [1, 0]], {}, ValueError, "shape"),
        (["a", "b"], {}, TypeError, "numeric"),
        ([0, 1], {"n_classes": 2.0}, TypeError, "n_classes"),
        ([0, 1], {"n_classes": 0}, ValueError, "n_classes"),
        ([0, 1], {"dtype": "int32"}, ValueError, "dtype"),
    ],
)
def test_one_hot_bad_input(y, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        one_hot(y, **kwargs)


@pytest.mark.parametrize(
    ("Y", "error", "fragment"),
    [
        (np.array([[1.0], [0.0]]), ValueError, "binary labels"),
        (np.array([0, 1]), ValueError, "shape"),
        (np.array([[np.nan, 1.0]]), ValueError, "finite"),
    ],
)
def test_from_one_hot_bad_input(Y, error, fragment):
    with pytest.raises(error, match=fragment):
        from_one_hot(Y)
