r"""Layer specifications: plain data that a :class:`fusednet.Sequential` walks.

A layer here holds only its hyperparameters (sizes, an activation code, a keep
probability, batch-norm constants).  It owns no arrays: the model lays out
every parameter in one flat arena and every activation in one workspace, and
the compiled kernels receive those buffers plus the numbers below.  So the
same specs could be walked by a compiled whole-step routine with no Python in
between (see :meth:`fusednet.Sequential.plan`).

Layers
------
Dense(units, activation=None, init="auto", use_bias=True, leaky_slope=0.01)
    :math:`A = g(A_{prev} W + b)`, ``W`` of shape ``(n_in, units)``.
Activation(kind, leaky_slope=0.01)
    :math:`A = g(A_{prev})`.
Dropout(keep_prob)
    Inverted dropout, training only.
BatchNorm(momentum=0.9, eps=1e-5)
    :math:`\gamma \hat{x} + \beta` with batch statistics in training and running
    averages at inference.

The course writes ``W[l]`` of shape ``(n[l], n[l-1])`` and ``Z = W A + b`` on
column examples; ours is the transpose on row examples, ``Z = A W + b``.
"""

import math
import numbers

from ._validation import check_bool, check_positive, check_real
from .kernels import _codes, activation_code

__all__ = ["Layer", "Dense", "Activation", "Dropout", "BatchNorm", "INITS", "init_scale"]

#: weight initialisers (C1W3, C2W1); biases are always zero
INITS = ("auto", "zeros", "random", "he", "xavier", "glorot")

#: activations for which "auto" picks He
_HE_ACTS = (_codes.RELU, _codes.LEAKY_RELU)


def init_scale(init, n_in, n_out, act=_codes.LINEAR):
    r"""The standard deviation of a Dense layer's initial weights.

    Parameters
    ----------
    init : str
        One of :data:`INITS`.
    n_in, n_out : int
        Fan-in :math:`n^{[l-1]}` and fan-out :math:`n^{[l]}`.
    act : int
        Activation code the layer feeds (for ``"auto"``).

    Returns
    -------
    float
        ``0`` (zeros), ``0.01`` (random), :math:`\sqrt{2/n_{in}}` (He),
        :math:`\sqrt{1/n_{in}}` (Xavier, the course's tanh advice) or
        :math:`\sqrt{2/(n_{in}+n_{out})}` (Glorot).  ``"auto"``: He for
        relu/leaky_relu, Xavier otherwise.

    .. warning::
       Names differ between libraries: Keras' ``glorot_normal`` is the
       ``"glorot"`` here, and PyTorch's ``xavier_normal_`` too; the course
       calls :math:`\sqrt{1/n^{[l-1]}}` "Xavier", which is what ``"xavier"`` means.
    """
    if init == "auto":
        init = "he" if act in _HE_ACTS else "xavier"
    if init == "zeros":
        return 0.0
    if init == "random":
        return 0.01
    if init == "he":
        return math.sqrt(2.0 / n_in)
    if init == "xavier":
        return math.sqrt(1.0 / n_in)
    if init == "glorot":
        return math.sqrt(2.0 / (n_in + n_out))
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


def _slope(leaky_slope):
    return check_real("leaky_slope", leaky_slope, 0, 1, high_open=True)


def _act_code(activation, argname):
    if activation is not None and not isinstance(activation, str):
        raise TypeError(
            f"{argname} must be one of {sorted(_codes.ACTIVATIONS)} or None, got {activation!r}"
        )
    try:
        return activation_code(activation)
    except ValueError:
        raise ValueError(
            f"{argname} must be one of {sorted(_codes.ACTIVATIONS)} or None, got {activation!r}"
        ) from None


class Layer:
    """Base of the layer specs: hyperparameters only, no arrays.

    Subclasses set ``kind`` (the name stem of their parameters, e.g. ``"dense"``)
    and ``_fields`` (the constructor arguments, stored as attributes of the same
    names), which :meth:`get_config` and ``repr`` read.
    """

    kind = ""
    _fields = ()

    def get_config(self):
        """``{"type": class name, **constructor arguments}``, JSON-able."""
        cfg = {"type": type(self).__name__}
        cfg.update({f: getattr(self, f) for f in self._fields})
        return cfg

    @staticmethod
    def from_config(cfg):
        """Build a layer from :meth:`get_config`'s output."""
        if not isinstance(cfg, dict) or cfg.get("type") not in _TYPES:
            raise ValueError(f"not a layer config: {cfg!r}; known types: {sorted(_TYPES)}")
        args = {k: v for k, v in cfg.items() if k != "type"}
        return _TYPES[cfg["type"]](**args)

    def __repr__(self):
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    r"""Fully-connected layer, :math:`A = g(A_{prev} W + b)`.

    Parameters
    ----------
    units : int
        Output width :math:`n^{[l]}` (>= 1).
    activation : str or None
        ``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"leaky_relu"``, ``"softmax"``,
        ``"linear"`` or None (= linear).  The output layer's activation picks the
        loss (sigmoid: binary cross-entropy, softmax: categorical cross-entropy,
        linear: mean squared error).
    init : str
        Weight initialiser, one of :data:`INITS` (see :func:`init_scale`).
        ``"auto"`` reads this layer's activation, or for a linear Dense the
        activation of the Activation layer that follows it (through BatchNorm
        and Dropout).  Biases start at zero.
    use_bias : bool
        False drops ``b`` (the Dense before a BatchNorm needs none).
    leaky_slope : float
        Slope of leaky ReLU for ``z < 0``, in [0, 1).

    Notes
    -----
    ``W`` has shape ``(n_in, units)``: the transpose of the course's ``W[l]``.
    """

    kind = "dense"
    _fields = ("units", "activation", "init", "use_bias", "leaky_slope")

    def __init__(self, units, activation=None, init="auto", use_bias=True, leaky_slope=0.01):
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"units must be an int >= 1, got {units!r}")
        self.units = int(units)
        self.act = _act_code(activation, "activation")
        self.activation = activation
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.init = init
        self.use_bias = check_bool("use_bias", use_bias)
        self.leaky_slope = _slope(leaky_slope)


class Activation(Layer):
    r"""Element-wise (softmax: row-wise) activation, :math:`A = g(A_{prev})`.

    Parameters
    ----------
    kind : str or None
        One of ``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"leaky_relu"``,
        ``"softmax"``, ``"linear"`` (None = linear).
    leaky_slope : float
        Slope of leaky ReLU for ``z < 0``, in [0, 1).
    """

    kind = "activation"
    _fields = ("activation", "leaky_slope")

    def __init__(self, kind, leaky_slope=0.01):
        self.act = _act_code(kind, "kind")
        self.activation = kind
        self.leaky_slope = _slope(leaky_slope)

    def get_config(self):
        return {"type": "Activation", "kind": self.activation, "leaky_slope": self.leaky_slope}

    def __repr__(self):
        return f"Activation({self.activation!r}, leaky_slope={self.leaky_slope!r})"


class Dropout(Layer):
    r"""Inverted dropout (C2W1), active in training only.

    Each unit is kept with probability ``keep_prob`` and the kept ones are
    scaled by ``1/keep_prob``, so the expected activation is unchanged and
    nothing is rescaled at inference:

    .. math::

        D = [u < \text{keep\_prob}], \qquad A = A_{prev} \odot D / \text{keep\_prob}.

    The mask comes from a counter-based hash of ``(model seed, epoch, step,
    layer index, element index)``, so every backend and thread count draws the
    same mask and backward regenerates it instead of storing it.

    Parameters
    ----------
    keep_prob : float
        In (0, 1]; 1 disables the layer.
    """

    kind = "dropout"
    _fields = ("keep_prob",)

    def __init__(self, keep_prob):
        self.keep_prob = check_real("keep_prob", keep_prob, 0, 1, low_open=True)


class BatchNorm(Layer):
    r"""Batch normalisation (C2W3) over the units of the previous layer.

    .. math::

        \mu = \frac{1}{m}\sum_i z^{(i)}, \quad
        \sigma^2 = \frac{1}{m}\sum_i (z^{(i)} - \mu)^2, \quad
        \hat{z} = \frac{z - \mu}{\sqrt{\sigma^2 + \varepsilon}}, \quad
        \tilde{z} = \gamma \hat{z} + \beta

    in training (batch statistics, biased variance); at inference ``mu`` and
    ``sigma^2`` are running averages updated after every training step as
    ``r = momentum * r + (1 - momentum) * batch`` (starting from 0 and 1).

    Parameters
    ----------
    momentum : float
        In [0, 1).
    eps : float
        > 0, added to the variance.

    .. warning::
       PyTorch's ``momentum`` is the weight of the *new* batch
       (``r = (1 - m) r + m batch``, default 0.1) and it keeps the unbiased
       variance in its running average; here ``momentum`` weighs the old value
       (Keras' convention, default 0.9) and the running variance averages the
       biased batch variance, as the course's EWA.  A training batch of one
       example is refused (its variance is 0).
    """

    kind = "batchnorm"
    _fields = ("momentum", "eps")

    def __init__(self, momentum=0.9, eps=1e-5):
        self.momentum = check_real("momentum", momentum, 0, 1, high_open=True)
        self.eps = check_positive("eps", eps)


_TYPES = {c.__name__: c for c in (Dense, Activation, Dropout, BatchNorm)}
