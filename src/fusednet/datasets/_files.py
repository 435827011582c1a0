"""Read a user's data file: NumPy ``.npz``, delimited text (``.csv``), MNIST IDX.

Everything is parsed without executing code (``allow_pickle=False``, no
``eval``), and every problem with a file raises one exception whose one-line
message names the file and what is wrong with it.
"""

import csv
import gzip
import io
import os
import warnings
import zipfile
import zlib

import numpy as np

from .._validation import check_float_dtype, check_int, describe

__all__ = ["load"]

_TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_GZIP_MAGIC = b"\x1f\x8b"
#: IDX type byte -> big-endian NumPy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class _FileError(ValueError):
    """A malformed file; carries the one-line reason, the caller adds the file name."""


# --------------------------------------------------------------------------
# shared: labels and features
# --------------------------------------------------------------------------


def _finish(X, y, dtype):
    """Check ``X``/``y`` read from a file and convert them to the returned types.

    ``X`` becomes 2-D (a 1-D array is one feature; images ``(m, h, w, ...)`` are
    flattened) of ``dtype``; ``y`` becomes int64 when all its values are integers,
    ``dtype`` floats otherwise (targets for regression, or one-hot rows).
    """
    if X.dtype.kind not in "biuf":
        raise _FileError(f"X must be numeric, found dtype {X.dtype}")
    if y.dtype.kind not in "biuf":
        raise _FileError(f"y must be numeric, found dtype {y.dtype}")
    if X.ndim == 0 or y.ndim == 0:
        raise _FileError(f"X and y must have one row per example, found shapes {X.shape} and {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise _FileError(
            f"X and y differ in number of examples: X has {X.shape[0]} rows, y has {y.shape[0]}"
        )
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    elif X.ndim > 2:
        X = X.reshape(X.shape[0], -1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim > 2:
        raise _FileError(f"y must have shape (m,), (m, 1) or (m, k), found {y.shape}")
    for name, array in (("X", X), ("y", y)):
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _FileError(f"{name} contains NaN or inf")
    X = np.ascontiguousarray(X, dtype=dtype)
    if y.dtype.kind in "biu":
        y = y.astype(np.int64)
    elif (y == np.round(y)).all() and (np.abs(y) < 2.0**53).all():
        y = y.astype(np.int64)
    else:
        y = y.astype(dtype)
    return X, y


# --------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------


def _load_npz(path, dtype):
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80":
        raise _FileError("contains pickled data, which is refused (unpickling can run code)")
    if head not in _ZIP_MAGIC:
        raise _FileError("is not an .npz archive (a zip file of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            x_key = next((k for k in ("X", "x") if k in names), None)
            y_key = next((k for k in ("y", "Y") if k in names), None)
            if x_key is None or y_key is None:
                raise _FileError(f"must hold arrays named 'X' and 'y', found {names}")
            X = archive[x_key]
            y = archive[y_key]
    except _FileError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise _FileError("holds object arrays (pickled data), which are refused") from None
        raise _FileError(f"damaged archive ({exc})") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise _FileError(f"damaged or truncated archive ({type(exc).__name__}: {exc})") from None
    return _finish(X, y, dtype)


# --------------------------------------------------------------------------
# delimited text
# --------------------------------------------------------------------------


def _open_text(path):
    if str(path).lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _first_line(path):
    """First non-blank line of a text file, and its 1-based line number."""
    with _open_text(path) as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                return line.rstrip("\r\n"), number
    raise _FileError("is empty")


def _find_text_problem(path, delimiter, skip_to):
    """Scan the data lines in Python to name the first bad line (slow; errors only)."""
    width = None
    with _open_text(path) as fh:
        for number, row in enumerate(csv.reader(fh, delimiter=delimiter), start=1):
            if number <= skip_to or not any(cell.strip() for cell in row):
                continue
            if row and row[0].lstrip().startswith("#"):
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                return f"line {number} has {len(row)} columns, expected {width} (ragged rows)"
            for column, cell in enumerate(row, start=1):
                if not _is_number(cell):
                    return f"line {number}, column {column}: {cell.strip()!r} is not a number"
    return None


def _load_text(path, label_column, header, dtype):
    line, line_number = _first_line(path)
    delimiter = next((d for d in (",", "\t", ";") if d in line), ",")
    first = next(csv.reader([line], delimiter=delimiter))
    looks_like_header = not all(_is_number(cell) for cell in first)
    if header is None:
        header = looks_like_header
    names = [cell.strip() for cell in first] if header else None
    if isinstance(label_column, str):
        if names is None:
            raise ValueError(
                f"label_column={label_column!r} is a column name, but {path} has no header row"
            )
        if label_column not in names:
            raise ValueError(
                f"label_column={label_column!r} is not a column of {path}; columns: {names}"
            )
        label_column = names.index(label_column)
    skip_to = line_number if header else line_number - 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": checked below
            table = np.loadtxt(
                path,
                delimiter=delimiter,
                skiprows=skip_to,
                dtype=np.float64,
                ndmin=2,
                quotechar='"',
                encoding="utf-8",
            )
    except UnicodeDecodeError:
        raise _FileError("is not UTF-8 text") from None
    except ValueError as exc:
        problem = _find_text_problem(path, delimiter, skip_to)
        raise _FileError(problem or str(exc).split(";")[0]) from None
    m, n_columns = table.shape
    if m == 0:
        raise _FileError("has no data rows")
    if n_columns < 2:
        raise _FileError(f"needs at least 2 columns (features and a label), found {n_columns}")
    if not -n_columns <= label_column < n_columns:
        raise ValueError(
            f"label_column must be in -{n_columns}..{n_columns - 1} for {path} "
            f"({n_columns} columns), got {label_column}"
        )
    label_column %= n_columns
    y = table[:, label_column]
    X = np.delete(table, label_column, axis=1)
    return _finish(X, y, dtype)


# --------------------------------------------------------------------------
# MNIST IDX
# --------------------------------------------------------------------------


def _read_idx(path):
    """Parse one IDX file (optionally gzip-compressed) into an array of its shape."""
    opener = gzip.open if _has_magic(path, _GZIP_MAGIC) else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise _FileError(f"damaged gzip stream ({exc})") from None
    if len(data) < 4:
        raise _FileError(f"truncated: {len(data)} bytes, too short for the IDX magic number")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise _FileError(
            f"bad IDX magic number 0x{data[:4].hex()} (expected 0x00000803 for images, 0x00000801 for labels)"
        )
    item, ndim = _IDX_TYPES[data[2]], data[3]
    if ndim == 0:
        raise _FileError("IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _FileError(f"truncated header: {len(data)} bytes, {header} expected for {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(item).itemsize
    found = len(data) - header
    if found != expected:
        kind = "truncated" if found < expected else "too long"
        raise _FileError(
            f"{kind}: header declares shape {shape} ({expected} data bytes), found {found} bytes"
        )
    array = np.frombuffer(data, dtype=item, offset=header).reshape(shape)
    return array.astype(array.dtype.newbyteorder("="))


def _labels_path(images_path):
    """Candidate labels files for an IDX images file, in order of preference."""
    folder, name = os.path.split(os.fspath(images_path))
    stem = name[:-3] if name.lower().endswith(".gz") else name
    label_stem = stem.replace("images", "labels").replace("idx3", "idx1")
    if label_stem == stem:
        return []
    gz_first = name.lower().endswith(".gz")
    names = [label_stem + ".gz", label_stem] if gz_first else [label_stem, label_stem + ".gz"]
    return [os.path.join(folder, n) for n in names]


def _load_idx(path, dtype):
    images = _read_idx(path)
    if images.ndim < 2:
        raise _FileError(
            f"is a 1-D IDX file (labels, shape {images.shape}); load the matching images file "
            "(...-images-idx3-ubyte) instead"
        )
    candidates = _labels_path(path)
    labels_path = next((p for p in candidates if os.path.isfile(p)), None)
    if labels_path is None:
        wanted = " or ".join(os.path.basename(p) for p in candidates) or "a '...-labels-idx1-ubyte' file"
        raise FileNotFoundError(
            f"{path}: no labels file next to it (looked for {wanted}); IDX images need their labels"
        )
    try:
        labels = _read_idx(labels_path)
    except _FileError as exc:
        raise ValueError(f"{labels_path}: {exc}") from None
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: IDX labels must be 1-D, found shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{path}: {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    return _finish(images, labels, dtype)


# --------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------


def _has_magic(path, magic):
    with open(path, "rb") as fh:
        return fh.read(len(magic)) == magic


def _kind(path):
    """``"npz"``, ``"text"`` or ``"idx"`` from the file name, else from its first bytes."""
    name = os.path.basename(os.fspath(path)).lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem.endswith(".npz"):
        return "npz"
    if stem.endswith(_TEXT_SUFFIXES):
        return "text"
    if "idx" in stem and "ubyte" in stem:
        return "idx"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head in _ZIP_MAGIC:
        return "npz"
    if len(head) == 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_TYPES:
        return "idx"
    return None


def load(path, *, label_column=-1, header=None, dtype="float32"):
    """Load a labelled data set from a file into ``(X, y)``.

    The format follows the file name:

    ``*.npz``
        A NumPy archive with arrays ``"X"`` (or ``"x"``) and ``"y"`` (or ``"Y"``),
        read with ``allow_pickle=False``: object arrays and pickles are refused.
        ``X`` of shape ``(m, ...)`` is flattened to ``(m, n_features)``.
    ``*.csv``, ``*.tsv``, ``*.txt`` (optionally ``.gz``)
        Numeric delimited text, delimiter ``,``, tab or ``;`` (detected on the first
        line), one example per row; one column holds the label, the others are
        the features.  Blank lines and lines starting with ``#`` are skipped.
    ``*-images-idx3-ubyte`` (optionally ``.gz``)
        An MNIST-style IDX images file; its labels are read from the matching
        ``*-labels-idx1-ubyte`` file in the same folder (``train-images-idx3-ubyte``
        goes with ``train-labels-idx1-ubyte``, ``t10k-images...`` with
        ``t10k-labels...``; ``.gz`` or not).  Images ``(m, rows, cols)`` are
        flattened to ``(m, rows * cols)``, pixel values kept as stored (MNIST:
        ``0..255``; divide by 255 or use :class:`fusednet.data.Normalizer`).

    A file with another name is recognised from its first bytes as a zip
    (``.npz``) or IDX file.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    label_column : int or str, default -1
        Text files only: index of the label column (negative counts from the
        end), or its name when the file has a header row.
    header : bool or None, default None
        Text files only: whether the first line is a header of column names.
        None: it is one if any of its cells is not a number.
    dtype : {"float32", "float64"}, default "float32"
        Float type of ``X`` (and of ``y`` when it is not integer-valued).

    Returns
    -------
    X : ndarray, shape (m, n_features)
    y : ndarray, shape (m,) or (m, k)
        int64 when every label is an integer (integer-valued floats included),
        else ``dtype`` (regression targets).

    Raises
    ------
    FileNotFoundError
        ``path`` (or the labels file of an IDX images file) does not exist.
    ValueError
        The file is malformed: unknown format, bad magic number, truncated
        data, counts that disagree, non-numeric cells, ragged rows, NaN/inf,
        object arrays, missing ``X``/``y``; or ``label_column`` names no column.
        The message is one line naming the file and the problem.
    TypeError
        ``path``, ``label_column``, ``header`` or ``dtype`` has the wrong type.

    Examples
    --------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> name = os.path.join(folder, "d.csv")
    >>> _ = open(name, "w").write("a,b,label\\n0.5,1,0\\n2,3,1\\n")
    >>> X, y = load(name, label_column="label")
    >>> X.shape, y.tolist()
    ((2, 2), [0, 1])
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {describe(path)}")
    if not isinstance(label_column, str):
        label_column = check_int("label_column", label_column)
    if header is not None and not isinstance(header, (bool, np.bool_)):
        raise TypeError(f"header must be True, False or None, got {describe(header)}")
    dtype = check_float_dtype("dtype", dtype)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{os.fspath(path)}: is a directory, expected a data file")
    try:
        kind = _kind(path)
        if kind == "npz":
            return _load_npz(path, dtype)
        if kind == "text":
            return _load_text(path, label_column, header, dtype)
        if kind == "idx":
            return _load_idx(path, dtype)
        raise _FileError(
            "unknown format: expected .npz, .csv/.tsv/.txt (optionally .gz) or an MNIST IDX "
            "'...-images-idx3-ubyte' file"
        )
    except _FileError as exc:
        raise ValueError(f"{os.fspath(path)}: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{os.fspath(path)}: is not UTF-8 text") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{os.fspath(path)}: damaged gzip stream ({exc})") from None
