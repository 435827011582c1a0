"""The model as the training engine sees it: :class:`Network`, the base of :class:`~fusednet.model.Sequential`.

:class:`Network` owns the built state -- the nodes, the arenas and their
views, the cached kernels and workspaces -- and the passes over them, and it
is the one internal interface of the model: the trainer, the compiled step
(:mod:`fusednet._fused`), the gradient check, the callbacks and
:func:`fusednet._fit.fit` use the members listed in the package docstring
(:mod:`fusednet.model`) and nothing else.  The passes check nothing and
allocate nothing: input is checked once per call or per fit by
:meth:`Network._check_X` and :meth:`Network._targets`.
"""

import contextlib
import threading

import numpy as np

from .. import kernels as _kernels
from ..kernels import _codes
from ..layers import BatchNorm, Dense, Dropout
from . import _inputs
from ._inputs import as_2d, encode_targets, n_correct
from ._layout import Arenas, init_weights
from ._nodes import _BatchNormNode, _Kernels, _Workspace, make_nodes, need_din

__all__ = ["INFER_CHUNK", "Network"]

#: rows per chunk for inference (forward, predict, evaluate)
INFER_CHUNK = 4096


class Network:
    """Layers over flat arenas, with workspaces and the training and inference passes.

    Built once for ``input_dim`` features by :meth:`build`; before that only
    ``layers``, ``dtype``, ``seed``, ``_loss`` and ``_l2`` exist.  The
    constructor takes checked arguments (``loss`` is the code the output
    activation implies, ``rng`` the generator that draws the initial weights,
    or None to draw them from ``seed``).
    """

    def __init__(self, layers, loss, l2, dtype, seed, rng):
        self.layers = list(layers)
        self._loss = loss
        self._l2 = l2
        self.dtype = dtype
        self.seed = seed
        self._rng = rng
        self.input_dim = None
        self._nodes = None
        self._layout_key = None
        self._infer_ws = None
        self._infer_lock = threading.Lock()
        self._train_ws = None
        self._K = None
        self._normalizer = None

    @property
    def built(self):
        """Whether the arenas exist (``input_dim`` known)."""
        return self._nodes is not None

    def _widths(self, n_in):
        widths = [n_in]
        for layer in self.layers:
            widths.append(layer.units if isinstance(layer, Dense) else widths[-1])
        return widths[1:]

    def _has_bn(self):
        return any(isinstance(layer, BatchNorm) for layer in self.layers)

    def _has_dropout(self):
        """Whether a Dropout layer drops anything (a keep_prob below 1) in training."""
        return any(isinstance(layer, Dropout) and layer.keep_prob < 1.0 for layer in self.layers)

    def _batch_stats(self):
        """``[(mean, var)]`` of each BatchNorm's last training batch, in layer order (views)."""
        return [(node.mean, node.var) for node in self._bn_nodes]

    # ---- building, kernels, workspaces --------------------------------------------

    def build(self, input_dim):
        """Lay out the arenas and draw the initial weights (once).

        Parameters
        ----------
        input_dim : int
            ``n_features``.
        """
        if self._nodes is not None:
            if input_dim != self.input_dim:
                raise ValueError(f"the model is built for {self.input_dim} features, not {input_dim}")
            return self
        _inputs.check_softmax_width(self._loss, self._widths(input_dim)[-1])
        nodes = make_nodes(self.layers, input_dim, self.dtype, self._loss, self.seed)
        a = self._arenas = Arenas(nodes, self.dtype)
        self._params, self._grads, self._stats = a.params, a.grads, a.stats
        self._zeros, self._scratch, self._n_decay, self._wseg = a.zeros, a.scratch, a.n_decay, a.wseg
        self._names, self._buffer_names = a.names, a.buffer_names
        self._need_din = need_din(nodes)
        self._first_param = next((i for i, n in enumerate(nodes) if n.has_params), len(nodes))
        self._nodes = nodes
        self._hidden = nodes[:-1]
        self._bn_nodes = [n for n in nodes if isinstance(n, _BatchNormNode)]
        self.input_dim = int(input_dim)
        self._layout_key = object()
        init_weights(nodes, self._rng if self._rng is not None else np.random.default_rng(self.seed))
        return self

    def _kernels(self, backend=None):
        """The :class:`~fusednet.model._nodes._Kernels` of ``backend`` (default: the current choice), cached."""
        K = self._K
        key = (backend or _kernels.get_backend(), _kernels.get_num_threads())
        if K is None or K.key != key:
            K = self._K = _Kernels(backend)
        return K

    def _workspace(self, n, train):
        """The cached training or inference :class:`~fusednet.model._nodes._Workspace` for ``n`` rows."""
        attr = "_train_ws" if train else "_infer_ws"
        ws = getattr(self, attr)
        if ws is None or ws.capacity < n or ws.key is not self._layout_key:
            ws = _Workspace(self, n, train)
            setattr(self, attr, ws)
        return ws

    @contextlib.contextmanager
    def _inference_workspace(self, n):
        """An inference workspace for ``n`` rows that no other thread is using.

        The model's cached workspace when it is free (the serial case: no
        allocation); a private one for a call that finds it taken by another
        thread, so threads sharing a model never write into each other's buffers.
        """
        lock = self._infer_lock
        if lock.acquire(blocking=False):
            try:
                yield self._workspace(n, train=False)
            finally:
                lock.release()
        else:
            yield _Workspace(self, n, train=False)

    def _step_buffers(self, v, blocks):
        """The buffers of the compiled step by name, for the training workspace views ``v``.

        ``blocks`` groups the layers as :func:`fusednet._fused.layer_table` does: per Dense
        layer, the positions of its node (``"dense"``) and of the BatchNorm (``"bn"``),
        Activation (``"act"``) and Dropout (``"drop"``) after it.  Per-layer entries are
        lists with None where a Dense layer has no such node.
        """
        nv, nodes = v.nodes, self._nodes
        ws = self._workspace(v.n, train=True)

        def each(key, get):
            return [get(blk[key]) if key in blk else None for blk in blocks]

        buffers = {
            "Z": [nv[blk["dense"]].Z for blk in blocks],
            "Dr": each("drop", lambda i: nv[i].A),
            "xhat": each("bn", lambda i: nv[i].xhat),
            "Bo": each("bn", lambda i: nv[i].A),
            "Ao": each("act", lambda i: nv[i].A),
            "A": nv[-1].A, "D0": ws.delta[0], "D1": ws.delta[1],
            "zeros": self._zeros, "scratch": self._scratch, "X": v.X, "Y": v.Y,
        }
        for name, attr in (("mean", "mean"), ("var", "var"), ("invstd", "invstd"), ("rmean", "running_mean"),
                           ("rvar", "running_var")):
            buffers[name] = each("bn", lambda i, attr=attr: getattr(nodes[i], attr))
        return buffers

    # ---- the passes (no checks, no allocation) --------------------------------

    def _forward_train(self, v, K, X, Y, ctx):
        """Training forward on a batch; returns the batch cost J (L2 included).

        ``ctx`` is ``(epoch, step)`` for dropout, or None for dropout off.
        """
        ins = v.ins
        nvs = v.nodes
        A = X
        i = 0
        for node in self._hidden:
            ins[i] = A
            A = node.fwd_train(A, nvs[i], K, ctx)
            i += 1
        ins[i] = A
        cost = self._nodes[i].fwd_loss(A, nvs[i], K, Y)
        if self._l2:
            w = self._wseg
            cost += self._l2 / (2.0 * v.n) * float(np.dot(w, w))
        return cost

    def _backward(self, v, K, Y):
        """Backward after :meth:`_forward_train`: fills the gradient arena (no L2 term)."""
        ins = v.ins
        nvs = v.nodes
        nodes = self._nodes
        i = len(nodes) - 1
        nodes[i].bwd_loss(ins[i], nvs[i], K, Y)
        stop = self._first_param
        i -= 1
        while i >= stop:
            nodes[i].bwd(ins[i], nvs[i], K)
            i -= 1

    def _update_running(self, K):
        """Fold the last training batch's statistics into the BatchNorm running averages."""
        for node in self._bn_nodes:
            node.update_running(K)

    def _forward_infer(self, v, K, X):
        """Inference forward up to the output node's input."""
        nvs = v.nodes
        A = X
        i = 0
        for node in self._hidden:
            A = node.fwd_infer(A, nvs[i], K, None)
            i += 1
        return A

    # ---- input conversion ---------------------------------------------------------

    def _check_X(self, X, name="X"):
        """Validate ``X`` (2-D, numeric, finite, the model's width) and apply the normaliser; builds nothing."""
        X = as_2d(X, name)
        if self._nodes is not None:
            _inputs.check_n_features(X, name, self.input_dim)
        else:
            _inputs.check_softmax_width(self._loss, self._widths(X.shape[1])[-1])
        return _inputs.finite_and_normalized(X, name, self.dtype, self._normalizer)

    def _targets(self, y, m, name="y", n_in=None):
        """Labels -> (Y (m, k) in the model's dtype, class ids (m,) or None); see :func:`encode_targets`.

        ``n_in`` gives the width of ``X`` while the model is not built.
        """
        k = self._nodes[-1].n_out if self._nodes is not None else self._widths(n_in)[-1]
        return encode_targets(y, m, k, self._loss, self.dtype, name)

    def _whole_batch(self, X, y):
        """``X`` and ``y`` checked as one training batch (dropout off); builds the model for ``X``."""
        X = self._check_X(X)
        m = X.shape[0]
        Y, _ = self._targets(y, m, "y", n_in=X.shape[1])
        if self._has_bn() and m < 2:
            raise ValueError("X has one row: BatchNorm needs at least 2 examples in a training batch")
        self.build(X.shape[1])
        return X, Y

    def _chunk(self, X, s, e, v):
        """Rows ``s:e`` of ``X`` as a C-contiguous array of the model's dtype (view if possible)."""
        Xc = X[s:e]
        if Xc.dtype == self.dtype and Xc.flags.c_contiguous:
            return Xc
        np.copyto(v.X, Xc, casting="unsafe")
        return v.X

    # ---- whole-set passes on checked input ----------------------------------------

    def _infer(self, X):
        """Output activations of checked ``X``, in chunks of :data:`INFER_CHUNK` rows."""
        m = X.shape[0]
        K = self._kernels()
        last = self._nodes[-1]
        out = np.empty((m, last.n_out), self.dtype)
        with self._inference_workspace(min(m, INFER_CHUNK)) as ws:
            for s in range(0, m, ws.capacity):
                e = min(m, s + ws.capacity)
                v = ws.views(e - s)
                A = self._forward_infer(v, K, self._chunk(X, s, e, v))
                last.fwd_out(A, v.nodes[-1], K, out[s:e])
        return out

    def _evaluate(self, X, Y, ids):
        """``{"loss": J, "accuracy": a}`` of checked ``X`` and encoded ``Y``/``ids``, in inference mode."""
        m = X.shape[0]
        K = self._kernels()
        last = self._nodes[-1]
        total = 0.0
        correct = 0
        with self._inference_workspace(min(m, INFER_CHUNK)) as ws:
            for s in range(0, m, ws.capacity):
                e = min(m, s + ws.capacity)
                v = ws.views(e - s)
                A = self._forward_infer(v, K, self._chunk(X, s, e, v))
                Yc = Y[s:e]
                total += last.fwd_loss(A, v.nodes[-1], K, Yc) * (e - s)
                if self._loss != _codes.MSE:
                    correct += n_correct(self._loss, v.out, Yc, None if ids is None else ids[s:e])
        J = total / m
        if self._l2:
            J += self._l2 / (2.0 * m) * float(np.dot(self._wseg, self._wseg))
        result = {"loss": float(J)}
        if self._loss != _codes.MSE:
            result["accuracy"] = correct / (m * (1 if ids is not None else Y.shape[1]))
        return result

    def _cost_of(self, X, y):
        """A function of no arguments giving the cost of ``loss_and_grads`` on ``X``, forward only.

        ``X`` and ``y`` are checked and converted once; each call reads the
        parameters as they are then (gradient checking's course loop).
        """
        X, Y = self._whole_batch(X, y)
        m = X.shape[0]
        Xb = np.ascontiguousarray(X, self.dtype)

        def cost():
            K = self._kernels()
            v = self._workspace(m, train=True).views(m)
            return float(self._forward_train(v, K, Xb, Y, None))

        return cost
