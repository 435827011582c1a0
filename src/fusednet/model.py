r"""The model: a stack of layer specs over flat arenas and per-batch workspaces.

Memory layout
-------------
Parameters live in one flat buffer, the *arena*, in the model's dtype::

    [ dense_0.W | dense_1.W | ... | dense_0.b | batchnorm_0.gamma | batchnorm_0.beta | dense_1.b | ... ]
    \___________ n_decay ________/ \______________ in layer order, not regularised ______________/

All weight matrices come first (the L2-regularised segment, ``n_decay``
elements), then biases and batch-norm ``gamma``/``beta`` in layer order.  The
gradient arena has the same layout, and so has the optimiser's state, so one
optimiser step is one kernel call with ``l2 = lambd / m`` on the first
``n_decay`` elements.  :meth:`Sequential.parameters` hands out views into the
arena.  Batch-norm running statistics live in a second flat buffer
(``running_mean`` then ``running_var`` per BatchNorm layer).

Matrix products go to BLAS through ``np.dot(A, W, out=Z)`` (the same GEMM as
``np.matmul``, with half its call overhead on the small matrices of the course's
networks).  Activations and deltas live in a *workspace* built once per batch capacity:
one output buffer per layer (Dense writes ``Z`` then ``A = g(Z + b)`` in place;
the output Dense keeps ``Z`` and ``A`` apart for the fused loss kernel),
``xhat`` per BatchNorm, and two ping-pong delta buffers of the widest layer
(every backward kernel but the Dense's matrix product works in place).  A
smaller batch (the last partial one) uses ``[:n * width]`` views of the same
buffers, built once and cached.

Shapes are rows of examples: ``X`` is ``(m, n_features)``, a Dense ``W`` is
``(n_in, n_out)`` and ``Z = A_prev @ W + b`` -- the transpose of the course's
``W[l] A[l-1] + b[l]``.  The loss follows the output activation (sigmoid:
binary cross-entropy, softmax: categorical cross-entropy, linear: mean squared
error ``(1/2m) sum (A - Y)^2``), and the cost of a batch of ``m`` examples is

.. math::

    J = \frac{1}{m} \sum_{i=1}^m \mathcal{L}(a^{(i)}, y^{(i)})
        + \frac{\lambda}{2m} \sum_l \|W^{[l]}\|_F^2 .
"""

import contextlib
import copy
import math
import numbers
import threading

import numpy as np

from . import kernels as _kernels
from .kernels import _codes
from .kernels import dropout_key, dropout_threshold
from .layers import Activation, BatchNorm, Dense, Dropout, Layer, init_scale

__all__ = ["Sequential"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

#: rows per chunk for inference (forward, predict, evaluate)
INFER_CHUNK = 4096

#: op codes of :meth:`Sequential.plan`
OP_DENSE, OP_ACTIVATION, OP_DROPOUT, OP_BATCHNORM = 0, 1, 2, 3
_OP_OF = {Dense: OP_DENSE, Activation: OP_ACTIVATION, Dropout: OP_DROPOUT, BatchNorm: OP_BATCHNORM}

_OUTPUT_ACTS = {
    _codes.LINEAR: _codes.MSE,
    _codes.SIGMOID: _codes.BCE,
    _codes.SOFTMAX: _codes.CCE,
}


# --------------------------------------------------------------------------
# kernels, resolved once per fit / per call
# --------------------------------------------------------------------------


class _Kernels:
    """The raw kernels of the current backend choice, plus the thread count."""

    __slots__ = _kernels.KERNELS + ("nt", "key")

    def __init__(self, backend=None):
        for name in _kernels.KERNELS:
            setattr(self, name, _kernels.resolve(name, backend))
        self.nt = _kernels.get_num_threads()
        self.key = (backend or _kernels.get_backend(), self.nt)


def _current_key():
    return (_kernels.get_backend(), _kernels.get_num_threads())


# --------------------------------------------------------------------------
# input checks (done once per call / per fit, never per batch)
# --------------------------------------------------------------------------


def _describe(x):
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return type(x).__name__


def _is_sparse(X):
    return type(X).__module__.startswith("scipy.sparse") and hasattr(X, "toarray")


def as_2d(X, name="X"):
    """``X`` as a 2-D numeric ndarray; ndarrays (and memmaps) are not copied."""
    if _is_sparse(X):
        raise TypeError(
            f"{name} is a scipy.sparse matrix of shape {X.shape}; fusednet trains on dense arrays: "
            f"pass {name}.toarray() (or a dense np.memmap when it does not fit in memory)"
        )
    if not isinstance(X, np.ndarray):
        try:
            X = np.asarray(X)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array, got {type(X).__name__}: {exc}") from None
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a numeric dtype, got {_describe(X)}")
    if X.ndim != 2:
        hint = "; use X.reshape(-1, 1) for a single feature" if X.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (m, n_features), got shape {X.shape}{hint}")
    if X.shape[0] < 1:
        raise ValueError(f"{name} must have at least one row, got shape {X.shape}")
    if X.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature, got shape {X.shape}")
    return X


def check_finite(X, name="X", dtype=None):
    """Raise ValueError if ``X`` holds NaN or inf, or, converted to ``dtype``, would.

    Reads ``X`` a few MiB at a time.  A float64 value beyond float32's range
    becomes inf when a float32 model converts it, so it is refused here too.
    """
    if X.dtype.kind != "f":
        return
    limit = None
    if dtype is not None and np.dtype(dtype).itemsize < X.dtype.itemsize:
        limit = float(np.finfo(dtype).max)
    rows = max(1, (1 << 20) // X.shape[1])
    for s in range(0, X.shape[0], rows):
        block = X[s : s + rows]
        # fast path: a finite sum means finite entries (an overflowing sum falls through to the exact check)
        if not math.isfinite(float(np.add.reduce(block, axis=None))):
            bad = ~np.isfinite(block)
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise ValueError(
                    f"{name} must be finite, but it holds {block[i, j]} at row {s + i}, column {j}"
                )
        if limit is not None and float(np.abs(block).max()) > limit:
            i, j = np.argwhere(np.abs(block) > limit)[0]
            raise ValueError(
                f"{name} holds {block[i, j]} at row {s + i}, column {j}, beyond the range of the "
                f"model's dtype {np.dtype(dtype).name} (|x| <= {limit:.4g}); scale the data or use "
                f"dtype='float64'"
            )


def _rows_ok(y, m, name):
    if y.ndim == 0 or y.shape[0] != m:
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} rows"
        raise ValueError(f"{name} must have one row per example of X ({m}), got {got} (shape {y.shape})")


def _is_binary(v):
    if v.dtype.kind == "b":
        return True
    return bool(np.all((v == 0) | (v == 1)))


# --------------------------------------------------------------------------
# nodes: a layer spec bound to its arena views, with its forward/backward
# --------------------------------------------------------------------------


class _NodeViews:
    """Per-node views of one workspace for a batch of ``n`` rows."""

    __slots__ = ("Z", "A", "xhat", "dout", "din")

    def __init__(self):
        self.Z = self.A = self.xhat = self.dout = self.din = None


class _Node:
    has_params = False
    is_output = False

    def __init__(self, layer, index, n_in):
        self.layer = layer
        self.index = index
        self.n_in = n_in
        self.n_out = n_in

    def alloc(self, cap, train):
        return {}

    def views(self, bufs, n):
        return _NodeViews()

    def update_running(self, K):
        pass


class _DenseNode(_Node):
    has_params = True

    def __init__(self, layer, index, n_in):
        super().__init__(layer, index, n_in)
        self.n_out = layer.units
        self.act = layer.act
        self.slope = layer.leaky_slope
        self.use_bias = layer.use_bias
        self.W = self.WT = self.b = self.dW = self.db = None

    def alloc(self, cap, train):
        bufs = {"Z": np.empty(cap * self.n_out, self.dtype)}
        if self.is_output:
            bufs["A"] = np.empty(cap * self.n_out, self.dtype)
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
    def __init__(self, layer, index, n_in):
        super().__init__(layer, index, n_in)
        self.act = layer.act
        self.slope = layer.leaky_slope
        self.zeros = self.scratch = None

    def alloc(self, cap, train):
        return {"A": np.empty(cap * self.n_out, self.dtype)}

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
    def __init__(self, layer, index, n_in):
        super().__init__(layer, index, n_in)
        self.keep_prob = layer.keep_prob
        self.threshold = dropout_threshold(layer.keep_prob)
        self.scale = 1.0 / layer.keep_prob
        self.seed = 0
        self.key = None

    def alloc(self, cap, train):
        if train and self.keep_prob < 1.0:
            return {"A": np.empty(cap * self.n_out, self.dtype)}
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

    def __init__(self, layer, index, n_in):
        super().__init__(layer, index, n_in)
        self.momentum = layer.momentum
        self.eps = layer.eps
        self.gamma = self.beta = self.dgamma = self.dbeta = None
        self.running_mean = self.running_var = None

    def alloc(self, cap, train):
        bufs = {"A": np.empty(cap * self.n_out, self.dtype)}
        if train:
            bufs["xhat"] = np.empty(cap * self.n_out, self.dtype)
        return bufs

    def views(self, bufs, n):
        v = _NodeViews()
        v.A = bufs["A"][: n * self.n_out].reshape(n, self.n_out)
        if "xhat" in bufs:
            v.xhat = bufs["xhat"][: n * self.n_out].reshape(n, self.n_out)
        return v

    def make_scratch(self):
        w = self.n_out
        self.mean = np.zeros(w, self.dtype)
        self.var = np.ones(w, self.dtype)
        self.invstd = np.ones(w, self.dtype)

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


_NODE_OF = {
    Dense: _DenseNode,
    Activation: _ActivationNode,
    Dropout: _DropoutNode,
    BatchNorm: _BatchNormNode,
}


# --------------------------------------------------------------------------
# workspaces
# --------------------------------------------------------------------------


class _Views:
    """Everything one step on ``n`` rows touches, as views of a workspace."""

    __slots__ = ("n", "X", "Y", "nodes", "ins", "out")

    def __init__(self, n):
        self.n = n


class _Workspace:
    """Activation (and, for training, delta) buffers for up to ``capacity`` rows."""

    def __init__(self, model, capacity, train):
        self.capacity = capacity
        self.train = train
        self.key = model._layout_key
        nodes = model._nodes
        dt = model.dtype
        self.bufs = [node.alloc(capacity, train) for node in nodes]
        self.xbuf = np.empty(capacity * model.input_dim, dt)
        self.ybuf = np.empty(capacity * model.output_dim, dt)
        if train:
            wmax = max(node.n_out for node in nodes)
            self.delta = (np.empty(capacity * wmax, dt), np.empty(capacity * wmax, dt))
        self._nodes = nodes
        self._need_din = model._need_din
        self._nin = model.input_dim
        self._nout = model.output_dim
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


# --------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in _FLOATS:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


def _check_l2(l2):
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real):
        raise TypeError(f"l2 must be a real number >= 0, got {l2!r}")
    l2 = float(l2)
    if not (math.isfinite(l2) and l2 >= 0.0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    return l2


class Sequential:
    r"""A fully-connected network: a list of layers applied in order.

    Parameters
    ----------
    layers : list of Layer
        :class:`~fusednet.layers.Dense`, :class:`~fusednet.layers.Activation`,
        :class:`~fusednet.layers.Dropout`, :class:`~fusednet.layers.BatchNorm`.
        The last layer must be a Dense or an Activation whose activation is
        sigmoid, softmax or linear; it picks the loss.
    input_dim : int, optional
        ``n_features``.  None: the model is built on the first
        :meth:`forward` / fit, from ``X.shape[1]``.
    l2 : float
        :math:`\lambda` of L2 regularisation: the cost gets
        :math:`\frac{\lambda}{2m}\sum_l\|W^{[l]}\|_F^2` and the gradients
        :math:`\frac{\lambda}{m} W^{[l]}`, ``m`` the batch size.  Biases and
        batch-norm parameters are not regularised.
    dtype : {"float32", "float64"}
        Of the parameters, activations and gradients.
    seed : int, numpy.random.Generator or None
        Initial weights are drawn from it layer by layer (same seed, same
        weights), and dropout masks are keyed by it.

    Attributes
    ----------
    layers : list of Layer
    loss : {"bce", "cce", "mse"}
    input_dim, output_dim : int
    """

    def __init__(self, layers, input_dim=None, l2=0.0, dtype="float32", seed=0):
        if isinstance(layers, Layer) or not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list of fusednet.layers objects, got {type(layers).__name__}")
        if len(layers) == 0:
            raise ValueError("layers must not be empty")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"layers[{i}] must be a fusednet.layers.Dense, Activation, Dropout or "
                    f"BatchNorm, got {type(layer).__name__}"
                )
        last = layers[-1]
        if not isinstance(last, (Dense, Activation)):
            raise ValueError(
                f"the last layer must be a Dense or an Activation (its activation picks the "
                f"loss), got {type(last).__name__}"
            )
        if last.act not in _OUTPUT_ACTS:
            raise ValueError(
                f"the output activation must be 'sigmoid' (binary cross-entropy), 'softmax' "
                f"(categorical cross-entropy) or 'linear'/None (mean squared error), got "
                f"{last.activation!r}"
            )
        self.layers = list(layers)
        self._loss = _OUTPUT_ACTS[last.act]
        self._l2 = _check_l2(l2)
        self.dtype = _check_dtype(dtype)
        if seed is None:
            seed = int(np.random.default_rng().integers(2**63))
        if isinstance(seed, np.random.Generator):
            self._rng = seed
            self.seed = int(seed.integers(2**63))
        elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            if seed < 0:
                raise ValueError(f"seed must be an int >= 0, got {seed}")
            self.seed = int(seed)
            self._rng = None
        else:
            raise TypeError(f"seed must be an int >= 0, a numpy.random.Generator or None, got {seed!r}")
        self.input_dim = None
        self._nodes = None
        self._layout_key = None
        self._infer_ws = None
        self._infer_lock = threading.Lock()
        self._train_ws = None
        self._K = None
        self._normalizer = None
        self.classes = None
        if input_dim is not None:
            if isinstance(input_dim, bool) or not isinstance(input_dim, numbers.Integral) or input_dim < 1:
                raise ValueError(f"input_dim must be an int >= 1 or None, got {input_dim!r}")
            self.build(int(input_dim))

    # ---- properties ----------------------------------------------------------

    @property
    def l2(self):
        """:math:`\\lambda`, the L2 coefficient (settable)."""
        return self._l2

    @l2.setter
    def l2(self, value):
        self._l2 = _check_l2(value)

    @property
    def normalizer(self):
        """The input normaliser (a fitted :class:`fusednet.data.Normalizer`) or None.

        When set, every call that takes ``X`` -- :meth:`forward`, :meth:`predict`,
        :meth:`predict_proba`, :meth:`evaluate`, :meth:`loss_and_grads`, and
        :class:`~fusednet.Trainer` ``.fit`` (its dev set too) -- standardises the
        raw ``X`` with it first, so the model takes raw features; it is saved and
        loaded with the model.
        """
        return self._normalizer

    @normalizer.setter
    def normalizer(self, norm):
        if norm is not None:
            n = getattr(norm, "n_features_in_", None)
            if not callable(getattr(norm, "transform", None)) or n is None:
                raise TypeError(f"normalizer must be a fitted fusednet.data.Normalizer or None, got {norm!r}")
            if self.input_dim is not None and n != self.input_dim:
                raise ValueError(f"normalizer was fitted on {n} features but the model takes {self.input_dim}")
        self._normalizer = norm

    @property
    def loss(self):
        """The loss the output activation implies: ``"bce"``, ``"cce"`` or ``"mse"``."""
        return _codes.LOSS_NAMES[self._loss]

    @property
    def is_classifier(self):
        """True for a sigmoid or softmax output."""
        return self._loss != _codes.MSE

    @property
    def built(self):
        """Whether the arenas exist (``input_dim`` known)."""
        return self._nodes is not None

    @property
    def output_dim(self):
        """Width of the output layer (``None`` while unbuilt and not implied)."""
        if self._nodes is not None:
            return self._nodes[-1].n_out
        return self._widths(self.input_dim)[-1] if self.input_dim else self._declared_out()

    @property
    def n_params(self):
        """The number of trainable parameters (the arena's length)."""
        self._require_built()
        return self._params.size

    @property
    def n_decay(self):
        """The length of the regularised (weight) segment at the front of the arena."""
        self._require_built()
        return self._n_decay

    def _declared_out(self):
        for layer in reversed(self.layers):
            if isinstance(layer, Dense):
                return layer.units
        return None

    def _widths(self, n_in):
        widths = [n_in]
        for layer in self.layers:
            widths.append(layer.units if isinstance(layer, Dense) else widths[-1])
        return widths[1:]

    def _require_built(self):
        if self._nodes is None:
            raise RuntimeError(
                "the model is not built yet: give Sequential(..., input_dim=n_features) "
                "or call forward()/fit() once"
            )

    # ---- building --------------------------------------------------------------

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
        widths = self._widths(input_dim)
        if self._loss == _codes.CCE and widths[-1] < 2:
            raise ValueError(f"a softmax output needs at least 2 units, got {widths[-1]}")
        dt = self.dtype
        nodes = []
        n_in = input_dim
        for i, layer in enumerate(self.layers):
            node = _NODE_OF[type(layer)](layer, i, n_in)
            node.dtype = dt
            nodes.append(node)
            n_in = node.n_out
        out = nodes[-1]
        out.is_output = True
        out.loss = self._loss

        # arena layout: all W first (n_decay), then b / gamma / beta in layer order
        off = 0
        w_off = {}
        for node in nodes:
            if isinstance(node, _DenseNode):
                w_off[node.index] = off
                off += node.n_in * node.n_out
        n_decay = off
        rest_off = {}
        for node in nodes:
            if isinstance(node, _DenseNode) and node.use_bias:
                rest_off[node.index] = off
                off += node.n_out
            elif isinstance(node, _BatchNormNode):
                rest_off[node.index] = off
                off += 2 * node.n_out
        n_params = off
        n_stats = sum(2 * node.n_out for node in nodes if isinstance(node, _BatchNormNode))
        wmax = max(node.n_out for node in nodes)

        self._params = np.zeros(n_params, dt)
        self._grads = np.zeros(n_params, dt)
        self._stats = np.zeros(n_stats, dt)
        self._zeros = np.zeros(wmax, dt)
        self._scratch = np.zeros(wmax, dt)
        self._n_decay = n_decay
        self._wseg = self._params[:n_decay]
        P, G = self._params, self._grads
        names = {}
        self._names = []  # (name, arena offset, shape)
        self._buffer_names = []  # (name, stats offset, shape)
        s_off = 0
        for node, layer in zip(nodes, self.layers):
            k = layer.kind
            node.name = f"{k}_{names.get(k, 0)}"
            names[k] = names.get(k, 0) + 1
            if isinstance(node, _DenseNode):
                o, shape = w_off[node.index], (node.n_in, node.n_out)
                size = node.n_in * node.n_out
                node.W = P[o : o + size].reshape(shape)
                node.WT = node.W.T
                node.dW = G[o : o + size].reshape(shape)
                self._names.append((node.name + ".W", o, shape))
                if node.use_bias:
                    o = rest_off[node.index]
                    node.b = P[o : o + node.n_out]
                    node.db = G[o : o + node.n_out]
                    self._names.append((node.name + ".b", o, (node.n_out,)))
                else:
                    node.b = self._zeros[: node.n_out]
                    node.db = self._scratch[: node.n_out]
            elif isinstance(node, _BatchNormNode):
                o, w = rest_off[node.index], node.n_out
                node.gamma, node.beta = P[o : o + w], P[o + w : o + 2 * w]
                node.dgamma, node.dbeta = G[o : o + w], G[o + w : o + 2 * w]
                node.gamma[...] = 1.0
                self._names.append((node.name + ".gamma", o, (w,)))
                self._names.append((node.name + ".beta", o + w, (w,)))
                node.running_mean = self._stats[s_off : s_off + w]
                node.running_var = self._stats[s_off + w : s_off + 2 * w]
                node.running_var[...] = 1.0
                self._buffer_names.append((node.name + ".running_mean", s_off, (w,)))
                self._buffer_names.append((node.name + ".running_var", s_off + w, (w,)))
                s_off += 2 * w
                node.make_scratch()
            elif isinstance(node, _ActivationNode):
                node.zeros = self._zeros[: node.n_out]
                node.scratch = self._scratch[: node.n_out]
            elif isinstance(node, _DropoutNode):
                node.seed = self.seed

        # backward needs d(input) of node i only if a parameterised node precedes it
        seen = False
        need = []
        for node in nodes:
            need.append(seen)
            seen = seen or node.has_params
        self._need_din = need
        self._first_param = next((i for i, n in enumerate(nodes) if n.has_params), len(nodes))

        self._nodes = nodes
        self._hidden = nodes[:-1]
        self._bn_nodes = [n for n in nodes if isinstance(n, _BatchNormNode)]
        self.input_dim = int(input_dim)
        self._layout_key = object()
        self._init_weights()
        return self

    def _init_weights(self):
        rng = self._rng if self._rng is not None else np.random.default_rng(self.seed)
        nodes = self._nodes
        for i, node in enumerate(nodes):
            if not isinstance(node, _DenseNode):
                continue
            act = node.act
            if act == _codes.LINEAR:  # "auto" looks through BatchNorm/Dropout to an Activation
                for nxt in self.layers[i + 1 :]:
                    if isinstance(nxt, Activation):
                        act = nxt.act
                        break
                    if isinstance(nxt, Dense):
                        break
            scale = init_scale(node.layer.init, node.n_in, node.n_out, act)
            if scale == 0.0:
                node.W[...] = 0.0
            else:
                node.W[...] = rng.standard_normal((node.n_in, node.n_out)) * scale

    # ---- kernels and workspaces -------------------------------------------------

    def _kernels(self, backend=None):
        K = self._K
        key = (backend or _kernels.get_backend(), _kernels.get_num_threads())
        if K is None or K.key != key:
            K = self._K = _Kernels(backend)
        return K

    def _workspace(self, n, train):
        attr = "_train_ws" if train else "_infer_ws"
        ws = getattr(self, attr)
        if ws is None or ws.capacity < n or ws.key is not self._layout_key:
            ws = _Workspace(self, n, train)
            setattr(self, attr, ws)
        return ws

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
        """Validate ``X`` (2-D, numeric, finite, the model's width); builds nothing."""
        X = as_2d(X, name)
        if self._nodes is not None and X.shape[1] != self.input_dim:
            raise ValueError(
                f"{name} has {X.shape[1]} features (columns) but the model expects "
                f"{self.input_dim} (n_features)"
            )
        if self._nodes is None and self.input_dim is None:
            out = self._widths(X.shape[1])[-1]
            if self._loss == _codes.CCE and out < 2:
                raise ValueError(f"a softmax output needs at least 2 units, got {out}")
        check_finite(X, name, self.dtype)
        if self.normalizer is not None:
            X = self.normalizer.transform(X)
            check_finite(X, f"{name} after the model's normalizer", self.dtype)
        return X

    def _targets(self, y, m, name="y", n_in=None):
        """Labels -> (Y (m, k) in the model's dtype, class ids (m,) or None).

        Softmax: int ids (m,) (or (m, 1)) in [0, k), or one-hot (m, k).  Sigmoid:
        0/1 of shape (m,) or (m, 1) (k = 1), or (m, k).  Linear: floats (m,)
        (k = 1) or (m, k).
        """
        if not isinstance(y, np.ndarray):
            try:
                y = np.asarray(y)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name} must be a numeric array: {exc}") from None
        if y.dtype.kind not in "biuf":
            raise TypeError(f"{name} must have a numeric dtype, got {_describe(y)}")
        _rows_ok(y, m, name)
        if self._nodes is not None:
            k = self.output_dim
        else:
            k = self._widths(n_in)[-1]
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError(f"{name} must be finite, but it holds NaN or inf")
        dt = self.dtype
        loss = self._loss
        if loss == _codes.CCE:
            if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
                ids = y.reshape(m)
                if ids.dtype.kind == "f":
                    if np.any(ids != np.floor(ids)):
                        i = int(np.argmax(ids != np.floor(ids)))
                        raise ValueError(f"{name} must hold integer class ids, got {ids[i]!r} at index {i}")
                ids = ids.astype(np.intp)
                lo, hi = int(ids.min()), int(ids.max())
                if lo < 0 or hi >= k:
                    bad = lo if lo < 0 else hi
                    i = int(np.argmax(ids == bad))
                    raise ValueError(
                        f"{name} holds the label {bad} at index {i}, out of range for "
                        f"{k} classes (labels must be in [0, {k - 1}])"
                    )
            elif y.ndim == 2 and y.shape[1] == k:
                if not (_is_binary(y) and np.all(y.sum(axis=1) == 1)):
                    raise ValueError(
                        f"{name} of shape {y.shape} must be one-hot (one 1 per row, 0 elsewhere) "
                        f"or hold class ids of shape ({m},)"
                    )
                ids = np.argmax(y, axis=1).astype(np.intp)
            else:
                raise ValueError(
                    f"{name} must hold class ids of shape ({m},) or one-hot rows of shape "
                    f"({m}, {k}) for a softmax output of {k} units, got shape {y.shape}"
                )
            Y = np.zeros((m, k), dt)
            Y[np.arange(m), ids] = 1.0
            return Y, ids
        if loss == _codes.BCE:
            if k == 1 and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
                Yv = y.reshape(m, 1)
            elif y.ndim == 2 and y.shape[1] == k:
                Yv = y
            else:
                want = f"({m},) or ({m}, 1)" if k == 1 else f"({m}, {k})"
                raise ValueError(
                    f"{name} must have shape {want} for a sigmoid output of {k} unit(s), got shape {y.shape}"
                )
            if not _is_binary(Yv):
                bad = Yv[(Yv != 0) & (Yv != 1)].ravel()[0]
                raise ValueError(f"{name} must hold 0/1 labels for a sigmoid output, got {bad!r}")
            Y = np.ascontiguousarray(Yv, dtype=dt)
            ids = Y[:, 0].astype(np.intp) if k == 1 else None
            return Y, ids
        # MSE
        if k == 1 and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            Yv = y.reshape(m, 1)
        elif y.ndim == 2 and y.shape[1] == k:
            Yv = y
        else:
            want = f"({m},) or ({m}, 1)" if k == 1 else f"({m}, {k})"
            raise ValueError(
                f"{name} must have shape {want} for a linear output of {k} unit(s), got shape {y.shape}"
            )
        return np.ascontiguousarray(Yv, dtype=dt), None

    def _chunk(self, X, s, e, v):
        """Rows ``s:e`` of ``X`` as a C-contiguous array of the model's dtype (view if possible)."""
        Xc = X[s:e]
        if Xc.dtype == self.dtype and Xc.flags.c_contiguous:
            return Xc
        np.copyto(v.X, Xc, casting="unsafe")
        return v.X

    # ---- public API ------------------------------------------------------------------

    def forward(self, X):
        """Output activations in inference mode (no dropout, BatchNorm running stats).

        Parameters
        ----------
        X : array_like, shape (m, n_features)

        Returns
        -------
        numpy.ndarray, shape (m, n_out), the model's dtype
        """
        X = self._check_X(X)
        self.build(X.shape[1])
        return self._infer(X)

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

    def _infer(self, X):
        m = X.shape[0]
        K = self._kernels()
        out = np.empty((m, self.output_dim), self.dtype)
        last = self._nodes[-1]
        with self._inference_workspace(min(m, INFER_CHUNK)) as ws:
            for s in range(0, m, ws.capacity):
                e = min(m, s + ws.capacity)
                v = ws.views(e - s)
                A = self._forward_infer(v, K, self._chunk(X, s, e, v))
                last.fwd_out(A, v.nodes[-1], K, out[s:e])
        return out

    def predict(self, X):
        """Class ids ``(m,)`` (softmax: argmax; sigmoid: ``A > 0.5`` as 0/1), or values.

        A sigmoid output of k > 1 units gives ``(m, k)`` 0/1; a linear output gives
        ``(m,)`` for one unit and ``(m, k)`` otherwise.
        """
        A = self.forward(X)
        if self._loss == _codes.CCE:
            return np.argmax(A, axis=1)
        if self._loss == _codes.BCE:
            P = (A > 0.5).astype(np.int64)
            return P[:, 0] if P.shape[1] == 1 else P
        return A[:, 0] if A.shape[1] == 1 else A

    def predict_proba(self, X):
        """Class probabilities ``(m, n_classes)``; a sigmoid output gives ``[1 - p, p]``."""
        if self._loss == _codes.MSE:
            raise ValueError("predict_proba needs a sigmoid or softmax output; this model is a regressor")
        A = self.forward(X)
        if self._loss == _codes.BCE and A.shape[1] == 1:
            return np.concatenate([1.0 - A, A], axis=1)
        return A

    def evaluate(self, X, y):
        """``{"loss": J, "accuracy": a}`` in inference mode (accuracy for classifiers only).

        ``J`` is the mean loss over all of ``X`` plus ``lambd/(2m) sum ||W||^2``
        with ``m = len(X)``.
        """
        X = self._check_X(X)
        Y, ids = self._targets(y, X.shape[0], "y", n_in=X.shape[1])
        self.build(X.shape[1])
        return self._evaluate(X, Y, ids)

    def _evaluate(self, X, Y, ids):
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
                    correct += _n_correct(self._loss, v.out, Yc, None if ids is None else ids[s:e])
        J = total / m
        if self._l2:
            J += self._l2 / (2.0 * m) * float(np.dot(self._wseg, self._wseg))
        result = {"loss": float(J)}
        if self._loss != _codes.MSE:
            result["accuracy"] = correct / (m * (1 if ids is not None else Y.shape[1]))
        return result

    def loss_and_grads(self, X, y):
        """The cost and its gradients on all of ``X`` as one batch.

        As a training step, but with dropout off and no change of the parameters
        or of the BatchNorm running statistics (BatchNorm uses the batch's
        statistics).

        Returns
        -------
        (float, list of (str, numpy.ndarray))
            ``J`` (L2 term included) and ``[(name, dJ/dparam), ...]`` in the order
            of :meth:`parameters`; the weight gradients include
            ``lambd/m * W``.  The arrays are copies.
        """
        X, Y = self._whole_batch(X, y)
        m = X.shape[0]
        K = self._kernels()
        ws = self._workspace(m, train=True)
        v = ws.views(m)
        Xb = X if (X.dtype == self.dtype and X.flags.c_contiguous) else np.ascontiguousarray(X, self.dtype)
        J = self._forward_train(v, K, Xb, Y, None)
        self._backward(v, K, Y)
        G = self._grads.copy()
        if self._l2:
            G[: self._n_decay] += (self._l2 / m) * self._wseg
        return float(J), [(name, G[o : o + int(np.prod(shape))].reshape(shape)) for name, o, shape in self._names]

    def _whole_batch(self, X, y):
        """``X`` and ``y`` checked as one training batch (dropout off); builds the model for ``X``."""
        X = self._check_X(X)
        m = X.shape[0]
        Y, _ = self._targets(y, m, "y", n_in=X.shape[1])
        if self._has_bn() and m < 2:
            raise ValueError("X has one row: BatchNorm needs at least 2 examples in a training batch")
        self.build(X.shape[1])
        return X, Y

    def _cost_of(self, X, y):
        """A function of no arguments giving the cost of :meth:`loss_and_grads` on ``X``, forward only.

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

    def _has_bn(self):
        return any(isinstance(layer, BatchNorm) for layer in self.layers)

    def parameters(self):
        """``[(name, array), ...]``: writable views into the arena, in layer order.

        Names are ``"dense_0.W"``, ``"dense_0.b"``, ``"batchnorm_0.gamma"``,
        ``"batchnorm_0.beta"``, ... (each layer type numbered from 0).  Assigning
        into a view (``W[...] = ...``) sets the weights.
        """
        self._require_built()
        P = self._params
        return [(name, P[o : o + int(np.prod(shape))].reshape(shape)) for name, o, shape in self._names]

    def buffers(self):
        """``[(name, array), ...]``: writable views of the BatchNorm running statistics."""
        self._require_built()
        S = self._stats
        return [(name, S[o : o + int(np.prod(shape))].reshape(shape)) for name, o, shape in self._buffer_names]

    # ---- state, config, copies -------------------------------------------------------

    def state_dict(self):
        """Copies of all state arrays: ``{"params": arena, "running": BatchNorm stats}``."""
        self._require_built()
        return {"params": self._params.copy(), "running": self._stats.copy()}

    def load_state_dict(self, state):
        """Copy ``state`` (from :meth:`state_dict`) into the model, checked first.

        Raises
        ------
        ValueError
            On a missing key, a wrong length or a non-finite value; the model is
            left unchanged.
        """
        self._require_built()
        arrays = {}
        for key, target in (("params", self._params), ("running", self._stats)):
            if key not in state:
                raise ValueError(f"state is missing {key!r}")
            a = np.asarray(state[key])
            if a.ndim != 1 or a.shape[0] != target.shape[0]:
                raise ValueError(f"state[{key!r}] must have shape {target.shape}, got {a.shape}")
            if a.dtype.kind not in "biuf" or not np.isfinite(a).all():
                raise ValueError(f"state[{key!r}] must hold finite numbers")
            arrays[key] = a
        np.copyto(self._params, arrays["params"], casting="unsafe")
        np.copyto(self._stats, arrays["running"], casting="unsafe")

    def get_config(self):
        """Everything needed to rebuild the model's structure, as plain JSON-able data."""
        return {
            "layers": [layer.get_config() for layer in self.layers],
            "input_dim": self.input_dim,
            "l2": self._l2,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, cfg):
        """Rebuild a model from :meth:`get_config` (fresh weights from the seed)."""
        if not isinstance(cfg, dict) or "layers" not in cfg:
            raise ValueError(f"not a model config: {cfg!r:.200}")
        layers = [Layer.from_config(c) for c in cfg["layers"]]
        return cls(
            layers,
            input_dim=cfg.get("input_dim"),
            l2=cfg.get("l2", 0.0),
            dtype=cfg.get("dtype", "float32"),
            seed=cfg.get("seed", 0),
        )

    def copy(self, dtype=None):
        """An independent copy (optionally in another dtype) with the same state."""
        cfg = self.get_config()
        if dtype is not None:
            cfg["dtype"] = _check_dtype(dtype).name
        twin = type(self).from_config(cfg)
        if self.built:
            twin.load_state_dict(self.state_dict())
        twin._normalizer = copy.deepcopy(self._normalizer)
        twin.classes = copy.deepcopy(self.classes)
        return twin

    # pickling (multiprocessing, copy.deepcopy): config + state, the views rebuilt on load
    _MANAGED = ("layers", "dtype", "seed", "input_dim")

    def __getstate__(self):
        extra = {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k not in self._MANAGED}
        extra["_normalizer"] = self._normalizer
        return {
            "config": self.get_config(),
            "state": self.state_dict() if self.built else None,
            "extra": extra,
        }

    def __setstate__(self, d):
        twin = type(self).from_config(d["config"])
        if d["state"] is not None:
            twin.load_state_dict(d["state"])
        self.__dict__.update(twin.__dict__)
        self.__dict__.update(d["extra"])

    def fit(self, X, y, **kwargs):
        """Train with the Keras-style shortcut :func:`fusednet._fit.fit` (a thin layer over :class:`~fusednet.Trainer`).

        ``model.fit(X, y, epochs=10, batch_size=64, validation_data=None,
        validation_split=0.0, callbacks=(), optimizer=None)`` returns the
        :class:`~fusednet.History`; a later call continues with the same optimiser.
        """
        from ._fit import fit

        return fit(self, X, y, **kwargs)

    def to_onnx(self, path=None, **kwargs):
        """The inference graph as an ONNX model (see :func:`fusednet.onnx.to_onnx`; needs ``fusednet[onnx]``)."""
        from .onnx import to_onnx

        return to_onnx(self, path, **kwargs)

    def save(self, path):
        """Write the model to ``path`` (see :func:`fusednet.io.save_model`)."""
        from .io import save_model

        return save_model(self, path)

    def plan(self):
        """The model as plain numbers, for compiled code that walks the layers.

        Returns
        -------
        dict
            ``"ops"``: int64 ``(n_layers, 10)``, columns ``op, n_in, n_out, act,
            w_off, b_off, gamma_off, beta_off, rmean_off, rvar_off`` (offsets
            into the parameter / running-stats arenas, -1 when absent; ``op``:
            0 Dense, 1 Activation, 2 Dropout, 3 BatchNorm); ``"fparams"``:
            float64 ``(n_layers, 4)``, columns ``slope, keep_prob, momentum,
            eps``; and ``"loss"``, ``"n_params"``, ``"n_decay"``, ``"n_stats"``,
            ``"input_dim"``, ``"seed"``.
        """
        self._require_built()
        L = len(self._nodes)
        ops = np.full((L, 10), -1, np.int64)
        fp = np.zeros((L, 4), np.float64)
        P0 = self._params.__array_interface__["data"][0]
        S0 = self._stats.__array_interface__["data"][0] if self._stats.size else 0
        isz = self.dtype.itemsize

        def off(a, base):
            return (a.__array_interface__["data"][0] - base) // isz

        for i, node in enumerate(self._nodes):
            ops[i, :4] = (_OP_OF[type(node.layer)], node.n_in, node.n_out, _codes.LINEAR)
            fp[i] = (0.01, 1.0, 0.0, 0.0)
            if isinstance(node, _DenseNode):
                ops[i, 3] = node.act
                ops[i, 4] = off(node.W, P0)
                if node.use_bias:
                    ops[i, 5] = off(node.b, P0)
                fp[i, 0] = node.slope
            elif isinstance(node, _ActivationNode):
                ops[i, 3] = node.act
                fp[i, 0] = node.slope
            elif isinstance(node, _DropoutNode):
                fp[i, 1] = node.keep_prob
            else:
                ops[i, 6] = off(node.gamma, P0)
                ops[i, 7] = off(node.beta, P0)
                ops[i, 8] = off(node.running_mean, S0)
                ops[i, 9] = off(node.running_var, S0)
                fp[i, 2:] = (node.momentum, node.eps)
        return {
            "ops": ops,
            "fparams": fp,
            "loss": self._loss,
            "n_params": self._params.size,
            "n_decay": self._n_decay,
            "n_stats": self._stats.size,
            "input_dim": self.input_dim,
            "seed": self.seed,
        }

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return (
            f"Sequential([\n    {inner},\n], input_dim={self.input_dim}, l2={self._l2}, "
            f"dtype={self.dtype.name!r}, seed={self.seed})"
        )

    def summary(self):
        """A short table of the layers, their output widths and parameter counts."""
        lines = [f"{'layer':<16}{'output':>10}{'params':>10}"]
        widths = self._widths(self.input_dim) if self.input_dim else [None] * len(self.layers)
        total = 0
        for i, (layer, w) in enumerate(zip(self.layers, widths)):
            n = 0
            if self.input_dim and isinstance(layer, Dense):
                n_in = self.input_dim if i == 0 else widths[i - 1]
                n = n_in * layer.units + (layer.units if layer.use_bias else 0)
            elif self.input_dim and isinstance(layer, BatchNorm):
                n = 2 * w
            total += n
            lines.append(f"{type(layer).__name__:<16}{str(w):>10}{n:>10}")
        lines.append(f"total parameters: {total}; loss: {self.loss}")
        return "\n".join(lines)

    def __len__(self):
        return len(self.layers)


def _n_correct(loss, A, Y, ids):
    """Correct predictions in a batch (allocates; used once per evaluate chunk)."""
    if loss == _codes.CCE:
        return int(np.count_nonzero(np.argmax(A, axis=1) == ids))
    return int(np.count_nonzero((A > 0.5) == (Y > 0.5)))
