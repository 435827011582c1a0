"""fusednet.datasets: the shipped digits, the 2-D generators and the file loader."""

import gzip
import hashlib
import math
import pickle
import struct
import sys
from importlib import resources

import numpy as np
import pytest

from fusednet.datasets import _digits, circles, digits, load, moons, planar_flower, spirals

# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------

DIGITS_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_shape_dtype_and_content():
    X, y = digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 16
    assert np.all(X == np.round(X))
    assert np.bincount(y).tolist() == DIGITS_CLASS_COUNTS
    digest = hashlib.sha256(X.astype(np.uint8).tobytes() + y.astype(np.uint8).tobytes()).hexdigest()
    assert digest == DIGITS_SHA256  # the UCI test set, unchanged


def test_digits_first_image_is_a_zero():
    X, y = digits()
    image = X[0].reshape(8, 8)
    assert y[0] == 0
    assert image[0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]
    assert image[3:5, 3:5].sum() == 0  # the hole of the 0


def test_digits_float64_and_fresh_copies():
    X64, _ = digits(dtype="float64")
    assert X64.dtype == np.float64
    X, y = digits()
    X[:] = -1
    y[:] = -1
    X2, y2 = digits()
    assert X2.min() == 0 and y2.min() == 0  # callers cannot corrupt the cached data
    np.testing.assert_array_equal(X64, X2)


def test_digits_bad_dtype():
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64', got 'int32'"):
        digits(dtype="int32")


def test_digits_need_no_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # any import of it now fails
    _digits._raw_digits.cache_clear()
    try:
        X, _ = digits()
    finally:
        _digits._raw_digits.cache_clear()
    assert X.shape == (1797, 64)


def test_digits_licence_ships_with_the_data():
    folder = resources.files("fusednet.datasets")
    text = folder.joinpath("DIGITS_LICENSE.txt").read_text(encoding="utf-8")
    assert "CC BY 4.0" in text and "Alpaydin" in text and "Kaynak" in text
    assert folder.joinpath("digits.npz").is_file()


# --------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------

GENERATORS = {
    "planar_flower": (planar_flower, 2, 400),
    "moons": (moons, 2, 200),
    "circles": (circles, 2, 200),
    "spirals": (spirals, 3, 300),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_defaults(name):
    make, k, m = GENERATORS[name]
    X, y = make()
    assert X.shape == (m, 2) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (m,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [m // k] * k
    assert np.isfinite(X).all()


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("m", [3, 7, 101])
def test_generator_sizes_and_balance(name, m):
    make, k, _ = GENERATORS[name]
    X, y = make(m=m, seed=0)
    assert X.shape == (m, 2) and y.shape == (m,)
    counts = np.bincount(y, minlength=k)
    assert counts.sum() == m and counts.max() - counts.min() <= 1
    assert set(np.unique(y).tolist()) == set(range(k))


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_determinism(name):
    make, _, _ = GENERATORS[name]
    X1, y1 = make(seed=7)
    X2, y2 = make(seed=7)
    X3, _ = make(seed=8)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)
    X4, _ = make(seed=np.random.default_rng(7))
    np.testing.assert_array_equal(X1, X4)  # an int seed is default_rng(seed)


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_shares_a_generators_state(name):
    make, _, _ = GENERATORS[name]
    rng = np.random.default_rng(0)
    Xa, _ = make(seed=rng)
    Xb, _ = make(seed=rng)
    assert not np.array_equal(Xa, Xb)


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_float64(name):
    make, _, _ = GENERATORS[name]
    X64, _ = make(seed=3, dtype="float64")
    X32, _ = make(seed=3)
    assert X64.dtype == np.float64
    np.testing.assert_array_equal(X64.astype(np.float32), X32)


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_noise_spreads_the_points(name):
    make, _, _ = GENERATORS[name]
    clean, _ = make(noise=0.0, seed=0, dtype="float64")
    noisy, _ = make(noise=0.3, seed=0, dtype="float64")
    assert np.abs(noisy - clean).mean() > 0.01


def test_planar_flower_is_the_course_formula_without_noise():
    X, y = planar_flower(m=400, noise=0.0, dtype="float64")
    for j in (0, 1):
        t = np.linspace(j * 3.12, (j + 1) * 3.12, 200)
        r = 4.0 * np.sin(4.0 * t)
        np.testing.assert_allclose(X[y == j], np.column_stack([r * np.sin(t), r * np.cos(t)]))


def test_planar_flower_noise_matches_the_formula():
    # the same Generator draws: theta noise then radius noise, class 0 then class 1
    rng = np.random.default_rng(1)
    X, _ = planar_flower(m=10, seed=1, noise=0.2, dtype="float64")
    t = np.linspace(0.0, 3.12, 5) + rng.standard_normal(5) * 0.2
    r = 4.0 * np.sin(4.0 * t) + rng.standard_normal(5) * 0.2
    np.testing.assert_allclose(X[:5], np.column_stack([r * np.sin(t), r * np.cos(t)]))


def test_planar_flower_petals_reach_radius_four():
    X, _ = planar_flower(m=400, seed=1)
    radius = np.hypot(X[:, 0], X[:, 1])
    assert 3.5 < radius.max() < 5.5


def test_circles_radii_without_noise():
    X, y = circles(m=100, noise=0.0, factor=0.3, dtype="float64")
    radius = np.hypot(X[:, 0], X[:, 1])
    np.testing.assert_allclose(radius[y == 0], 1.0)
    np.testing.assert_allclose(radius[y == 1], 0.3)


def test_moons_without_noise_lie_on_half_circles():
    X, y = moons(m=60, noise=0.0, dtype="float64")
    upper = X[y == 0]
    lower = X[y == 1]
    np.testing.assert_allclose(np.hypot(upper[:, 0], upper[:, 1]), 1.0)
    assert upper[:, 1].min() >= -1e-12
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1.0, lower[:, 1] - 0.5), 1.0)
    assert lower[:, 1].max() <= 0.5 + 1e-12


@pytest.mark.parametrize("k", [2, 3, 5])
def test_spirals_classes_and_radii(k):
    X, y = spirals(m=20 * k, n_classes=k, noise=0.0, dtype="float64")
    assert np.bincount(y).tolist() == [20] * k
    for j in range(k):
        np.testing.assert_allclose(np.hypot(*X[y == j].T), np.linspace(0.0, 1.0, 20), atol=1e-12)


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "fragment"),
    [
        (planar_flower, {"m": 0}, ValueError, "m must be an integer >= 2, got 0"),
        (planar_flower, {"m": 1}, ValueError, "m must be an integer >= 2, got 1"),
        (planar_flower, {"m": 10.0}, TypeError, "m must be an integer >= 2, got 10.0"),
        (planar_flower, {"m": True}, TypeError, "m must be"),
        (planar_flower, {"noise": -0.1}, ValueError, "noise must be a finite real number >= 0.0, got -0.1"),
        (moons, {"noise": math.nan}, ValueError, "noise must be"),
        (moons, {"noise": math.inf}, ValueError, "noise must be"),
        (moons, {"noise": "0.1"}, TypeError, "noise must be"),
        (moons, {"seed": 1.5}, TypeError, "seed must be"),
        (circles, {"factor": 1.0}, ValueError, "factor must be a real number in \\[0.0, 1.0\\)"),
        (circles, {"factor": -0.5}, ValueError, "factor must be"),
        (circles, {"dtype": "float16"}, ValueError, "dtype must be"),
        (spirals, {"n_classes": 1}, ValueError, "n_classes must be an integer >= 2, got 1"),
        (spirals, {"m": 2, "n_classes": 3}, ValueError, "m must be >= n_classes=3"),
        (spirals, {"seed": -3}, ValueError, "seed must be an integer >= 0"),
    ],
)
def test_generator_bad_arguments(make, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        make(**kwargs)


# --------------------------------------------------------------------------
# load: helpers
# --------------------------------------------------------------------------


def _raises_one_line(error, path, fragment, **kwargs):
    """load(path) raises ``error`` with a one-line message naming the file and ``fragment``."""
    with pytest.raises(error) as info:
        load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert fragment in message, message
    return message


def _idx(array, type_code=0x08, item=">u1"):
    """IDX bytes: magic (0, 0, type, ndim), big-endian uint32 dims, big-endian data."""
    head = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.asarray(array).astype(item).tobytes()


IMAGES = np.arange(6 * 3 * 4, dtype=np.uint8).reshape(6, 3, 4) * 3
LABELS = np.array([5, 0, 4, 1, 9, 2], dtype=np.uint8)


# --------------------------------------------------------------------------
# load: .npz
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("x_key", "y_key"), [("X", "y"), ("x", "Y"), ("x", "y"), ("X", "Y")])
def test_load_npz_keys(tmp_path, x_key, y_key):
    path = tmp_path / "d.npz"
    X = np.random.default_rng(0).standard_normal((5, 3))
    np.savez(path, **{x_key: X, y_key: np.array([0, 1, 2, 1, 0])})
    Xl, yl = load(path)
    assert Xl.dtype == np.float32 and yl.dtype == np.int64
    np.testing.assert_array_equal(Xl, X.astype(np.float32))
    np.testing.assert_array_equal(yl, [0, 1, 2, 1, 0])


@pytest.mark.parametrize(
    ("y", "dtype", "want_dtype", "want_shape"),
    [
        (np.array([0.0, 1.0, 1.0]), "float32", np.int64, (3,)),  # integer-valued floats -> int64
        (np.array([[0.0], [1.0], [1.0]]), "float32", np.int64, (3,)),
        (np.array([0.5, 1.0, 2.0]), "float32", np.float32, (3,)),  # regression targets stay float
        (np.array([0.5, 1.0, 2.0]), "float64", np.float64, (3,)),
        (np.array([True, False, True]), "float32", np.int64, (3,)),
        (np.eye(3), "float32", np.int64, (3, 3)),  # one-hot rows kept 2-D
    ],
)
def test_load_npz_label_types(tmp_path, y, dtype, want_dtype, want_shape):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((3, 2), dtype=np.uint8), y=y)
    X, got = load(path, dtype=dtype)
    assert X.dtype == np.dtype(dtype)
    assert got.dtype == want_dtype and got.shape == want_shape


def test_load_npz_flattens_images_and_accepts_one_feature(tmp_path):
    np.savez(tmp_path / "img.npz", X=np.zeros((4, 8, 8, 3), np.uint8), y=np.arange(4))
    np.savez(tmp_path / "one.npz", X=np.arange(4.0), y=np.arange(4))
    assert load(tmp_path / "img.npz")[0].shape == (4, 192)
    assert load(str(tmp_path / "one.npz"))[0].shape == (4, 1)


def test_load_recognises_npz_content_without_the_extension(tmp_path):
    path = tmp_path / "data.bin"
    with open(path, "wb") as fh:
        np.savez(fh, X=np.ones((2, 2)), y=np.arange(2))
    X, y = load(path)
    assert X.shape == (2, 2) and y.tolist() == [0, 1]


def _write_object_npz(path):
    np.savez(path, X=np.array([1, "a"], dtype=object), y=np.arange(2))


def _write_pickle(path):
    path.write_bytes(pickle.dumps({"X": [1, 2], "y": [0, 1]}))


def _write_truncated_npz(path):
    np.savez(path, X=np.ones((50, 4)), y=np.arange(50))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _write_bad_zip_member(path):
    np.savez(path, X=np.ones((50, 4)), y=np.arange(50))
    blob = bytearray(path.read_bytes())
    blob[100:140] = b"\x00" * 40  # damage the compressed/stored payload of X
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    ("write", "fragment"),
    [
        (_write_object_npz, "object arrays"),
        (_write_pickle, "pickled data"),
        (_write_truncated_npz, "truncated"),
        (_write_bad_zip_member, "damaged"),
        (lambda p: np.savez(p, A=np.ones(3)), "must hold arrays named 'X' and 'y', found ['A']"),
        (lambda p: np.savez(p, X=np.ones((3, 2)), y=np.arange(4)), "X has 3 rows, y has 4"),
        (lambda p: np.savez(p, X=np.array([[1.0, np.nan]]), y=np.arange(1)), "X contains NaN or inf"),
        (lambda p: np.savez(p, X=np.ones((2, 2)), y=np.array([0.0, np.inf])), "y contains NaN or inf"),
        (lambda p: np.savez(p, X=np.array([["a"], ["b"]]), y=np.arange(2)), "X must be numeric"),
        (lambda p: np.savez(p, X=np.float64(1.0), y=np.arange(1)), "one row per example"),
        (lambda p: p.write_text("hello"), "not an .npz archive"),
    ],
)
def test_load_npz_malformed(tmp_path, write, fragment):
    path = tmp_path / "bad.npz"
    write(path)
    _raises_one_line(ValueError, path, fragment)


# --------------------------------------------------------------------------
# load: .csv
# --------------------------------------------------------------------------


def test_load_csv_without_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("0.5,1,0\n2,3e1,1\n-4,5,2\n")
    X, y = load(path)
    np.testing.assert_array_equal(X, np.array([[0.5, 1], [2, 30], [-4, 5]], np.float32))
    assert y.tolist() == [0, 1, 2] and y.dtype == np.int64


@pytest.mark.parametrize(
    ("label_column", "want_y", "want_first_row"),
    [
        (-1, [0, 1], [1.0, 2.0]),
        (2, [0, 1], [1.0, 2.0]),
        (0, [1, 3], [2.0, 0.0]),
        (-3, [1, 3], [2.0, 0.0]),
        ("label", [0, 1], [1.0, 2.0]),
        ("a", [1, 3], [2.0, 0.0]),
        ("b", [2, 4], [1.0, 0.0]),
    ],
)
def test_load_csv_header_and_label_column(tmp_path, label_column, want_y, want_first_row):
    path = tmp_path / "d.csv"
    path.write_text("a, b ,label\n1,2,0\n3,4,1\n")
    X, y = load(path, label_column=label_column)
    assert y.tolist() == want_y
    assert X[0].tolist() == want_first_row
    assert X.shape == (2, 2)


def test_load_csv_explicit_header_flag(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("10,20,30\n1,2,0\n3,4,1\n")  # a numeric header row
    assert load(path)[0].shape == (3, 2)  # autodetect: it is data
    X, y = load(path, header=True, label_column="30")
    assert X.shape == (2, 2) and y.tolist() == [0, 1]


def test_load_csv_float_labels_stay_float(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,0.25\n2,1.5\n")
    _, y = load(path, dtype="float64")
    assert y.dtype == np.float64 and y.tolist() == [0.25, 1.5]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("d.csv", '# a comment\n\n"x","y","label"\n1,2,0\n\n3,4,1\n\n'),
        ("d.tsv", "x\ty\tlabel\n1\t2\t0\n3\t4\t1\n"),
        ("d.txt", "x;y;label\n1;2;0\n3;4;1\n"),
        ("d.csv", "x,y,label\r\n1,2,0\r\n3,4,1\r\n"),
        ("d.csv", '"1","2","0"\n3,4,1\n'),
    ],
)
def test_load_text_variants(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, newline="")
    X, y = load(path)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    assert y.tolist() == [0, 1]


def test_load_csv_gz(tmp_path):
    path = tmp_path / "d.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("f,label\n1,0\n2,1\n")
    X, y = load(path)
    assert X.tolist() == [[1.0], [2.0]] and y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("text", "kwargs", "fragment"),
    [
        ("1,2,0\n3,4\n5,6,1\n", {}, "line 2 has 2 columns, expected 3 (ragged rows)"),
        ("a,b\n1,2\n3,x\n", {}, "line 3, column 2: 'x' is not a number"),
        ("1,2\n3,\n", {}, "line 2, column 2: '' is not a number"),
        ("a,b\n1,2\n", {"header": False}, "line 1, column 1: 'a' is not a number"),
        ("", {}, "is empty"),
        ("\n\n", {}, "is empty"),
        ("a,b,label\n", {}, "has no data rows"),
        ("1\n2\n", {}, "needs at least 2 columns"),
        ("1,nan,0\n3,4,1\n", {}, "X contains NaN or inf"),
        ("1,2,inf\n3,4,1\n", {}, "y contains NaN or inf"),
    ],
)
def test_load_csv_malformed(tmp_path, text, kwargs, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    _raises_one_line(ValueError, path, fragment, **kwargs)


def test_load_csv_not_utf8(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"1,2\n\xff\xfe,3\n")
    _raises_one_line(ValueError, path, "not UTF-8 text")


def test_load_csv_gz_damaged(tmp_path):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(b"a,b\n" + b"1,2\n" * 1000)[:40])
    _raises_one_line(ValueError, path, "damaged gzip stream")


@pytest.mark.parametrize(
    ("text", "label_column", "fragment"),
    [
        ("a,b\n1,2\n", "c", "label_column='c' is not a column"),
        ("1,2\n3,4\n", "a", "has no header row"),
        ("1,2\n3,4\n", 2, "label_column must be in -2..1"),
        ("1,2\n3,4\n", -3, "label_column must be in -2..1"),
    ],
)
def test_load_csv_bad_label_column(tmp_path, text, label_column, fragment):
    path = tmp_path / "d.csv"
    path.write_text(text)
    _raises_one_line(ValueError, path, fragment, label_column=label_column)


# --------------------------------------------------------------------------
# load: MNIST IDX
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "labels", "gz_images", "gz_labels"),
    [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", False, False),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", False, False),
        ("train-images.idx3-ubyte", "train-labels.idx1-ubyte", False, False),
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", True, True),
        ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte", True, False),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte.gz", False, True),
    ],
)
def test_load_idx_pairs(tmp_path, images, labels, gz_images, gz_labels):
    blob_images, blob_labels = _idx(IMAGES), _idx(LABELS)
    (tmp_path / images).write_bytes(gzip.compress(blob_images) if gz_images else blob_images)
    (tmp_path / labels).write_bytes(gzip.compress(blob_labels) if gz_labels else blob_labels)
    X, y = load(tmp_path / images)
    assert X.shape == (6, 12) and X.dtype == np.float32
    np.testing.assert_array_equal(X, IMAGES.reshape(6, 12))  # raw pixel values, flattened row-major
    assert y.dtype == np.int64 and y.tolist() == LABELS.tolist()


@pytest.mark.parametrize(
    ("type_code", "item"), [(0x09, ">i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")]
)
def test_load_idx_other_item_types(tmp_path, type_code, item):
    images = (np.arange(2 * 2 * 3).reshape(2, 2, 3) - 5).astype(item)
    (tmp_path / "x-images-idx3-ubyte").write_bytes(_idx(images, type_code, item))
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(_idx(np.array([3, 7])))
    X, y = load(tmp_path / "x-images-idx3-ubyte", dtype="float64")
    np.testing.assert_array_equal(X, images.reshape(2, 6).astype(np.float64))
    assert y.tolist() == [3, 7]


def _corrupt_magic(blob):
    return b"\x00\x01" + blob[2:]


@pytest.mark.parametrize(
    ("images_blob", "fragment"),
    [
        (_corrupt_magic(_idx(IMAGES)), "bad IDX magic number 0x00010803"),
        (b"\x00\x00\x07\x03" + _idx(IMAGES)[4:], "bad IDX magic number"),
        (_idx(IMAGES)[:-5], "truncated: header declares shape (6, 3, 4) (72 data bytes), found 67"),
        (_idx(IMAGES) + b"\x00", "too long"),
        (_idx(IMAGES)[:10], "truncated header"),
        (b"\x00\x00", "too short for the IDX magic number"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (_idx(LABELS), "is a 1-D IDX file"),
    ],
)
def test_load_idx_malformed_images(tmp_path, images_blob, fragment):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(images_blob)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(LABELS))
    _raises_one_line(ValueError, path, fragment)


@pytest.mark.parametrize(
    ("labels_blob", "fragment"),
    [
        (_idx(LABELS[:5]), "6 images but"),
        (_idx(LABELS)[:-1], "truncated"),
        (_corrupt_magic(_idx(LABELS)), "bad IDX magic number"),
        (_idx(LABELS.reshape(2, 3)), "labels must be 1-D"),
    ],
)
def test_load_idx_malformed_labels(tmp_path, labels_blob, fragment):
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    images.write_bytes(_idx(IMAGES))
    labels.write_bytes(labels_blob)
    with pytest.raises(ValueError) as info:
        load(images)
    message = str(info.value)
    assert "\n" not in message and fragment in message and "train-labels-idx1-ubyte" in message


def test_load_idx_missing_labels(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx(IMAGES))
    message = _raises_one_line(FileNotFoundError, path, "t10k-labels-idx1-ubyte")
    assert "no labels file" in message


def test_load_idx_damaged_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(IMAGES))[:25])
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(LABELS)))
    _raises_one_line(ValueError, path, "damaged gzip stream")


def test_load_recognises_idx_content_without_the_name(tmp_path):
    # the name does not say IDX; its magic number does, but no labels file can be derived
    path = tmp_path / "pixels.raw"
    path.write_bytes(_idx(IMAGES))
    _raises_one_line(FileNotFoundError, path, "no labels file")


# --------------------------------------------------------------------------
# load: paths and arguments
# --------------------------------------------------------------------------


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    _raises_one_line(FileNotFoundError, path, "no such file")


def test_load_directory(tmp_path):
    _raises_one_line(ValueError, tmp_path, "is a directory")


def test_load_unknown_format(tmp_path):
    path = tmp_path / "notes.doc"
    path.write_text("hello")
    _raises_one_line(ValueError, path, "unknown format")


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"path": 3}, TypeError, "path must be a str or os.PathLike"),
        ({"label_column": 1.0}, TypeError, "label_column must be an integer"),
        ({"header": "yes"}, TypeError, "header must be True, False or None"),
        ({"dtype": "int8"}, ValueError, "dtype must be 'float32' or 'float64'"),
    ],
)
def test_load_bad_arguments(tmp_path, kwargs, error, fragment):
    path = tmp_path / "d.csv"
    path.write_text("1,0\n2,1\n")
    kwargs = {"path": path, **kwargs}
    with pytest.raises(error, match=fragment):
        load(kwargs.pop("path"), **kwargs)
