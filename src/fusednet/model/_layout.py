r"""Arena layout: the flat parameter, gradient and running-statistics buffers and their per-layer views.

Parameters live in one flat buffer, the *arena*, in the model's dtype::

    [ dense_0.W | dense_1.W | ... | dense_0.b | batchnorm_0.gamma | batchnorm_0.beta | dense_1.b | ... ]
    \___________ n_decay ________/ \______________ in layer order, not regularised ______________/

All weight matrices come first (the L2-regularised segment, ``n_decay``
elements), then biases and batch-norm ``gamma``/``beta`` in layer order.  The
gradient arena has the same layout, and so has the optimiser's state, so one
optimiser step is one kernel call with ``l2 = lambd / m`` on the first
``n_decay`` elements.  Batch-norm running statistics live in a second flat
buffer (``running_mean`` then ``running_var`` per BatchNorm layer).

:class:`Arenas` allocates the buffers of a list of nodes and binds each node's
views (``W``, ``WT``, ``b``, ``dW``, ``db``, ``gamma``, ``beta``, ``dgamma``,
``dbeta``, ``running_mean``, ``running_var``; an Activation's ``zeros`` and
``scratch``).  :func:`init_weights` draws the initial weights into them and
:func:`plan` describes the layout as plain numbers for compiled code.
"""

import numpy as np

from ..kernels import _codes, _plan
from ..kernels._memory import zeros_aligned
from ..layers import Activation, BatchNorm, Dense, Dropout, init_scale
from ._nodes import _ActivationNode, _BatchNormNode, _DenseNode, _DropoutNode

__all__ = ["Arenas", "init_weights", "plan"]

_OP_OF = {Dense: _codes.DENSE, Activation: _codes.ACTIVATION, Dropout: _codes.DROPOUT, BatchNorm: _codes.BATCHNORM}


class Arenas:
    """The flat buffers of a model's nodes, with each node's views bound into them.

    Attributes
    ----------
    params, grads : numpy.ndarray, shape (n_params,)
        The parameter and gradient arenas (same layout).
    stats : numpy.ndarray, shape (n_stats,)
        BatchNorm running statistics.
    n_decay : int
        Length of the regularised weight segment at the front of the arenas;
        ``wseg`` is ``params[:n_decay]``.
    zeros, scratch : numpy.ndarray, shape (widest layer,)
        The bias of a Dense without one and of an Activation (zeros), and the
        bias gradient they write and nobody reads (scratch).
    names, buffer_names : list of (str, int, tuple)
        ``(name, offset, shape)`` of each parameter in ``params`` and of each
        running statistic in ``stats``, in layer order.
    """

    def __init__(self, nodes, dtype):
        # all W first (n_decay), then b / gamma / beta in layer order
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

        # the arenas start on a cache line: the kernels' vector loads of a row of W never straddle two
        self.params = P = zeros_aligned(n_params, dtype)
        self.grads = G = zeros_aligned(n_params, dtype)
        self.stats = S = zeros_aligned(n_stats, dtype)
        self.zeros = np.zeros(wmax, dtype)
        self.scratch = np.zeros(wmax, dtype)
        self.n_decay = n_decay
        self.wseg = P[:n_decay]
        self.names = []
        self.buffer_names = []
        s_off = 0
        for node in nodes:
            if isinstance(node, _DenseNode):
                o, shape = w_off[node.index], (node.n_in, node.n_out)
                size = node.n_in * node.n_out
                node.W = P[o : o + size].reshape(shape)
                node.WT = node.W.T
                node.dW = G[o : o + size].reshape(shape)
                self.names.append((node.name + ".W", o, shape))
                if node.use_bias:
                    o = rest_off[node.index]
                    node.b = P[o : o + node.n_out]
                    node.db = G[o : o + node.n_out]
                    self.names.append((node.name + ".b", o, (node.n_out,)))
                else:
                    node.b = self.zeros[: node.n_out]
                    node.db = self.scratch[: node.n_out]
            elif isinstance(node, _BatchNormNode):
                o, w = rest_off[node.index], node.n_out
                node.gamma, node.beta = P[o : o + w], P[o + w : o + 2 * w]
                node.dgamma, node.dbeta = G[o : o + w], G[o + w : o + 2 * w]
                node.gamma[...] = 1.0
                self.names.append((node.name + ".gamma", o, (w,)))
                self.names.append((node.name + ".beta", o + w, (w,)))
                node.running_mean = S[s_off : s_off + w]
                node.running_var = S[s_off + w : s_off + 2 * w]
                node.running_var[...] = 1.0
                self.buffer_names.append((node.name + ".running_mean", s_off, (w,)))
                self.buffer_names.append((node.name + ".running_var", s_off + w, (w,)))
                s_off += 2 * w
            elif isinstance(node, _ActivationNode):
                node.zeros = self.zeros[: node.n_out]
                node.scratch = self.scratch[: node.n_out]

    @staticmethod
    def named(flat, names):
        """``[(name, view), ...]`` of ``flat`` (an arena or a copy of one) for ``names``."""
        return [(name, flat[o : o + int(np.prod(shape))].reshape(shape)) for name, o, shape in names]

    def state_dict(self):
        """Copies of the state: ``{"params": arena, "running": BatchNorm stats}``."""
        return {"params": self.params.copy(), "running": self.stats.copy()}

    def load_state_dict(self, state):
        """Copy ``state`` into the arenas after checking all of it (ValueError; nothing changes then)."""
        arrays = {}
        for key, target in (("params", self.params), ("running", self.stats)):
            if key not in state:
                raise ValueError(f"state is missing {key!r}")
            a = np.asarray(state[key])
            if a.ndim != 1 or a.shape[0] != target.shape[0]:
                raise ValueError(f"state[{key!r}] must have shape {target.shape}, got {a.shape}")
            if a.dtype.kind not in "biuf" or not np.isfinite(a).all():
                raise ValueError(f"state[{key!r}] must hold finite numbers")
            arrays[key] = a
        np.copyto(self.params, arrays["params"], casting="unsafe")
        np.copyto(self.stats, arrays["running"], casting="unsafe")


def init_weights(nodes, rng):
    """Draw each Dense's ``W`` from ``rng``, in layer order, with the scale of its ``init``.

    ``"auto"`` reads the Dense's activation, or for a linear Dense the one of
    the Activation that follows it (looking through BatchNorm and Dropout).
    Biases, ``beta`` and the running means stay 0; ``gamma`` and the running
    variances 1.
    """
    for i, node in enumerate(nodes):
        if not isinstance(node, _DenseNode):
            continue
        act = node.act
        if act == _codes.LINEAR:
            for nxt in nodes[i + 1 :]:
                if isinstance(nxt, _ActivationNode):
                    act = nxt.act
                    break
                if isinstance(nxt, _DenseNode):
                    break
        scale = init_scale(node.layer.init, node.n_in, node.n_out, act)
        if scale == 0.0:
            node.W[...] = 0.0
        else:
            node.W[...] = rng.standard_normal((node.n_in, node.n_out)) * scale


def plan(nodes, arenas, loss, input_dim, seed):
    """The layout as typed records (see :meth:`fusednet.model.Sequential.plan`)."""
    table = _plan.node_table(len(nodes))
    P0 = arenas.params.__array_interface__["data"][0]
    S0 = arenas.stats.__array_interface__["data"][0] if arenas.stats.size else 0
    isz = arenas.params.itemsize

    def off(a, base):
        return (a.__array_interface__["data"][0] - base) // isz

    for rec, node in zip(table, nodes):
        rec["op"], rec["n_in"], rec["n_out"], rec["index"] = _OP_OF[type(node.layer)], node.n_in, node.n_out, node.index
        if isinstance(node, _DenseNode):
            rec["act"], rec["slope"], rec["w_off"] = node.act, node.slope, off(node.W, P0)
            if node.use_bias:
                rec["b_off"] = off(node.b, P0)
        elif isinstance(node, _ActivationNode):
            rec["act"], rec["slope"] = node.act, node.slope
        elif isinstance(node, _DropoutNode):
            rec["keep_prob"] = node.keep_prob
        else:
            rec["gamma_off"], rec["beta_off"] = off(node.gamma, P0), off(node.beta, P0)
            rec["rmean_off"], rec["rvar_off"] = off(node.running_mean, S0), off(node.running_var, S0)
            rec["bn_eps"], rec["bn_momentum"] = node.eps, node.momentum
    return {
        "layers": table,
        "names": [node.name for node in nodes],
        "loss": loss,
        "n_params": arenas.params.size,
        "n_decay": arenas.n_decay,
        "n_stats": arenas.stats.size,
        "input_dim": input_dim,
        "seed": seed,
    }
