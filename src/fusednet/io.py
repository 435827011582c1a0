"""Safe model files: NumPy ``.npz`` plus a JSON header, never pickle.

A model file is a zip of ``.npy`` arrays:

``header``
    uint8 bytes of a UTF-8 JSON object: ``{"format": "fusednet.model",
    "version": 1, "fusednet": "<version>", "config": {...}, "normalizer":
    {...} | null}``.
``params``
    the flat parameter arena (the model's dtype).
``running``
    the BatchNorm running statistics (may be empty).

Loading reads with ``allow_pickle=False`` and only ever builds a
:class:`~fusednet.model.Sequential` from the plain-data config, so a file can
never execute code.  Saving writes a temporary file in the destination folder,
flushes it to disk and renames it over the target, so a crash leaves either
the old file or the new one, never half of one.
"""

import json
import os
import tempfile
import zipfile

import numpy as np

from ._version import __version__

FORMAT = "fusednet.model"
VERSION = 1


def _json_seed(seed):
    return int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None


def save_model(model, path):
    """Write ``model`` (and its ``normalizer`` attribute, when set) to ``path``.

    Parameters
    ----------
    model : fusednet.Sequential
        A built model.
    path : str or os.PathLike
        Destination; written exactly there (no suffix is added).

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    if not model.built:
        raise ValueError("model is not built yet: fit it, or give Sequential an input_dim, before saving")
    config = model.get_config()
    config["seed"] = _json_seed(config.get("seed"))
    normalizer = getattr(model, "normalizer", None)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "fusednet": __version__,
        "config": config,
        "normalizer": None if normalizer is None else normalizer.to_dict(),
    }
    state = model.state_dict()
    payload = {
        "header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
        "params": state["params"],
        "running": state["running"],
    }
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fusednet-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _read(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            missing = {"header", "params", "running"} - names
            if missing:
                raise ValueError(f"{path}: not a fusednet model file (missing {sorted(missing)})")
            return {name: z[name] for name in ("header", "params", "running")}
    except FileNotFoundError:
        raise
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a fusednet model file ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"{path}: damaged or not a fusednet model file ({type(exc).__name__}: {exc})") from None


def load_model(path):
    """Read a model written by :func:`save_model`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    fusednet.Sequential
        With the saved weights, BatchNorm statistics and, when one was saved,
        its ``normalizer``; it predicts bit-identically to the saved model.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A truncated, damaged, foreign (pickle, object arrays) or newer file.
    """
    from .data import Normalizer
    from .model import Sequential

    path = os.fspath(path)
    arrays = _read(path)
    raw = arrays["header"]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{path}: not a fusednet model file (bad header)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged model header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fusednet model file")
    version = header.get("version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: bad model format version {version!r}")
    if version > VERSION:
        raise ValueError(
            f"{path}: model format version {version} is newer than this fusednet "
            f"({__version__}) reads (up to {VERSION}); upgrade fusednet"
        )
    try:
        model = Sequential.from_config(header["config"])
        if model.input_dim is None:
            raise ValueError("config has no input_dim")
        model.build(model.input_dim)
        params, running = arrays["params"], arrays["running"]
        if params.dtype != model.dtype:
            raise ValueError(f"params have dtype {params.dtype}, config says {model.dtype}")
        model.load_state_dict({"params": params, "running": running})
        if header.get("normalizer") is not None:
            model.normalizer = Normalizer.from_dict(header["normalizer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: damaged model file ({exc})") from None
    return model
