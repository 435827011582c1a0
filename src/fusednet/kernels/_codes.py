"""Plain-data codes shared by every backend and by the layer specs.

Compiled code cannot take strings, so activations and losses travel as small
integers.  This module is the single table that maps names to codes.
"""

LINEAR = 0
SIGMOID = 1
TANH = 2
RELU = 3
LEAKY_RELU = 4
SOFTMAX = 5

ACTIVATIONS = {
    "linear": LINEAR,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "softmax": SOFTMAX,
}
ACTIVATION_NAMES = {code: name for name, code in ACTIVATIONS.items()}

#: layer kinds (the ``op`` of a node record, :data:`fusednet.kernels._plan.NODE_DTYPE`)
DENSE = 0
ACTIVATION = 1
DROPOUT = 2
BATCHNORM = 3

#: losses follow the output activation
MSE = 0  # linear output, (1/2m) sum (A - Y)^2
BCE = 1  # sigmoid output, binary cross-entropy
CCE = 2  # softmax output, categorical cross-entropy

LOSSES = {"mse": MSE, "bce": BCE, "cce": CCE}
LOSS_NAMES = {code: name for name, code in LOSSES.items()}
LOSS_OF_ACTIVATION = {LINEAR: MSE, SIGMOID: BCE, SOFTMAX: CCE}

#: optimiser updates of the one-call step (and of the update bound, fusednet.optim.update_bound)
OPT_GD = 0
OPT_MOMENTUM = 1
OPT_RMSPROP = 2
OPT_ADAM = 3

_MASK64 = (1 << 64) - 1


def _splitmix64(x):
    """One round of SplitMix64 on a Python int (mod 2**64)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def dropout_key(seed, *counters):
    """Fold a seed and any number of counters into one 64-bit dropout key.

    The trainer calls ``dropout_key(seed, epoch, step, layer)``; the key and the
    element index are all a dropout kernel needs, so every backend and every
    thread count draws the same mask, and backward can regenerate it.

    Parameters
    ----------
    seed : int
        Non-negative seed.
    *counters : int
        Non-negative stream counters (epoch, step, layer index, ...).

    Returns
    -------
    int
        A key in ``[0, 2**64)``.
    """
    x = _splitmix64(int(seed) & _MASK64)
    for c in counters:
        x = _splitmix64(x ^ (int(c) & _MASK64))
    return x


def dropout_threshold(keep_prob):
    """The integer threshold of the 32-bit hash: an element is kept when ``h < threshold``.

    ``keep_prob = 1`` gives ``2**32`` (every element kept).
    """
    return int(keep_prob * 4294967296.0)

#: what the whole-fit call's early stopping watches (FIT_DTYPE's ``monitor``)
FIT_MONITOR_NONE = 0
FIT_MONITOR_TRAIN_LOSS = 1
FIT_MONITOR_TRAIN_ACCURACY = 2
FIT_MONITOR_DEV_LOSS = 3
FIT_MONITOR_DEV_ACCURACY = 4
FIT_MONITORS = {"train_loss": FIT_MONITOR_TRAIN_LOSS, "train_accuracy": FIT_MONITOR_TRAIN_ACCURACY,
                "dev_loss": FIT_MONITOR_DEV_LOSS, "dev_accuracy": FIT_MONITOR_DEV_ACCURACY}

#: how the whole-fit call orders each epoch's rows (FIT_DTYPE's ``order``)
FIT_ORDER_BATCH = 0  # no gather: X is every epoch's one batch
FIT_ORDER_FIXED = 1  # one order for every epoch
FIT_ORDER_GIVEN = 2  # one order per epoch, passed in
FIT_ORDER_DRAWN = 3  # drawn in compiled code as numpy.random.default_rng([seed, epoch]).shuffle draws it
