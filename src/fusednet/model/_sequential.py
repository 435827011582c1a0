r"""The public model: :class:`Sequential`."""

import copy

import numpy as np

from ..kernels import _codes
from ..layers import BatchNorm, Dense, Layer
from . import _inputs
from ._layout import Arenas
from ._layout import plan as _layout_plan
from ._network import Network

__all__ = ["Sequential"]


class Sequential(Network):
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
    built : bool
    normalizer : fusednet.data.Normalizer or None
    classes : list or None
        The original labels in class-id order, when known (saved with the model).
    """

    def __init__(self, layers, input_dim=None, l2=0.0, dtype="float32", seed=0):
        loss = _inputs.check_layers(layers)
        l2 = _inputs.check_l2(l2)
        dtype = _inputs.check_dtype(dtype)
        seed, rng = _inputs.check_seed(seed)
        super().__init__(layers, loss, l2, dtype, seed, rng)
        self.classes = None
        if input_dim is not None:
            self.build(_inputs.check_input_dim(input_dim))

    # ---- properties ----------------------------------------------------------

    @property
    def l2(self):
        """:math:`\\lambda`, the L2 coefficient (settable)."""
        return self._l2

    @l2.setter
    def l2(self, value):
        self._l2 = _inputs.check_l2(value)

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
        self._normalizer = _inputs.check_normalizer(norm, self.input_dim)

    @property
    def loss(self):
        """The loss the output activation implies: ``"bce"``, ``"cce"`` or ``"mse"``."""
        return _codes.LOSS_NAMES[self._loss]

    @property
    def is_classifier(self):
        """True for a sigmoid or softmax output."""
        return self._loss != _codes.MSE

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

    def _require_built(self):
        if self._nodes is None:
            raise RuntimeError(
                "the model is not built yet: give Sequential(..., input_dim=n_features) "
                "or call forward()/fit() once"
            )

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
        return float(J), Arenas.named(G, self._names)

    def parameters(self):
        """``[(name, array), ...]``: writable views into the arena, in layer order.

        Names are ``"dense_0.W"``, ``"dense_0.b"``, ``"batchnorm_0.gamma"``,
        ``"batchnorm_0.beta"``, ... (each layer type numbered from 0).  Assigning
        into a view (``W[...] = ...``) sets the weights.
        """
        self._require_built()
        return Arenas.named(self._params, self._names)

    def buffers(self):
        """``[(name, array), ...]``: writable views of the BatchNorm running statistics."""
        self._require_built()
        return Arenas.named(self._stats, self._buffer_names)

    # ---- state, config, copies -------------------------------------------------------

    def state_dict(self):
        """Copies of all state arrays: ``{"params": arena, "running": BatchNorm stats}``."""
        self._require_built()
        return self._arenas.state_dict()

    def load_state_dict(self, state):
        """Copy ``state`` (from :meth:`state_dict`) into the model, checked first.

        Raises
        ------
        ValueError
            On a missing key, a wrong length or a non-finite value; the model is
            left unchanged.
        """
        self._require_built()
        self._arenas.load_state_dict(state)

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
            cfg["dtype"] = _inputs.check_dtype(dtype).name
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

    # ---- shortcuts to the modules built on the model ---------------------------------
    # fusednet._fit, fusednet.onnx and fusednet.io import this module; these
    # methods import them when called, so the import graph stays one-way.

    def fit(self, X, y, **kwargs):
        """Train with the Keras-style shortcut :func:`fusednet._fit.fit` (a thin layer over :class:`~fusednet.Trainer`).

        ``model.fit(X, y, epochs=10, batch_size=64, validation_data=None,
        validation_split=0.0, callbacks=(), optimizer=None)`` returns the
        :class:`~fusednet.History`; a later call continues with the same optimiser.
        """
        from .._fit import fit

        return fit(self, X, y, **kwargs)

    def to_onnx(self, path=None, **kwargs):
        """The inference graph as an ONNX model (see :func:`fusednet.onnx.to_onnx`; needs ``fusednet[onnx]``)."""
        from ..onnx import to_onnx

        return to_onnx(self, path, **kwargs)

    def save(self, path):
        """Write the model to ``path`` (see :func:`fusednet.io.save_model`)."""
        from ..io import save_model

        return save_model(self, path)

    def plan(self):
        """The model as typed records, for compiled code that walks the layers.

        The one description of the model that compiled code reads: the
        batched gradient check walks it, and the one-call step groups it per
        Dense layer (:func:`fusednet._fused.layer_table`).

        Returns
        -------
        dict
            ``"layers"``: one :data:`~fusednet.kernels._plan.NODE_DTYPE`
            record per layer (``op``: :data:`~fusednet.kernels._codes.DENSE`,
            ``ACTIVATION``, ``DROPOUT`` or ``BATCHNORM``; ``act``, ``n_in``,
            ``n_out``; offsets ``w_off``, ``b_off``, ``gamma_off``,
            ``beta_off`` into the parameter arena and ``rmean_off``,
            ``rvar_off`` into the running statistics, -1 when absent;
            ``index``, ``slope``, ``keep_prob``, ``bn_eps``,
            ``bn_momentum``); ``"names"``: each layer's name; and ``"loss"``,
            ``"n_params"``, ``"n_decay"``, ``"n_stats"``, ``"input_dim"``,
            ``"seed"``.
        """
        self._require_built()
        key = (self._layout_key, self._loss, self.input_dim, self.seed)
        memo = self.__dict__.get("_plan_memo")
        if memo is None or memo[0] != key:  # the records of one layout are made once; each call gets its own copy
            memo = self._plan_memo = (key, _layout_plan(self._nodes, self._arenas, self._loss, self.input_dim,
                                                        self.seed))
        plan = dict(memo[1])
        plan["layers"], plan["names"] = plan["layers"].copy(), list(plan["names"])
        return plan

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
