r"""Gradient checking, as course 2 week 1 teaches it, with the perturbed costs batched.

The analytic gradient is ``model.loss_and_grads(X, y)``; the numeric gradient
is the two-sided difference

.. math::

    d\theta_{approx}[i] = \frac{J(\theta + \varepsilon e_i) - J(\theta - \varepsilon e_i)}{2 \varepsilon}

of the same cost (L2 term included, dropout off, batch norm on the batch's
statistics), always in float64, and the check reports

.. math::

    \text{difference} = \frac{\lVert d\theta_{approx} - d\theta \rVert_2}
                             {\lVert d\theta_{approx} \rVert_2 + \lVert d\theta \rVert_2}.

**Batched.**  The 2P perturbed costs are not 2P forward passes.  A
perturbation of one weight leaves every layer below it unchanged, and changes
the perturbed layer's pre-activation in one column only (a rank-one update:
``Z[:, j] += eps * A_prev[:, i]``).  So the layers below are computed once, and
the perturbed layer and everything above it are evaluated for a whole block of
perturbations at once, stacked along a leading axis, with one BLAS matrix
product per layer for the block.  The numeric side is thus an independent
forward evaluation of the cost: a wrong backward pass cannot hide behind it.
"""

import numpy as np

from .kernels import _codes
from .kernels import reference as _ref

VERDICTS = ((1e-7, "great"), (1e-5, "ok"), (1e-3, "worry"))

__all__ = ["gradcheck", "GradCheck", "verdict_of"]


def verdict_of(difference):
    """The course's reading of a difference: "great" < 1e-7, "ok" < 1e-5, "worry" < 1e-3, else "wrong"."""
    if not np.isfinite(difference):
        return "wrong"
    for bound, word in VERDICTS:
        if difference < bound:
            return word
    return "wrong"


class GradCheck:
    """The result of :func:`gradcheck`.

    Attributes
    ----------
    difference : float
        ``||approx - grad||_2 / (||approx||_2 + ||grad||_2)`` over the checked coordinates.
    verdict : str
        "great" | "ok" | "worry" | "wrong".
    worst : list of (name, index, numeric, analytic)
        The coordinates with the largest ``|numeric - analytic|``, largest first.
    numeric, analytic : numpy.ndarray
        float64, one entry per checked coordinate, in parameter order.
    names : list of str
        The parameter name of each checked coordinate.
    indices : list of tuple
        The index into that parameter of each checked coordinate.
    n_checked : int
    eps : float
    cost : float
        ``J`` at the unperturbed parameters (float64).
    """

    def __init__(self, numeric, analytic, names, indices, eps, cost, top=10):
        self.numeric = numeric
        self.analytic = analytic
        self.names = names
        self.indices = indices
        self.eps = eps
        self.cost = cost
        self.n_checked = int(numeric.size)
        num = np.linalg.norm(numeric - analytic)
        den = np.linalg.norm(numeric) + np.linalg.norm(analytic)
        self.difference = float(num / den) if den > 0 else 0.0
        self.verdict = verdict_of(self.difference)
        order = np.argsort(-np.abs(numeric - analytic), kind="stable")[:top]
        self.worst = [(names[i], indices[i], float(numeric[i]), float(analytic[i])) for i in order]

    def __repr__(self):
        return (f"GradCheck(difference={self.difference:.3e}, verdict={self.verdict!r}, "
                f"n_checked={self.n_checked}, eps={self.eps:g})")

    def __str__(self):
        lines = [repr(self), "worst coordinates (name, index, numeric, analytic):"]
        for name, index, num, ana in self.worst[:5]:
            lines.append(f"  {name}{list(index)}  {num:+.6e}  {ana:+.6e}")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# the cost of a float64 network, for a stack of perturbed copies at once
# --------------------------------------------------------------------------


def _activate(Z, act, slope):
    """Hidden activation on any-shaped arrays (the reference point functions)."""
    if act == _codes.LINEAR:
        return Z
    if act == _codes.SIGMOID:
        return _ref.sigmoid(Z)
    if act == _codes.TANH:
        return _ref.tanh(Z)
    if act == _codes.RELU:
        return _ref.relu(Z)
    if act == _codes.LEAKY_RELU:
        return _ref.leaky_relu(Z, slope)
    e = np.exp(Z - Z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _loss_sum(L, Y, loss):
    """Sum over rows and units of the loss on logits ``L`` (..., m, k); reduced over the last two axes."""
    if loss == _codes.MSE:
        return 0.5 * np.sum((L - Y) ** 2, axis=(-2, -1))
    if loss == _codes.BCE:
        return np.sum(np.maximum(L, 0.0) - L * Y + np.log1p(np.exp(-np.abs(L))), axis=(-2, -1))
    mx = L.max(axis=-1, keepdims=True)
    lse = mx + np.log(np.exp(L - mx).sum(axis=-1, keepdims=True))
    return np.sum(Y * (lse - L), axis=(-2, -1))


class _Net:
    """A float64 network as a list of plain ops, with the base pass cached."""

    def __init__(self, model, X, Y):
        params = dict(model.parameters())
        self.l2 = float(model.l2)
        self.m = X.shape[0]
        self.Y = Y
        ops = []
        counts = {}
        for layer in model.layers:
            kind = type(layer).__name__
            k = counts.get(kind, 0)
            counts[kind] = k + 1
            if kind == "Dense":
                b = params.get(f"dense_{k}.b")
                ops.append(["dense", f"dense_{k}", params[f"dense_{k}.W"], b, layer.act, layer.leaky_slope])
            elif kind == "Activation":
                ops.append(["act", None, layer.act, layer.leaky_slope])
            elif kind == "BatchNorm":
                ops.append(["bn", f"batchnorm_{k}", params[f"batchnorm_{k}.gamma"], params[f"batchnorm_{k}.beta"],
                            layer.eps])
            # Dropout is the identity here: gradient checking runs with dropout off
        # the last op's activation is the output activation, taken by the loss on the logits
        last = ops[-1]
        self.loss = _codes.LOSS_OF_ACTIVATION[last[4] if last[0] == "dense" else last[2]]
        self.ops = ops
        self.W = [op[2] for op in ops if op[0] == "dense"]
        # base pass: inputs of every op, and the pre-activation / normalised values
        self.inputs, self.cache = [], []
        A = X
        for i, op in enumerate(ops):
            self.inputs.append(A)
            A, cache = self._op(i, A, stacked=False)
            self.cache.append(cache)
        self.logits = A
        self.l2_sum = sum(float(np.sum(W * W)) for W in self.W)
        self.base = self._cost(A[None], np.zeros(1))[0]

    def _is_last(self, i):
        return i == len(self.ops) - 1

    def _op(self, i, A, stacked):
        """Apply op ``i`` to ``A`` ((m, n) or a stack (K, m, n)); returns (out, cache)."""
        op = self.ops[i]
        if op[0] == "dense":
            _, _, W, b, act, slope = op
            shape = A.shape
            Z = (A.reshape(-1, shape[-1]) @ W).reshape(shape[:-1] + (W.shape[1],))
            if b is not None:
                Z += b
            out = Z if self._is_last(i) else _activate(Z, act, slope)
            return out, Z
        if op[0] == "act":
            _, _, act, slope = op
            return (A if self._is_last(i) else _activate(A, act, slope)), None
        _, _, gamma, beta, eps = op
        mean = A.mean(axis=-2, keepdims=True)
        var = A.var(axis=-2, keepdims=True)
        xhat = (A - mean) / np.sqrt(var + eps)
        return gamma * xhat + beta, xhat

    def _cost(self, logits, dl2):
        """Mean loss of each stacked logits block plus the L2 term (with ``dl2`` added to ``sum W^2``)."""
        J = _loss_sum(logits, self.Y, self.loss) / self.m
        if self.l2:
            J = J + self.l2 / (2 * self.m) * (self.l2_sum + dl2)
        return J


def _parameter_roles(net):
    """``[(name, op index, role, array)]`` in the order of model.parameters()."""
    out = []
    for i, op in enumerate(net.ops):
        if op[0] == "dense":
            out.append((f"{op[1]}.W", i, "W", op[2]))
            if op[3] is not None:
                out.append((f"{op[1]}.b", i, "b", op[3]))
        elif op[0] == "bn":
            out.append((f"{op[1]}.gamma", i, "gamma", op[2]))
            out.append((f"{op[1]}.beta", i, "beta", op[3]))
    return out


def _numeric_batched(twin, X, Y, eps, coords, block_bytes=64 << 20):
    net = _Net(twin, X, Y)
    roles = {name: (i, role, arr) for name, i, role, arr in _parameter_roles(net)}
    numeric = np.empty(len(coords))
    width = max([X.shape[1]] + [op[2].shape[-1] for op in net.ops if op[0] != "act"])
    per = max(1, block_bytes // (8 * 3 * X.shape[0] * width))
    # group the coordinates by parameter, then evaluate in blocks of +eps/-eps pairs
    pos = 0
    while pos < len(coords):
        name = coords[pos][0]
        end = pos
        while end < len(coords) and coords[end][0] == name and end - pos < per:
            end += 1
        i, role, arr = roles[name]
        idx = np.array([c[1] for c in coords[pos:end]])
        plus = _costs_many(net, i, role, arr, idx, eps)
        minus = _costs_many(net, i, role, arr, idx, -eps)
        numeric[pos:end] = (plus - minus) / (2 * eps)
        pos = end
    return numeric, net.base


def _costs_many(net, i, role, arr, flat_indices, delta):
    """Costs for each flat index of one parameter, perturbed by ``delta`` (vectorised over indices)."""
    op = net.ops[i]
    K = flat_indices.size
    rows = np.arange(K)
    dl2 = np.zeros(K)
    if op[0] == "dense":
        Z = np.broadcast_to(net.cache[i], (K,) + net.cache[i].shape).copy()
        if role == "W":
            r, col = np.unravel_index(flat_indices, arr.shape)
            Z[rows, :, col] += delta * net.inputs[i][:, r].T
            w = arr[r, col]
            dl2 = (w + delta) ** 2 - w ** 2
        else:
            Z[rows, :, flat_indices] += delta
        A = Z if net._is_last(i) else _activate(Z, op[4], op[5])
    else:
        xhat = net.cache[i]
        A = np.broadcast_to(op[2] * xhat + op[3], (K,) + xhat.shape).copy()
        if role == "gamma":
            A[rows, :, flat_indices] += delta * xhat[:, flat_indices].T
        else:
            A[rows, :, flat_indices] += delta
    for j in range(i + 1, len(net.ops)):
        A, _ = net._op(j, A, stacked=True)
    return net._cost(A, dl2)


def _numeric_naive(twin, X, y, eps, coords):
    """The course's loop: one perturbation, two full cost evaluations, per coordinate."""
    params = dict(twin.parameters())
    numeric = np.empty(len(coords))
    for k, (name, flat) in enumerate(coords):
        view = params[name].reshape(-1)
        old = view[flat]
        view[flat] = old + eps
        j_plus = twin.loss_and_grads(X, y)[0]
        view[flat] = old - eps
        j_minus = twin.loss_and_grads(X, y)[0]
        view[flat] = old
        numeric[k] = (j_plus - j_minus) / (2 * eps)
    return numeric


def gradcheck(model, X, y, eps=1e-7, *, sample=None, seed=0, method="batched", top=10):
    """Check ``model``'s backpropagation against two-sided differences of its cost.

    Parameters
    ----------
    model : fusednet.Sequential
        Its parameters are left unchanged.  A float32 model is checked through
        a float64 copy (both sides).
    X : array (m, n_features)
    y : labels, as for ``model.fit``
    eps : float, default 1e-7
        The perturbation.
    sample : int, optional
        Check only this many coordinates, drawn at random (large networks).
    seed : int or numpy.random.Generator
        For ``sample``.
    method : {"batched", "naive"}
        "batched" (default) evaluates the perturbed costs in blocks, sharing the
        layers below each perturbation; "naive" is the course's per-coordinate
        loop of full cost evaluations (the reference).
    top : int
        How many coordinates :attr:`GradCheck.worst` lists.

    Returns
    -------
    GradCheck
    """
    from .data import as_generator

    if not (isinstance(eps, (int, float, np.floating)) and np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if method not in ("batched", "naive"):
        raise ValueError(f"method must be 'batched' or 'naive', got {method!r}")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1):
        raise ValueError(f"sample must be a positive int or None, got {sample!r}")
    subject = model if model.dtype == np.float64 else model.copy(dtype="float64")
    X64 = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    _, grads = subject.loss_and_grads(X64, y)  # analytic side; checks X and y, builds the model
    twin = subject.copy()  # the numeric side never touches the model's own arrays
    coords, analytic, names, indices = [], [], [], []
    for name, g in grads:
        for flat in range(g.size):
            coords.append((name, flat))
    if sample is not None and sample < len(coords):
        rng = as_generator(seed)
        keep = np.sort(rng.choice(len(coords), size=int(sample), replace=False))
        coords = [coords[k] for k in keep]
    gdict = dict(grads)
    for name, flat in coords:
        g = gdict[name]
        analytic.append(float(g.reshape(-1)[flat]))
        names.append(name)
        indices.append(tuple(int(v) for v in np.unravel_index(flat, g.shape)))
    Y, _ = twin._targets(y, X64.shape[0], "y")
    if method == "naive":
        numeric = _numeric_naive(twin, X64, y, float(eps), coords)
        cost = twin.loss_and_grads(X64, y)[0]
    else:
        numeric, cost = _numeric_batched(twin, X64, Y, float(eps), coords)
    return GradCheck(numeric, np.array(analytic), names, indices, float(eps), float(cost), top=top)
