"""The kernel layer: one contract, three backends.

``"numpy"`` is the readable pure-NumPy reference (:mod:`fusednet.kernels.reference`)
and the benchmark baseline; ``"numba"`` and ``"cython"`` are compiled.  Every
backend module exposes the same raw kernels (see the reference's docstring for
the contract).  Raw kernels check nothing; the functions of this module with the
same names are their checked wrappers.

The backend is chosen, in order of precedence, by a ``backend=`` argument, by
:func:`set_backend` (or the ``FUSEDNET_BACKEND`` environment variable, read once
when the first kernel is resolved), and otherwise ``"auto"``: per kernel, the
fastest backend measured by the benchmarks in ``benchmarks/`` (:data:`AUTO`).
"""

import importlib
import os
import threading

import numpy as np

from . import _codes, _openmp, _policy
from ._codes import ACTIVATIONS, LOSSES, dropout_key, dropout_threshold

_openmp.configure()  # before the Cython extension or Numba's threading layer loads libgomp

__all__ = [
    "KERNELS",
    "BACKENDS",
    "AUTO",
    "available",
    "capabilities",
    "set_backend",
    "get_backend",
    "resolve",
    "get_num_threads",
    "set_num_threads",
    "limit_threads",
    "dropout_key",
    "dropout_threshold",
    "warmup",
]

#: every kernel of the contract, in the order of the reference's docstring
KERNELS = (
    "bias_act_forward",
    "act_backward",
    "loss_forward",
    "loss_backward",
    "dropout_apply",
    "gd_update",
    "momentum_update",
    "rmsprop_update",
    "adam_update",
    "batchnorm_forward_train",
    "batchnorm_forward_infer",
    "batchnorm_backward",
    "ewa_update",
)

#: backend name -> module implementing the raw kernels
BACKENDS = {
    "numpy": "fusednet.kernels.reference",
    "numba": "fusednet.kernels._numba",
    "cython": "fusednet.kernels._cython",
}

#: Kernels whose Cython build measured clearly faster than Numba (fusednet.kernels._policy).
#: Both backends run their parallel loops on the same OpenMP runtime (libgomp), so mixing
#: them per kernel adds no second thread pool.
CYTHON_FIRST = _policy.CYTHON_FIRST

#: "auto": per kernel, the backends in order of measured speed (first available wins).
AUTO = {name: ("cython", "numba", "numpy") if name in CYTHON_FIRST else ("numba", "cython", "numpy")
        for name in KERNELS}

_lock = threading.Lock()
_modules = {}
_import_errors = {}
_state = {"backend": None, "n_threads": None, "limit": None, "teams": False, "forked": False}


def _after_fork_in_child():
    """In a forked child of a process whose kernels ran on a team: one thread from now on.

    GNU OpenMP (behind the Cython kernels and Numba's ``omp`` threading layer)
    cannot start a team in a child forked after it ran one: the child would
    wait forever for threads that were not copied (Numba aborts it instead).
    Every kernel of such a child therefore runs on the calling thread: the
    compiled step and the Cython kernels without a parallel region, Numba's
    serial variants, the gradient check's serial kernel.
    """
    if _state["teams"]:
        _state["forked"] = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _load(backend):
    """Import a backend module once; None (and the error kept) when it is not built."""
    if backend not in _modules and backend not in _import_errors:
        with _lock:
            try:
                _modules[backend] = importlib.import_module(BACKENDS[backend])
            except ImportError as exc:  # not built, or Numba missing
                _import_errors[backend] = exc
    return _modules.get(backend)


def available():
    """The backends that can run here, the reference first.

    Returns
    -------
    tuple of str
        A subset of ``("numpy", "numba", "cython")``.
    """
    return tuple(b for b in BACKENDS if _load(b) is not None)


def capabilities():
    """Which kernel exists in which available backend.

    Returns
    -------
    dict
        ``{backend: frozenset(kernel names)}``; drives ``"auto"``, the
        equivalence tests and the benchmarks.
    """
    return {
        b: frozenset(k for k in KERNELS if callable(getattr(_modules[b], k, None)))
        for b in available()
    }


def _check_backend(name, argname="backend"):
    choices = ("auto",) + tuple(BACKENDS)
    if not isinstance(name, str) or name not in choices:
        raise ValueError(f"{argname} must be one of {choices}, got {name!r}")
    if name != "auto" and _load(name) is None:
        raise ValueError(
            f"{argname}={name!r} is not available here ({_import_errors[name]}); "
            f"available: {available()}"
        )
    return name


def set_backend(name):
    """Choose the kernel backend for the whole process.

    Parameters
    ----------
    name : {"auto", "numpy", "numba", "cython"}
        ``"auto"`` takes the fastest measured backend per kernel.
    """
    _state["backend"] = _check_backend(name)


def get_backend():
    """The current backend choice (``"auto"`` unless set)."""
    if _state["backend"] is None:
        env = os.environ.get("FUSEDNET_BACKEND", "auto").strip().lower() or "auto"
        _state["backend"] = _check_backend(env, "FUSEDNET_BACKEND")
    return _state["backend"]


def resolve(name, backend=None):
    """The raw kernel ``name`` of ``backend`` (None: the current choice).

    Parameters
    ----------
    name : str
        One of :data:`KERNELS`.
    backend : str, optional
        An explicit backend beats :func:`set_backend`, which beats ``"auto"``.

    Returns
    -------
    callable
        The unchecked kernel; callers own the checks (see the wrappers below).
    """
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; known: {KERNELS}")
    backend = get_backend() if backend is None else _check_backend(backend)
    if backend == "auto":
        for b in AUTO[name]:
            mod = _load(b)
            if mod is not None and callable(getattr(mod, name, None)):
                return getattr(mod, name)
        backend = "numpy"
    return getattr(_load(backend), name)


def backend_of(name, backend=None):
    """The backend name that :func:`resolve` picks for kernel ``name``."""
    kernel = resolve(name, backend)
    return next(b for b, mod in _modules.items() if getattr(mod, name, None) is kernel)


def warmup(dtypes=("float32", "float64"), progress=None, jobs=1):
    """Compile every Numba kernel now, or load it from Numba's on-disk cache.

    A kernel is otherwise compiled on its first call (for the activations,
    losses and dtypes a run uses) and cached on disk, so only the first run
    after an install waits.  This compiles all of them ahead of time: every
    activation and loss, serial and parallel, in each of ``dtypes``, the
    gradient check's evaluator (float64) for each kind of network ``fusednet
    gradcheck`` builds, and the population engine (:class:`fusednet.Population`,
    serial and on the team) in each of ``dtypes``.  ``fusednet warmup`` calls it.

    Parameters
    ----------
    dtypes : sequence of dtype-like, default (float32, float64)
    progress : callable, optional
        Called as ``progress(done, total)`` after each group of kernels.
    jobs : int, default 1
        Processes that compile at once.  Above 1, worker processes compile the
        groups into Numba's cache, each on a core of its own, and this process
        then loads every kernel from it (seconds); ``progress`` counts the
        workers' groups.  1 (or a cache of this process only, see
        :mod:`fusednet.kernels._numba_cache`): every group compiles here, in turn.

    Returns
    -------
    bool
        False when Numba is not available here (nothing to compile).
    """
    from .._validation import check_int

    jobs = check_int("jobs", jobs, 1)
    if _load("numba") is None:
        return False
    from . import _warmup

    todo = _warmup.tasks(dtypes)
    here = progress
    if jobs > 1 and len(todo) > 1 and _warmup.shared_cache():
        _warmup.compile_in_workers(todo, min(jobs, len(todo)), progress)
        here = None  # what remains is loading from the cache
    for done, task in enumerate(todo, 1):
        _warmup.run(task)
        if here is not None:
            here(done, len(todo))
    return True


def _affinity_count():
    """The usable cores, or fewer when ``OMP_NUM_THREADS`` asks for fewer (as BLAS and OpenMP read it)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        asked = 0
    return min(n, asked) if asked >= 1 else n


def get_num_threads():
    """The thread count every kernel call receives (default: the usable cores).

    1 in a forked child of a process whose kernels ran on a team (see
    :func:`_after_fork_in_child`), whatever :func:`set_num_threads` says.
    """
    if _state["forked"]:
        return 1
    if _state["n_threads"] is None:
        _state["n_threads"] = _affinity_count()
    limit = _state["limit"]
    n = _state["n_threads"] if limit is None else min(limit, _state["n_threads"])
    if n > 1:
        _state["teams"] = True  # a kernel may start a team from now on
    return n


def forked_serial():
    """Whether this process is a forked child that runs every kernel on one thread."""
    return _state["forked"]


class limit_threads:
    """Context manager: kernels get at most ``n`` threads inside the block.

    The trainer uses it so its per-step kernels run on the calling thread while
    BLAS owns the cores: on 2 cores, a parallel kernel launched between two
    multi-threaded matrix products competes with BLAS's still-spinning worker
    threads, and one training epoch measured 4x slower (see README, Speed).
    """

    def __init__(self, n):
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise ValueError(f"n must be a positive int or None, got {n!r}")
        self.n = None if n is None else int(n)

    def __enter__(self):
        self._saved = _state["limit"]
        _state["limit"] = self.n
        return self

    def __exit__(self, *exc):
        _state["limit"] = self._saved
        return False


def set_num_threads(n):
    """Set the kernels' thread count (1 … usable cores)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_threads must be a positive int, got {n!r}")
    n = int(n)
    _state["n_threads"] = n
    if _state["forked"]:
        return
    if _load("numba") is not None:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


# --------------------------------------------------------------------------
# checked wrappers: validate, allocate `out` when not given, call the kernel
# --------------------------------------------------------------------------

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _array(x, name, ndim=None, dtype=None, writable=False):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} like the other arrays, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and not x.flags.writeable:
        raise ValueError(f"{name} is an output and must be writable")
    return x


def _shape(x, name, shape):
    if x.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {x.shape}")


def _out(out, name, shape, dtype):
    if out is None:
        return np.empty(shape, dtype=dtype)
    _array(out, name, dtype=dtype, writable=True)
    _shape(out, name, shape)
    return out


def activation_code(activation):
    """Map an activation name (or None = linear) to its kernel code."""
    if activation is None:
        return _codes.LINEAR
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)} or None, got {activation!r}"
        )
    return ACTIVATIONS[activation]


def _slope(slope):
    if not np.isfinite(slope) or not 0.0 <= slope < 1.0:
        raise ValueError(f"leaky_slope must be in [0, 1), got {slope!r}")
    return float(slope)


def bias_act_forward(Z, b, activation="linear", *, slope=0.01, out=None, backend=None):
    """Checked ``A = g(Z + b)``; returns ``out``."""
    _array(Z, "Z", 2)
    _array(b, "b", 1, Z.dtype)
    _shape(b, "b", (Z.shape[1],))
    act = activation_code(activation)
    out = _out(out, "out", Z.shape, Z.dtype)
    resolve("bias_act_forward", backend)(Z, b, act, _slope(slope), out, get_num_threads())
    return out


def act_backward(dA, A, activation="linear", *, slope=0.01, out=None, db=None, backend=None):
    """Checked ``dZ = dA * g'(A)`` and ``db = sum_rows(dZ)``; returns ``(dZ, db)``."""
    _array(dA, "dA", 2)
    _array(A, "A", 2, dA.dtype)
    _shape(A, "A", dA.shape)
    act = activation_code(activation)
    out = _out(out, "out", dA.shape, dA.dtype)
    db = _out(db, "db", (dA.shape[1],), dA.dtype)
    resolve("act_backward", backend)(dA, A, act, _slope(slope), out, db, get_num_threads())
    return out, db


def loss_forward(Z, b, Y, loss, *, out=None, backend=None):
    """Checked output activation plus mean cost; returns ``(cost, A)``."""
    _array(Z, "Z", 2)
    _array(b, "b", 1, Z.dtype)
    _shape(b, "b", (Z.shape[1],))
    _array(Y, "Y", 2, Z.dtype)
    _shape(Y, "Y", Z.shape)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    out = _out(out, "out", Z.shape, Z.dtype)
    cost = resolve("loss_forward", backend)(Z, b, Y, LOSSES[loss], out, get_num_threads())
    return cost, out


def loss_backward(A, Y, *, out=None, db=None, backend=None):
    """Checked ``dZ = (A - Y) / m``, ``db = sum_rows(dZ)``; returns ``(dZ, db)``."""
    _array(A, "A", 2)
    _array(Y, "Y", 2, A.dtype)
    _shape(Y, "Y", A.shape)
    out = _out(out, "out", A.shape, A.dtype)
    db = _out(db, "db", (A.shape[1],), A.dtype)
    resolve("loss_backward", backend)(A, Y, out, db, get_num_threads())
    return out, db


def dropout_apply(X, keep_prob, key, *, out=None, backend=None):
    """Checked inverted dropout: keep with probability ``keep_prob``, scale by ``1/keep_prob``.

    The mask is a function of ``key`` (see :func:`dropout_key`) and the flat
    index only; calling it again with the same key on ``dA`` is the backward pass.
    """
    _array(X, "X")
    if not (isinstance(keep_prob, (int, float, np.floating)) and 0.0 < keep_prob <= 1.0):
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob!r}")
    if not isinstance(key, (int, np.integer)) or not 0 <= int(key) < 2**64:
        raise ValueError(f"key must be an int in [0, 2**64), got {key!r}")
    if X.size >= 2**32:
        raise ValueError(f"X has {X.size} elements; dropout masks index at most 2**32")
    out = _out(out, "out", X.shape, X.dtype)
    resolve("dropout_apply", backend)(
        X, int(key), dropout_threshold(keep_prob), 1.0 / keep_prob, out, get_num_threads()
    )
    return out


def ewa_update(v, x, beta, *, backend=None):
    """Checked in-place ``v = beta * v + (1 - beta) * x``; returns ``v``."""
    _array(v, "v", writable=True)
    _array(x, "x", dtype=v.dtype)
    _shape(x, "x", v.shape)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    resolve("ewa_update", backend)(v.reshape(-1), x.reshape(-1), float(beta), get_num_threads())
    return v
