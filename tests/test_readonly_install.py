"""A read-only install with no writable cache directory still imports and trains.

Numba picks the cache directory of a ``cache=True`` kernel when it is
decorated (``NUMBA_CACHE_DIR``, the package's ``__pycache__``, the user-wide
cache) and raises "no locator available" when none is writable;
``fusednet.kernels._numba_cache`` then hands it a temporary directory.  File
permissions do not stop root, so the end-to-end test makes both locations
impossible instead: the copy's ``kernels/__pycache__`` is a regular file, and
``HOME`` is a regular file, so ``~/.cache`` cannot be created under it.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

numba = pytest.importorskip("numba")

from fusednet.kernels import _numba_cache as C  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fusednet"


@pytest.fixture
def regular_file(tmp_path):
    f = tmp_path / "not-a-directory"
    f.write_text("")
    return f


@pytest.fixture
def saved_cache_dir():
    saved = numba.config.CACHE_DIR
    yield
    numba.config.CACHE_DIR = saved


def test_writable_is_false_under_a_regular_file(regular_file):
    assert not C.writable(str(regular_file / "sub"))
    assert not C.writable(str(regular_file))


def test_writable_creates_a_missing_directory(tmp_path):
    assert C.writable(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="file permissions do not stop root")
def test_writable_is_false_for_a_read_only_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        assert not C.writable(str(d))
        assert not C.writable(str(d / "sub"))
    finally:
        d.chmod(0o755)


def test_no_writable_directory_falls_back_to_a_temporary_one(regular_file, saved_cache_dir):
    dirs = [str(regular_file / "__pycache__"), str(regular_file / ".cache" / "numba")]
    with pytest.warns(RuntimeWarning, match="for this process only") as record:
        tmp = C.ensure_cache_dir(dirs)
    try:
        assert len(record) == 1
        assert numba.config.CACHE_DIR == tmp
        assert os.path.basename(tmp).startswith("fusednet-numba-") and C.writable(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_one_writable_directory_leaves_numba_alone(regular_file, tmp_path, saved_cache_dir):
    before = numba.config.CACHE_DIR
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert C.ensure_cache_dir([str(regular_file / "x"), str(tmp_path / "cache")]) is None
    assert numba.config.CACHE_DIR == before


def test_cache_dirs_follow_numba_order_and_respect_numba_cache_dir(tmp_path, saved_cache_dir):
    from numba.core.caching import UserWideCacheLocator

    kernels = PACKAGE / "kernels"
    sub = UserWideCacheLocator.get_suitable_cache_subpath(str(kernels / "_numba_flat.py"))
    numba.config.CACHE_DIR = ""
    dirs = C.numba_cache_dirs(str(kernels))
    assert dirs[0] == str(kernels / "__pycache__")
    assert dirs[1].endswith(os.sep + sub) and len(dirs) == 2
    numba.config.CACHE_DIR = str(tmp_path)
    assert C.numba_cache_dirs(str(kernels))[0] == str(tmp_path / sub)


TRAIN = textwrap.dedent("""
    import numpy as np
    import numba
    import fusednet

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = fusednet.Sequential([fusednet.layers.Dense(4, activation="tanh"),
                                 fusednet.layers.Dense(1, activation="sigmoid")])
    history = fusednet.Trainer(model, batch_size=16, epochs=2, fused_step=False).fit(X, y)
    assert np.isfinite(history["train_loss"]).all()
    assert fusednet.kernels.backend_of("bias_act_forward") == "numba"
    print("CACHE_DIR=" + numba.config.CACHE_DIR)
""")


@pytest.mark.slow
def test_read_only_install_without_cache_dir_imports_and_trains(tmp_path, regular_file):
    """Copy of the package, read-only, its kernels/__pycache__ a file, HOME a file: it trains."""
    root = tmp_path / "site"
    pkg = root / "fusednet"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "kernels" / "__pycache__").write_text("")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(HOME=str(regular_file), PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1",
               FUSEDNET_BACKEND="numba", PYTHONWARNINGS="default")
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    try:
        proc = subprocess.run([sys.executable, "-c", TRAIN], cwd=str(tmp_path), env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no locator available" not in proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "for this process only" in line]
    assert len(warning) == 1, proc.stderr[-3000:]
    cache_dir = proc.stdout.split("CACHE_DIR=")[1].strip()
    assert os.path.basename(cache_dir).startswith("fusednet-numba-")
    assert not os.path.exists(cache_dir)  # removed when the process exited
