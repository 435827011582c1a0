r"""ONNX export of a :class:`fusednet.Sequential`: its inference graph.

The graph computes :meth:`fusednet.Sequential.forward` (inference mode) from
one input ``"X"`` of shape ``[N, n_features]`` in the model's dtype (float32 or
float64):

* the model's input normaliser (``model.normalizer``, a
  :class:`fusednet.data.Normalizer`), when set, first: ``Sub(X, mean)`` then
  ``Div(., std)``, so the graph takes raw features as ``model.forward`` does;
* Dense: ``MatMul(A, W)`` then ``Add(., b)`` (no ``Add`` without a bias), then
  its activation;
* activations: ``Relu``, ``Tanh``, ``Sigmoid``, ``LeakyRelu(alpha=leaky_slope)``,
  ``Softmax(axis=-1)``; linear adds no node.  In a float64 graph a slope that
  float32 cannot hold exactly (0.01) becomes ``Max(z, Mul(z, slope))``, since
  ``LeakyRelu``'s ``alpha`` is a float32 attribute;
* BatchNorm: ``BatchNormalization`` in inference mode with the running mean
  and variance and the layer's ``eps``;
* Dropout: nothing (inverted dropout is the identity at inference).

The output is ``"probabilities"`` for a sigmoid or softmax output (a sigmoid
output of one unit gives ``[N, 1]``, the probability of class 1, as
``model.forward``) and ``"output"`` for a linear one.  Weights are stored as
initialisers named after :meth:`~fusednet.Sequential.parameters`
(``"dense_0.W"``, ...).

``onnx`` is an optional extra (``pip install "fusednet[onnx]"``, which also
installs ``onnxruntime`` to run the graph).
"""

import os

import numpy as np

from ._version import __version__
from .layers import Activation, BatchNorm, Dense, Dropout

__all__ = ["to_onnx", "DEFAULT_OPSET", "MIN_OPSET"]

#: the opset written by default (ONNX 1.12, 2022; run by every current onnxruntime)
DEFAULT_OPSET = 17
#: the oldest opset accepted: Softmax's per-axis semantics date from 13
MIN_OPSET = 13

_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "leaky_relu": "LeakyRelu", "softmax": "Softmax"}


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError(
            'to_onnx needs the onnx package, an optional extra: pip install "fusednet[onnx]"'
        ) from None
    return onnx, helper, numpy_helper


class _Graph:
    """Nodes and initialisers, with fresh tensor names."""

    def __init__(self, helper, numpy_helper, dtype):
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.dtype = dtype
        self.nodes = []
        self.inits = []
        self._n = 0

    def const(self, name, array):
        a = np.ascontiguousarray(array, dtype=self.dtype)
        self.inits.append(self.numpy_helper.from_array(a, name=name))
        return name

    def op(self, op_type, inputs, **attrs):
        out = f"{op_type.lower()}_{self._n}"
        self._n += 1
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def activation(self, x, name, slope):
        if name is None or name == "linear":
            return x
        if name == "leaky_relu":
            if self.dtype == np.float64 and float(np.float32(slope)) != slope:
                # LeakyRelu's alpha is a float32 attribute; max(z, slope z) is the same function for slope < 1
                return self.op("Max", [x, self.op("Mul", [x, self.const(f"leaky_slope_{self._n}", slope)])])
            return self.op("LeakyRelu", [x], alpha=float(slope))
        if name == "softmax":
            return self.op("Softmax", [x], axis=-1)
        return self.op(_OPS[name], [x])


def _normalizer(model):
    norm = getattr(model, "normalizer", None)
    if norm is None:
        return None
    mean, std = getattr(norm, "mean_", None), getattr(norm, "std_", None)
    if mean is None or std is None:
        raise ValueError("model.normalizer is not fitted: fit it or set model.normalizer = None")
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if mean.shape != (model.input_dim,) or std.shape != (model.input_dim,):
        raise ValueError(f"model.normalizer has {mean.shape[0]} features but the model takes {model.input_dim}")
    return mean, std


def to_onnx(model, path=None, *, opset=None):
    """Export the inference graph of a built model as an ONNX ``ModelProto``.

    Parameters
    ----------
    model : Sequential
        Built (``input_dim`` known).  Its ``normalizer`` attribute, when set,
        becomes the first two nodes.
    path : str or path-like, optional
        Where to write the model (a temporary file renamed into place, so a
        failure never leaves half a file).
    opset : int, optional
        The ``ai.onnx`` opset, in ``[MIN_OPSET, onnx.defs.onnx_opset_version()]``;
        default :data:`DEFAULT_OPSET`.

    Returns
    -------
    onnx.ModelProto
        Checked by ``onnx.checker.check_model``.  With ``onnxruntime``,
        ``InferenceSession(proto.SerializeToString()).run(None, {"X": X})[0]``
        equals ``model.forward(X)`` to rounding (the normaliser runs in the
        model's dtype in the graph, in float64 in ``forward``).

    Raises
    ------
    ImportError
        Without the ``onnx`` package.
    ValueError
        On an unbuilt model, a bad ``opset`` or a normaliser of the wrong width.
    """
    from .model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fusednet.Sequential, got {type(model).__name__}")
    if not model.built:
        raise ValueError("the model is not built: give Sequential(..., input_dim=n_features) or fit it first")
    onnx, helper, numpy_helper = _import_onnx()
    top = onnx.defs.onnx_opset_version()
    if opset is None:
        opset = min(DEFAULT_OPSET, top)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= top:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {top}], got {opset!r}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path-like, got {type(path).__name__}")
    if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise FileNotFoundError(f"cannot write {os.fspath(path)!r}: its folder does not exist")
    norm = _normalizer(model)

    dt = model.dtype
    g = _Graph(helper, numpy_helper, dt)
    params = dict(model.parameters())
    buffers = dict(model.buffers())
    x = "X"
    if norm is not None:
        x = g.op("Sub", [x, g.const("normalizer.mean", norm[0])])
        x = g.op("Div", [x, g.const("normalizer.std", norm[1])])
    counts = {}
    for layer in model.layers:
        name = f"{layer.kind}_{counts.get(layer.kind, 0)}"
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
        if isinstance(layer, Dense):
            x = g.op("MatMul", [x, g.const(name + ".W", params[name + ".W"])])
            if layer.use_bias:
                x = g.op("Add", [x, g.const(name + ".b", params[name + ".b"])])
            x = g.activation(x, layer.activation, layer.leaky_slope)
        elif isinstance(layer, Activation):
            x = g.activation(x, layer.activation, layer.leaky_slope)
        elif isinstance(layer, BatchNorm):
            inputs = [x] + [g.const(f"{name}.{p}", (params if p in ("gamma", "beta") else buffers)[f"{name}.{p}"])
                            for p in ("gamma", "beta", "running_mean", "running_var")]
            x = g.op("BatchNormalization", inputs, epsilon=float(layer.eps))
        elif not isinstance(layer, Dropout):  # pragma: no cover - Sequential admits only these four
            raise TypeError(f"cannot export a {type(layer).__name__} layer")
    out_name = "probabilities" if model.is_classifier else "output"
    if x == "X":
        g.nodes.append(helper.make_node("Identity", [x], [out_name], name="identity_out"))
    else:  # the last node writes the output directly
        g.nodes[-1].output[0] = out_name

    elem = helper.np_dtype_to_tensor_dtype(dt) if hasattr(helper, "np_dtype_to_tensor_dtype") else \
        onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[dt]
    graph = helper.make_graph(
        g.nodes,
        "fusednet",
        [helper.make_tensor_value_info("X", elem, ["N", model.input_dim])],
        [helper.make_tensor_value_info(out_name, elem, ["N", model.output_dim])],
        initializer=g.inits,
    )
    opsets = [helper.make_opsetid("", int(opset))]
    if hasattr(helper, "make_model_gen_version"):  # the IR version that goes with the opset
        proto = helper.make_model_gen_version(graph, opset_imports=opsets, producer_name="fusednet",
                                              producer_version=__version__)
    else:  # pragma: no cover - onnx < 1.10
        proto = helper.make_model(graph, opset_imports=opsets, producer_name="fusednet",
                                  producer_version=__version__)
    proto.doc_string = f"fusednet.Sequential inference graph ({model.loss} output, {dt.name})"
    onnx.checker.check_model(proto)
    if path is not None:
        _write(proto.SerializeToString(), os.fspath(path))
    return proto


def _write(data, path):
    """``data`` to ``path`` as model files are written (atomically; see :func:`fusednet.io.write_atomically`)."""
    from .io import write_atomically

    write_atomically(path, lambda f: f.write(data))
