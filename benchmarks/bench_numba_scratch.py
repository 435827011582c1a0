"""Scratch timings of the Numba kernels against textbook NumPy (not a pytest suite).

Run: ``python benchmarks/bench_numba_scratch.py [float32|float64]``.  Prints the
median of several runs in milliseconds and the speed-up over NumPy.
"""

import sys
import time

import numpy as np

from fusednet.kernels import _codes
from fusednet.kernels import _numba as N
from fusednet.kernels import reference as R


def median_ms(fn, repeat=None, budget=0.4):
    fn()
    t = time.perf_counter()
    fn()
    once = time.perf_counter() - t
    repeat = repeat or int(min(200, max(5, budget / max(once, 1e-7))))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def row(name, size, t_np, t_nb):
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
        row("relu forward", size, median_ms(lambda: np.maximum(Z + b, 0)),
            median_ms(lambda: N.bias_act_forward(Z, b, _codes.RELU, 0.0, A, n_threads)))
        row("tanh forward (ufunc)", size, median_ms(lambda: np.tanh(x, out=o)),
            median_ms(lambda: N.bias_act_forward(Z, b, _codes.TANH, 0.0, A, n_threads)))

        def np_sigmoid():
            np.negative(x, out=o)
            np.exp(o, out=o)
            np.add(o, 1, out=o)
            np.divide(1, o, out=o)
        row("sigmoid forward (ufuncs)", size, median_ms(np_sigmoid),
            median_ms(lambda: N.bias_act_forward(Z, b, _codes.SIGMOID, 0.0, A, n_threads)))
        row("softmax forward", size, median_ms(lambda: R.bias_act_forward(Z, b, _codes.SOFTMAX, 0.0, A, 1)),
            median_ms(lambda: N.bias_act_forward(Z, b, _codes.SOFTMAX, 0.0, A, n_threads)))

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
        row("relu backward", size, median_ms(np_relu_bwd),
            median_ms(lambda: N.act_backward(dA, Aa, _codes.RELU, 0.0, dZ, db, n_threads)))
        row("sigmoid backward", size, median_ms(np_sig_bwd),
            median_ms(lambda: N.act_backward(dA, Aa, _codes.SIGMOID, 0.0, dZ, db, n_threads)))
        row("tanh backward", size, median_ms(np_tanh_bwd),
            median_ms(lambda: N.act_backward(dA, Aa, _codes.TANH, 0.0, dZ, db, n_threads)))

        kshape = shape_of(size, 10)
        Zk = rng.standard_normal(kshape).astype(t)
        bk = np.zeros(kshape[1], t)
        Y = np.zeros(kshape, t)
        Y[np.arange(kshape[0]), rng.integers(0, kshape[1], kshape[0])] = 1
        Ak = np.empty_like(Zk)
        row("softmax+CE loss (m,10)", size, median_ms(lambda: R.loss_forward(Zk, bk, Y, _codes.CCE, Ak, 1)),
            median_ms(lambda: N.loss_forward(Zk, bk, Y, _codes.CCE, Ak, n_threads)))
        dZk = np.empty_like(Zk)
        dbk = np.empty(kshape[1], t)
        row("loss backward (m,10)", size, median_ms(lambda: R.loss_backward(Ak, Y, dZk, dbk, 1)),
            median_ms(lambda: N.loss_backward(Ak, Y, dZk, dbk, n_threads)))

        keep = 0.8
        gen = np.random.default_rng(1)
        key = _codes.dropout_key(1, 2, 3)
        thr = _codes.dropout_threshold(keep)

        def np_dropout():
            mask = gen.random(x.size) < keep
            return x * mask / keep
        row("dropout", size, median_ms(np_dropout),
            median_ms(lambda: N.dropout_apply(x, key, thr, 1 / keep, o, n_threads)))

        w = rng.standard_normal(size).astype(t)
        g = rng.standard_normal(size).astype(t) * t(1e-3)
        m1 = np.zeros(size, t)
        v1 = np.zeros(size, t)
        state = {"t": 0}

        def np_adam():
            state["t"] += 1
            tt = state["t"]
            m2 = 0.9 * m1 + (1 - 0.9) * g
            v2 = 0.999 * v1 + (1 - 0.999) * g * g
            mhat = m2 / (1 - 0.9**tt)
            vhat = v2 / (1 - 0.999**tt)
            m1[...] = m2
            v1[...] = v2
            w2 = w - 1e-3 * mhat / (np.sqrt(vhat) + 1e-8)
            w[...] = w2

        def np_adam_textbook():
            # the textbook form rebinds names (no copies back)
            state["t"] += 1
            tt = state["t"]
            m = 0.9 * m1 + (1 - 0.9) * g
            v = 0.999 * v1 + (1 - 0.999) * g * g
            mhat = m / (1 - 0.9**tt)
            vhat = v / (1 - 0.999**tt)
            return w - 1e-3 * mhat / (np.sqrt(vhat) + 1e-8)
        row("adam", size, median_ms(np_adam_textbook),
            median_ms(lambda: N.adam_update(w, g, m1, v1, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.0, 0, n_threads)))

        def np_rms():
            s = 0.9 * v1 + (1 - 0.9) * g * g
            return w - 1e-3 * g / (np.sqrt(s) + 1e-8)
        row("rmsprop", size, median_ms(np_rms),
            median_ms(lambda: N.rmsprop_update(w, g, v1, 1e-3, 0.9, 1e-8, 0.0, 0, n_threads)))

        def np_mom():
            v = 0.9 * m1 + (1 - 0.9) * g
            return w - 1e-3 * v
        row("momentum", size, median_ms(np_mom),
            median_ms(lambda: N.momentum_update(w, g, m1, 1e-3, 0.9, 1.0, 0.0, 0, n_threads)))
        row("gd", size, median_ms(lambda: w - 1e-3 * g),
            median_ms(lambda: N.gd_update(w, g, 1e-3, 0.0, 0, n_threads)))

        gam = np.ones(shape[1], t)
        bet = np.zeros(shape[1], t)
        xh = np.empty_like(Z)
        mu, var, inv = (np.empty(shape[1], t) for _ in range(3))
        row("batchnorm forward train", size,
            median_ms(lambda: R.batchnorm_forward_train(Z, gam, bet, 1e-5, xh, A, mu, var, inv, 1)),
            median_ms(lambda: N.batchnorm_forward_train(Z, gam, bet, 1e-5, xh, A, mu, var, inv, n_threads)))
        row("batchnorm backward", size,
            median_ms(lambda: R.batchnorm_backward(dA, xh, gam, inv, dZ, mu, var, 1)),
            median_ms(lambda: N.batchnorm_backward(dA, xh, gam, inv, dZ, mu, var, n_threads)))
        print()


if __name__ == "__main__":
    main(np.dtype(sys.argv[1] if len(sys.argv) > 1 else "float32").type)
