"""A team's threads on CPUs of their own for the time of a call.

On a virtual machine, Linux's scheduler tends to wake a thread on its waker's CPU: a CPU
whose virtual processor the host has descheduled (every idle one, after a pause of a
fraction of a second) counts as preempted, not idle, and is passed over.  A two-thread
team then runs with both threads on one CPU until the load balancer moves one of them,
milliseconds later; and every later wake-up (a thread waiting for the GIL, for a lock)
can bring them together again.  A population's fit of 8 ms took 11-16 ms that way, its
two threads taking turns on one CPU while the other idled (docs/PERFORMANCE.md).

:class:`Team` keeps each thread of a team on a CPU of its own while it works: the one the
scheduler started it on, unless another thread of the team is there, then a free one.
Each thread gets the process's CPUs back when its work is done.  On a busy machine a
thread so held shares its CPU with whatever else runs there (its fair share of that CPU)
instead of moving to a quieter one; the team's chunks are handed out one at a time, so the
others take more of them.  Where the system cannot say which CPU a thread is on (not
Linux, no ``sched_getcpu``) nothing is set.
"""

import ctypes
import os
import threading


def _getcpu_function():
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):  # not glibc or musl: no way to ask
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = []
    return fn


_GETCPU = _getcpu_function() if hasattr(os, "sched_setaffinity") else None


def current_cpu():
    """The CPU the calling thread runs on, or -1 where the system cannot say."""
    return _GETCPU() if _GETCPU is not None else -1


class Team:
    """The CPUs a team's threads run on, one each, for the time of one call.

    Every thread of the team (the one that started it included) calls :meth:`settle` when it starts its
    work and :meth:`release` when it is done.  Thread-safe.
    """

    def __init__(self):
        self._allowed = os.sched_getaffinity(0) if _GETCPU is not None else set()
        self._taken = set()
        self._lock = threading.Lock()

    def settle(self):
        """Keep the calling thread on a CPU of its own until :meth:`release`: the one it runs on, or, if
        another thread of the team holds that one, the lowest allowed CPU none holds (none free: no
        change).  Returns the CPU, -1 when nothing was set."""
        cpu = current_cpu()
        if cpu < 0:
            return -1
        with self._lock:
            if cpu in self._taken:
                free = sorted(self._allowed - self._taken)
                if not free:
                    return -1
                cpu = free[0]
            self._taken.add(cpu)
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:  # the CPU went away (hotplug, a cgroup's cpuset): no change
            return -1
        return cpu

    def release(self):
        """Give the calling thread the process's CPUs back."""
        if self._allowed:
            try:
                os.sched_setaffinity(0, self._allowed)
            except OSError:  # none of them is online any more (hotplug): the thread keeps its CPU
                pass
