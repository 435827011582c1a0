"""The typed records that describe a model to compiled code.

:data:`NODE_DTYPE` is the model's own description, one record per layer
(:meth:`fusednet.Sequential.plan`); the batched gradient check walks it as it
is.  The compiled step groups it into one :data:`LAYER_DTYPE` record per
Dense layer with the BatchNorm, Activation and Dropout after it
(:func:`fusednet._fused.layer_table`), and takes its optimiser as an
:data:`OPT_DTYPE` record.

A whole fit in one call takes a :data:`FIT_DTYPE` record and writes one
:data:`HIST_DTYPE` record per epoch.

The last four mirror a C struct of the Cython extension (``LayerSpec``,
``OptSpec``, ``FitSpec`` and ``HistRow`` in ``kernels/_step.pxi``) field by field, with C's alignment;
``tests/kernels/test_plan.py`` pins the two together through the extension's
``layouts()``, and the extension checks the names, offsets and size of every
table it is given, so a mismatch is a ``ValueError`` naming the field, never a
misread.
"""

import numpy as np

from . import _codes

#: one layer of a model (Dense, Activation, Dropout or BatchNorm), as :meth:`fusednet.Sequential.plan` gives it
NODE_DTYPE = np.dtype(
    [
        ("op", np.intc),  # _codes.DENSE / ACTIVATION / DROPOUT / BATCHNORM
        ("act", np.intc),  # a Dense's or an Activation's activation code; LINEAR otherwise
        ("n_in", np.intp),
        ("n_out", np.intp),
        ("w_off", np.intp),  # offsets into the parameter arena; -1: none
        ("b_off", np.intp),
        ("gamma_off", np.intp),
        ("beta_off", np.intp),
        ("rmean_off", np.intp),  # offsets into the running-statistics arena; -1: none
        ("rvar_off", np.intp),
        ("index", np.intp),  # the layer's position in the model (a Dropout's key counter)
        ("slope", np.float64),  # leaky ReLU
        ("keep_prob", np.float64),  # Dropout; 1 otherwise
        ("bn_eps", np.float64),
        ("bn_momentum", np.float64),
    ],
    align=True,
)

#: one Dense layer of a step, with what follows it (BatchNorm, an Activation layer, Dropout)
LAYER_DTYPE = np.dtype(
    [
        ("n_in", np.intp),
        ("n_out", np.intp),
        ("w_off", np.intp),  # offsets into the parameter arena; -1: none
        ("b_off", np.intp),
        ("gamma_off", np.intp),  # a BatchNorm between the product and the activation
        ("beta_off", np.intp),
        ("drop_index", np.intp),  # the Dropout layer after it (its dropout_key counter); -1: none
        ("drop_threshold", np.uint64),  # keep an element when its 32-bit hash is below; 2**32: keep all
        ("act", np.intc),  # fusednet.kernels._codes activation code
        ("act_node", np.intc),  # 1: the activation is an Activation layer of its own
        ("slope", np.float64),  # leaky ReLU
        ("drop_scale", np.float64),  # 1 / keep_prob
        ("bn_eps", np.float64),
        ("bn_momentum", np.float64),
    ],
    align=True,
)

#: the optimiser of a step: its kind, hyperparameters and the steps it has taken
OPT_DTYPE = np.dtype(
    [
        ("kind", np.intc),  # _codes.OPT_*
        ("bias_correction", np.intc),  # 0 none, 1 the first moment (momentum), 2 both (Adam)
        ("beta1", np.float64),
        ("beta2", np.float64),
        ("eps", np.float64),
        ("t", np.intp),  # steps taken before the call
    ],
    align=True,
)

#: a whole fit in one call (``dense_fit``): which epochs, the dropout seed, early stopping
FIT_DTYPE = np.dtype(
    [
        ("epoch0", np.intp),  # the number of the call's first epoch
        ("epochs", np.intp),  # the epochs of the call
        ("patience", np.intp),  # early stopping: epochs without improvement before it stops (0 as 1)
        ("wait", np.intp),  # IN/OUT epochs in a row without improvement so far
        ("seed_key", np.uint64),  # splitmix64(seed): epoch e's dropout seed is dropout_key(seed, e)
        ("shuffle_seed", np.uint64),  # FIT_ORDER_DRAWN: epoch e's order is default_rng([shuffle_seed, e])'s
        ("min_delta", np.float64),
        ("best", np.float64),  # IN/OUT the best monitored value so far
        ("monitor", np.intc),  # _codes.FIT_MONITOR_*: 0, no early stopping
        ("maximize", np.intc),  # 1: higher is better
        ("restore", np.intc),  # 1: copy the parameters and statistics at each improvement
        ("stop", np.intc),  # OUT 1: early stopping ended the fit
        ("order", np.intc),  # _codes.FIT_ORDER_*: how each epoch orders the rows
    ],
    align=True,
)

#: one epoch of a whole-fit call, as it writes it
HIST_DTYPE = np.dtype(
    [
        ("train_loss", np.float64),  # sum over the epoch's batches of cost x rows, / m
        ("seconds", np.float64),  # the epoch's wall time
        ("dev_loss", np.float64),  # the dev set's cost and accuracy after the epoch (NaN: none)
        ("dev_accuracy", np.float64),
        ("correct", np.intp),  # rows whose training prediction equals their class id
    ],
    align=True,
)


def node_table(n_nodes):
    """An empty table of ``n_nodes`` node records: linear Dense layers with nothing bound."""
    table = np.zeros(n_nodes, NODE_DTYPE)
    for field in ("w_off", "b_off", "gamma_off", "beta_off", "rmean_off", "rvar_off"):
        table[field] = -1
    table["act"] = _codes.LINEAR
    table["slope"] = 0.01
    table["keep_prob"] = 1.0
    return table


def layer_table(n_layers):
    """An empty table of ``n_layers`` layer records: no bias, BatchNorm or dropout, linear."""
    table = np.zeros(n_layers, LAYER_DTYPE)
    for field in ("b_off", "gamma_off", "beta_off", "drop_index"):
        table[field] = -1
    table["drop_threshold"] = 1 << 32
    table["act"] = _codes.LINEAR
    table["slope"] = 0.01
    table["drop_scale"] = 1.0
    return table


def opt_record(kind, bias_correction, beta1, beta2, eps, t):
    """One optimiser record (a 1-element array of :data:`OPT_DTYPE`)."""
    rec = np.zeros(1, OPT_DTYPE)
    rec[0] = (kind, bias_correction, beta1, beta2, eps, t)
    return rec


def fit_record(epoch0, epochs, seed_key, order=1, shuffle_seed=0, monitor=0, maximize=False, patience=0,
               min_delta=0.0, best=0.0, wait=0, restore=False):
    """One whole-fit record (a 1-element array of :data:`FIT_DTYPE`)."""
    rec = np.zeros(1, FIT_DTYPE)
    rec[0] = (epoch0, epochs, patience, wait, seed_key, shuffle_seed, min_delta, best, monitor, int(maximize),
              int(restore), 0, order)
    return rec
