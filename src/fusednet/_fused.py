"""The trainer's one-call step: a whole mini-batch step of a Dense stack in compiled code.

For a model made of :class:`~fusednet.layers.Dense` layers, each hidden one
optionally followed by :class:`~fusednet.layers.BatchNorm`, an
:class:`~fusednet.layers.Activation` and :class:`~fusednet.layers.Dropout` (in
that order; a linear Dense before the first two), trained with
:class:`~fusednet.optim.GD`, ``Momentum``, ``RMSProp`` or ``Adam`` on the
Cython backend, in mini-batches of up to :func:`max_rows` rows (any number of rows
when a step is small enough to run serially, :func:`rows_why_not`), every step --
the row gather, forward (dropout masks included), loss, backward, the
finiteness checks and the optimiser update -- is one call of the extension's
``dense_step``; a shuffled epoch over a C-contiguous ``X`` of the model's dtype
is one call of ``dense_epoch`` (every step's learning rate asked of the
schedule first), and when nothing needs Python between epochs, several
epochs -- the whole fit -- are one call of ``dense_fit``
(:class:`fusednet.trainer._WholeFit`).  Each step runs in one OpenMP team that owns the cores; each
thread calls SciPy's BLAS (kept on one thread, see
:mod:`fusednet.kernels._blas`) on its share of every matrix product and then
runs the element-wise work on the block it has just written.  In float32 on
the AVX2 and AVX-512 copies of the extension the products run on its own kernels
(``kernels/_gemm.h``) instead, and the first layer reads a shuffled batch's
rows where they lie in ``X``.  float64 takes the same step, on dgemm.

The per-kernel path (``model._forward_train`` / ``_backward`` and
``optimizer.step``) stays the reference: both compute the same formulas from
the same kernels' point functions, and the tests hold them equal.

The model crosses into compiled code once per fit, as the extension's typed
``StepPlan``: a table of :data:`~fusednet.kernels._plan.LAYER_DTYPE` records
(:func:`layer_table`; the dtype mirrors the C struct ``LayerSpec`` field by
field), the parameter and gradient arenas, the optimiser's state and the
workspace arrays by name, each checked there (a mismatch is a ``ValueError``
naming the field).  Each call then passes an
:data:`~fusednet.kernels._plan.OPT_DTYPE` record (:func:`opt_record`), the
batch, the learning rate(s) and the outputs.

:func:`why_not` names the first reason a model and optimiser do not take the
fused step (an explicit non-Cython backend, layers in another order, ...), and
:func:`rows_why_not` the reason a batch size does not.
"""

import numpy as np

from . import kernels as _kernels
from .kernels import _blas, _codes, _plan, _policy
from .kernels._codes import dropout_key, dropout_threshold

_MAX_LAYERS = 64

#: the largest mini-batch that takes the fused step on a team of threads when its products run
#: on BLAS's sgemm (float32 without the own kernels).  Each thread's sgemm packs the whole batch
#: for its share of a product; measured on 2 cores (784-256-128-10, Adam, float32, epochs
#: alternating in one process) the fused epoch was 4-10 % faster than the per-kernel path at
#: batch 64 and 128, 6 % slower at 256 and 5-11 % slower at 512, where NumPy's multi-threaded
#: matmul splits the products better.
MAX_ROWS = 128
#: ... on dgemm (float64): measured the same way (``benchmarks/test_bench_float64.py``, fits
#: alternating in one process, load 3-8 on 2 cores), the per-kernel path took 3.0-4.1x the
#: step's time at batch 128, 2.7x at 512, 1.6-2.8x at 1024, 1.2-1.3x at 4096, 1.1-1.2x at 8192,
#: about the same at 16384.
MAX_ROWS_F64 = 8192
#: ... and on the extension's own AVX-512 kernels (float32): measured the same way, 1.13-1.40x
#: the per-kernel path's speed at batch 64 to 512, 1.05x at 1024, 1.01x at 2048.
MAX_ROWS_OWN = 1024


def step_flops(model, rows):
    """The floating-point operations of one step's matrix products: 2 x 3 products per Dense layer."""
    nodes = model.plan()["layers"]
    dense = nodes[nodes["op"] == _codes.DENSE]
    return 6 * rows * int(np.dot(dense["n_in"], dense["n_out"]))


def serial_flops():
    """The product flops from which a step runs on a team, for the copy of the extension in use:
    :data:`~fusednet.kernels._policy.STEP_SERIAL_FLOPS` x its
    :data:`~fusednet.kernels._policy.STEP_SERIAL_SCALE` (1 for a copy not in the table)."""
    ck = _cython()
    isa = getattr(ck, "ISA", None) if ck is not None else None
    return int(_policy.STEP_SERIAL_FLOPS * _policy.STEP_SERIAL_SCALE.get(isa, 1.0))


def _serial_name():
    ck = _cython()
    isa = getattr(ck, "ISA", None) if ck is not None else None
    scale = _policy.STEP_SERIAL_SCALE.get(isa, 1.0)
    return "STEP_SERIAL_FLOPS" if scale == 1.0 else f"STEP_SERIAL_FLOPS x {scale:g} on {isa}"


def team_size(model, rows, n_threads):
    """The threads of the one-call step for ``model`` at ``rows`` rows: 1 below
    :func:`serial_flops`."""
    return team_choice(model, rows, n_threads)[0]


def team_choice(model, rows, n_threads):
    """``(threads, reason)``: how the one-call step of ``model`` runs a batch of ``rows`` rows.

    Below :func:`serial_flops` product flops a step runs on the
    calling thread, with no parallel region and no barrier; from there on, on a team of
    ``n_threads``.  A fit decides it once, when it builds its plan (``FusedStep``).
    """
    flops = step_flops(model, rows)
    limit = serial_flops()
    n_threads = max(1, int(n_threads))
    if flops < limit or n_threads == 1:
        why = f"below {_serial_name()} ({limit:,})" if flops < limit else "one thread available"
        return 1, (f"serial, no parallel region or barrier: {flops:,} product flops per step of {rows} rows, "
                   f"{why}")
    return n_threads, (f"a team of {n_threads} threads: {flops:,} product flops per step of {rows} rows, "
                       f"from {_serial_name()} ({limit:,}) on")


def narrow_choice(rows, n_threads):
    """``(threads, reason)``: how a whole fit runs the pass of a narrow net (one whose layers are
    too narrow to fill a vector along the units; ``StepPlan.narrow``) over batches of ``rows`` rows.

    From the extension's ``NARROW_SPLIT_ROWS`` rows on, each step's pass runs as two ranges of
    rows, and a whole-fit call (every epoch in one call) runs the second range on a thread of its
    own that stands for the call: a parallel region per step would cost as much as the step.
    Below, or with one thread, the pass runs on the calling thread.  The same bits either way.
    """
    split = _cython()._ck.NARROW_SPLIT_ROWS
    if rows < split:
        return 1, f"on the calling thread (below {split} rows)"
    if int(n_threads) < 2 or not _cython().OPENMP:
        return 1, "in two ranges of rows, one after the other on the calling thread (one thread available)"
    return 2, (f"in two ranges of rows ({split} rows or more), on 2 threads that stand for a whole-fit call "
               f"(one after the other in a call per epoch)")


#: how the last fit in this process trains (``fusednet.info()["last_fit"]``); None before one
LAST_FIT = None


def record_fit(model, rows, step, whole_fit):
    """Note how a fit of ``model`` in batches of ``rows`` trains, for :func:`fusednet.info`.

    ``step`` is the :class:`FusedStep` of the fit or the reason there is none; ``whole_fit`` None
    when every epoch runs in one call, else the reason each runs in its own.
    """
    global LAST_FIT
    if isinstance(step, FusedStep):
        widths, dtype, path = step.described
        whole = "all epochs in one compiled call" if whole_fit is None else f"one call per epoch: {whole_fit}"
    else:
        widths, dtype, path = _widths(model), str(np.dtype(model.dtype)), f"per-kernel path: {step}"
        whole = "one call per kernel"
    LAST_FIT = {"model": widths, "dtype": dtype, "batch_rows": int(rows), "step": path, "epochs": whole}
    return LAST_FIT


def _widths(model):
    """The model's Dense widths from its input, as ``"2 -> 4 -> 1"``."""
    nodes = model.plan()["layers"]
    return " -> ".join(map(str, [model.input_dim] + nodes["n_out"][nodes["op"] == _codes.DENSE].tolist()))


#: what a non-zero status of the compiled step names (fusednet.TrainingDiverged.what)
FAILED = {1: "cost", 2: "gradient", 3: "update", 4: "batch-norm statistics"}


def products(dtype):
    """What the one-call step's matrix products run on for a model of this dtype."""
    ck = _cython()
    if np.dtype(dtype) == np.float32:
        return "the own kernels" if ck is not None and ck.FUSED_GEMM else "sgemm"
    return "dgemm"


def max_rows(dtype):
    """The largest mini-batch that takes the fused step on a team of threads for a model of this
    dtype: :data:`MAX_ROWS_OWN`, :data:`MAX_ROWS` (sgemm) or :data:`MAX_ROWS_F64` (dgemm)."""
    return {"the own kernels": MAX_ROWS_OWN, "sgemm": MAX_ROWS, "dgemm": MAX_ROWS_F64}[products(dtype)]


def rows_why_not(model, rows, n_threads):
    """None when a fit of ``model`` in batches of ``rows`` rows takes the fused step, else the reason.

    A step below :func:`serial_flops` product flops runs on the
    calling thread and splits nothing between threads, so it takes any number of rows (measured
    in ``docs/PERFORMANCE.md``); from there on the limit is :func:`max_rows`, set by how the
    team splits the products.
    """
    flops = step_flops(model, rows)
    limit = max_rows(model.dtype)
    if flops < serial_flops() or rows <= limit:
        return None
    threads = max(1, int(n_threads))
    return (f"batches of {rows} rows, above the step's {limit} for {np.dtype(model.dtype)} products on "
            f"{products(model.dtype)} ({flops:,} product flops per step, from {_serial_name()} "
            f"({serial_flops():,}) on{'' if threads == 1 else f' a team of {threads} threads'})")


def _cython():
    return _kernels._load("cython")


def why_not(model, optimizer):
    """None when ``model`` and ``optimizer`` take the fused step, else the reason (a string)."""
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
    plan = model.plan()
    nodes, names = plan["layers"], plan["names"]
    if len(nodes) > 2 * _MAX_LAYERS:
        return f"more than {_MAX_LAYERS} Dense layers"
    # after each hidden Dense: [BatchNorm] [Activation] [Dropout], in that order
    order = {_codes.BATCHNORM: 1, _codes.ACTIVATION: 2, _codes.DROPOUT: 3}
    dense = None
    stage = 0
    last = len(nodes) - 1
    for i, node in enumerate(nodes):
        op, name = int(node["op"]), names[i]
        if op == _codes.DENSE:
            if node["act"] == _codes.SOFTMAX and i != last:
                return f"hidden layer {name} has a softmax activation"
            dense, stage = node, 0
            continue
        if dense is None or i == last or order[op] <= stage:
            return (
                f"layer {name} does not follow a hidden Dense layer"
                " in the order Dense, BatchNorm, Activation, Dropout"
            )
        if op != _codes.DROPOUT and (dense["act"] != _codes.LINEAR or stage > 0 and op == _codes.BATCHNORM):
            return f"layer {name} follows a Dense layer with an activation of its own"
        if op == _codes.ACTIVATION and node["act"] == _codes.SOFTMAX:
            return f"hidden layer {name} has a softmax activation"
        stage = order[op]
    if nodes[last]["op"] != _codes.DENSE:
        return f"the output layer {names[last]} is not Dense"
    return None


def layer_table(model):
    """The model's plan (:meth:`~fusednet.Sequential.plan`) grouped into one
    :data:`~fusednet.kernels._plan.LAYER_DTYPE` record per Dense layer, with the positions of
    its node and of the BatchNorm, Activation and Dropout nodes after it.

    Returns ``(table, blocks)``: ``blocks[l]`` maps ``"dense"``, ``"bn"``, ``"act"``, ``"drop"`` to
    node positions (a Dropout of keep_prob 1 is left out: it is the identity).
    """
    nodes = model.plan()["layers"]
    key = {_codes.BATCHNORM: "bn", _codes.ACTIVATION: "act", _codes.DROPOUT: "drop"}
    blocks = []
    for i, node in enumerate(nodes):
        if node["op"] == _codes.DENSE:
            blocks.append({"dense": i})
        elif node["op"] != _codes.DROPOUT or node["keep_prob"] < 1.0:
            blocks[-1][key[int(node["op"])]] = i
    table = _plan.layer_table(len(blocks))
    for rec, blk in zip(table, blocks):
        dense = nodes[blk["dense"]]
        act = nodes[blk["act"]] if "act" in blk else dense
        rec["n_in"], rec["n_out"], rec["w_off"], rec["b_off"] = dense["n_in"], dense["n_out"], dense["w_off"], \
            dense["b_off"]
        rec["act"], rec["slope"], rec["act_node"] = act["act"], act["slope"], int("act" in blk)
        if "bn" in blk:
            bn = nodes[blk["bn"]]
            rec["gamma_off"], rec["beta_off"] = bn["gamma_off"], bn["beta_off"]
            rec["bn_eps"], rec["bn_momentum"] = bn["bn_eps"], bn["bn_momentum"]
        if "drop" in blk:
            drop = nodes[blk["drop"]]
            rec["drop_index"] = drop["index"]
            rec["drop_threshold"] = dropout_threshold(float(drop["keep_prob"]))
            rec["drop_scale"] = 1.0 / drop["keep_prob"]
    return table, blocks


def step_for(model, optimizer, ws, v, n_threads):
    """The :class:`FusedStep` of a fit of ``model`` with ``optimizer`` in batches of ``v.n`` rows
    (``v``: views of the training workspace ``ws``), or None when :func:`why_not` or
    :func:`rows_why_not` gives a reason.

    A model keeps the step of its last fit, and the next fit takes it again when nothing the plan
    is built from has changed: the model's layout, arenas, loss, L2 and seed, the optimiser and its
    state buffers, the workspace, the batch rows, the threads and the kernel backend.  Each call
    starts from the arenas, so a kept plan computes what a new one would; the model's next fit
    does not pay the plan's checks again.
    """
    held = (model._layout_key, model._params, model._grads, optimizer, ws)
    values = (model._loss, model._l2, model.seed, optimizer.backend, v.n, int(n_threads), _kernels.get_backend())
    memo = model.__dict__.get("_step_memo")
    if memo is not None and memo[1] == values and all(a is b for a, b in zip(memo[0], held)):
        step = memo[2]
        if step.state_is_current():
            step.reset_bounds()
            return step
    if why_not(model, optimizer) is not None or rows_why_not(model, v.n, n_threads) is not None:
        return None
    step = FusedStep(model, optimizer, v, n_threads)
    model._step_memo = (held, values, step)
    return step


def opt_record(opt, P, G):
    """``(record, state1, state2)``: ``opt`` as an :data:`~fusednet.kernels._plan.OPT_DTYPE` record
    (bound to the arenas ``P``, ``G``) and its state buffers (empty for GD)."""
    kind, b1, b2, eps, _, _, s1, s2 = opt._fused(P, G)
    corrected = 2 if kind == _codes.OPT_ADAM else int(kind == _codes.OPT_MOMENTUM and opt.bias_correction)
    return _plan.opt_record(kind, corrected, b1, b2, eps, opt.t), s1, s2


class FusedStep:
    """One compiled step (or epoch) for a built ``model`` that :func:`why_not` accepts.

    Builds the extension's ``StepPlan`` once, from the model's layer table, arenas, the
    optimiser's state and the workspace views ``v`` of a full batch (the plan's capacity).
    """

    def __init__(self, model, optimizer, v, n_threads):
        table, blocks = layer_table(model)
        buffers = model._step_buffers(v, blocks)
        P, G = model._params, model._grads
        self.model, self.opt = model, optimizer
        # serial or a team: decided once per fit, for the plan's batch capacity
        self.n_threads, self.team = team_choice(model, v.n, n_threads)
        self.rec, s1, s2 = opt_record(optimizer, P, G)
        self.state = (s1, s2)
        self.plan = _cython()._ck.StepPlan(
            table, params=P, grads=G, state1=s1, state2=s2, buffers=buffers,
            gemm=_blas.gemm_capsule(model.dtype), rows=v.n, loss=model._loss, l2=model._l2,
            n_decay=model._n_decay, n_threads=self.n_threads,
        )
        self.table = table
        self.l2 = model._l2
        self.drops = [int(table[l]["drop_index"]) if "drop" in blk else None for l, blk in enumerate(blocks)]
        self.dropout = any(d is not None for d in self.drops)
        self.seed = model.seed
        self.keys = np.zeros(len(blocks), np.uint64)
        self.out = np.zeros(2, np.float64)
        self._step = _cython()._ck.dense_step
        self._epoch = _cython()._ck.dense_epoch
        self._fit = _cython()._ck.dense_fit
        path = f"one-call step; {self.team}"
        if self.plan.narrow:
            self.plan.narrow_threads, why = narrow_choice(v.n, n_threads)
            narrow = f"a narrow net: one pass over the batch, its rows along the vectors, {why}"
            # the pass of a narrow net takes no team: serial, or the whole fit's two threads
            path = f"one-call step; {narrow}" if self.plan.narrow_threads == 2 else f"{path}; {narrow}"
        #: (the model's widths, its dtype, how its steps run) for record_fit
        self.described = _widths(model), str(np.dtype(model.dtype)), path

    def state_is_current(self):
        """Whether the optimiser's state buffers are still the plan's (a reset or rebind replaces them)."""
        s1, s2 = self.opt._fused(self.model._params, self.model._grads)[6:]
        return s1 is self.state[0] and s2 is self.state[1]

    def reset_bounds(self):
        """Forget the update bounds (callbacks may have changed the weights): see ``fusednet.optim.update_bound``."""
        self.plan.reset_bounds()

    def _opt(self):
        """The optimiser's record for this call, after checking that the plan still describes the fit."""
        model, opt = self.model, self.opt
        if model._l2 != self.l2:
            raise ValueError(f"the plan's l2 is {self.l2} but the model's is now {model._l2}: build a new "
                             f"plan (a new fit does)")
        kind, b1, b2, eps, _, _, s1, s2 = opt._fused(model._params, model._grads)
        if s1 is not self.state[0] or s2 is not self.state[1]:
            raise ValueError("the optimiser's state buffers are not the plan's (it was reset or rebound): "
                             "build a new plan (a new fit does)")
        rec = self.rec
        rec[0] = (kind, 2 if kind == _codes.OPT_ADAM else int(kind == _codes.OPT_MOMENTUM and opt.bias_correction),
                  b1, b2, eps, opt.t)
        return rec

    def __call__(self, v, Xb, Yb, X, Y, idx, lr, epoch=0, step=0):
        """One step on the batch ``Xb``, ``Yb``; with ``idx``, gathered first from ``X[idx]``, ``Y[idx]``.

        Returns ``(status, cost)``: status 0 when the update was applied, else the
        key of :data:`FAILED` that stopped it (nothing updated then).
        """
        rec = self._opt()
        if self.dropout:
            for l, d in enumerate(self.drops):
                if d is not None:
                    self.keys[l] = dropout_key(self.seed, epoch, step, d)
        gather = None if idx is None else (X, Y, idx)
        status = self._step(self.plan, rec, Xb, Yb, gather, lr, self.keys, self.out)
        if status == 0:
            self.opt._t += 1
        return status, self.out[0]

    def epoch(self, v, X, Y, perm, lrs, costs, pred, epoch=0):
        """Every step of an epoch in one call: batches of the plan's rows of ``X[perm]``, ``Y[perm]``.

        ``lrs`` holds each step's learning rate; ``costs`` receives each step's cost and ``pred``
        (intp, one per row, or empty) the predicted class (softmax) or ``A > 0.5`` (one sigmoid).
        Returns ``(steps, status, cost)``: the steps applied (``_t`` has moved by as many), and when
        that is not all of them, the status (as :meth:`__call__`) and cost of the step that stopped.
        """
        rec = self._opt()
        self.plan.dropout_seed = dropout_key(self.seed, epoch)  # the kernel folds in step and layer
        steps, status, cost = self._epoch(self.plan, rec, X, Y, perm, lrs, costs, pred)
        self.opt._t += steps
        return steps, status, cost

    def fit(self, data, fit, perms, lrs, hist, snapshot=None):
        """Several epochs in one call (``dense_fit``): see :class:`fusednet.trainer._WholeFit`.

        ``data`` is ``(X, Y, ids)``; ``fit`` a :data:`~fusednet.kernels._plan.FIT_DTYPE` record,
        ``perms`` each epoch's order (or none), ``lrs`` each step's learning rate, ``hist`` receives
        one :data:`~fusednet.kernels._plan.HIST_DTYPE` record per epoch.  Returns ``(epochs, status,
        step, cost)``: the epochs run, and when that is not all, the status (as :meth:`__call__`), step
        and cost of the step that stopped; ``_t`` has moved by the steps applied.
        """
        rec = self._opt()
        epochs, status, step, cost, steps = self._fit(self.plan, rec, data, fit, perms, lrs, hist, snapshot)
        self.opt._t += steps
        return epochs, status, step, cost
