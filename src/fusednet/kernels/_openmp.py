"""How long the OpenMP runtime's idle threads spin before they sleep.

The Cython kernels and the one-call training step run on GNU OpenMP (libgomp),
and so do Numba's parallel kernels (its ``omp`` threading layer).  A thread of
the step's team that reaches a barrier first waits for the others; libgomp
makes it spin for ``GOMP_SPINCOUNT`` iterations (300,000 by default, a few
milliseconds) before it sleeps in the kernel.  On a quiet machine the others
arrive within microseconds and the spin is free.  On a shared one, where the
thread it waits for has lost its core to another process, the spinning thread
burns the time slice that thread needed, and a fit slowed by 5x to 100x
(``benchmarks/test_bench_shared_cpu.py``).

libgomp reads its settings from the environment once, when it is loaded, and
offers no call to change them later.  So :func:`configure` loads it, before
anything else can, with ``GOMP_SPINCOUNT`` set to :data:`SPIN_COUNT`, then
takes the variable out of the environment again (child processes and other
libraries never see it).  A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``
wins; :data:`STATUS` says what happened (``fusednet.info()["openmp_spin"]``).
"""

import ctypes
import ctypes.util
import os

#: libgomp's spin iterations before a waiting thread sleeps: long enough that the step's
#: barriers (microseconds apart) never sleep on a quiet machine, short enough that a thread
#: waiting for a descheduled one gives its core back within tens of microseconds.  Chosen by
#: benchmarks/test_bench_shared_cpu.py (see docs/PERFORMANCE.md).
SPIN_COUNT = 10_000

#: what :func:`configure` did
STATUS = "not configured"


def _loaded():
    try:
        with open("/proc/self/maps") as f:
            return "libgomp" in f.read()
    except OSError:  # not Linux: nothing to detect
        return False


def configure():
    """Load libgomp with :data:`SPIN_COUNT` unless the user chose, or it is already loaded."""
    global STATUS
    if STATUS != "not configured":
        return STATUS
    user = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    if user:
        STATUS = "the user's " + ", ".join(f"{k}={v}" for k, v in user.items())
        return STATUS
    if _loaded():
        STATUS = "libgomp's default (it was loaded before fusednet)"
        return STATUS
    name = ctypes.util.find_library("gomp") or "libgomp.so.1"
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        STATUS = f"GOMP_SPINCOUNT={SPIN_COUNT}"
    except OSError:  # no GNU OpenMP here (another runtime, or none): nothing to set
        STATUS = "no libgomp"
    finally:
        del os.environ["GOMP_SPINCOUNT"]
    return STATUS
