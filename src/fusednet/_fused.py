"""The trainer's one-call step: a whole mini-batch step of a Dense stack in compiled code.

For a model made of :class:`~fusednet.layers.Dense` layers, each hidden one
optionally followed by :class:`~fusednet.layers.BatchNorm`, an
:class:`~fusednet.layers.Activation` and :class:`~fusednet.layers.Dropout` (in
that order; a linear Dense before the first two), trained with
:class:`~fusednet.optim.GD`, ``Momentum``, ``RMSProp`` or ``Adam`` on the
Cython backend, in mini-batches of up to :func:`max_rows` rows, every step --
the row gather, forward (dropout masks included), loss, backward, the
finiteness checks and the optimiser update -- is one call of the extension's
``dense_step``; a shuffled epoch over a C-contiguous ``X`` of the model's dtype
is one call of ``dense_epoch`` (every step's learning rate asked of the
schedule first).  Each step runs in one OpenMP team that owns the cores; each
thread calls SciPy's BLAS (kept on one thread, see
:mod:`fusednet.kernels._blas`) on its share of every matrix product and then
runs the element-wise work on the block it has just written.  In float32 on
the AVX-512 copy of the extension the products run on its own kernels
(``kernels/_gemm.h``) instead, and the first layer reads a shuffled batch's
rows where they lie in ``X``.

The per-kernel path (``model._forward_train`` / ``_backward`` and
``optimizer.step``) stays the reference: both compute the same formulas from
the same kernels' point functions, and the tests hold them equal.  The step
walks plain data -- layer widths, activation codes, arena offsets, buffer
addresses -- that :meth:`Sequential.plan` also describes.

:func:`why_not` names the first reason a model and optimiser do not take the
fused step (an explicit non-Cython backend, layers in another order, ...).
"""

import numpy as np

from . import kernels as _kernels
from .kernels import _blas, _codes
from .kernels._codes import dropout_key, dropout_threshold

_MAX_LAYERS = 64

#: the largest mini-batch that takes the fused step when its products run on BLAS's sgemm
#: or dgemm.  Each thread's sgemm packs the whole batch for its share of a product; measured
#: on 2 cores (784-256-128-10, Adam, float32, epochs alternating in one process) the fused
#: epoch was 4-10 % faster than the per-kernel path at batch 64 and 128, 6 % slower at 256
#: and 5-11 % slower at 512, where NumPy's multi-threaded matmul splits the products better.
MAX_ROWS = 128
#: ... and when they run on the extension's own AVX-512 kernels (float32): measured the same
#: way, 1.13-1.40x the per-kernel path's speed at batch 64 to 512, 1.05x at 1024, 1.01x at
#: 2048.
MAX_ROWS_OWN = 1024


#: what a non-zero status of the compiled step names (fusednet.TrainingDiverged.what)
FAILED = {1: "cost", 2: "gradient", 3: "update", 4: "batch-norm statistics"}


def max_rows(dtype):
    """The largest mini-batch that takes the fused step for a model of this dtype."""
    ck = _cython()
    own = ck is not None and np.dtype(dtype) == np.float32 and ck.FUSED_GEMM
    return MAX_ROWS_OWN if own else MAX_ROWS


def _cython():
    return _kernels._load("cython")


def why_not(model, optimizer):
    """None when ``model`` and ``optimizer`` take the fused step, else the reason (a string)."""
    from .model import _ActivationNode, _BatchNormNode, _DenseNode, _DropoutNode
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
    # after each hidden Dense: [BatchNorm] [Activation] [Dropout], in that order
    order = {_BatchNormNode: 1, _ActivationNode: 2, _DropoutNode: 3}
    dense = None
    stage = 0
    for node in nodes:
        if isinstance(node, _DenseNode):
            if node.act == _codes.SOFTMAX and not node.is_output:
                return f"hidden layer {node.name} has a softmax activation"
            dense, stage = node, 0
            continue
        kind = type(node)
        if kind not in order:
            return f"layer {node.name} is not Dense, BatchNorm, Activation or Dropout"
        if dense is None or node.is_output or order[kind] <= stage:
            return f"layer {node.name} does not follow a hidden Dense layer in the order Dense, BatchNorm, Activation, Dropout"
        if kind is not _DropoutNode and (dense.act != _codes.LINEAR or stage > 0 and kind is _BatchNormNode):
            return f"layer {node.name} follows a Dense layer with an activation of its own"
        if kind is _ActivationNode and node.act == _codes.SOFTMAX:
            return f"hidden layer {node.name} has a softmax activation"
        stage = order[kind]
    if not isinstance(nodes[-1], _DenseNode):
        return f"the output layer {nodes[-1].name} is not Dense"
    return None


class FusedStep:
    """One compiled step (or epoch) for a built ``model`` that :func:`why_not` accepts."""

    def __init__(self, model, optimizer, workspace, n_threads):
        from .model import _ActivationNode, _BatchNormNode, _DenseNode

        P = model._params
        isz = P.itemsize
        base = P.ctypes.data

        def off(view):
            return (view.ctypes.data - base) // isz

        # each Dense layer with the nodes after it: {"bn": (i, node), "act": ..., "drop": ...}
        dense, blocks = [], []
        for i, node in enumerate(model._nodes):
            if isinstance(node, _DenseNode):
                dense.append((i, node))
                blocks.append({})
            elif isinstance(node, _BatchNormNode):
                blocks[-1]["bn"] = (i, node)
            elif isinstance(node, _ActivationNode):
                blocks[-1]["act"] = (i, node)
            elif node.keep_prob < 1.0:
                blocks[-1]["drop"] = (i, node)
        rows, slopes = [], []
        for (_, node), blk in zip(dense, blocks):
            d, bn, an = blk.get("drop"), blk.get("bn"), blk.get("act")
            act, slope = (an[1].act, an[1].slope) if an else (node.act, node.slope)
            rows.append(
                (node.n_in, node.n_out, act, off(node.W), off(node.b) if node.use_bias else -1,
                 -1 if d is None else d[1].index, 0 if d is None else dropout_threshold(d[1].keep_prob),
                 1 if bn else 0, off(bn[1].gamma) if bn else -1, off(bn[1].beta) if bn else -1,
                 1 if an else 0, 0)
            )
            slopes.append((slope, 1.0 if d is None else 1.0 / d[1].keep_prob,
                           bn[1].eps if bn else 0.0, bn[1].momentum if bn else 0.0))
        self.layers = np.array(rows, dtype=np.intp)
        self.slopes = np.array(slopes, dtype=np.float64)
        self.blocks = blocks
        self.drops = [blk.get("drop") for blk in blocks]
        self.dropout = any(d is not None for d in self.drops)
        self.seed = model.seed
        self.keys = np.zeros(len(dense), np.uint64)
        self._dense_pos = [i for i, _ in dense]
        self.model = model
        self.opt = optimizer
        self.ws = workspace
        self.loss = model._loss
        self.gemm = _blas.gemm_address(model.dtype)
        self.n_threads = int(n_threads)
        self.out = np.zeros(2, np.float64)
        # upper bounds of |w|, |state 1|, |state 2| carried from step to step (inf: read them off the arenas)
        self.bound = np.full(3, np.inf)
        self.no_rows = np.empty(0, np.intp)
        dummy = np.zeros((1, 1), model.dtype)
        self.dummy = dummy
        self._bufs = {}
        dt = "float" if model.dtype == np.float32 else "double"
        self.kernel = _cython()._ck.dense_step[dt]
        self.epoch_kernel = _cython()._ck.dense_epoch[dt]

    def bufs(self, v):
        """The address table of the workspace views ``v`` (cached by row count)."""
        table = self._bufs.get(v.n)
        if table is None:
            nv = v.nodes

            def at(x):
                return 0 if x is None else x.ctypes.data

            def views(key, attr):  # a workspace view of the node after each Dense, or none
                return [at(getattr(nv[blk[key][0]], attr)) if key in blk else 0 for blk in self.blocks]

            def stats(name):  # a batch-norm node's own buffer (statistics), or none
                return [at(getattr(blk["bn"][1], name)) if "bn" in blk else 0 for blk in self.blocks]

            addr = [at(nv[i].Z) for i in self._dense_pos]
            addr += views("drop", "A") + views("bn", "xhat") + views("bn", "A") + views("act", "A")
            for name in ("mean", "var", "invstd", "running_mean", "running_var"):
                addr += stats(name)
            addr += [at(nv[-1].A), at(self.ws.delta[0]), at(self.ws.delta[1]),
                     at(self.model._zeros), at(self.model._scratch)]
            table = self._bufs[v.n] = np.array(addr, dtype=np.uintp)
        return table

    def __call__(self, v, Xb, Yb, X, Y, idx, lr, epoch=0, step=0):
        """One step on the batch ``Xb``, ``Yb``; with ``idx``, gathered first from ``X[idx]``, ``Y[idx]``.

        Returns ``(status, cost)``: status 0 when the update was applied, else the
        key of :data:`FAILED` that stopped it (nothing updated then).
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
            self.n_threads, self.bound,
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
        bias_correction = (2 if kind == _codes.OPT_ADAM else
                           1 if kind == _codes.OPT_MOMENTUM and getattr(opt, "bias_correction", False) else 0)
        steps, status, cost = self.epoch_kernel(
            P, G, s1, s2, self.layers, self.slopes, self.bufs(v), v.X, v.Y, X, Y, perm, lrs, self.loss,
            model._l2, kind, b1, b2, eps, bias_correction, opt._t, model._n_decay, self.gemm,
            dropout_key(self.seed, epoch), costs, pred,  # the kernel folds in step and layer
            self.n_threads, self.bound,
        )
        opt._t += steps
        return steps, status, cost
