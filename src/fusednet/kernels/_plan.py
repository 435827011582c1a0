"""The typed records that describe a model to compiled code.

:data:`NODE_DTYPE` is the model's own description, one record per layer
(:meth:`fusednet.Sequential.plan`); the batched gradient check walks it as it
is.  The compiled step groups it into one :data:`LAYER_DTYPE` record per
Dense layer with the BatchNorm, Activation and Dropout after it
(:func:`fusednet._fused.layer_table`), and takes its optimiser as an
:data:`OPT_DTYPE` record.

The last two mirror a C struct of the Cython extension (``LayerSpec`` and
``OptSpec`` in ``kernels/_ckernels.pyx``) field by field, with C's alignment;
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
