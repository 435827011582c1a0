r"""The model: a stack of layer specs over flat arenas and per-batch workspaces.

Shapes are rows of examples: ``X`` is ``(m, n_features)``, a Dense ``W`` is
``(n_in, n_out)`` and ``Z = A_prev @ W + b`` -- the transpose of the course's
``W[l] A[l-1] + b[l]``.  The loss follows the output activation (sigmoid:
binary cross-entropy, softmax: categorical cross-entropy, linear: mean squared
error ``(1/2m) sum (A - Y)^2``), and the cost of a batch of ``m`` examples is

.. math::

    J = \frac{1}{m} \sum_{i=1}^m \mathcal{L}(a^{(i)}, y^{(i)})
        + \frac{\lambda}{2m} \sum_l \|W^{[l]}\|_F^2 .

Parameters, gradients and BatchNorm running statistics live in flat arenas
(one buffer each, weights first); matrix products go to BLAS through
``np.dot(A, W, out=Z)`` (the same GEMM as ``np.matmul``, with half its call
overhead on the small matrices of the course's networks); activations and
deltas live in a workspace built once per batch capacity, and a smaller batch
(the last partial one) uses ``[:n * width]`` views of the same buffers, built
once and cached.

Modules
-------
``_inputs``
    Input checks and label encoding: the constructor's arguments, ``X``
    against the model, labels to targets.  Generic checks come from
    :mod:`fusednet._validation`, shared with the rest of the package.
``_layout``
    The arenas (:class:`~fusednet.model._layout.Arenas`), their per-layer views,
    the initial weights and :meth:`Sequential.plan`.
``_nodes``
    Nodes (a layer bound to its views, with its forward and backward passes),
    the resolved kernels, and the workspaces.
``_network``
    :class:`Network`, the base of :class:`Sequential`: the built state and
    the passes -- the internal interface below.
``_sequential``
    :class:`Sequential`, the public model.

The internal model interface
----------------------------
The trainer (:mod:`fusednet.trainer`), the compiled step
(:mod:`fusednet._fused`), the gradient check (:mod:`fusednet.gradcheck`), the
callbacks and :func:`fusednet._fit.fit` use these members of a model, defined
by :class:`Network` (``plan()`` by :class:`Sequential`), and nothing else that
is private:

* checked input: ``_check_X(X, name)``, ``_targets(y, m, name, n_in)``,
  ``_has_bn()``, ``_cost_of(X, y)``, ``_evaluate(X, Y, ids)``, ``build(n)``,
  ``built``;
* the passes: ``_kernels()``, ``_workspace(n, train)`` (a :class:`_Workspace`
  whose ``views(n)`` are :class:`_Views`), ``_forward_train(v, K, X, Y, ctx)``,
  ``_backward(v, K, Y)``, ``_update_running(K)``;
* the built state: ``_loss``, ``_l2``, ``_nodes`` (instances of
  :class:`_DenseNode`, :class:`_ActivationNode`, :class:`_DropoutNode`,
  :class:`_BatchNormNode`, read for their widths, codes, hyperparameters and
  arena views), ``_bn_nodes``, the arenas ``_params``, ``_grads``,
  ``_stats``, ``_n_decay``, ``_zeros``, ``_scratch``, and :meth:`Sequential.plan`;
* ``_fit_optimizer``, which :func:`fusednet._fit.fit` sets to continue a fit.

The node classes and :func:`as_2d` / :func:`check_finite` (from
:mod:`fusednet._validation`) are exported here, under the names other modules
import them by.

Imports point one way: :mod:`fusednet.io`, :mod:`fusednet.onnx` and
:mod:`fusednet._fit` import the model; its shortcuts to them
(:meth:`Sequential.save`, ``to_onnx`` and ``fit``) import their module when
called, in the one section of :mod:`fusednet.model._sequential` that says so.
"""

from .._validation import as_2d, check_finite
from ._network import INFER_CHUNK, Network
from ._nodes import (
    _ActivationNode,
    _BatchNormNode,
    _DenseNode,
    _DropoutNode,
    _Kernels,
    _Node,
    _NodeViews,
    _Views,
    _Workspace,
)
from ._sequential import Sequential

__all__ = [
    "INFER_CHUNK",
    "Network",
    "Sequential",
    "_ActivationNode",
    "_BatchNormNode",
    "_DenseNode",
    "_DropoutNode",
    "_Kernels",
    "_Node",
    "_NodeViews",
    "_Views",
    "_Workspace",
    "as_2d",
    "check_finite",
]
