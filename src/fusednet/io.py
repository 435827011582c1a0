"""Safe model files: NumPy ``.npz`` plus a JSON header, never pickle.

A model file is a zip of ``.npy`` arrays:

``header``
    uint8 bytes of a UTF-8 JSON object: ``{"format": "fusednet.model",
    "version": 1, "fusednet": "<version>", "config": {...}, "normalizer":
    {...} | null, "classes": [...] | null}``.  ``classes`` (the original
    labels in class-id order) is optional: a file without it loads with
    ``classes = None``.
``params``
    the flat parameter arena (the model's dtype).
``running``
    the BatchNorm running statistics (may be empty).

Loading never unpickles and never allocates more than the file holds: it reads
the ``.npy`` headers of the zip members first, computes from the config alone
how many parameters and running statistics the model has, compares the two,
and only then reads the arrays and builds a
:class:`~fusednet.model.Sequential`.  Anything that is not such a file gives a
``ValueError`` naming the file.

Saving writes a temporary file next to the target (``.<name>.fusednet-<host>-
<pid>-<random>.tmp``), flushes it to disk, renames it over the target and
flushes the folder, so a crash leaves either the old file or the new one,
never half of one.  The new file gets the permissions a plain write would give
it; temporaries that killed saves of the same target left behind are removed.
"""

import json
import math
import os
import re
import secrets
import socket
import stat
import zipfile
import zlib
from collections import namedtuple

import numpy as np

from ._version import __version__
from .layers import BatchNorm, Dense, Layer
from .model import Sequential

FORMAT = "fusednet.model"
VERSION = 1
MEMBERS = ("header", "params", "running")

#: Largest JSON header read, in bytes (a normaliser for about a million features fits).
MAX_HEADER_BYTES = 64 << 20
#: Largest layer width that no parameter array backs (a model without Dense or
#: BatchNorm layers allocates its input width with nothing in the file to check it against).
MAX_UNBACKED_WIDTH = 1 << 20
#: Deflate expands at most about 1032-fold; a member claiming more lies about its size.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


# --------------------------------------------------------------------------
# what a config implies
# --------------------------------------------------------------------------


def _arena_sizes(layers, input_dim):
    """The arena sizes :meth:`Sequential.build` lays out, by arithmetic alone.

    Mirrors ``build``: each Dense holds ``n_in * units`` weights plus ``units``
    biases when it has them; each BatchNorm holds ``gamma`` and ``beta`` and
    two running statistics of its input width.

    Parameters
    ----------
    layers : list of fusednet.layers.Layer
    input_dim : int

    Returns
    -------
    n_params, n_stats : int
        Lengths of the parameter arena and of the running statistics.
    widths : list of int
        ``input_dim`` followed by each layer's output width.
    """
    n_params = n_stats = 0
    widths = [input_dim]
    for layer in layers:
        n = widths[-1]
        if isinstance(layer, Dense):
            n_params += n * layer.units + (layer.units if layer.use_bias else 0)
            n = layer.units
        elif isinstance(layer, BatchNorm):
            n_params += 2 * n
            n_stats += 2 * n
        widths.append(n)
    return n_params, n_stats, widths


def _n_classes(model):
    """Class ids a classifier predicts: its output width, or 2 for one sigmoid unit."""
    if not model.is_classifier:
        return None
    width = model.output_dim
    return 2 if model.loss == "bce" and width == 1 else width


def _checked_classes(classes, model, name):
    """``classes`` as a list of plain JSON scalars, one per class id, or None.

    Parameters
    ----------
    classes : None, list, tuple or 1-D ndarray
        Original labels in class-id order: ints, finite floats, strings or
        bools (NumPy scalars are converted).
    model : fusednet.Sequential
        Built; its output gives the number of classes.
    name : str
        What ``classes`` is called in error messages.

    Raises
    ------
    ValueError
        Not a sequence of distinct plain scalars, or not one per class.
    """
    if classes is None:
        return None
    if isinstance(classes, np.ndarray):
        classes = classes.tolist() if classes.ndim == 1 else classes
    if not isinstance(classes, (list, tuple)):
        raise ValueError(f"{name} must be None or a list of labels, got {type(classes).__name__}")
    n = _n_classes(model)
    if n is None:
        raise ValueError(f"{name} must be None for a regression model (loss {model.loss!r})")
    if len(classes) != n:
        raise ValueError(f"{name} must hold one label per class id ({n}), got {len(classes)}")
    plain = []
    for i, label in enumerate(classes):
        if isinstance(label, np.generic):
            label = label.item()
        for kind in (bool, int, str, float):
            if isinstance(label, kind):
                label = kind(label)
                break
        else:
            raise ValueError(
                f"{name}[{i}] must be an int, float, str or bool, got {type(label).__name__}"
            )
        if isinstance(label, float) and not math.isfinite(label):
            raise ValueError(f"{name}[{i}] must be finite, got {label}")
        plain.append(label)
    if len({(type(v), v) for v in plain}) != len(plain):
        raise ValueError(f"{name} holds a label twice: {plain!r:.200}")
    return plain


# --------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------


def _json_seed(seed):
    return int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None


def _header(model):
    """The JSON header of ``model``, its normaliser and classes checked."""
    config = model.get_config()
    config["seed"] = _json_seed(config.get("seed"))
    normalizer = getattr(model, "normalizer", None)
    if normalizer is not None and normalizer.n_features_in_ != model.input_dim:
        raise ValueError(
            f"model.normalizer was fitted on {normalizer.n_features_in_} features but the "
            f"model takes {model.input_dim}"
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "fusednet": __version__,
        "config": config,
        "normalizer": None if normalizer is None else normalizer.to_dict(),
        "classes": _checked_classes(getattr(model, "classes", None), model, "model.classes"),
    }


def _host():
    return re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname())[:64] or "host"


def _temp_name(name, pid=None, token=None):
    """``.<name>.fusednet-<host>-<pid>-<random>.tmp``: the temporary of a save of ``name``."""
    pid = os.getpid() if pid is None else pid
    token = secrets.token_hex(4) if token is None else token
    return f".{name[:120]}.fusednet-{_host()}-{pid}-{token}.tmp"


def _pid_alive(pid):
    """False only when no process ``pid`` exists (signal 0 probes, sends nothing)."""
    if not 0 < pid < 2**31:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, under another user
        return True
    return True


def _remove_orphans(folder, name):
    """Delete temporaries of ``name`` whose saving process (on this host) is gone.

    Skipped on Windows, where ``os.kill(pid, 0)`` would terminate the process.
    """
    if os.name == "nt":
        return
    pattern = re.compile(
        rf"\.{re.escape(name[:120])}\.fusednet-{re.escape(_host())}-(\d{{1,10}})-[0-9a-f]+\.tmp"
    )
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match and not _pid_alive(int(match.group(1))):
            try:
                os.unlink(os.path.join(folder, entry))
            except OSError:
                pass


def _create_temp(folder, name):
    """Create and open a new temporary for ``name`` in ``folder``: ``(fd, path)``.

    Mode 0666 filtered by the umask, as a plain ``open(path, "w")`` would give.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, _temp_name(name))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_dir(folder):
    """Flush a rename in ``folder`` to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_model(model, path):
    """Write ``model`` (its ``normalizer`` and ``classes`` attributes included) to ``path``.

    Parameters
    ----------
    model : fusednet.Sequential
        A built model.  ``model.classes``, when present and not None, is the
        list of original labels in class-id order (ints, floats, strings or
        bools, one per class).
    path : str or os.PathLike
        Destination; written exactly there (no suffix is added).  An existing
        file keeps its permission bits; a new one gets ``0666 & ~umask``.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        The model is not built, or its normaliser or classes do not fit it;
        nothing is written.
    """
    path = os.fspath(path)
    if not model.built:
        raise ValueError("model is not built yet: fit it, or give Sequential an input_dim, before saving")
    return _write(path, _header(model), model.state_dict())


def _write(path, header, arrays):
    """Write the header and the 1-D arrays ``arrays`` (params, running, ...) atomically to ``path``."""
    payload = {"header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)}
    payload.update(arrays)
    return write_atomically(path, lambda f: np.savez(f, **payload))


def write_atomically(path, write):
    """Write a file by ``write(f)`` (``f`` a binary file) so that a crash leaves the old file or the new one.

    A temporary file in the same folder, flushed to disk, renamed over ``path``, and the
    folder flushed; the new file keeps the mode of the one it replaces (a new one gets
    ``0666 & ~umask``), and temporaries that killed writes of the same target left
    behind are removed first.  Returns ``path``.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    _remove_orphans(folder, name)
    fd, tmp = _create_temp(folder, name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return path


# --------------------------------------------------------------------------
# reading the zip
# --------------------------------------------------------------------------


def _foreign(path, why):
    return ValueError(f"{path}: not a fusednet model file ({why})")


def _damaged(path, why):
    return ValueError(f"{path}: damaged fusednet model file ({why})")


_Member = namedtuple("_Member", "info shape dtype nbytes")

# what a broken or foreign zip member raises inside zipfile / numpy's .npy reader
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,  # a compression method zipfile lacks
    RuntimeError,  # an encrypted member
)


def _open_npy(zf, info):
    """Open a member positioned at its data: ``(file, shape, dtype, header length)``."""
    fp = zf.open(info)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f".npy format version {version}")
        return fp, shape, dtype, fp.tell()
    except BaseException:
        fp.close()
        raise


def _member(path, zf, name, file_size):
    """The shape and dtype a member's ``.npy`` header claims, checked against the zip.

    ``file_size`` is the size of the file on disk, which bounds what the
    member's entry in the zip directory may claim.
    """
    try:
        info = zf.getinfo(name + ".npy")
        fp, shape, dtype, offset = _open_npy(zf, info)
        fp.close()
    except _READ_ERRORS as exc:
        raise _foreign(path, f"{name}: {type(exc).__name__}: {exc}") from None
    if dtype.hasobject or dtype.kind not in "uf" or len(shape) != 1 or shape[0] < 0:
        raise _foreign(path, f"{name} is a {dtype} array of shape {shape}, not a 1-D array of numbers")
    nbytes = shape[0] * dtype.itemsize
    if offset + nbytes != info.file_size:
        raise _damaged(path, f"{name} claims {nbytes} bytes of data, the zip holds {info.file_size - offset}")
    if info.compress_type == zipfile.ZIP_STORED:
        packed_ok = info.compress_size == info.file_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        packed_ok = info.file_size <= _MAX_DEFLATE_RATIO * max(info.compress_size, 1)
    else:
        raise _foreign(path, f"{name} uses zip compression method {info.compress_type}")
    if not packed_ok or info.header_offset + info.compress_size > file_size:
        raise _damaged(path, f"{name} claims more data than the file holds")
    return _Member(info, shape, dtype, nbytes)


def _read_member(path, zf, name, member):
    """The member's data as a 1-D array, read in chunks into memory sized by the checked claim."""
    buf = np.empty(member.nbytes, np.uint8)
    view = memoryview(buf)
    try:
        fp, *_ = _open_npy(zf, member.info)
        with fp:
            pos = 0
            while pos < member.nbytes:
                n = fp.readinto(view[pos : pos + _CHUNK])
                if not n:
                    raise EOFError("truncated")
                pos += n
    except _READ_ERRORS as exc:
        raise _damaged(path, f"{name}: {type(exc).__name__}: {exc}") from None
    return buf.view(member.dtype)


def _parse_header(path, raw):
    """The header's JSON object, its format and version checked."""
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, f"unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _foreign(path, "its header does not name the fusednet.model format")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _damaged(path, f"bad model format version {version!r}")
    if version > VERSION:
        raise ValueError(
            f"{path}: model format version {version} is newer than this fusednet "
            f"({__version__}) reads (up to {VERSION}); upgrade fusednet"
        )
    return header


def _check_layout(path, config, params, running):
    """Compare the arrays' claimed sizes with what ``config`` implies, before building anything."""
    try:
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("the config has no list of layers")
        layers = [Layer.from_config(c) for c in config["layers"]]
    except (TypeError, ValueError, OverflowError) as exc:
        raise _damaged(path, f"bad config: {exc}") from None
    input_dim = config.get("input_dim")
    if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
        raise _damaged(path, f"config input_dim must be an int >= 1, got {input_dim!r}")
    dtype = config.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise _damaged(path, f"config dtype must be 'float32' or 'float64', got {dtype!r}")
    n_params, n_stats, widths = _arena_sizes(layers, input_dim)
    for name, member, expected in (("params", params, n_params), ("running", running, n_stats)):
        if member.shape[0] != expected:
            raise _damaged(
                path, f"the config implies {expected} values in {name!r}, the file holds {member.shape[0]}"
            )
        if member.dtype.kind != "f" or member.dtype.itemsize != np.dtype(dtype).itemsize:
            raise _damaged(path, f"{name!r} has dtype {member.dtype}, the config says {dtype}")
    if max(widths) > max(n_params, MAX_UNBACKED_WIDTH):
        raise _damaged(
            path, f"a layer {max(widths)} wide with no parameters to back it (limit {MAX_UNBACKED_WIDTH})"
        )


def load_model(path):
    """Read a model written by :func:`save_model`.

    Sizes are checked before anything is allocated: the parameter and running-
    statistics counts the config implies must equal the lengths of the arrays
    in the file, and the JSON header is at most :data:`MAX_HEADER_BYTES`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    fusednet.Sequential
        With the saved weights, BatchNorm statistics, ``normalizer`` (when one
        was saved) and ``classes`` (a list of labels, or None); it predicts
        bit-identically to the saved model.

    Raises
    ------
    FileNotFoundError, PermissionError, IsADirectoryError
        The file cannot be opened.
    ValueError
        A foreign file (not a zip of our three ``.npy`` members, object arrays,
        pickle, plain ``.npy``), a truncated or damaged one, sizes that disagree
        with the config, or a newer format version.
    """
    path = os.fspath(path)
    header, params, running, _ = _read(path)
    return _build(path, header, params, running)


def _read(path, training=False):
    """``(header, params, running, optimiser arrays)`` of a model file, every size checked first.

    With ``training``, the file must be a checkpoint (:func:`save_checkpoint`)
    and its optimiser state arrays are read too, each checked to be as long as
    ``params``.
    """
    with open(path, "rb") as f:
        try:
            zf = zipfile.ZipFile(f)
        except _READ_ERRORS as exc:
            raise _foreign(path, f"not a zip archive: {exc}") from None
        with zf:
            names = set(zf.namelist())
            missing = [m for m in MEMBERS if m + ".npy" not in names]
            if missing:
                raise _foreign(path, f"missing {missing}")
            size = os.fstat(f.fileno()).st_size
            members = {name: _member(path, zf, name, size) for name in MEMBERS}
            head = members["header"]
            if head.dtype != np.uint8:
                raise _foreign(path, f"its header is {head.dtype}, not uint8 bytes")
            if head.nbytes > MAX_HEADER_BYTES:
                raise _damaged(path, f"a header of {head.nbytes} bytes, over the limit of {MAX_HEADER_BYTES}")
            header = _parse_header(path, _read_member(path, zf, "header", head))
            _check_layout(path, header.get("config"), members["params"], members["running"])
            params = _read_member(path, zf, "params", members["params"])
            running = _read_member(path, zf, "running", members["running"])
            state = {}
            if training:
                record = header.get("training")
                if not isinstance(record, dict) or not isinstance(record.get("optimizer"), dict):
                    raise ValueError(f"{path}: a model file without training state; save one with "
                                     f"fusednet.io.save_checkpoint (or the Checkpoint callback)")
                for key in record.get("arrays", []):
                    member = "optimizer." + str(key)
                    if member + ".npy" not in names:
                        raise _damaged(path, f"missing the optimiser's {key!r}")
                    m = _member(path, zf, member, size)
                    if m.shape != members["params"].shape or m.dtype != members["params"].dtype:
                        raise _damaged(path, f"the optimiser's {key!r} is {m.dtype} {m.shape}, "
                                             f"the parameters {members['params'].dtype} {members['params'].shape}")
                    state[key] = _read_member(path, zf, member, m)
    return header, params, running, state


def save_checkpoint(model, optimizer, epoch, path):
    """Write the model, the optimiser's state and the next epoch to ``path``, to resume training exactly.

    The file is a model file (:func:`load_model` reads it as one) with the
    optimiser's ``state_dict`` beside the parameters: its numbers in the
    header's ``"training"`` record, its arrays as ``optimizer.<key>`` members.

    Parameters
    ----------
    model : fusednet.Sequential
        Built, and trained by ``optimizer`` over its parameter arena.
    optimizer : fusednet.optim.Optimizer
    epoch : int
        The next epoch to run (the epochs done so far): ``Trainer.fit(...,
        initial_epoch=epoch)`` continues from there.
    path : str or os.PathLike

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    if not model.built:
        raise ValueError("model is not built yet: fit it before saving a checkpoint")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    state = optimizer.state_dict()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    n = model.state_dict()["params"].size
    for key, value in arrays.items():
        if value.size != n:
            raise ValueError(f"optimizer state {key!r} has {value.size} values, the model {n} parameters: "
                             f"checkpoint an optimiser that trained this model's parameter arena")
    header = _header(model)
    header["training"] = {
        "epoch": epoch,
        "optimizer": {k: v for k, v in state.items() if not isinstance(v, np.ndarray)},
        "arrays": sorted(arrays),
    }
    payload = model.state_dict()
    payload.update({"optimizer." + k: np.ascontiguousarray(v).reshape(-1) for k, v in arrays.items()})
    return _write(path, header, payload)


def load_checkpoint(path):
    """Read a file of :func:`save_checkpoint`: ``(model, optimizer, epoch)``.

    ``Trainer(model, optimizer, epochs=E, ...).fit(X, y, initial_epoch=epoch)``
    then continues the run as if it had never stopped: with the same data,
    seed and schedule, E epochs in two fits equal E epochs in one, bit for bit.
    """
    from . import optim

    path = os.fspath(path)
    header, params, running, arrays = _read(path, training=True)
    model = _build(path, header, params, running)
    record = header["training"]
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise _damaged(path, f"bad epoch {epoch!r}")
    state = dict(record["optimizer"])
    cls = getattr(optim, str(state.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, optim.Optimizer)):
        raise _damaged(path, f"unknown optimiser {state.get('class')!r}")
    state.update(arrays)  # flat, as the optimiser saw the parameter arena
    try:
        hypers = {h: state[h] for h in cls._hypers}
        opt = cls(**hypers)
        opt.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise _damaged(path, f"optimiser state: {exc}") from None
    return model, opt, epoch


def _build(path, header, params, running):
    """The model a checked header and arrays describe."""
    from .data import Normalizer

    try:
        model = Sequential.from_config(header["config"])
        model.load_state_dict({"params": params, "running": running})
        normalizer = header.get("normalizer")
        if normalizer is not None:
            normalizer = Normalizer.from_dict(normalizer)
            n = normalizer.n_features_in_
            if n != model.input_dim:
                raise ValueError(f"the normalizer has {n} features, the model takes {model.input_dim}")
        model.normalizer = normalizer
        model.classes = _checked_classes(header.get("classes"), model, "classes")
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise _damaged(path, exc) from None
    return model
