r"""Optimisers: in-place parameter updates through the fused kernels.

Each optimiser owns its hyperparameters, its step count ``t`` and its state
arrays (allocated as zeros, in the parameters' dtype, on the first step) and
calls one raw kernel of :mod:`fusednet.kernels` per parameter array.  The model
passes one flat parameter buffer and one flat gradient buffer, so a whole
training step is one kernel call.

A steady-state :meth:`Optimizer.step` allocates nothing: the kernel is resolved
once (and again only when the global backend changes), and the arrays are
validated once and recognised by identity afterwards.

The course's exponentially weighted average (C2W2) is :func:`ewa`.
"""

import math
import numbers
from collections.abc import Mapping

import numpy as np

from . import kernels as _k
from ._validation import check_bool as _flag
from ._validation import check_positive as _positive
from ._validation import check_real as _real
from .kernels import _codes
from .kernels._memory import zeros_aligned

__all__ = ["Optimizer", "GD", "Momentum", "RMSProp", "Adam", "ewa"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
#: an empty state buffer per dtype, for the fused step of optimisers with fewer slots
_EMPTY = {dt: np.empty(0, dt) for dt in _FLOATS}


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------


def _beta(name, value):
    """A decay rate: a real number in [0, 1)."""
    return _real(name, value, 0, 1, high_open=True)


class _Hyper:
    """A hyperparameter attribute, checked whenever it is set."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name
        self.attr = "_" + name

    def __get__(self, obj, objtype=None):
        return self if obj is None else getattr(obj, self.attr)

    def __set__(self, obj, value):
        setattr(obj, self.attr, self.check(self.name, value))


def _array(x, name, writable):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and not x.flags.writeable:
        raise ValueError(f"{name} is updated in place and must be writable")


def _address_range(a):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def _check_overlaps(ws, gs, wnames, gnames):
    """No parameter array may share memory with another parameter or a gradient.

    Contiguous arrays occupy exact address ranges, so a sort-and-sweep finds
    every overlap that involves a parameter (gradients may overlap each other).
    """
    spans = [(*_address_range(w), True, n) for w, n in zip(ws, wnames) if w.nbytes]
    spans += [(*_address_range(g), False, n) for g, n in zip(gs, gnames) if g.nbytes]
    spans.sort(key=lambda s: s[0])
    end_any, name_any = -1, None
    end_param, name_param = -1, None
    for start, end, is_param, name in spans:
        if is_param and start < end_any:
            raise ValueError(f"{name} shares memory with {name_any}")
        if not is_param and start < end_param:
            raise ValueError(f"{name} shares memory with {name_param}")
        if end > end_any:
            end_any, name_any = end, name
        if is_param and end > end_param:
            end_param, name_param = end, name


# --------------------------------------------------------------------------
# the optimisers
# --------------------------------------------------------------------------


class Optimizer:
    """Base class: validation, state, kernel resolution, ``state_dict``.

    Subclasses set ``_kernel_name`` (a raw kernel of :mod:`fusednet.kernels`),
    ``_hypers`` (the hyperparameter names, ``"lr"`` first), ``_slots`` (the
    names of the per-array state buffers) and implement :meth:`_apply`.

    Parameters
    ----------
    backend : str, optional
        Kernel backend for this optimiser (``"numpy"``, ``"numba"``,
        ``"cython"`` or ``"auto"``).  An explicit choice beats
        :func:`fusednet.set_backend`; None follows the global choice.
    """

    _kernel_name = None
    _hypers = ("lr",)
    _slots = ()

    lr = _Hyper(_positive)

    def __init__(self, lr, *, backend=None):
        if backend is not None:
            _k.resolve(self._kernel_name, backend)  # raises ValueError when unknown
        self.lr = lr
        self._backend = backend
        self._kernel = None
        self._kernel_key = None
        self.reset()

    # ---- public API --------------------------------------------------------

    @property
    def t(self):
        """The number of steps taken (Adam's bias correction uses ``t`` after the increment)."""
        return self._t

    @property
    def backend(self):
        """The explicit backend given to the constructor, or None (the global choice)."""
        return self._backend

    def reset(self):
        """Forget the step count and the state; the next step starts afresh."""
        self._t = 0
        self._state = None  # list over arrays of tuples over slots, shaped like params
        self._unbind()

    def step(self, params, grads, lr=None, *, l2=0.0, n_decay=None):
        """Update ``params`` in place from ``grads``; ``t += 1``.

        Parameters
        ----------
        params : numpy.ndarray or list/tuple of numpy.ndarray
            float32 or float64, C-contiguous, writable; updated in place.  No
            parameter array may share memory with another one or with a
            gradient.
        grads : numpy.ndarray or list/tuple of numpy.ndarray
            Same structure as ``params``, each with the shape and dtype of its
            parameter.
        lr : float, optional
            Learning rate for this step only (finite, > 0); default ``self.lr``.
        l2 : float, default 0.0
            L2 coefficient folded into the gradient: the update reads
            :math:`g + l_2 w` on the first ``n_decay`` elements of each
            (flattened) array and :math:`g` beyond.  The course's L2
            (C2W1: ``dW += lambd/m * W``) is ``l2 = lambd / m``.
        n_decay : int, optional
            How many leading elements of each array are regularised; None
            means all of them.  The model's flat arena holds the regularised
            weights first.

        Notes
        -----
        Arrays are validated when they are first seen and recognised by
        identity (and shape) afterwards, so a training loop that passes the
        same buffers pays no validation and allocates nothing.  State is
        allocated on the first step; later steps must pass arrays of the same
        number, shapes and dtype (:meth:`reset` starts over).
        """
        if lr is None:
            lr = self._lr
        else:
            lr = _positive("lr", lr)
        if l2 != 0.0:
            l2 = _real("l2", l2)
            if l2 < 0.0:
                raise ValueError(f"l2 must be >= 0, got {l2!r}")
        else:
            l2 = 0.0
        if n_decay is not None:
            if isinstance(n_decay, bool) or not isinstance(n_decay, numbers.Integral):
                raise TypeError(f"n_decay must be an int or None, got {n_decay!r}")
            n_decay = int(n_decay)
            if n_decay < 0:
                raise ValueError(f"n_decay must be >= 0, got {n_decay}")
        if not self._bound(params, grads):
            self._bind(params, grads)
        key = self._backend if self._backend is not None else _k.get_backend()
        if key != self._kernel_key:
            self._kernel = _k.resolve(self._kernel_name, key)
            self._kernel_key = key
        self._t += 1
        self._apply(self._kernel, lr, l2, n_decay, _k.get_num_threads())

    def hyperparameters(self):
        """``{name: value}`` of the hyperparameters, ``lr`` first."""
        return {h: getattr(self, h) for h in self._hypers}

    def state_dict(self):
        """A snapshot: plain numbers, a string and numpy arrays (copies).

        Returns
        -------
        dict
            ``"class"`` (the class name), each hyperparameter, ``"t"``,
            ``"n_arrays"`` (the number of parameter arrays the state was built
            for, 0 before the first step) and, per state buffer ``slot`` and
            array ``i``, ``f"{slot}.{i}"`` shaped like ``params[i]``.  The
            whole dict survives ``numpy.savez`` / ``numpy.load`` (with
            ``allow_pickle=False``), and its scalars fit JSON.
        """
        d = {"class": type(self).__name__}
        d.update(self.hyperparameters())
        d["t"] = self._t
        state = self._state or []
        d["n_arrays"] = len(state)
        for i, bufs in enumerate(state):
            for slot, buf in zip(self._slots, bufs):
                d[f"{slot}.{i}"] = buf.copy()
        return d

    def load_state_dict(self, d):
        """Restore a :meth:`state_dict` snapshot (copied in).

        Saving, loading into a fresh optimiser and continuing is bitwise
        identical to continuing the original.  The shapes of the state are
        checked against the parameters on the next :meth:`step`.

        Raises
        ------
        ValueError
            When the class, the keys, a hyperparameter, ``t`` or a state array
            does not fit; the optimiser is left unchanged.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"state dict must be a mapping, got {type(d).__name__}")
        # numbers and the class name come back from numpy.savez/numpy.load as 0-d arrays
        d = {
            k: v.item() if isinstance(v, np.ndarray) and v.ndim == 0 and "." not in str(k) else v
            for k, v in d.items()
        }
        name = type(self).__name__
        if d.get("class") != name:
            raise ValueError(f"state dict is for {d.get('class')!r}, not {name!r}")
        n = d.get("n_arrays")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"state dict entry 'n_arrays' must be an int >= 0, got {n!r}")
        n = int(n) if self._slots else 0
        expected = {"class", "t", "n_arrays", *self._hypers}
        expected |= {f"{s}.{i}" for i in range(n) for s in self._slots}
        if set(d) != expected:
            missing = sorted(expected - set(d))
            extra = sorted(set(d) - expected)
            raise ValueError(
                f"state dict for {name}: missing keys {missing}, unexpected keys {extra}"
            )
        hypers = {}
        for h in self._hypers:
            try:
                hypers[h] = getattr(type(self), h).check(h, d[h])
            except TypeError as exc:
                raise ValueError(str(exc)) from None
        t = d["t"]
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
            raise ValueError(f"state dict entry 't' must be an int >= 0, got {t!r}")
        state = []
        for i in range(n):
            bufs = []
            for s in self._slots:
                a = d[f"{s}.{i}"]
                key = f"state dict entry {s}.{i}"
                if not isinstance(a, np.ndarray) or a.dtype not in _FLOATS:
                    raise ValueError(
                        f"{key} must be a float32 or float64 numpy.ndarray, got {a!r:.80}"
                    )
                if bufs and (a.shape != bufs[0].shape or a.dtype != bufs[0].dtype):
                    raise ValueError(
                        f"{key} has shape {a.shape} and dtype {a.dtype}; "
                        f"{self._slots[0]}.{i} has {bufs[0].shape} and {bufs[0].dtype}"
                    )
                bufs.append(np.array(a, order="C", copy=True))
            state.append(tuple(bufs))
        for h, v in hypers.items():
            setattr(self, "_" + h, v)
        self._t = int(t)
        self._state = state if n else None
        self._unbind()

    def __repr__(self):
        args = ", ".join(f"{h}={getattr(self, h)!r}" for h in self._hypers)
        if self._backend is not None:
            args += f", backend={self._backend!r}"
        return f"{type(self).__name__}({args})"

    def __getstate__(self):
        # the kernel and the views of the bound arrays are rebuilt on the next step
        s = self.__dict__.copy()
        s.update(_kernel=None, _kernel_key=None)
        s.update(dict.fromkeys(("_ws", "_gs", "_shapes", "_single", "_bufs"), None))
        return s

    def __setstate__(self, s):
        self.__dict__.update(s)

    # ---- binding: validate once, then recognise the arrays by identity -------

    def _unbind(self):
        self._ws = self._gs = self._shapes = self._single = self._bufs = None

    def _bound(self, params, grads):
        ws = self._ws
        if ws is None:
            return False
        if isinstance(params, np.ndarray):
            return (
                self._single
                and params is ws[0]
                and grads is self._gs[0]
                and params.shape == self._shapes[0]
                and grads.shape == self._shapes[0]
            )
        if self._single or not isinstance(params, (list, tuple)) or len(params) != len(ws):
            return False
        if not isinstance(grads, (list, tuple)) or len(grads) != len(ws):
            return False
        gs, shapes = self._gs, self._shapes
        for i in range(len(ws)):
            w, g = params[i], grads[i]
            if w is not ws[i] or g is not gs[i] or w.shape != shapes[i] or g.shape != shapes[i]:
                return False
        return True

    def _bind(self, params, grads):
        single = isinstance(params, np.ndarray)
        if single:
            if not isinstance(grads, np.ndarray):
                raise TypeError(
                    f"grads must be a numpy.ndarray like params, got {type(grads).__name__}"
                )
            ws, gs = (params,), (grads,)
            wnames, gnames = ("params",), ("grads",)
        else:
            if not isinstance(params, (list, tuple)):
                raise TypeError(
                    f"params must be a numpy.ndarray or a list/tuple of them, "
                    f"got {type(params).__name__}"
                )
            if not isinstance(grads, (list, tuple)):
                raise TypeError(
                    f"grads must be a list/tuple of numpy.ndarray like params, "
                    f"got {type(grads).__name__}"
                )
            if len(grads) != len(params):
                raise ValueError(
                    "params and grads must have the same length, "
                    f"got {len(params)} and {len(grads)}"
                )
            ws, gs = tuple(params), tuple(grads)
            wnames = tuple(f"params[{i}]" for i in range(len(ws)))
            gnames = tuple(f"grads[{i}]" for i in range(len(ws)))
        for w, g, wn, gn in zip(ws, gs, wnames, gnames):
            _array(w, wn, writable=True)
            _array(g, gn, writable=False)
            if g.dtype != w.dtype:
                raise TypeError(f"{gn} must have the dtype of {wn} ({w.dtype}), got {g.dtype}")
            if g.shape != w.shape:
                raise ValueError(f"{gn} must have the shape of {wn} {w.shape}, got {g.shape}")
        _check_overlaps(ws, gs, wnames, gnames)
        state = self._state
        if self._slots and state:
            if len(state) != len(ws):
                raise ValueError(
                    f"params has {len(ws)} array(s) but the optimiser state was built for "
                    f"{len(state)}; pass the same parameters or call reset()"
                )
            for w, wn, bufs in zip(ws, wnames, state):
                if w.shape != bufs[0].shape or w.dtype != bufs[0].dtype:
                    raise ValueError(
                        f"{wn} has shape {w.shape} and dtype {w.dtype} but the optimiser state "
                        f"was built for shape {bufs[0].shape} and dtype {bufs[0].dtype}; "
                        f"pass the same parameters or call reset()"
                    )
        elif self._slots:
            state = [tuple(zeros_aligned(w.shape, w.dtype) for _ in self._slots) for w in ws]
        # flat views handed to the kernel; empty arrays need no call
        self._bufs = [
            (w.reshape(-1), g.reshape(-1), w.size, *(b.reshape(-1) for b in bufs))
            for w, g, bufs in zip(ws, gs, state or [()] * len(ws))
            if w.size
        ]
        self._state = state
        self._ws, self._gs = ws, gs
        self._shapes = tuple(w.shape for w in ws)
        self._single = single

    def _apply(self, kernel, lr, l2, n_decay, n_threads):  # pragma: no cover - abstract
        raise NotImplementedError

    def _fused(self, params, grads):
        """For the trainer's one-call step: bind like :meth:`step` (without moving ``t``) and return
        ``(kind, beta1, beta2, eps, bc1, bc2, state1, state2)`` of step ``t + 1``, or None when this
        optimiser has no fused form.  The caller adds 1 to ``_t`` once the update is applied."""
        if not self._bound(params, grads):
            self._bind(params, grads)
        if len(self._bufs) != 1:
            return None
        return self._fused_hypers(self._t + 1, self._bufs[0][3:])

    def _fused_hypers(self, t, state):
        return None


def bias_correction(beta, t):
    r"""The bias correction of an exponentially weighted average after ``t`` steps (C2W2).

    .. math::

        c_t = 1 - \beta^t, \qquad \hat v_t = v_t / c_t

    The one source of this formula: Momentum (with ``bias_correction=True``),
    Adam's two moments, :func:`ewa`, and -- mirrored as ``_bias_corrections``
    in ``kernels/_step.pxi`` -- the compiled step.
    """
    return 1.0 - beta**t


_bias_correction = bias_correction  # for functions whose argument of that name hides it


def update_bound(kind, lr, l2, beta1, beta2, eps, bc1, gnorm, bound, limit):
    r"""Whether an update cannot overflow, and upper bounds of the values after it.

    ``bound`` holds upper bounds of :math:`|w|`, :math:`|s_1|`, :math:`|s_2|` (the
    parameters and the optimiser's two state buffers) before the step and
    ``gnorm`` :math:`= \|g\|_2 \ge \max |g|`.  With
    :math:`g_m = \|g\|_2 + l_2 \, b_w \ge |g + l_2 w|`, every intermediate of the
    update stays below

    * GD: :math:`b_w + \alpha g_m`;
    * momentum: :math:`v \le \beta b_1 + (1 - \beta) g_m` and :math:`b_w + \alpha v / c_1`;
    * RMSProp: :math:`s \le \beta b_1 + (1 - \beta) g_m^2` and
      :math:`b_w + \alpha \min(g_m / \varepsilon, 1.01 / \sqrt{1 - \beta})`, since
      :math:`s \ge (1 - \beta) g^2`;
    * Adam: :math:`m` as momentum's :math:`v`, :math:`v` as RMSProp's :math:`s`, and
      :math:`b_w + \alpha (m / c_1) / \varepsilon`.

    Parameters
    ----------
    kind : int
        ``fusednet.kernels._codes.OPT_*``.
    lr, l2, beta1, beta2, eps, bc1 : float
        The step's hyperparameters (``l2`` already divided by the batch size;
        ``bc1`` the momentum or first-moment bias correction, 1 without).
    gnorm : float
    bound : sequence of 3 floats
    limit : float
        The largest value allowed (a quarter of the dtype's largest finite value).

    Returns
    -------
    (bool, tuple of 3 floats)
        True when every bound (and :math:`g_m^2`, for RMSProp and Adam) stays below ``limit``; the
        bounds after the step.

    Mirrors ``_update_bounded`` in ``kernels/_ckernels.pyx``; a test holds the two equal.
    """
    gm = gnorm + l2 * bound[0]
    s1, s2 = bound[1], bound[2]
    if kind == _codes.OPT_GD:
        dw = lr * gm
    elif kind == _codes.OPT_MOMENTUM:
        s1 = beta1 * s1 + (1.0 - beta1) * gm
        dw = lr * s1 / bc1
    elif kind == _codes.OPT_RMSPROP:
        s1 = beta2 * s1 + (1.0 - beta2) * gm * gm
        dw = lr * min(gm / eps, 1.01 / math.sqrt(1.0 - beta2))
    else:
        s1 = beta1 * s1 + (1.0 - beta1) * gm
        s2 = beta2 * s2 + (1.0 - beta2) * gm * gm
        dw = lr * (s1 / bc1) / eps
    after = (bound[0] + dw, s1, s2)
    squares = kind in (_codes.OPT_RMSPROP, _codes.OPT_ADAM)
    return all(x < limit for x in after) and (not squares or gm * gm < limit), after


class GD(Optimizer):
    r"""Plain (mini-batch) gradient descent.

    .. math::

        w \leftarrow w - \alpha \, g

    Parameters
    ----------
    lr : float, default 0.1
        Learning rate :math:`\alpha`, finite and > 0.
    backend : str, optional
        Kernel backend for this optimiser; see :class:`Optimizer`.
    """

    _kernel_name = "gd_update"
    _hypers = ("lr",)

    def __init__(self, lr=0.1, *, backend=None):
        super().__init__(lr, backend=backend)

    def _apply(self, kernel, lr, l2, n_decay, n_threads):
        for w, g, n in self._bufs:
            kernel(w, g, lr, l2, n if n_decay is None else min(n_decay, n), n_threads)

    def _fused_hypers(self, t, state):
        return (_codes.OPT_GD, 0.0, 0.0, 0.0, 1.0, 1.0, _EMPTY[self._ws[0].dtype], _EMPTY[self._ws[0].dtype])


class Momentum(Optimizer):
    r"""Gradient descent with momentum, in the course's form (C2W2).

    .. math::

        v_t = \beta \, v_{t-1} + (1 - \beta) \, g_t, \qquad
        w \leftarrow w - \alpha \, v_t
        \quad \Bigl(\text{bias-corrected: } w \leftarrow w - \alpha \,
        \frac{v_t}{1 - \beta^t}\Bigr)

    with :math:`v_0 = 0`: an exponentially weighted average of the gradients
    over roughly :math:`1 / (1 - \beta)` steps.

    .. warning::
       PyTorch's ``SGD(momentum=mu)`` (and Keras' ``SGD``) keep
       :math:`b_t = \mu b_{t-1} + g_t` and step by :math:`\alpha b_t`.  That is
       :math:`b_t = v_t / (1 - \beta)`: ``torch.optim.SGD(lr=lr * (1 - beta),
       momentum=beta)`` takes the same steps as ``Momentum(lr, beta)``, and the
       same ``lr`` moves PyTorch :math:`1 / (1 - \beta)` (10x for 0.9) further.
       ``SGD(momentum=beta, dampening=beta)`` is *not* this form either: its
       first step sets :math:`b_1 = g_1` without dampening, so its buffer stays
       :math:`\beta^t g_1` above :math:`v_t`.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate :math:`\alpha`, finite and > 0.
    beta : float, default 0.9
        :math:`\beta \in [0, 1)`; 0 is plain gradient descent.
    bias_correction : bool, default False
        Divide by :math:`1 - \beta^t`.  The course notes it is rarely used:
        the bias fades within the first few multiples of :math:`1 / (1 - \beta)`
        steps.
    backend : str, optional
        Kernel backend for this optimiser; see :class:`Optimizer`.
    """

    _kernel_name = "momentum_update"
    _hypers = ("lr", "beta", "bias_correction")
    _slots = ("v",)

    beta = _Hyper(_beta)
    bias_correction = _Hyper(_flag)

    def __init__(self, lr=0.01, beta=0.9, bias_correction=False, *, backend=None):
        self.beta = beta
        self.bias_correction = bias_correction
        super().__init__(lr, backend=backend)

    def _apply(self, kernel, lr, l2, n_decay, n_threads):
        beta = self._beta
        bc = bias_correction(beta, self._t) if self._bias_correction else 1.0
        for w, g, n, v in self._bufs:
            nd = n if n_decay is None else min(n_decay, n)
            kernel(w, g, v, lr, beta, bc, l2, nd, n_threads)

    def _fused_hypers(self, t, state):
        bc = bias_correction(self._beta, t) if self._bias_correction else 1.0
        return (_codes.OPT_MOMENTUM, self._beta, 0.0, 0.0, bc, 1.0, state[0], _EMPTY[state[0].dtype])


class RMSProp(Optimizer):
    r"""RMSProp (C2W2): divide the gradient by a running root mean square.

    .. math::

        s_t = \beta \, s_{t-1} + (1 - \beta) \, g_t^2, \qquad
        w \leftarrow w - \alpha \, \frac{g_t}{\sqrt{s_t} + \epsilon}

    element-wise, with :math:`s_0 = 0`.

    .. warning::
       Libraries place :math:`\epsilon` differently.  PyTorch's
       ``RMSprop(alpha=beta, eps=eps)`` adds it outside the square root, as
       here (and as the course) -- the two take the same steps.  Keras adds it
       inside, :math:`g / \sqrt{s + \epsilon}`, with a default of 1e-7; the
       same number then means a much larger floor (:math:`\sqrt{10^{-7}}
       \approx 3 \cdot 10^{-4}`).

    Parameters
    ----------
    lr : float, default 0.001
        Learning rate :math:`\alpha`, finite and > 0.
    beta : float, default 0.9
        :math:`\beta \in [0, 1)`.
    eps : float, default 1e-8
        :math:`\epsilon > 0`, added *outside* the square root.
    backend : str, optional
        Kernel backend for this optimiser; see :class:`Optimizer`.
    """

    _kernel_name = "rmsprop_update"
    _hypers = ("lr", "beta", "eps")
    _slots = ("s",)

    beta = _Hyper(_beta)
    eps = _Hyper(_positive)

    def __init__(self, lr=0.001, beta=0.9, eps=1e-8, *, backend=None):
        self.beta = beta
        self.eps = eps
        super().__init__(lr, backend=backend)

    def _apply(self, kernel, lr, l2, n_decay, n_threads):
        beta, eps = self._beta, self._eps
        for w, g, n, s in self._bufs:
            nd = n if n_decay is None else min(n_decay, n)
            kernel(w, g, s, lr, beta, eps, l2, nd, n_threads)

    def _fused_hypers(self, t, state):
        return (_codes.OPT_RMSPROP, 0.0, self._beta, self._eps, 1.0, 1.0, state[0], _EMPTY[state[0].dtype])


class Adam(Optimizer):
    r"""Adam (C2W2): momentum and RMSProp together, bias-corrected.

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,

        \hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad
        \hat v_t = \frac{v_t}{1 - \beta_2^t}, \qquad
        w \leftarrow w - \alpha \, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}

    element-wise, with :math:`m_0 = v_0 = 0` and :math:`t` the step count after
    the increment (1 on the first step).

    .. warning::
       This is the course's form and PyTorch's ``torch.optim.Adam(betas=(beta1,
       beta2), eps=eps)`` and optax's ``adam``.  Keras (and TensorFlow 1) use the
       paper's "epsilon hat" form, :math:`\alpha \sqrt{1 - \beta_2^t} / (1 -
       \beta_1^t) \cdot m_t / (\sqrt{v_t} + \hat\epsilon)`, which equals this one
       with :math:`\epsilon = \hat\epsilon / \sqrt{1 - \beta_2^t}`: early steps
       differ when :math:`\epsilon` matters, and Keras' default is 1e-7.

    Parameters
    ----------
    lr : float, default 0.001
        Learning rate :math:`\alpha`, finite and > 0.
    beta1 : float, default 0.9
        :math:`\beta_1 \in [0, 1)`, the momentum term.
    beta2 : float, default 0.999
        :math:`\beta_2 \in [0, 1)`, the RMSProp term.
    eps : float, default 1e-8
        :math:`\epsilon > 0`, added outside the square root of the
        *bias-corrected* :math:`\hat v_t`.
    backend : str, optional
        Kernel backend for this optimiser; see :class:`Optimizer`.
    """

    _kernel_name = "adam_update"
    _hypers = ("lr", "beta1", "beta2", "eps")
    _slots = ("m", "v")

    beta1 = _Hyper(_beta)
    beta2 = _Hyper(_beta)
    eps = _Hyper(_positive)

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, *, backend=None):
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        super().__init__(lr, backend=backend)

    def _apply(self, kernel, lr, l2, n_decay, n_threads):
        b1, b2, eps, t = self._beta1, self._beta2, self._eps, self._t
        bc1 = bias_correction(b1, t)
        bc2 = bias_correction(b2, t)
        for w, g, n, m, v in self._bufs:
            nd = n if n_decay is None else min(n_decay, n)
            kernel(w, g, m, v, lr, b1, b2, eps, bc1, bc2, l2, nd, n_threads)

    def _fused_hypers(self, t, state):
        b1, b2 = self._beta1, self._beta2
        return (_codes.OPT_ADAM, b1, b2, self._eps, bias_correction(b1, t), bias_correction(b2, t), state[0], state[1])


# --------------------------------------------------------------------------
# the exponentially weighted average of a series
# --------------------------------------------------------------------------


def ewa(values, beta=0.9, bias_correction=False):
    r"""The exponentially weighted (moving) average of a 1-D series (C2W2).

    .. math::

        v_0 = 0, \qquad v_t = \beta \, v_{t-1} + (1 - \beta) \, \theta_t,
        \qquad \Bigl(\text{bias-corrected: } \frac{v_t}{1 - \beta^t}\Bigr)

    for :math:`t = 1 \dots n`.  :math:`v_t` is approximately the average over
    the last :math:`1 / (1 - \beta)` values (10 for 0.9, 50 for 0.98): a larger
    :math:`\beta` is smoother but lags.  Without bias correction the first
    values are too small (they start from :math:`v_0 = 0`); with it they are
    weighted averages of the values seen so far.

    Parameters
    ----------
    values : array_like, shape (n,)
        The series :math:`\theta_1 \dots \theta_n` (real numbers).
    beta : float, default 0.9
        :math:`\beta \in [0, 1)`.
    bias_correction : bool, default False
        Divide :math:`v_t` by :math:`1 - \beta^t`.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        :math:`v_1 \dots v_n`.
    """
    beta = _beta("beta", beta)
    bias_correction = _flag("bias_correction", bias_correction)
    x = np.asarray(values)
    if x.ndim != 1:
        raise ValueError(f"values must be a 1-D sequence, got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"values must be real numbers, got dtype {x.dtype}")
    out = np.empty(x.shape[0], dtype=np.float64)
    v = 0.0
    c = 1.0 - beta
    for i, theta in enumerate(x.astype(np.float64).tolist()):
        v = beta * v + c * theta
        out[i] = v / _bias_correction(beta, i + 1) if bias_correction else v
    return out
