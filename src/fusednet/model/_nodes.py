"""Nodes and workspaces: the layers of a built model with their passes, and the buffers they run in.

A *node* is one layer spec bound to its views of the arenas
(:mod:`fusednet.model._layout` binds ``W``, ``b``, ``gamma``, ...) with its
forward and backward passes, each a BLAS product and/or kernel calls on
buffers it is given.  A :class:`_Workspace` holds the activation and delta
buffers of every node for up to ``capacity`` rows, allocated once per batch
capacity; :meth:`_Workspace.views` hands out, once per batch size and cached,
the :class:`_Views` a step on ``n`` rows touches.

Passes never check, allocate or branch on the backend: :class:`_Kernels`
resolves the raw kernels of the current backend choice once, and every call
takes its thread count ``K.nt``.
"""

import numpy as np

from .. import kernels as _kernels
from ..kernels import _codes, dropout_key, dropout_threshold
from ..kernels._memory import empty_aligned
from ..layers import Activation, BatchNorm, Dense, Dropout

__all__ = ["make_nodes", "need_din"]


class _Kernels:
    """The raw kernels of the current backend choice, plus the thread count."""

    __slots__ = _kernels.KERNELS + ("nt", "key")

    def __init__(self, backend=None):
        for name in _kernels.KERNELS:
            setattr(self, name, _kernels.resolve(name, backend))
        self.nt = _kernels.get_num_threads()
        self.key = (backend or _kernels.get_backend(), self.nt)


# --------------------------------------------------------------------------
# nodes: a layer spec bound to its arena views, with its forward/backward
# --------------------------------------------------------------------------


class _NodeViews:
    """Per-node views of one workspace for a batch of ``n`` rows."""

    __slots__ = ("A", "Z", "din", "dout", "xhat")

    def __init__(self):
        self.Z = self.A = self.xhat = self.dout = self.din = None


class _Node:
    """Base of the nodes: layer ``index`` of the model, ``n_in`` to ``n_out`` units, in ``dtype``.

    ``name`` (``"dense_0"``, ...), ``is_output`` and, for the output node,
    ``loss`` are set by :func:`make_nodes`.
    """

    has_params = False
    is_output = False

    def __init__(self, layer, index, n_in, dtype):
        self.layer = layer
        self.index = index
        self.n_in = n_in
        self.n_out = n_in
        self.dtype = dtype

    def alloc(self, cap, train):
        return {}

    def views(self, bufs, n):
        return _NodeViews()

    def update_running(self, K):
        pass


class _DenseNode(_Node):
    has_params = True

    def __init__(self, layer, index, n_in, dtype):
        super().__init__(layer, index, n_in, dtype)
        self.n_out = layer.units
        self.act = layer.act
        self.slope = layer.leaky_slope
        self.use_bias = layer.use_bias
        self.W = self.WT = self.b = self.dW = self.db = None

    def alloc(self, cap, train):
        bufs = {"Z": empty_aligned(cap * self.n_out, self.dtype)}
        if self.is_output:
            bufs["A"] = empty_aligned(cap * self.n_out, self.dtype)
        return bufs

    def views(self, bufs, n):
        v = _NodeViews()
        v.Z = bufs["Z"][: n * self.n_out].reshape(n, self.n_out)
        v.A = bufs["A"][: n * self.n_out].reshape(n, self.n_out) if self.is_output else v.Z
        return v

    def fwd_train(self, A_in, v, K, ctx):
        Z = v.Z
        np.dot(A_in, self.W, out=Z)
        K.bias_act_forward(Z, self.b, self.act, self.slope, Z, K.nt)
        return Z

    fwd_infer = None  # set below: the same as training

    def fwd_loss(self, A_in, v, K, Y):
        np.dot(A_in, self.W, out=v.Z)
        return K.loss_forward(v.Z, self.b, Y, self.loss, v.A, K.nt)

    def fwd_out(self, A_in, v, K, out):
        np.dot(A_in, self.W, out=v.Z)
        K.bias_act_forward(v.Z, self.b, self.act, self.slope, out, K.nt)

    def bwd(self, A_in, v, K):
        dZ = v.dout
        if self.act != _codes.LINEAR or self.use_bias:
            K.act_backward(dZ, v.Z, self.act, self.slope, dZ, self.db, K.nt)
        np.dot(A_in.T, dZ, out=self.dW)
        if v.din is not None:
            np.dot(dZ, self.WT, out=v.din)
        return v.din

    def bwd_loss(self, A_in, v, K, Y):
        dZ = v.dout
        K.loss_backward(v.A, Y, dZ, self.db, K.nt)
        np.dot(A_in.T, dZ, out=self.dW)
        if v.din is not None:
            np.dot(dZ, self.WT, out=v.din)
        return v.din


_DenseNode.fwd_infer = _DenseNode.fwd_train


class _ActivationNode(_Node):
    def __init__(self, layer, index, n_in, dtype):
        super().__init__(layer, index, n_in, dtype)
        self.act = layer.act
        self.slope = layer.leaky_slope
        self.zeros = self.scratch = None

    def alloc(self, cap, train):
        return {"A": empty_aligned(cap * self.n_out, self.dtype)}

    def views(self, bufs, n):
        v = _NodeViews()
        v.A = bufs["A"][: n * self.n_out].reshape(n, self.n_out)
        return v

    def fwd_train(self, A_in, v, K, ctx):
        K.bias_act_forward(A_in, self.zeros, self.act, self.slope, v.A, K.nt)
        return v.A

    fwd_infer = fwd_train

    def fwd_loss(self, A_in, v, K, Y):
        return K.loss_forward(A_in, self.zeros, Y, self.loss, v.A, K.nt)

    def fwd_out(self, A_in, v, K, out):
        K.bias_act_forward(A_in, self.zeros, self.act, self.slope, out, K.nt)

    def bwd(self, A_in, v, K):
        if v.din is None:
            return None
        d = v.dout
        K.act_backward(d, v.A, self.act, self.slope, d, self.scratch, K.nt)
        return d

    def bwd_loss(self, A_in, v, K, Y):
        d = v.dout
        K.loss_backward(v.A, Y, d, self.scratch, K.nt)
        return v.din


class _DropoutNode(_Node):
    def __init__(self, layer, index, n_in, dtype):
        super().__init__(layer, index, n_in, dtype)
        self.keep_prob = layer.keep_prob
        self.threshold = dropout_threshold(layer.keep_prob)
        self.scale = 1.0 / layer.keep_prob
        self.seed = 0
        self.key = None

    def alloc(self, cap, train):
        if train and self.keep_prob < 1.0:
            return {"A": empty_aligned(cap * self.n_out, self.dtype)}
        return {}

    def views(self, bufs, n):
        v = _NodeViews()
        if "A" in bufs:
            v.A = bufs["A"][: n * self.n_out].reshape(n, self.n_out)
        return v

    def fwd_train(self, A_in, v, K, ctx):
        if ctx is None or v.A is None:
            self.key = None
            return A_in
        key = dropout_key(self.seed, ctx[0], ctx[1], self.index)
        self.key = key
        K.dropout_apply(A_in, key, self.threshold, self.scale, v.A, K.nt)
        return v.A

    def fwd_infer(self, A_in, v, K, ctx):
        return A_in

    def bwd(self, A_in, v, K):
        d = v.dout
        if self.key is not None and v.din is not None:
            K.dropout_apply(d, self.key, self.threshold, self.scale, d, K.nt)
        return v.din


class _BatchNormNode(_Node):
    has_params = True

    def __init__(self, layer, index, n_in, dtype):
        super().__init__(layer, index, n_in, dtype)
        self.momentum = layer.momentum
        self.eps = layer.eps
        self.gamma = self.beta = self.dgamma = self.dbeta = None
        self.running_mean = self.running_var = None
        # the last training batch's statistics, for backward and the running averages
        w = self.n_out
        self.mean = np.zeros(w, dtype)
        self.var = np.ones(w, dtype)
        self.invstd = np.ones(w, dtype)

    def alloc(self, cap, train):
        bufs = {"A": empty_aligned(cap * self.n_out, self.dtype)}
        if train:
            bufs["xhat"] = empty_aligned(cap * self.n_out, self.dtype)
        return bufs

    def views(self, bufs, n):
        v = _NodeViews()
        v.A = bufs["A"][: n * self.n_out].reshape(n, self.n_out)
        if "xhat" in bufs:
            v.xhat = bufs["xhat"][: n * self.n_out].reshape(n, self.n_out)
        return v

    def fwd_train(self, A_in, v, K, ctx):
        K.batchnorm_forward_train(
            A_in, self.gamma, self.beta, self.eps, v.xhat, v.A, self.mean, self.var, self.invstd, K.nt
        )
        return v.A

    def fwd_infer(self, A_in, v, K, ctx):
        K.batchnorm_forward_infer(
            A_in, self.gamma, self.beta, self.running_mean, self.running_var, self.eps, v.A, K.nt
        )
        return v.A

    def update_running(self, K):
        K.ewa_update(self.running_mean, self.mean, self.momentum, K.nt)
        K.ewa_update(self.running_var, self.var, self.momentum, K.nt)

    def bwd(self, A_in, v, K):
        d = v.dout
        K.batchnorm_backward(d, v.xhat, self.gamma, self.invstd, d, self.dgamma, self.dbeta, K.nt)
        return v.din


NODE_OF = {
    Dense: _DenseNode,
    Activation: _ActivationNode,
    Dropout: _DropoutNode,
    BatchNorm: _BatchNormNode,
}


def make_nodes(layers, input_dim, dtype, loss, seed):
    """One node per layer, named ``kind_i`` (each layer type numbered from 0); the last one computes ``loss``.

    The arenas are not bound yet (:class:`fusednet.model._layout.Arenas` does it).
    Dropout masks are keyed by ``seed``.
    """
    nodes = []
    counts = {}
    n_in = input_dim
    for i, layer in enumerate(layers):
        node = NODE_OF[type(layer)](layer, i, n_in, dtype)
        k = layer.kind
        node.name = f"{k}_{counts.get(k, 0)}"
        counts[k] = counts.get(k, 0) + 1
        if isinstance(node, _DropoutNode):
            node.seed = seed
        nodes.append(node)
        n_in = node.n_out
    out = nodes[-1]
    out.is_output = True
    out.loss = loss
    return nodes


def need_din(nodes):
    """Per node, whether backward needs the delta of its input: only when a node with parameters precedes it."""
    seen = False
    need = []
    for node in nodes:
        need.append(seen)
        seen = seen or node.has_params
    return need


# --------------------------------------------------------------------------
# workspaces
# --------------------------------------------------------------------------


class _Views:
    """Everything one step on ``n`` rows touches, as views of a workspace."""

    __slots__ = ("X", "Y", "ins", "n", "nodes", "out")

    def __init__(self, n):
        self.n = n


class _Workspace:
    """Activation (and, for training, delta) buffers for up to ``capacity`` rows.

    One output buffer per node (a Dense writes ``Z`` then ``A = g(Z + b)`` in
    place; the output Dense keeps ``Z`` and ``A`` apart for the fused loss
    kernel), ``xhat`` per BatchNorm in training, the batch ``X``/``Y``, and two
    ping-pong delta buffers ``delta`` of the widest layer (every backward kernel
    but the Dense's matrix product works in place).  ``key`` is the model's
    layout key when it was built: a rebuilt model needs a new workspace.
    """

    def __init__(self, model, capacity, train):
        self.capacity = capacity
        self.train = train
        self.key = model._layout_key
        nodes = model._nodes
        dt = model.dtype
        self.bufs = [node.alloc(capacity, train) for node in nodes]
        self.xbuf = empty_aligned(capacity * model.input_dim, dt)
        self.ybuf = empty_aligned(capacity * nodes[-1].n_out, dt)
        if train:
            wmax = max(node.n_out for node in nodes)
            self.delta = (empty_aligned(capacity * wmax, dt), empty_aligned(capacity * wmax, dt))
        self._nodes = nodes
        self._need_din = model._need_din
        self._nin = model.input_dim
        self._nout = nodes[-1].n_out
        self._cache = {}

    def views(self, n):
        """The cached views for a batch of ``n <= capacity`` rows."""
        v = self._cache.get(n)
        if v is None:
            if len(self._cache) > 8:
                self._cache.clear()
            v = self._cache[n] = self._build(n)
        return v

    def _build(self, n):
        v = _Views(n)
        v.X = self.xbuf[: n * self._nin].reshape(n, self._nin)
        v.Y = self.ybuf[: n * self._nout].reshape(n, self._nout)
        v.nodes = [node.views(b, n) for node, b in zip(self._nodes, self.bufs)]
        v.ins = [None] * len(self._nodes)
        v.out = v.nodes[-1].A
        if self.train:
            cur = 0
            d = None
            for i in range(len(self._nodes) - 1, -1, -1):
                node, nv = self._nodes[i], v.nodes[i]
                if d is None:  # the output node writes dZ first
                    d = self.delta[cur][: n * node.n_out].reshape(n, node.n_out)
                nv.dout = d
                if not self._need_din[i]:
                    nv.din = None
                elif isinstance(node, _DenseNode):
                    cur = 1 - cur
                    nv.din = self.delta[cur][: n * node.n_in].reshape(n, node.n_in)
                else:
                    nv.din = d
                d = nv.din
                if d is None:
                    break
        return v
