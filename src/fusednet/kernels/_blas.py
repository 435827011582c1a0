"""SciPy's BLAS ``?gemm`` for compiled code that calls it from its own threads.

The fused training step (``dense_step`` in the Cython extension) runs a whole
step in one OpenMP team and has every thread call ``sgemm``/``dgemm`` on its
share of each matrix product.  It takes the Fortran routines that
:mod:`scipy.linalg.cython_blas` exports (as the capsules :func:`gemm_capsule`
returns), and BLAS must run them on the calling
thread: :func:`single_threaded` sets that BLAS to one thread for the duration
of a block and restores the previous count.  SciPy's BLAS is a different
library from NumPy's on the usual wheels, so ``np.matmul`` keeps its threads
meanwhile.

:data:`STATUS` says why the step is unavailable when it is: no SciPy BLAS, or
a BLAS whose thread count cannot be set (OpenBLAS, MKL and BLIS can).
"""

import ctypes
import threading

import numpy as np

#: (get, set) thread-count functions, tried in order in the library behind ?gemm
_THREAD_API = (
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads"),
    ("bli_thread_get_num_threads", "bli_thread_set_num_threads"),
)


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _capsule_address(capsule):
    name = ctypes.pythonapi.PyCapsule_GetName
    name.restype = ctypes.c_char_p
    name.argtypes = [ctypes.py_object]
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get(capsule, name(capsule))


def _library_of(address):
    """The path of the shared object holding ``address``, or None."""
    for lib in (None, "libdl.so.2"):
        try:
            dladdr = ctypes.CDLL(lib).dladdr
        except (OSError, AttributeError):
            continue
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        dladdr.restype = ctypes.c_int
        info = _DlInfo()
        if dladdr(ctypes.c_void_p(address), ctypes.byref(info)) and info.dli_fname:
            return info.dli_fname.decode()
    return None


def _find():
    try:
        from scipy.linalg import cython_blas
    except ImportError as exc:
        return None, None, None, f"scipy.linalg.cython_blas is not importable ({exc})"
    capi = cython_blas.__pyx_capi__
    gemm = {
        np.dtype(np.float32): _capsule_address(capi["sgemm"]),
        np.dtype(np.float64): _capsule_address(capi["dgemm"]),
    }
    path = _library_of(gemm[np.dtype(np.float32)])
    if path is None:
        return None, None, None, "the shared object behind scipy's sgemm was not found"
    lib = ctypes.CDLL(path)  # symbols resolve through its dependencies (the BLAS itself)
    for get_name, set_name in _THREAD_API:
        try:
            get, put = getattr(lib, get_name), getattr(lib, set_name)
        except AttributeError:
            continue
        get.restype, get.argtypes = ctypes.c_int, []
        put.restype, put.argtypes = None, [ctypes.c_int]
        return gemm, get, put, f"scipy's BLAS ({get_name.rsplit('_get', 1)[0]})"
    return None, None, None, "scipy's BLAS has no known way to set its thread count"


_GEMM, _GET, _SET, STATUS = _find()
#: whether the fused step can run here
AVAILABLE = _GEMM is not None

_lock = threading.Lock()
_depth = 0
_saved = None


def gemm_capsule(dtype):
    """SciPy's Fortran ``sgemm`` (float32) or ``dgemm`` (float64), as the capsule ``cython_blas`` exports."""
    from scipy.linalg import cython_blas

    return cython_blas.__pyx_capi__["sgemm" if np.dtype(dtype) == np.float32 else "dgemm"]


class single_threaded:
    """Context manager: SciPy's BLAS runs on the calling thread inside the block (re-entrant)."""

    def __enter__(self):
        global _depth, _saved
        with _lock:
            if _depth == 0:
                _saved = _GET()
                if _saved != 1:
                    _SET(1)
            _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None and _saved != 1:
                _SET(_saved)
        return False
