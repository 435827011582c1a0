"""Running trials: worker processes (or any executor) that may die, and the protocol between them.

A trial crosses to a worker as ``(train_fn, params)`` and comes back as an
*outcome*, a plain dict: ``{"ok": True, "value": ..., "duration": s}`` or
``{"ok": False, "error": "Type: message", "traceback": str or None, "duration": s or None}``.

* The worker side (:func:`init_worker`, :func:`run_loaded`, :func:`run_payload`,
  :func:`run_trial`) runs in the worker processes, threads or cluster workers.
  Pools call these module-level functions by reference, so a worker imports
  this module to find them. It limits each of the search's own processes to one
  compute thread and never lets an exception raised by ``train_fn`` escape.
* The parent side, :class:`_Runner`, submits the trials, at most one per
  worker, and turns a broken process pool into failed outcomes for the trials
  that broke it, rerunning the others.

Whether the value an outcome carries is a valid result is checked by
:func:`fusednet.tune.results._make_record`.
"""

import concurrent.futures as cf
import math
import multiprocessing
import numbers
import os
import pickle
import sys
import time
import traceback
from collections import deque
from concurrent.futures.process import BrokenProcessPool


def describe(exc):
    """``"TypeName: message"`` for an exception (just the name when it has no message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failed(error, trace=None, duration=None):
    """The outcome of a trial that failed with ``error`` (``trace``: its formatted traceback)."""
    return {"ok": False, "error": error, "traceback": trace, "duration": duration}


# --------------------------------------------------------------------------
# the worker side
# --------------------------------------------------------------------------

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
        return _failed(_load_error, duration=0.0)
    limit_threads()  # libraries imported by the previous trial are limited too
    return run_trial(_train_fn, params)


def run_payload(payload, params):
    """Run one trial with ``train_fn`` given pickled (for a process pool)."""
    global _cached
    if _cached[0] != payload:
        try:
            _cached = (payload, pickle.loads(payload))
        except BaseException as exc:
            return _failed(f"could not load train_fn in the worker process ({describe(exc)})",
                           traceback.format_exc(), 0.0)
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
        return _failed(describe(exc), traceback.format_exc(), time.perf_counter() - start)
    return {"ok": True, "value": value, "duration": time.perf_counter() - start}


# --------------------------------------------------------------------------
# the parent side
# --------------------------------------------------------------------------


def _available_cpus():
    """The number of CPUs this process may use (the default number of worker processes)."""
    if hasattr(os, "process_cpu_count"):  # Python >= 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _check_executor(executor, n_workers):
    """``(executor, n_workers)`` checked: a dask Client gives its executor; None, the number of workers to start."""
    if executor is not None:
        if not isinstance(executor, cf.Executor) and callable(getattr(executor, "get_executor", None)):
            executor = executor.get_executor()  # a dask.distributed Client
        if not isinstance(executor, cf.Executor):
            raise TypeError(
                "executor must be None (local worker processes), a concurrent.futures.Executor "
                f"or a dask.distributed Client; got {type(executor).__name__}"
            )
        if n_workers is not None:
            raise ValueError("n_workers applies only with executor=None (the executor sets its own workers); got both")
        return executor, None
    if n_workers is None:
        return None, _available_cpus()
    if isinstance(n_workers, bool) or not isinstance(n_workers, numbers.Integral) or n_workers < 1:
        raise ValueError(f"n_workers must be None or a positive int; got {n_workers!r}")
    return None, int(n_workers)


def _dumps_fn(train_fn):
    """``train_fn`` pickled for worker processes (by cloudpickle when installed), or a TypeError saying why not."""
    try:
        import cloudpickle
    except ImportError:
        dumps = pickle.dumps
    else:  # by value for functions of __main__ (a notebook), lambdas and closures
        dumps = cloudpickle.dumps
    try:
        return dumps(train_fn)
    except Exception as exc:
        raise TypeError(
            f"train_fn must be picklable to run in worker processes; {train_fn!r} is not "
            f"({describe(exc)}). Define it at module level, or pass "
            "executor=concurrent.futures.ThreadPoolExecutor()"
        ) from exc


def _shutdown(pool, kill=False):
    """Shut ``pool`` down; ``kill``: cancel what is queued and terminate its processes now."""
    if kill:
        # Interrupted: end our workers now instead of after their current trial
        # (taken before shutdown, which forgets them).
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
    else:
        pool.shutdown(wait=True)


def _clone_process_pool(pool):
    """A fresh ProcessPoolExecutor with ``pool``'s settings (to replace a broken one), or None."""
    try:
        kwargs = dict(max_workers=pool._max_workers, mp_context=pool._mp_context,
                      initializer=pool._initializer, initargs=pool._initargs)
        if getattr(pool, "_max_tasks_per_child", None) is not None:
            kwargs["max_tasks_per_child"] = pool._max_tasks_per_child
        return type(pool)(**kwargs)
    except Exception:
        return None


class _Runner:
    """Runs trials on an executor and survives worker processes that die.

    At most as many trials as the executor has workers are in flight, so when
    a process pool breaks the suspects are few: if one trial was running it
    is recorded failed; if several, the pool is recreated and each suspect is
    rerun alone, so only the trial that kills its worker again is recorded
    failed and the others complete.
    """

    def __init__(self, train_fn, executor, n_workers):
        self._owned = []  # pools we created and must shut down
        self._pool = None
        if executor is None:
            self._mode = "own"
            self._n_workers = n_workers
            self._payload = _dumps_fn(train_fn)
        elif isinstance(executor, cf.ProcessPoolExecutor):
            self._mode = "process"
            self._pool = executor
            self._payload = _dumps_fn(train_fn)
        else:
            self._mode = "other"
            self._pool = executor
            self._train_fn = train_fn

    def _ensure_pool(self, n_todo):
        if self._pool is None:  # our own: spawn, not fork (a forked child of a process that used OpenMP can hang)
            self._pool = cf.ProcessPoolExecutor(
                max_workers=max(1, min(self._n_workers, n_todo)),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(self._payload,),
            )
            self._owned.append(self._pool)

    def _limit(self):
        workers = getattr(self._pool, "_max_workers", None)
        if isinstance(workers, int) and workers > 0:
            return workers
        return math.inf  # e.g. a dask executor: its scheduler queues the trials

    def _submit(self, params):
        if self._mode == "own":
            return self._pool.submit(run_loaded, params)
        if self._mode == "process":
            return self._pool.submit(run_payload, self._payload, params)
        return self._pool.submit(run_trial, self._train_fn, params)

    def _replace_pool(self):
        old = self._pool
        if self._mode == "own":
            self._pool = None  # a new one is made on the next submission
        elif self._mode == "process":
            new = _clone_process_pool(old)
            if new is None:
                return
            self._pool = new
            self._owned.append(new)
        else:
            return
        if old in self._owned:
            self._owned.remove(old)
            old.shutdown(wait=True)

    def close(self, kill=False):
        """Shut down the pools this runner created (never the caller's executor)."""
        for pool in self._owned:
            _shutdown(pool, kill=kill)
        self._owned = []
        if self._mode == "own":
            self._pool = None

    def run(self, todo, on_outcome):
        """Run ``todo``, a list of ``(trial, params)``, calling ``on_outcome(trial, params, outcome)``."""
        pending = deque(todo)
        suspects = deque()
        in_flight = {}  # future -> (trial, params)
        while pending or suspects or in_flight:
            if self._mode == "own" and (pending or suspects):
                self._ensure_pool(len(pending) + len(suspects))
            self._fill(pending, suspects, in_flight, on_outcome)
            if not in_flight:
                continue
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            broken = self._collect(done, in_flight, on_outcome)
            if broken:
                # The pool is broken: every other trial in flight fails with it at once.
                rest, _ = cf.wait(list(in_flight))
                broken += self._collect(rest, in_flight, on_outcome)
                if len(broken) == 1:  # it ran alone: it is the one that killed its worker
                    trial, params, exc = broken[0]
                    on_outcome(trial, params, _died(exc))
                else:
                    suspects.extend((trial, params) for trial, params, _ in broken)
                self._replace_pool()

    def _fill(self, pending, suspects, in_flight, on_outcome):
        while pending or suspects:
            if suspects:  # a suspect of a broken pool runs alone
                if in_flight:
                    return
                trial, params = suspects.popleft()
            elif len(in_flight) < self._limit():
                trial, params = pending.popleft()
            else:
                return
            try:
                try:
                    future = self._submit(params)
                except BrokenProcessPool:  # broke while idle: replace it and try once more
                    self._replace_pool()
                    if self._mode == "own":
                        self._ensure_pool(len(pending) + len(suspects) + 1)
                    future = self._submit(params)
            except Exception as exc:
                on_outcome(trial, params, _failed(f"could not submit the trial ({describe(exc)})"))
                continue
            in_flight[future] = (trial, params)

    def _collect(self, done, in_flight, on_outcome):
        """Report finished futures; return the trials lost to a broken pool."""
        broken = []
        for future in sorted(done, key=lambda f: in_flight[f][0]):
            trial, params = in_flight.pop(future)
            try:
                outcome = future.result()
            except BrokenProcessPool as exc:
                broken.append((trial, params, exc))
                continue
            except Exception as exc:  # the executor's own failure (e.g. dask's KilledWorker)
                outcome = _failed(describe(exc))
            on_outcome(trial, params, outcome)
        return broken


def _died(exc):
    """The outcome of a trial whose worker process died (``exc``: the pool's BrokenProcessPool)."""
    return _failed(f"the worker process died while running this trial ({describe(exc)})")
