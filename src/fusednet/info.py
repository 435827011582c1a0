"""What this installation of fusednet is: versions, backends, threads."""

import platform
import sys

import numpy as np

from . import kernels
from ._version import __version__


def _version(module):
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "unknown")


def info():
    """Versions, built backends, OpenMP, Numba's threading layer and thread counts.

    Returns
    -------
    dict
        Plain data, printable as a table (``fusednet info``).
    """
    out = {
        "fusednet": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": _version("scipy"),
        "numba": _version("numba"),
        "backends": kernels.available(),
        "backend": kernels.get_backend(),
        "threads": kernels.get_num_threads(),
        # a forked child of a process whose kernels ran on a team runs them on one thread
        "forked_serial": kernels.forked_serial(),
        "openmp_spin": kernels._openmp.STATUS,  # how long idle OpenMP threads spin before sleeping
        "auto": {name: kernels.backend_of(name, "auto") for name in kernels.KERNELS},
    }
    if "numba" in out["backends"]:
        import numba

        out["numba_threads"] = numba.config.NUMBA_NUM_THREADS
        try:
            out["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            out["numba_threading_layer"] = f"{numba.config.THREADING_LAYER} (not yet initialised)"
    if "cython" in out["backends"]:
        from .kernels import _cython

        out["openmp"] = getattr(_cython, "OPENMP", None)
        out["cython_isa"] = getattr(_cython, "ISA", None)  # the instruction-set build imported
        out["cython_threads"] = getattr(_cython, "max_threads", lambda: None)()
    from .kernels import _blas

    # the trainer's one-call step for Dense stacks (see fusednet._fused)
    if "cython" not in out["backends"]:
        out["fused_step"] = "unavailable: the Cython extension is not built"
    elif _blas.AVAILABLE:
        from .kernels import _cython

        own = "fusednet's own kernels for float32 products, " if _cython.FUSED_GEMM else ""
        from . import _fused

        out["fused_step"] = (f"available, on {own}{_blas.STATUS}; steps of fewer than "
                             f"{_fused.serial_flops():,} product flops run on one thread at any batch size, "
                             f"larger ones on a team in batches of up to {_fused.max_rows('float32')} rows "
                             f"(float32) or {_fused.max_rows('float64')} (float64)")
    else:
        out["fused_step"] = f"unavailable: {_blas.STATUS}"
    from . import _fused

    # how the last Trainer fit in this process trains: serial step or team, whole fit or per epoch
    out["last_fit"] = _fused.LAST_FIT if _fused.LAST_FIT is not None else "no fit yet in this process"
    try:
        from threadpoolctl import threadpool_info

        out["blas"] = [
            f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
            for p in threadpool_info()
            if p.get("user_api") == "blas"
        ]
    except ImportError:
        pass
    return out


def format_info(d=None):
    """:func:`info` as aligned ``key: value`` lines."""
    d = info() if d is None else d
    lines = []
    for key, value in d.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, (tuple, list)):
            value = ", ".join(map(str, value))
        lines.append(f"{key:<22} {value}")
    return "\n".join(lines)
