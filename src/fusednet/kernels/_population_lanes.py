r"""The population engine by lanes: the models of a small Dense net side by side in a vector's lanes.

:mod:`._population` runs a population model by model, every loop along the
batch.  For the course's smallest nets (moons: 2-5-2-1, 30 parameters) a
model's step is a few hundred multiply-adds spread over some forty short
loops, whose setup, remainders and horizontal sums cost more than the
arithmetic.  Here the models take the place of the batch instead: a group
of :data:`V` models is laid out *by lane*, every buffer a block of rows of
``V`` values with model ``q`` of the group at ``[q]``, and every operation of
one model's step becomes one vector operation over the ``V`` lanes.  Each
lane is one model's arithmetic, the same instructions whatever the lane, so
a model's result does not depend on its group, the population or the
threads.

The kernel is the extension's ``population_lanes`` (``kernels/_lanes.pxi``,
its primitives in ``kernels/_lanes.h``), which takes
:func:`._population.fit_chunk`'s arguments and makes the same checks and
records (see that module's docstring).  Its formulas are the compiled
backend's: the point functions of ``_point.pxd`` / ``_point.h`` and
``_vmath.h`` (the sigmoid output's cross-entropy on the logit, in the dtype),
and every sum over the batch runs in example order.  It runs with
flush-to-zero and denormals-are-zero, as the compiled step's optimiser
pieces do: a subnormal value counts as 0 (in float32 an absolute difference
below 2**-126), where its microcode path made a step of the moons population
half again as slow.  The net: Dense layers only, at most ``LANE_LAYERS`` of
them, each product below :data:`._population.BLAS_MACS` multiply-adds
(:func:`eligible`); other nets, and every net when the extension is not
built, run on :func:`._population.fit_chunk`.

Buffers of a group (rows of ``V`` values, one allocation per worker): the
parameters, the optimiser state, the gradients, the copy of the first two
from before the step, the per-lane update constants, each layer's
activations (``batch * n_out`` rows, row ``b * n_out + j``: example ``b``,
unit ``j``) and two deltas of the widest layer.  A lane past the group's last
model (a group of fewer than ``V``) computes a copy of the group's first
model and keeps nothing.
"""

import numpy as np

from ._codes import DENSE
from ._population import BLAS_MACS


def _extension():
    """The compiled extension, or None when it is not built."""
    from . import _load

    ck = _load("cython")
    return None if ck is None else ck._ck


def _group():
    ck = _extension()
    return (16, 0) if ck is None else ck.lane_layout()


#: models per group: the lanes of every loop (16 float32 lanes are one 512-bit vector)
V = _group()[0]


def why_not(net, batch):
    """None when the lanes run this net (``Sequential.plan()["layers"]``) at batches of ``batch`` rows,
    else the reason: the extension is built, Dense layers only, at most its ``LANE_LAYERS``, each
    product below :data:`BLAS_MACS` multiply-adds."""
    ck = _extension()
    if ck is None:
        return "the extension is not built"
    if not 1 <= net.shape[0] <= ck.lane_layout()[1]:
        return f"more than {ck.lane_layout()[1]} layers"
    if not np.all(net["op"] == DENSE):
        return "layers other than Dense"
    if not np.all(net["n_in"] * net["n_out"] * batch < BLAS_MACS):
        return f"a product of {BLAS_MACS:,} multiply-adds or more per batch (BLAS_MACS)"
    return None


def eligible(net, batch):
    """Whether the lanes run this net at batches of ``batch`` rows (:func:`why_not` is None)."""
    return why_not(net, batch) is None


def fit_lanes(k0, k1, c, net, at, info, data, dev, arenas, hyp, keys, bc, work, out, status):
    """:func:`._population.fit_chunk` by lanes (the extension's ``population_lanes``), for an
    :func:`eligible` net; ``work``: ``(lw, sums)``, per worker a row of :func:`lane_rows` ``* V`` values
    of the dtype and one of :func:`lane_sums` float64 values."""
    _extension().population_lanes(k0, k1, c, net, at, info, data, dev, arenas, hyp, keys, bc, work, out, status)


def lane_sums(net):
    """The float64 scratch values per worker row of ``work[1]``."""
    return _extension().lane_sums(net)


def lane_rows(net, n_params, n_s1, n_s2, batch):
    """The rows of :data:`V` values of one group's buffers."""
    return _extension().lane_rows(net, n_params, n_s1, n_s2, batch)
