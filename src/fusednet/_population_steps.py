"""The population engine by the trainer's own step: each model trained by the one-call step.

:mod:`fusednet.kernels._population` runs a population model by model in Numba, its own loops and
products.  For a plain Dense net the trainer's compiled step (``_step_core`` of the extension,
:mod:`fusednet._fused`) is faster per model-step: its own float32 products and vectorised
softmax.  Here each worker thread gets a ``StepPlan`` of its own (its workspace, for batches of
the population's rows, on one thread), and the extension's ``population_steps`` points it at
each of the worker's models in turn: the model's rows of the population's arenas, its learning
rate, L2 coefficient, betas and eps.  The step, its checks and its bias corrections are the
trainer's, so each model's parameters, train losses and accuracies equal those of its own
``Trainer`` fit bit for bit (its dev losses are the step's forward pass, not the model's own
evaluation: equal to rounding).

The net: what the one-call step takes (:func:`fusednet._fused.why_not`), with no BatchNorm, no
Dropout and at most one sigmoid output (multi-label accuracy is counted elsewhere); the step's
narrow nets (a few units) go to the lanes, or the Numba engine.
"""

import numpy as np

from . import _fused
from .kernels import _blas, _codes


def why_not(pop, batch):
    """None when ``pop`` (a :class:`~fusednet.Population`) trains on this engine at batches of
    ``batch`` rows, else the reason."""
    tmpl = pop._template(0)
    reason = _fused.why_not(tmpl, pop.optimizers[0]) or _fused.rows_why_not(tmpl, batch, 1)
    if reason is not None:
        return reason
    ops = set(int(op) for op in pop._net["op"])
    if ops != {_codes.DENSE}:
        return "the net has layers other than Dense (BatchNorm, Activation or Dropout)"
    if pop._loss == _codes.BCE and pop._net[-1]["n_out"] != 1:
        return "multi-label accuracy"
    return None


def _plan(pop, batch):
    """A StepPlan for one worker: a model of the population's layers for its workspace, bound to model 0's
    arena rows (the kernel points it at each model)."""
    ck = _fused._cython()._ck
    model = pop._model(0.0, 1.0, pop.seed)
    table, blocks = _fused.layer_table(model)
    buffers = model._step_buffers(model._workspace(batch, train=True).views(batch), blocks)
    return ck.StepPlan(table, params=pop._P[0], grads=pop._G[0], state1=pop._S1[0], state2=pop._S2[0],
                       buffers=buffers, gemm=_blas.gemm_capsule(pop.dtype), rows=batch, loss=pop._loss, l2=0.0,
                       n_decay=pop._n_decay, n_threads=1)


def work(pop, n_workers, batch, e0):
    """The kernel's ``work`` for a call from epoch ``e0``, or None where the step runs the net as a narrow
    one (a few units: its outputs are not kept for the accuracy)."""
    first = _plan(pop, batch)
    if first.narrow:
        return None
    plans = [first] + [_plan(pop, batch) for _ in range(n_workers - 1)]
    corrected = np.array([2 if c2 else int(c1) for c1, c2 in pop._corrected.tolist()], np.int64)
    return plans, np.full((len(pop), 3), np.inf), np.array([pop._t, e0], np.int64), corrected


def fit_steps(k0, k1, c, net, at, info, data, dev, arenas, hyp, keys, bc, work, out, status):
    """:func:`fusednet.kernels._population.fit_chunk` by the trainer's step (the extension's
    ``population_steps``); ``work`` from :func:`work`."""
    _fused._cython()._ck.population_steps(k0, k1, c, net, at, info, data, dev, arenas, hyp, keys, bc, work, out,
                                          status)
