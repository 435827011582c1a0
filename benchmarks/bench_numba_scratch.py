"""Scratch timings of the Numba kernels against textbook NumPy (not a pytest suite).

Run: ``python benchmarks/bench_numba_scratch.py [float32|float64] [thresholds]``.
Prints, per kernel and size, the median time of NumPy and Numba (the two run
alternately, so a busy machine slows both alike) and the speed-up.  With
``thresholds`` it prints serial against parallel times around the serial
thresholds instead, and the subnormal-state timing of the optimisers.
"""

import sys
import time

import numpy as np

from fusednet.kernels import _codes
from fusednet.kernels import _numba as N
from fusednet.kernels import reference as R


def median_ms(fn, repeat=None, budget=0.4):
    return medians_ms([fn], repeat, budget)[0]


def medians_ms(fns, repeat=None, budget=0.6):
    """Median wall time of each function, calling them in turn ``repeat`` times."""
    for fn in fns:
        fn()
    t = time.perf_counter()
    for fn in fns:
        fn()
    once = time.perf_counter() - t
    repeat = repeat or int(min(300, max(7, budget / max(once, 1e-7))))
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) * 1e3 for ts in times]


def row(name, size, f_np, f_nb):
    t_np, t_nb = medians_ms([f_np, f_nb])
    print(f"{name:28s} {size:>9.0e} numpy {t_np:9.4f} ms  numba {t_nb:9.4f} ms  x{t_np / t_nb:6.1f}", flush=True)


def shape_of(size, n=100):
    return (max(size // n, 1), n)


def main(dtype=np.float32, sizes=(10**3, 10**5, 10**7), n_threads=2):
    N.warmup((dtype,))
    rng = np.random.default_rng(0)
    t = dtype
    for size in sizes:
        shape = shape_of(size)
        Z = rng.standard_normal(shape).astype(t)
        b = rng.standard_normal(shape[1]).astype(t)
        A = np.empty_like(Z)
        x = Z.reshape(-1)
        o = np.empty_like(x)
        row("relu forward", size, lambda: np.maximum(Z + b, 0),
            (lambda: N.bias_act_forward(Z, b, _codes.RELU, 0.0, A, n_threads)))
        row("tanh forward (ufunc)", size, lambda: np.tanh(x, out=o),
            (lambda: N.bias_act_forward(Z, b, _codes.TANH, 0.0, A, n_threads)))

        def np_sigmoid():
            np.negative(x, out=o)
            np.exp(o, out=o)
            np.add(o, 1, out=o)
            np.divide(1, o, out=o)
        row("sigmoid forward (ufuncs)", size, np_sigmoid,
            (lambda: N.bias_act_forward(Z, b, _codes.SIGMOID, 0.0, A, n_threads)))
        row("softmax forward", size, lambda: R.bias_act_forward(Z, b, _codes.SOFTMAX, 0.0, A, 1),
            (lambda: N.bias_act_forward(Z, b, _codes.SOFTMAX, 0.0, A, n_threads)))

        Aa = np.abs(np.tanh(Z)).astype(t)
        dA = rng.standard_normal(shape).astype(t)
        dZ = np.empty_like(Z)
        db = np.empty(shape[1], t)

        def np_relu_bwd():
            d = dA * (Aa > 0)
            return d, d.sum(0)

        def np_sig_bwd():
            d = dA * Aa * (1 - Aa)
            return d, d.sum(0)

        def np_tanh_bwd():
            d = dA * (1 - Aa * Aa)
            return d, d.sum(0)
        row("relu backward", size, np_relu_bwd,
            (lambda: N.act_backward(dA, Aa, _codes.RELU, 0.0, dZ, db, n_threads)))
        row("sigmoid backward", size, np_sig_bwd,
            (lambda: N.act_backward(dA, Aa, _codes.SIGMOID, 0.0, dZ, db, n_threads)))
        row("tanh backward", size, np_tanh_bwd,
            (lambda: N.act_backward(dA, Aa, _codes.TANH, 0.0, dZ, db, n_threads)))

        kshape = shape_of(size, 10)
        Zk = rng.standard_normal(kshape).astype(t)
        bk = np.zeros(kshape[1], t)
        Y = np.zeros(kshape, t)
        Y[np.arange(kshape[0]), rng.integers(0, kshape[1], kshape[0])] = 1
        Ak = np.empty_like(Zk)
        row("softmax+CE loss (m,10)", size, lambda: R.loss_forward(Zk, bk, Y, _codes.CCE, Ak, 1),
            (lambda: N.loss_forward(Zk, bk, Y, _codes.CCE, Ak, n_threads)))
        dZk = np.empty_like(Zk)
        dbk = np.empty(kshape[1], t)
        row("loss backward (m,10)", size, lambda: R.loss_backward(Ak, Y, dZk, dbk, 1),
            (lambda: N.loss_backward(Ak, Y, dZk, dbk, n_threads)))

        keep = 0.8
        gen = np.random.default_rng(1)
        key = _codes.dropout_key(1, 2, 3)
        thr = _codes.dropout_threshold(keep)

        def np_dropout():
            mask = gen.random(x.size) < keep
            return x * mask / keep
        row("dropout", size, np_dropout,
            (lambda: N.dropout_apply(x, key, thr, 1 / keep, o, n_threads)))

        w = rng.standard_normal(size).astype(t)
        g = rng.standard_normal(size).astype(t) * t(1e-3)
        m1 = np.zeros(size, t)
        v1 = np.zeros(size, t)
        state = {"t": 0}

        def np_adam_textbook():
            # the textbook update, m and v rebound to new arrays each step
            state["t"] += 1
            tt = state["t"]
            m = 0.9 * state.get("m", m1) + (1 - 0.9) * g
            v = 0.999 * state.get("v", v1) + (1 - 0.999) * g * g
            state["m"], state["v"] = m, v
            mhat = m / (1 - 0.9**tt)
            vhat = v / (1 - 0.999**tt)
            w_np[...] -= 1e-3 * mhat / (np.sqrt(vhat) + 1e-8)
        w_np = w.copy()
        row("adam", size, np_adam_textbook,
            (lambda: N.adam_update(w, g, m1, v1, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.0, 0, n_threads)))

        def np_rms():
            s = 0.9 * v1 + (1 - 0.9) * g * g
            return w - 1e-3 * g / (np.sqrt(s) + 1e-8)
        row("rmsprop", size, np_rms,
            (lambda: N.rmsprop_update(w, g, v1, 1e-3, 0.9, 1e-8, 0.0, 0, n_threads)))

        def np_mom():
            v = 0.9 * m1 + (1 - 0.9) * g
            return w - 1e-3 * v
        row("momentum", size, np_mom,
            (lambda: N.momentum_update(w, g, m1, 1e-3, 0.9, 1.0, 0.0, 0, n_threads)))
        row("gd", size, lambda: w - 1e-3 * g,
            (lambda: N.gd_update(w, g, 1e-3, 0.0, 0, n_threads)))

        gam = np.ones(shape[1], t)
        bet = np.zeros(shape[1], t)
        xh = np.empty_like(Z)
        mu, var, inv = (np.empty(shape[1], t) for _ in range(3))
        row("batchnorm forward train", size,
            lambda: R.batchnorm_forward_train(Z, gam, bet, 1e-5, xh, A, mu, var, inv, 1),
            (lambda: N.batchnorm_forward_train(Z, gam, bet, 1e-5, xh, A, mu, var, inv, n_threads)))
        row("batchnorm backward", size,
            lambda: R.batchnorm_backward(dA, xh, gam, inv, dZ, mu, var, 1),
            (lambda: N.batchnorm_backward(dA, xh, gam, inv, dZ, mu, var, n_threads)))
        print()


def thresholds(dtype=np.float32):
    """Serial against parallel (2 threads) around the thresholds, and subnormal optimiser state."""
    from fusednet.kernels import _numba_dense as D
    from fusednet.kernels import _numba_flat as F

    N.warmup((dtype,))
    rng = np.random.default_rng(0)
    for size in (2**13, 2**14, 2**15, 2**16, 2**17, 2**18):
        shape = shape_of(size, 128)
        m, n = shape
        Z = rng.standard_normal(shape).astype(dtype)
        b = np.zeros(n, dtype)
        A = np.empty_like(Z)
        dZ = np.empty_like(Z)
        db = np.empty(n, dtype)
        w, g, s1, s2 = (rng.random(size).astype(dtype) for _ in range(4))
        x = Z.reshape(-1)
        cases = {
            "relu fwd": (lambda: D.forward_block(Z, b, 3, 0.0, A, 0, m, 0, n),
                         lambda: D.bias_act_forward_parallel(Z, b, 3, 0.0, A, 2)),
            "tanh fwd": (lambda: D.forward_block(Z, b, 2, 0.0, A, 0, m, 0, n),
                         lambda: D.bias_act_forward_parallel(Z, b, 2, 0.0, A, 2)),
            "relu bwd": (lambda: D.backward_band(Z, A, 3, 0.0, dZ, db, 0, n),
                         lambda: D.act_backward_parallel(Z, A, 3, 0.0, dZ, db, 2)),
            "dropout": (lambda: F.dropout_span(x, 1, 2, 2**31, False, 2.0, x, 0, size),
                        lambda: F.dropout_parallel(x, 1, 2, 2**31, False, 2.0, x, 2)),
            "adam": (lambda: F.adam_span(w, g, s1, s2, 1e-9, 0.9, 0.999, 1e-8, 1.0, 1.0, 0.0, 0, 0, size),
                     lambda: F.adam_parallel(w, g, s1, s2, 1e-9, 0.9, 0.999, 1e-8, 1.0, 1.0, 0.0, 0, 2)),
            "ewa": (lambda: F.ewa_span(w, g, 0.9, 0, size), lambda: F.ewa_parallel(w, g, 0.9, 2)),
        }
        for name, (serial, par) in cases.items():
            ts, tp = medians_ms([serial, par], budget=1.0)
            print(f"{name:10s} {size:>7d} serial {ts * 1e3:8.1f} us  parallel {tp * 1e3:8.1f} us  x{ts / tp:5.2f}",
                  flush=True)
        print()
    # optimiser state that decays into subnormal numbers must not slow a step down
    size = 10**7
    w = np.ones(size, dtype)
    g = np.zeros(size, dtype)
    tiny = np.finfo(dtype).tiny
    for label, start in (("normal", 1e-3), ("subnormal", tiny / 8)):
        m0 = np.full(size, start, dtype)
        m, v = m0.copy(), m0.copy()

        def step():
            m[...] = m0
            v[...] = m0
            N.adam_update(w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.0, 0, 2)

        def copies():
            m[...] = m0
            v[...] = m0
        t_step, t_copy = medians_ms([step, copies], repeat=15)
        print(f"adam 1e7, state {label:9s}: {t_step - t_copy:7.2f} ms per step (state reset excluded)")


if __name__ == "__main__":
    dt = np.dtype(sys.argv[1] if len(sys.argv) > 1 else "float32").type
    if "thresholds" in sys.argv[2:]:
        thresholds(dt)
    else:
        main(dt)
