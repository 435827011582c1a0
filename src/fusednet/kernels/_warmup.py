"""Compiling every Numba kernel ahead of time, in this process or in several at once.

:func:`fusednet.kernels.warmup` splits the work into tasks -- one group of
kernels of one dtype (:func:`._numba.warmup_step`), the gradient check's
evaluator of one kind of network, the population engine of one dtype -- and
runs each with :func:`run`.  Numba caches each compiled kernel on disk (see
:mod:`._numba_cache`), and compiling one does not need another, so the tasks
can first run in worker processes, each compiling its share into the cache on a
core of its own; this process then runs every task itself, which loads each
kernel from the cache (seconds) and compiles any a worker could not save.
"""

import concurrent.futures as cf
import multiprocessing

import numpy as np


def tasks(dtypes):
    """The tasks of a warmup of ``dtypes``, as picklable tuples, in :func:`fusednet.kernels.warmup`'s order:
    ``("kernels", dtype, i)`` for each of :func:`._numba.warmup_steps`, ``("gradcheck", j)`` for each of
    :data:`._gradcheck_numba.CLI_FEATURES`, ``("population", dtype)``."""
    from . import _gradcheck_numba
    from . import _numba as N

    dtypes = tuple(np.dtype(d).name for d in dtypes)
    out = [("kernels", d, i) for d in dtypes for i in range(N.warmup_steps((d,)))]
    out += [("gradcheck", j) for j in range(len(_gradcheck_numba.CLI_FEATURES))]
    out += [("population", d) for d in dtypes]
    return out


def run(task):
    """Compile (or load from the cache) the kernels of one task of :func:`tasks`."""
    kind = task[0]
    if kind == "kernels":
        from . import _numba as N

        N.warmup_step(task[1], task[2])
    elif kind == "gradcheck":
        from . import _gradcheck_numba

        _gradcheck_numba.warmup([_gradcheck_numba.CLI_FEATURES[task[1]]])
    elif kind == "population":
        from ..population import warmup as population_warmup  # the engine's tables come from the model layer

        population_warmup((task[1],))
    else:
        raise ValueError(f"task: unknown warmup task {task!r}")


def shared_cache():
    """Whether the kernels compiled in another process reach this one: False when :mod:`._numba_cache`
    fell back to a temporary cache directory of this process only."""
    from . import _numba_cache

    return _numba_cache.FALLBACK_DIR is None


def compile_in_workers(todo, jobs, progress=None):
    """Run the tasks ``todo`` in ``jobs`` worker processes (started with ``spawn``: a forked child of a
    process whose kernels ran on an OpenMP team can hang), each task as soon as a worker is free, the
    longest first (the population engine, then the gradient check's evaluators); ``progress(done,
    len(todo))`` after each.  A task that fails in its worker raises here."""
    order = sorted(range(len(todo)), key=lambda k: {"population": 0, "gradcheck": 1}.get(todo[k][0], 2))
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run, todo[k]) for k in order]
        for done, future in enumerate(cf.as_completed(futures), 1):
            future.result()
            if progress is not None:
                progress(done, len(todo))
