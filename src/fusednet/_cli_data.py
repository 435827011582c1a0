"""Data for the command line: files with text labels, class encoding, prediction input.

:func:`fusednet.datasets.load` reads numeric files only.  The command line also
takes delimited text whose label column holds words ("setosa", "versicolor"):
when the loader refuses a text file, :func:`_read_text` reads it again with the
``csv`` module, keeping the labels as strings, and names a text column among
the features (labels in the wrong column) with a hint about ``--label-column``.

Labels always become class ids by their sorted unique values, so labels
``1..k`` make ``k`` classes; the values themselves go to ``model.classes``.
"""

import csv
import gzip
import io
import os

import numpy as np

from .datasets._files import _is_number

__all__ = ["DataError", "load_labelled", "load_for_predict", "encode_labels", "is_text", "as_labels", "as_text",
           "count_correct"]

_TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
#: more distinct labels than this, and more than half the rows: not class labels
_MAX_CLASSES = 20

LABEL_HINT = "pass --label-column with the labels' column (an index from 0, or a header name)"


class DataError(ValueError):
    """A data file the command line cannot use; the message is one line."""


def is_text(path):
    """Whether ``path`` is delimited text by its name, as the loader decides."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(_TEXT_SUFFIXES)


def _open_text(path):
    if os.fspath(path).lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _first_line(lines):
    return next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), None)


def _delimiter(line):
    return next((d for d in (",", "\t", ";") if d in line), ",")


def _text_rows(path):
    """``[(line_number, cells), ...]`` of the data lines (blank and ``#`` lines skipped)."""
    try:
        with _open_text(path) as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise DataError(f"{path}: is not UTF-8 text") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    first = _first_line(text.splitlines())
    if first is None:
        raise DataError(f"{path}: is empty")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first))
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        rows.append((reader.line_num, [c.strip() for c in cells]))
    return rows


def count_columns(path):
    """Number of columns of a delimited text file's first line (header or data); reads only that line."""
    try:
        with _open_text(path) as fh:
            first = _first_line(fh)
    except UnicodeDecodeError:
        raise DataError(f"{path}: is not UTF-8 text") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if first is None:
        raise DataError(f"{path}: is empty")
    first = first.rstrip("\r\n")
    return len(next(csv.reader([first], delimiter=_delimiter(first))))


class _TextColumn(DataError):
    """A feature column holds words: probably the labels, in another column than asked."""


def _read_text(path, label_column):
    """``(X float64 (m, n), labels or None)`` of a delimited text file.

    ``label_column``: None (no labels), an index or a header name.  The labels
    are returned as strings, or as int64/float64 when every one is a number.
    """
    rows = _text_rows(path)
    n = len(rows[0][1])
    if label_column is not None and n < 2:
        raise DataError(f"{path}: needs at least 2 columns (features and a label), found {n}")
    for number, cells in rows:
        if len(cells) != n:
            raise DataError(f"{path}: line {number} has {len(cells)} columns, expected {n} (ragged rows)")
    if isinstance(label_column, str):  # a name: the first row is the header
        names = rows[0][1]
        if label_column not in names:
            raise DataError(f"{path}: label column {label_column!r} is not one of its columns {names}")
        col = names.index(label_column)
        feats = [j for j in range(n) if j != col]
        data = rows[1:]
    else:  # the first row is a header when its features are not numbers but the next row's are
        col = None
        if label_column is not None:
            if not -n <= label_column < n:
                raise DataError(f"{path}: --label-column must be in -{n}..{n - 1} ({n} columns), got {label_column}")
            col = label_column % n
        feats = [j for j in range(n) if j != col]

        def numeric(cells):
            return all(_is_number(cells[j]) for j in feats)

        header = not numeric(rows[0][1]) and (len(rows) == 1 or numeric(rows[1][1]))
        names = rows[0][1] if header else None
        data = rows[1:] if header else rows
    if not data:
        raise DataError(f"{path}: has no data rows")
    for j in feats:
        bad = [(number, cells[j]) for number, cells in data if not _is_number(cells[j])]
        if not bad:
            continue
        number, cell = bad[0]
        if len(bad) == len(data):
            where = f"column {j + 1}" + (f" ({names[j]!r})" if names else "")
            arg = names[j] if names else f"{j}"
            raise _TextColumn(
                f"{path}: {where} holds words such as {cell!r}, not numbers; if those are the labels, "
                f"pass --label-column {arg}" + ("" if names else " (columns count from 0)")
            )
        raise DataError(f"{path}: line {number}, column {j + 1}: {cell!r} is not a number")
    X = np.array([[float(cells[j]) for j in feats] for _, cells in data], dtype=np.float64)
    if not np.isfinite(X).all():
        raise DataError(f"{path}: X contains NaN or inf")
    if col is None:
        return X, None
    labels = [cells[col] for _, cells in data]
    if all(_is_number(v) for v in labels):
        values = np.array([float(v) for v in labels])
        if np.isfinite(values).all() and (values == np.round(values)).all():
            return X, values.astype(np.int64)
        return X, values
    return X, np.array(labels, dtype=str)


def _label_arg(label_column):
    if label_column is None:
        return -1
    if isinstance(label_column, str) and label_column.lstrip("-").isdigit():
        return int(label_column)
    return label_column


def load_labelled(path, label_column=None):
    """``(X, labels)`` of a user's file: :func:`fusednet.datasets.load`, then text labels.

    ``label_column``: None (the last column), an int, or a str (an index or a
    header name).  ``labels`` are the file's values: ints, floats or strings.
    """
    from . import datasets

    label_column = _label_arg(label_column)
    try:
        return datasets.load(path, label_column=label_column)
    except ValueError as exc:
        if not is_text(path) or not os.path.isfile(path):
            raise
        try:
            return _read_text(path, label_column)
        except _TextColumn:
            raise
        except DataError:
            raise exc from None


def encode_labels(labels, where, text_file=False):
    """Class ids by sorted unique value: ``(ids (m,) intp, classes list)``.

    Refuses labels that do not look like class labels (non-integer numbers, one
    class, about one class per example), with the ``--label-column`` hint for
    text files.
    """
    hint = f"; {LABEL_HINT}" if text_file else ""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        one_hot = y.dtype.kind in "biuf" and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()
        if not one_hot:
            raise DataError(f"{where} have shape {y.shape}: expected one label per example or one-hot rows")
        return np.argmax(y, axis=1).astype(np.intp), list(range(y.shape[1]))
    if y.ndim != 1:
        raise DataError(f"{where} have shape {y.shape}: expected one label per example")
    if y.dtype.kind == "f":
        fractional = y != np.round(y)
        if fractional.any():
            example = y[np.argmax(fractional)]
            raise DataError(
                f"{where} holds numbers such as {example:g}, which are not class labels "
                f"(the command line trains classifiers){hint}"
            )
        y = y.astype(np.int64)
    classes, ids = np.unique(y, return_inverse=True)
    k, m = len(classes), len(y)
    if k < 2:
        raise DataError(f"{where} holds one class only ({classes.tolist()[0]!r} in every row){hint}")
    if k > _MAX_CLASSES and k > m // 2:
        raise DataError(
            f"{where} holds {k} distinct values in {m} rows, too many to be class labels{hint}"
        )
    return ids.astype(np.intp), classes.tolist()


def _npz_features(path):
    """``(X, y or None)`` of an ``.npz`` without labels; with labels the loader reads it."""
    from . import datasets

    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            has_y = any(k in names for k in ("y", "Y"))
            x_key = next((k for k in ("X", "x") if k in names), None)
            if has_y or x_key is None:
                X = None
            else:
                X = archive[x_key]
    except ValueError as exc:
        raise DataError(f"{path}: not a usable .npz archive ({str(exc).splitlines()[0]})") from None
    except (OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: damaged or not an .npz archive ({type(exc).__name__})") from None
    if X is None:
        return datasets.load(path)
    if X.dtype.kind not in "biuf" or X.ndim < 1:
        raise DataError(f"{path}: X must be a numeric array, found dtype {X.dtype}, shape {X.shape}")
    X = X.reshape(X.shape[0], -1) if X.ndim != 1 else X.reshape(-1, 1)
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise DataError(f"{path}: X contains NaN or inf")
    return X, None


def load_for_predict(path, n_features, label_column=None):
    """``(X, labels or None)`` of a file to predict; its labels, when present, are kept for accuracy.

    A text file of ``n_features`` columns has no labels; one of ``n_features + 1``
    columns has them in ``label_column`` (default last).
    """
    from . import datasets

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a data file")
    if is_text(path):
        n = count_columns(path)
        if n == n_features:
            return _read_text(path, None)
        if n != n_features + 1:
            raise DataError(
                f"{path} has {n} columns, but the model expects {n_features} features "
                f"({n_features} columns, or {n_features + 1} with a label column)"
            )
        X, labels = load_labelled(path, label_column)
    elif os.path.basename(path).lower().endswith(".npz"):
        X, labels = _npz_features(path)
    else:
        X, labels = datasets.load(path)
    if X.shape[1] != n_features:
        raise DataError(f"{path} has {X.shape[1]} features, but the model expects {n_features}")
    return X, labels


# ---- predictions ---------------------------------------------------------------------------


def as_labels(model, predicted):
    """A classifier's class ids as its original labels (``model.classes``); anything else unchanged."""
    classes = getattr(model, "classes", None)
    if classes is None or not model.is_classifier or predicted.ndim != 1:
        return predicted
    names = np.empty(len(classes), dtype=object)  # fusednet.load checked: one per class id
    names[:] = classes
    return names[predicted]


def as_text(value):
    """One output line: a label or value as written (floats in short form), a row comma-joined."""
    if isinstance(value, np.ndarray):
        return ",".join(as_text(v) for v in value)
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.9g}"
    return str(value)


def count_correct(model, predicted, labels):
    """How many predicted labels equal the file's labels (compared as text); None when not comparable."""
    labels = np.asarray(labels)
    if getattr(model, "classes", None) is None and labels.dtype.kind not in "biu":
        return None
    return sum(as_text(p) == as_text(t) for p, t in zip(predicted, labels))
