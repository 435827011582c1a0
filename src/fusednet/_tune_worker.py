"""The worker side of :mod:`fusednet.tune`.

These functions run inside the worker processes (or threads, or cluster
workers) of a hyperparameter search. They import only the standard library at
module level, so a worker pays for nothing it does not use, and they never let
an exception raised by ``train_fn`` escape: each trial comes back as a plain
dict, ``{"ok": True, "value": ..., "duration": s}`` or
``{"ok": False, "error": "Type: message", "traceback": str, "duration": s}``.
The parent process checks the returned value (see ``fusednet.tune``).
"""

import os
import pickle
import sys
import time
import traceback

# One compute thread per worker: OpenMP (the Cython kernels), Numba, and the
# BLAS libraries NumPy may be linked to. Libraries loaded after the initialiser
# read these variables when they start; those already loaded are limited at
# run time through threadpoolctl and ``numba.set_num_threads``.
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}

_train_fn = None  # set by init_worker in the search's own worker processes
_load_error = None  # why train_fn could not be loaded there, if it could not
_cached = (None, None)  # (payload, function) last unpickled by run_payload


def limit_threads():
    """Limit this process to one compute thread (OpenMP, Numba and BLAS)."""
    os.environ.update(THREAD_ENV)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: the variables above still apply to libraries loaded later
        pass
    else:
        threadpool_limits(limits=1)
    kernels = sys.modules.get("fusednet.kernels")
    if kernels is not None:  # the kernels' (and the one-call step's) thread count
        kernels.set_num_threads(1)
    numba = sys.modules.get("numba")
    if numba is not None:
        try:
            numba.set_num_threads(1)
        except Exception:  # a Numba without a threading layer: nothing to limit
            pass


def init_worker(payload):
    """Initialise one of the search's own worker processes.

    Parameters
    ----------
    payload : bytes
        ``train_fn`` pickled (by cloudpickle when it is installed, so functions
        defined in a notebook or as closures travel too). It is loaded once
        per worker, not once per trial.
    """
    global _train_fn, _load_error
    limit_threads()
    try:
        _train_fn = pickle.loads(payload)
    except BaseException as exc:  # reported by every trial instead of killing the pool
        _load_error = (
            "could not load train_fn in the worker process "
            f"({describe(exc)}); define it at module level in an importable module"
        )


def run_loaded(params):
    """Run one trial with the ``train_fn`` loaded by :func:`init_worker`."""
    if _load_error is not None:
        return {"ok": False, "error": _load_error, "traceback": None, "duration": 0.0}
    limit_threads()  # libraries imported by the previous trial are limited too
    return run_trial(_train_fn, params)


def run_payload(payload, params):
    """Run one trial with ``train_fn`` given pickled (for a process pool)."""
    global _cached
    if _cached[0] != payload:
        try:
            _cached = (payload, pickle.loads(payload))
        except BaseException as exc:
            return {
                "ok": False,
                "error": f"could not load train_fn in the worker process ({describe(exc)})",
                "traceback": traceback.format_exc(),
                "duration": 0.0,
            }
    return run_trial(_cached[1], params)


def run_trial(train_fn, params):
    """Call ``train_fn(**params)`` and report the outcome as a plain dict.

    ``KeyboardInterrupt`` propagates (an interrupted search is stopped, not
    recorded as failed trials); every other exception, ``SystemExit``
    included, becomes a failed outcome.
    """
    start = time.perf_counter()
    try:
        value = train_fn(**params)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return {
            "ok": False,
            "error": describe(exc),
            "traceback": traceback.format_exc(),
            "duration": time.perf_counter() - start,
        }
    return {"ok": True, "value": value, "duration": time.perf_counter() - start}


def describe(exc):
    """``"TypeName: message"`` for an exception (just the name when it has no message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
