"""Where Numba caches the compiled kernels, with a fallback for read-only installs.

Numba picks the directory of a ``cache=True`` kernel when the kernel is
decorated, that is, when its module is imported: ``NUMBA_CACHE_DIR`` if the
user set it, else the ``__pycache__`` folder beside the module, else its
user-wide cache (``~/.cache/numba`` on Linux), the first one it can write to.
If it can write to none (a package installed read-only, for a user without a
writable home), decorating raises ``RuntimeError: cannot cache function ...:
no locator available``, and the Numba backend cannot even be imported.

Importing this module checks those directories in Numba's order and, only
when none is writable, points ``numba.config.CACHE_DIR`` at a fresh temporary
directory, with one warning: the kernels are then compiled once per process
and cached there for that process only (the directory is removed when it
exits).  Every module that decorates kernels with ``cache=True`` imports it
first, through :mod:`._numba_math`.
"""

import atexit
import hashlib
import os
import shutil
import tempfile
import warnings

from numba.core import config
from numba.misc.appdirs import AppDirs

#: the folder of the kernel modules, whose ``__pycache__`` Numba tries first
KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


def writable(path):
    """Whether ``path`` is, or can be made, a directory that takes new files.

    The test Numba makes: create the directory if missing, then a temporary
    file in it.  False for a path under a regular file or a read-only folder.
    """
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def numba_cache_dirs(kernels_dir=KERNELS_DIR):
    """The directories Numba would try for the kernels of ``kernels_dir``, in its order.

    ``numba.config.CACHE_DIR`` (``NUMBA_CACHE_DIR``) when set, the folder's
    ``__pycache__``, then Numba's user-wide cache dir.  The user-provided and
    user-wide ones get the subfolder Numba uses for that source folder.
    """
    parent = os.path.abspath(kernels_dir)
    sub = "_".join([os.path.basename(parent), hashlib.sha1(parent.encode()).hexdigest()])
    dirs = [os.path.join(config.CACHE_DIR, sub)] if config.CACHE_DIR else []
    dirs.append(os.path.join(parent, "__pycache__"))
    dirs.append(os.path.join(AppDirs(appname="numba", appauthor=False).user_cache_dir, sub))
    return dirs


def ensure_cache_dir(dirs=None):
    """Give Numba a writable cache directory if none of ``dirs`` is writable.

    Parameters
    ----------
    dirs : list of str, optional
        The candidates, first match wins; default :func:`numba_cache_dirs`.

    Returns
    -------
    str or None
        The temporary directory now in ``numba.config.CACHE_DIR``, or None when
        one of ``dirs`` is writable (nothing changed).
    """
    dirs = numba_cache_dirs() if dirs is None else dirs
    if any(writable(d) for d in dirs):
        return None
    tmp = tempfile.mkdtemp(prefix="fusednet-numba-")
    config.CACHE_DIR = tmp
    atexit.register(_remove, tmp, os.getpid())
    warnings.warn(
        f"fusednet: no writable Numba cache directory (tried {', '.join(dirs)}); the compiled "
        f"kernels will be cached in {tmp} for this process only (set NUMBA_CACHE_DIR to keep them)",
        RuntimeWarning,
        stacklevel=2,
    )
    return tmp


def _remove(path, pid):
    if os.getpid() == pid:  # not from a forked child that inherited the handler
        shutil.rmtree(path, ignore_errors=True)


FALLBACK_DIR = ensure_cache_dir()
