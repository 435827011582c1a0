r"""Gradient checking, as course 2 week 1 teaches it, with the perturbed costs batched.

The analytic gradient is ``model.loss_and_grads(X, y)``; the numeric gradient
is the two-sided difference

.. math::

    d\theta_{approx}[i] = \frac{J(\theta + \varepsilon e_i) - J(\theta - \varepsilon e_i)}{2 \varepsilon}

of the same cost (L2 term included, dropout off, batch norm on the batch's
statistics), always in float64, and the check reports

.. math::

    \text{difference} = \frac{\lVert d\theta_{approx} - d\theta \rVert_2}
                             {\lVert d\theta_{approx} \rVert_2 + \lVert d\theta \rVert_2}

read as the course reads it: below 1e-7 "great", below 1e-5 "ok", below 1e-3
"worry", else "wrong".  When it looks wrong, :attr:`GradCheck.worst` names the
coordinates where the two gradients differ most, so the bug can be found.

**Batched.**  The 2P perturbed costs are not 2P forward passes.  By default
they are evaluated by one compiled kernel, in parallel over the coordinates
(:mod:`fusednet.kernels._gradcheck_numba`): it walks the model's typed
layer plan (:meth:`fusednet.Sequential.plan`) over the flat parameter arena,
reuses the unperturbed values of every layer below the perturbed one (one
reference forward pass, the *tape*), updates rather than recomputes the layers
just above it, and recomputes the rest (batch norm with the perturbed batch's
statistics), both perturbations of a coordinate in the same loops; tanh,
sigmoid and the softmax loss are taken from the tape's values by exact short
series in the small change a perturbation makes (the functions themselves
when it is not small).  It shares no code with the model's backward pass, so
a wrong backward cannot hide behind it.  ``backend="numpy"`` runs the course's
own loop instead: set one coordinate to ``theta + eps``, then ``theta - eps``,
evaluating the model's cost each time.
"""

import contextlib
import numbers

import numpy as np

from . import kernels as _kernels
from .kernels import _codes, _policy
from .model import as_2d

__all__ = ["gradcheck", "GradCheck", "verdict_of", "VERDICTS"]

#: (upper bound, verdict) in increasing order; anything else is "wrong"
VERDICTS = ((1e-7, "great"), (1e-5, "ok"), (1e-3, "worry"))

#: the evaluators of the numeric side
EVALUATORS = ("numba", "numpy")


def verdict_of(difference):
    """The course's reading of a difference: "great" < 1e-7, "ok" < 1e-5, "worry" < 1e-3, else "wrong".

    NaN or inf reads "wrong".
    """
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
        ``||numeric - analytic||_2 / (||numeric||_2 + ||analytic||_2)`` over the
        checked coordinates (0 when both are zero; NaN when either holds NaN).
    verdict : str
        "great" (< 1e-7) | "ok" (< 1e-5) | "worry" (< 1e-3) | "wrong".
    worst : list of (name, index, numeric, analytic)
        The coordinates with the largest ``|numeric - analytic|``, largest
        first (NaN first of all); ``index`` is a tuple index into that
        parameter's array, e.g. ``("dense_1.W", (3, 0), 0.0123, 0.0246)``.
    numeric, analytic : numpy.ndarray
        float64, one entry per checked coordinate, in parameter order.
    names : list of str
        The parameter name of each checked coordinate.
    indices : list of tuple
        The index into that parameter of each checked coordinate.
    n_checked : int
    eps : float
    cost : float
        ``J`` at the unperturbed parameters (float64, L2 term included).
    backend : str
        The evaluator of the numeric side, "numba" or "numpy".
    """

    def __init__(self, numeric, analytic, names, indices, eps, cost, backend, top=10):
        self.numeric = numeric
        self.analytic = analytic
        self.names = names
        self.indices = indices
        self.eps = eps
        self.cost = cost
        self.backend = backend
        self.n_checked = int(numeric.size)
        num = float(np.linalg.norm(numeric - analytic))
        den = float(np.linalg.norm(numeric) + np.linalg.norm(analytic))
        if not (np.isfinite(num) and np.isfinite(den)):
            self.difference = float("nan")
        else:
            self.difference = num / den if den > 0 else 0.0
        self.verdict = verdict_of(self.difference)
        gap = np.abs(numeric - analytic)
        gap[~np.isfinite(gap)] = np.inf
        order = np.argsort(-gap, kind="stable")[:top]
        self.worst = [(names[i], indices[i], float(numeric[i]), float(analytic[i])) for i in order]

    def __repr__(self):
        return (f"GradCheck(difference={self.difference:.3e}, verdict={self.verdict!r}, "
                f"n_checked={self.n_checked}, eps={self.eps:g})")

    def __str__(self):
        lines = [f"gradient check of {self.n_checked} coordinates, eps={self.eps:g}: "
                 f"difference {self.difference:.3e} ({self.verdict})"]
        if self.worst:
            lines.append(f"  {'parameter':<24}{'numeric':>15}{'analytic':>15}{'|diff|':>11}")
        for name, index, num, ana in self.worst[:5]:
            where = f"{name}[{', '.join(str(i) for i in index)}]"
            lines.append(f"  {where:<24}{num:>+15.6e}{ana:>+15.6e}{abs(num - ana):>11.2e}")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# arguments and the analytic side
# --------------------------------------------------------------------------


def _check_args(eps, sample, backend, top, analytic_backend):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, numbers.Integral) or sample < 1):
        raise ValueError(f"sample must be a positive int or None, got {sample!r}")
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 0:
        raise ValueError(f"top must be an int >= 0, got {top!r}")
    choices = (None, "auto") + EVALUATORS
    if backend not in choices:
        raise ValueError(f"backend must be one of {choices}, got {backend!r}")
    if analytic_backend is not None:
        _kernels._check_backend(analytic_backend, "analytic_backend")


def _evaluator(backend):
    """The numeric side's evaluator: an explicit choice, else the process's backend, else "auto"."""
    if backend is None:
        backend = _kernels.get_backend()
        if backend not in EVALUATORS:  # "auto", or "cython", which has no gradient-check kernel
            backend = "auto"
    if backend == "numba" and "numba" not in _kernels.available():
        raise ValueError("backend='numba' is not available here (Numba is not installed); use 'numpy'")
    return backend


def loop_seconds(plan, m, n_checked):
    """About how long the course's loop takes to check ``n_checked`` coordinates on ``m`` examples.

    Two forward passes per coordinate, each a fixed cost per layer plus its
    matrix products (``2 m n_in n_out`` floating-point operations per Dense
    layer) at the rate of :data:`fusednet.kernels._policy.LOOP_FLOPS_PER_SECOND`.
    """
    nodes = plan["layers"]
    dense = nodes[nodes["op"] == _codes.DENSE]
    flops = 2.0 * m * float(np.dot(dense["n_in"], dense["n_out"]))
    one_pass = len(nodes) * _policy.LOOP_SECONDS_PER_LAYER + flops / _policy.LOOP_FLOPS_PER_SECOND
    return 2.0 * n_checked * one_pass


def _auto_evaluator(plan, m, n_checked):
    """"numba" (the batched kernel) unless Numba is missing or the course's loop is quicker than compiling it.

    The batched kernel is compiled on its first use for a kind of network (and
    then cached on disk); a check whose loop takes less than
    :data:`fusednet.kernels._policy.GRADCHECK_LOOP_SECONDS` runs the loop
    instead, so a small check never waits for a compiler.
    """
    if "numba" not in _kernels.available():
        return "numpy"
    return "numpy" if loop_seconds(plan, m, n_checked) < _policy.GRADCHECK_LOOP_SECONDS else "numba"


@contextlib.contextmanager
def _process_backend(name):
    """Run the block with :func:`fusednet.set_backend` ``(name)``, restoring the choice after; None: unchanged."""
    if name is None:
        yield
        return
    saved = _kernels.get_backend()
    _kernels.set_backend(name)
    try:
        yield
    finally:
        _kernels.set_backend(saved)


def _analytic(model, X64, y):
    """``(float64 model, [(name, gradient)])``: the analytic side.

    A float64 model answers itself.  A float32 model is checked through a
    float64 copy; if ``loss_and_grads`` was replaced on the model instance (a
    wrapper, a planted bug), the change it makes to the model's own float32
    gradients is carried onto the copy's, so the check still sees it.
    """
    if model.dtype == np.float64:
        return model, list(model.loss_and_grads(X64, y)[1])
    twin = model.copy(dtype="float64")
    grads = list(twin.loss_and_grads(X64, y)[1])
    if "loss_and_grads" in vars(model):
        X32 = X64.astype(model.dtype)
        patched = dict(model.loss_and_grads(X32, y)[1])
        clean = dict(type(model).loss_and_grads(model, X32, y)[1])
        grads = [(name, np.asarray(g, np.float64)
                  + (np.asarray(patched[name], np.float64) - np.asarray(clean[name], np.float64)))
                 for name, g in grads]
    return twin, grads


def _flat_gradients(subject, grads):
    """``[(name, shape, flat float64 gradient)]`` in the order of ``subject.parameters()``."""
    by_name = dict(grads)
    out = []
    for name, param in subject.parameters():
        if name not in by_name:
            raise ValueError(f"loss_and_grads returned no gradient for {name!r}")
        g = np.asarray(by_name[name], dtype=np.float64)
        if g.shape != param.shape:
            raise ValueError(f"the gradient of {name!r} has shape {g.shape}, its parameter {param.shape}")
        out.append((name, param.shape, g.reshape(-1)))
    return out


# --------------------------------------------------------------------------
# the numeric side: compiled and batched, or the course's loop
# --------------------------------------------------------------------------


def _param_layout(plan, params):
    """``[(layer, role, arena offset)]`` of each parameter of ``params``, from the plan.

    Parameters are numbered in layer order (Dense: W then b; BatchNorm: gamma
    then beta), the order of :meth:`Sequential.parameters`.
    """
    from .kernels import _gradcheck_numba as K

    wanted = []
    for i, node in enumerate(plan["layers"]):
        op, n_in, n_out = int(node["op"]), int(node["n_in"]), int(node["n_out"])
        if op == K.DENSE:
            wanted.append(("W", (n_in, n_out), i, K.ROLE_W, int(node["w_off"])))
            if node["b_off"] >= 0:
                wanted.append(("b", (n_out,), i, K.ROLE_B, int(node["b_off"])))
        elif op == K.BATCHNORM:
            wanted.append(("gamma", (n_out,), i, K.ROLE_GAMMA, int(node["gamma_off"])))
            wanted.append(("beta", (n_out,), i, K.ROLE_BETA, int(node["beta_off"])))
    if len(wanted) != len(params) or any(
        not name.endswith("." + w[0]) or tuple(shape) != w[1] for (name, shape, _), w in zip(params, wanted)
    ):
        raise RuntimeError("the model's parameters do not follow its layer plan")
    return [w[2:] for w in wanted]


def _tape(plan, P, X, Y):
    """The unperturbed forward pass laid out for the compiled evaluator: ``(tape_at, tape, cost)``.

    Run by the reference kernels (:mod:`fusednet.kernels.reference`) on rows
    of examples, then stored by unit: ``tape`` is one float64 buffer holding
    X and each layer's input, output and pre-activation as ``(n_units, m)``
    blocks (and a batch norm's input minus its batch mean, and under the
    softmax loss the softmax of the logits), ``tape_at`` the offsets of each
    layer's blocks (see the evaluator's module docstring), ``cost`` the mean loss (no
    L2 term).  The evaluator's costs are differences from this pass, so it
    need not share its rounding.
    """
    from .kernels import _gradcheck_numba as K
    from .kernels import reference as R

    nodes = plan["layers"]
    L = nodes.shape[0]
    tape_at = np.full((L, 5), -1, np.int64)
    blocks = [X]  # (m, n) arrays, in tape order
    size = X.size

    def put(values):
        nonlocal size
        blocks.append(values)
        size += values.size
        return size - values.size

    A, a_off = X, 0
    for i in range(L):
        node = nodes[i]
        op, n_in, n_out, act = int(node["op"]), int(node["n_in"]), int(node["n_out"]), int(node["act"])
        slope, eps = float(node["slope"]), float(node["bn_eps"])
        last = i == L - 1
        tape_at[i, K.T_IN] = a_off
        if op == K.DENSE:
            w, b = int(node["w_off"]), int(node["b_off"])
            bias = P[b:b + n_out] if b >= 0 else np.zeros(n_out)
            Z = np.dot(A, P[w:w + n_in * n_out].reshape(n_in, n_out)) + bias
            tape_at[i, K.T_PRE] = put(Z)
            if last:
                A, a_off = Z, tape_at[i, K.T_PRE]
            else:
                A = np.empty_like(Z)
                R.bias_act_forward(Z, np.zeros(n_out), act, slope, A, 1)
                a_off = put(A)
        elif op == K.BATCHNORM:
            g, b = int(node["gamma_off"]), int(node["beta_off"])
            xhat, out = np.empty_like(A), np.empty_like(A)
            stats = [np.empty(n_out) for _ in range(3)]
            R.batchnorm_forward_train(A, P[g:g + n_out], P[b:b + n_out], eps, xhat, out, *stats, 1)
            tape_at[i, K.T_PRE] = put(xhat)
            tape_at[i, K.T_CEN] = put(A - A.mean(axis=0))  # for a rank-one update of its input
            A, a_off = out, put(out)
        elif op == K.ACTIVATION and not last:
            out = np.empty_like(A)
            R.bias_act_forward(A, np.zeros(n_out), act, slope, out, 1)
            A, a_off = out, put(out)
        tape_at[i, K.T_OUT] = a_off  # a Dropout's, or the output Activation's, is its input
    probs = np.empty_like(A)
    cost = R.loss_forward(A, np.zeros(A.shape[1]), Y, int(plan["loss"]), probs, 1)
    if int(plan["loss"]) == K.CCE:  # the softmax of the logits, for the loss near the tape
        tape_at[L - 1, K.T_PROB] = put(probs)
    tape = np.concatenate([block.T.reshape(-1) for block in blocks])
    return tape_at, tape, cost


def _numeric_compiled(subject, X, y, eps, owner, flats, params):
    """Numeric gradient and base cost by the compiled batched evaluator."""
    from .kernels import _gradcheck_numba as K

    plan = subject.plan()
    P = np.ascontiguousarray(subject.state_dict()["params"], dtype=np.float64)
    m = X.shape[0]
    Y = np.ascontiguousarray(subject._targets(y, m, "y")[0], dtype=np.float64)
    tape_at, tape, base = _tape(plan, P, X, Y)

    layout = np.array(_param_layout(plan, params), np.int64).reshape(-1, 3)[owner]  # layer, role, offset
    n_cols = np.array([shape[-1] for _, shape, _ in params], np.int64)[owner]
    coords = np.ascontiguousarray(np.stack([layout[:, 0], layout[:, 1], flats // n_cols, flats % n_cols], axis=1))
    w = P[layout[:, 2] + flats]
    theta = np.stack([w + eps, w - eps], axis=1)  # the values the course's loop sets
    deltas = theta - w[:, None]

    n = flats.size
    nt = max(1, min(_kernels.get_num_threads(), n))
    wmax = int(plan["layers"]["n_out"].max())
    scratch = K.scratch(nt, wmax, m)  # per thread, once per check
    dloss = np.zeros(n)  # per coordinate: sum over the examples of loss(theta+) - loss(theta-)
    if n:
        K.perturbed_losses(plan["layers"], tape_at, P, tape, np.ascontiguousarray(Y.T).reshape(-1), int(plan["loss"]),
                           m, coords, deltas, dloss, *scratch, nt)

    # J = mean loss + lambd/(2m) sum ||W||^2, so J+ - J- = dloss/m + lambd/(2m) (w+^2 - w-^2) for a weight
    l2 = float(subject.l2)
    dreg = np.where(coords[:, 1] == K.ROLE_W, theta[:, 0] ** 2 - theta[:, 1] ** 2, 0.0)
    numeric = (dloss / m + l2 / (2.0 * m) * dreg) / (2.0 * eps)
    wseg = P[: plan["n_decay"]]
    return numeric, base + l2 / (2.0 * m) * float(np.dot(wseg, wseg))


def _numeric_loop(subject, X, y, eps, names, flats):
    """The course's loop: per coordinate, set it to theta + eps, then theta - eps, evaluating J each time."""
    twin = subject.copy()  # the numeric side never touches the model's own arrays
    params = {name: arr.reshape(-1) for name, arr in twin.parameters()}
    cost = twin._cost_of(X, y)  # forward only: the J(theta) of loss_and_grads, without its backward pass
    numeric = np.empty(len(names))
    for k, (name, flat) in enumerate(zip(names, flats)):
        view = params[name]
        old = view[flat]
        view[flat] = old + eps
        j_plus = cost()
        view[flat] = old - eps
        j_minus = cost()
        view[flat] = old
        numeric[k] = (j_plus - j_minus) / (2.0 * eps)
    return numeric, float(cost())


def gradcheck(model, X, y, eps=1e-7, *, sample=None, seed=0, backend=None, top=10, analytic_backend=None):
    r"""Check ``model``'s backpropagation against two-sided differences of its cost.

    .. math::

        d\theta_{approx}[i] = \frac{J(\theta + \varepsilon e_i) - J(\theta - \varepsilon e_i)}{2\varepsilon},
        \qquad
        \text{difference} = \frac{\lVert d\theta_{approx} - d\theta\rVert_2}
                                 {\lVert d\theta_{approx}\rVert_2 + \lVert d\theta\rVert_2}

    ``J`` is the cost of a training step on all of ``X`` with dropout off: the
    mean loss plus :math:`\frac{\lambda}{2m}\sum_l \|W^{[l]}\|_F^2`
    (``m = len(X)``), batch norm on the batch's statistics.  ``dtheta`` is
    ``model.loss_and_grads(X, y)``.  Everything is float64.

    Parameters
    ----------
    model : fusednet.Sequential
        Its parameters are left unchanged (an unbuilt model is built for X).
        A float32 model is checked through a float64 copy.
    X : array (m, n_features)
    y : labels, as for :meth:`~fusednet.Sequential.loss_and_grads`
    eps : float, default 1e-7
        The perturbation :math:`\varepsilon`.
    sample : int, optional
        Check only this many coordinates, drawn at random without replacement
        (for large networks); None checks every parameter.
    seed : int or numpy.random.Generator
        For ``sample``.
    backend : {None, "auto", "numba", "numpy"}
        The numeric side's evaluator.  "numba": the compiled batched kernel;
        "numpy": the course's per-coordinate loop over the model's own cost
        (the reference).  None follows :func:`fusednet.set_backend` where it
        names one of them, else "auto": the course's loop ("numpy") when it would take less than
        :data:`fusednet.kernels._policy.GRADCHECK_LOOP_SECONDS` (compiling the batched kernel takes
        longer), else "numba" when Numba is installed.
    top : int
        How many coordinates :attr:`GradCheck.worst` lists.
    analytic_backend : {None, "auto", "numba", "cython", "numpy"}
        The kernel backend of the analytic side, ``model.loss_and_grads``: the
        backpropagation that is checked.  None: the process's choice
        (:func:`fusednet.get_backend`).  Otherwise it is the process's choice
        for the length of that one pass (:func:`fusednet.set_backend`, restored
        after), so do not pass it while other threads run kernels.  ``fusednet
        gradcheck`` passes "cython" when the choice is "auto" and the extension
        is built: it is compiled ahead of time, so a first check on an empty
        Numba cache waits only for the forward kernels of the numeric side.

    Returns
    -------
    GradCheck
        ``difference``, ``verdict``, ``worst``, ``numeric``, ``analytic``, ...

    .. warning::
       The two-sided difference is exact to :math:`O(\varepsilon^2)` only where
       the cost is smooth: a ReLU unit whose input crosses 0 within
       :math:`\pm\varepsilon` gives a wrong numeric derivative, whatever the
       backpropagation.  Libraries disagree on the normalisation of the
       difference; this is the course's.
    """
    _check_args(eps, sample, backend, top, analytic_backend)
    evaluator = _evaluator(backend)
    eps = float(eps)
    X = as_2d(X)
    norm = model.normalizer
    if norm is None:
        return _gradcheck(model, X, y, eps, sample, seed, top, evaluator, analytic_backend)
    # the check is of the network: its input is the normalised X, on either side
    X = norm.transform(X)
    model.normalizer = None
    try:
        return _gradcheck(model, X, y, eps, sample, seed, top, evaluator, analytic_backend)
    finally:
        model.normalizer = norm


def _gradcheck(model, X, y, eps, sample, seed, top, evaluator, analytic_backend):
    if not model.built:
        model.build(X.shape[1])
    X = np.ascontiguousarray(X, dtype=np.float64)
    with _process_backend(analytic_backend):
        subject, grads = _analytic(model, X, y)  # checks X and y first
    params = _flat_gradients(subject, grads)

    # the coordinates to check, in parameter order: owner parameter and flat index in it
    sizes = np.array([g.size for _, _, g in params], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    which = np.arange(starts[-1])
    if sample is not None and sample < which.size:
        from .data import as_generator

        which = np.sort(as_generator(seed).choice(which.size, size=int(sample), replace=False))
    owner = np.searchsorted(starts, which, side="right") - 1
    flats = which - starts[owner]
    analytic = np.concatenate([g for _, _, g in params])[which]
    names, indices = [], []
    for p, (name, shape, _) in enumerate(params):  # owner is sorted: each parameter's coordinates are a run
        at = flats[owner == p]
        names += [name] * at.size
        indices += zip(*(v.tolist() for v in np.unravel_index(at, shape)))

    if evaluator == "auto":
        evaluator = _auto_evaluator(subject.plan(), X.shape[0], which.size)
    if evaluator == "numpy":
        numeric, cost = _numeric_loop(subject, X, y, eps, names, flats.tolist())
    else:
        numeric, cost = _numeric_compiled(subject, X, y, eps, owner, flats, params)
    return GradCheck(numeric, analytic, names, indices, eps, float(cost), evaluator, top=int(top))
