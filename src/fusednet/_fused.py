"""The trainer's one-call step: a whole mini-batch step of a Dense stack in compiled code.

For a model made of :class:`~fusednet.layers.Dense` layers, each hidden one
optionally followed by a :class:`~fusednet.layers.Dropout`, trained with
:class:`~fusednet.optim.GD`, ``Momentum``, ``RMSProp`` or ``Adam`` on the
Cython backend, in mini-batches of up to :data:`MAX_ROWS` rows, every step --
the row gather, forward (dropout masks included), loss, backward, the
finiteness checks and the optimiser update -- is one call of the extension's
``dense_step``; a shuffled epoch over a C-contiguous ``X`` of the model's dtype
is one call of ``dense_epoch`` (every step's learning rate asked of the
schedule first).  Each step runs in one OpenMP team that owns the cores; each
thread calls SciPy's BLAS (kept on one thread, see
:mod:`fusednet.kernels._blas`) on its share of every matrix product and then
runs the element-wise work on the block it has just written.

The per-kernel path (``model._forward_train`` / ``_backward`` and
``optimizer.step``) stays the reference: both compute the same formulas from
the same kernels' point functions, and the tests hold them equal.  The step
walks plain data -- layer widths, activation codes, arena offsets, buffer
addresses -- that :meth:`Sequential.plan` also describes.

:func:`why_not` names the first reason a model and optimiser do not take the
fused step (batch norm, an explicit non-Cython backend, ...).
"""

import numpy as np

from . import kernels as _kernels
from .kernels import _blas, _codes
from .kernels._codes import _splitmix64, dropout_key, dropout_threshold

_MAX_LAYERS = 64
_MASK64 = (1 << 64) - 1

#: the largest mini-batch that takes the fused step.  Each thread packs the whole batch for
#: its share of a product; measured on 2 cores (784-256-128-10, Adam, float32, epochs
#: alternating in one process) the fused epoch is 4-10 % faster than the per-kernel path at
#: batch 64 and 128, 6 % slower at 256 and 5-11 % slower at 512, where NumPy's multi-threaded
#: matmul splits the products better.
MAX_ROWS = 128


def _cython():
    return _kernels._load("cython")


def why_not(model, optimizer):
    """None when ``model`` and ``optimizer`` take the fused step, else the reason (a string)."""
    from .model import _DenseNode, _DropoutNode
    from .optim import Optimizer

    if not _blas.AVAILABLE:
        return _blas.STATUS
    if _cython() is None:
        return "the Cython extension is not built"
    backend = _kernels.get_backend()
    if backend not in ("auto", "cython"):
        return f"the kernel backend is {backend!r}"
    if optimizer.backend not in (None, "cython"):
        return f"the optimiser's backend is {optimizer.backend!r}"
    if type(optimizer)._fused_hypers is Optimizer._fused_hypers:
        return f"{type(optimizer).__name__} has no fused update"
    nodes = model._nodes
    if len(nodes) > 2 * _MAX_LAYERS:
        return f"more than {_MAX_LAYERS} Dense layers"
    prev = None
    for node in nodes:
        if isinstance(node, _DropoutNode):
            if not isinstance(prev, _DenseNode) or node.is_output:
                return f"layer {node.name} is a Dropout that does not follow a hidden Dense layer"
        elif not isinstance(node, _DenseNode):
            return f"layer {node.name} is not Dense or Dropout"
        elif not node.is_output and node.act == _codes.SOFTMAX:
            return f"hidden layer {node.name} has a softmax activation"
        prev = node
    return None


class FusedStep:
    """One compiled step (or epoch) for a built ``model`` of Dense and Dropout layers."""

    def __init__(self, model, optimizer, workspace, n_threads):
        from .model import _DenseNode

        P = model._params
        isz = P.itemsize
        base = P.ctypes.data

        def off(view):
            return (view.ctypes.data - base) // isz

        # each Dense layer, and the Dropout node (keep_prob < 1) right after it, if any
        dense, drops = [], []
        for i, node in enumerate(model._nodes):
            if isinstance(node, _DenseNode):
                dense.append(node)
                drops.append(None)
            elif node.keep_prob < 1.0:
                drops[-1] = (i, node)
        rows, slopes = [], []
        for node, d in zip(dense, drops):
            rows.append(
                (node.n_in, node.n_out, node.act, off(node.W), off(node.b) if node.use_bias else -1,
                 -1 if d is None else d[1].index, 0 if d is None else dropout_threshold(d[1].keep_prob))
            )
            slopes.append((node.slope, 1.0 if d is None else 1.0 / d[1].keep_prob))
        self.layers = np.array(rows, dtype=np.intp)
        self.slopes = np.array(slopes, dtype=np.float64)
        self.drops = drops
        self.dropout = any(d is not None for d in drops)
        self.seed = model.seed
        self.keys = np.zeros(len(dense), np.uint64)
        self._dense_pos = [model._nodes.index(node) for node in dense]
        self.model = model
        self.opt = optimizer
        self.ws = workspace
        self.loss = model._loss
        self.gemm = _blas.gemm_address(model.dtype)
        self.n_threads = int(n_threads)
        self.out = np.zeros(2, np.float64)
        self.no_rows = np.empty(0, np.intp)
        dummy = np.zeros((1, 1), model.dtype)
        self.dummy = dummy
        self._bufs = {}
        dt = "float" if model.dtype == np.float32 else "double"
        self.kernel = _cython()._ck.dense_step[dt]
        self.epoch_kernel = _cython()._ck.dense_epoch[dt]

    def bufs(self, v):
        """The address table of the workspace views ``v`` (cached by row count)."""
        b = self._bufs.get(v.n)
        if b is None:
            nv = v.nodes
            ws = self.ws
            addr = [nv[i].Z.ctypes.data for i in self._dense_pos]
            addr += [0 if d is None else nv[d[0]].A.ctypes.data for d in self.drops]
            addr += [nv[-1].A.ctypes.data, ws.delta[0].ctypes.data, ws.delta[1].ctypes.data,
                     self.model._zeros.ctypes.data, self.model._scratch.ctypes.data]
            b = self._bufs[v.n] = np.array(addr, dtype=np.uintp)
        return b

    def __call__(self, v, Xb, Yb, X, Y, idx, lr, epoch=0, step=0):
        """One step on the batch ``Xb``, ``Yb``; with ``idx``, gathered first from ``X[idx]``, ``Y[idx]``.

        Returns ``(status, cost)``: status 0 when the update was applied, 1 when
        the cost and 2 when the gradient was not finite (nothing updated then).
        """
        model, opt = self.model, self.opt
        P, G = model._params, model._grads
        kind, b1, b2, eps, bc1, bc2, s1, s2 = opt._fused(P, G)
        if idx is None:
            X = Y = self.dummy
            idx = self.no_rows
        if self.dropout:
            for l, d in enumerate(self.drops):
                if d is not None:
                    self.keys[l] = dropout_key(self.seed, epoch, step, d[1].index)
        status = self.kernel(
            P, G, s1, s2, self.layers, self.slopes, self.bufs(v), self.keys, Xb, Yb, X, Y, idx, self.loss,
            model._l2, kind, lr, b1, b2, eps, bc1, bc2, model._n_decay, self.gemm, self.out,
            self.n_threads,
        )
        if status == 0:
            opt._t += 1
        return status, self.out[0]

    def epoch(self, v, X, Y, perm, lrs, costs, pred, epoch=0):
        """Every step of an epoch in one call: batches of ``v.n`` rows of ``X[perm]``, ``Y[perm]``.

        ``lrs`` holds each step's learning rate; ``costs`` receives each step's cost and ``pred``
        (intp, one per row, or empty) the predicted class (softmax) or ``A > 0.5`` (one sigmoid).
        Returns ``(steps, status, cost)``: the steps applied (``_t`` has moved by as many), and when
        that is not all of them, the status (as :meth:`__call__`) and cost of the step that stopped.
        """
        model, opt = self.model, self.opt
        P, G = model._params, model._grads
        kind, b1, b2, eps, _, _, s1, s2 = opt._fused(P, G)
        bias_correction = 2 if kind == 3 else (1 if kind == 1 and getattr(opt, "bias_correction", False) else 0)
        steps, status, cost = self.epoch_kernel(
            P, G, s1, s2, self.layers, self.slopes, self.bufs(v), v.X, v.Y, X, Y, perm, lrs, self.loss,
            model._l2, kind, b1, b2, eps, bias_correction, opt._t, model._n_decay, self.gemm,
            _splitmix64(_splitmix64(int(self.seed) & _MASK64) ^ epoch), costs, pred,
            self.n_threads,
        )
        opt._t += steps
        return steps, status, cost
