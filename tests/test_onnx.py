"""ONNX export: onnxruntime's output equals ``model.forward`` for every layer kind."""

import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fusednet._fit import fit  # noqa: E402
from fusednet.data import Normalizer  # noqa: E402
from fusednet.layers import Activation, BatchNorm, Dense, Dropout  # noqa: E402
from fusednet.model import Sequential  # noqa: E402
from fusednet.onnx import DEFAULT_OPSET, to_onnx  # noqa: E402

#: relative to the largest output: float32 1e-5, float64 1e-10
TOL = {"float32": 1e-5, "float64": 1e-10}


def data(m=120, nf=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, nf)) * 3 + 7  # far from standardised, so a normaliser matters
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 7)
    return X, y


def targets(out, y, k):
    if out == "softmax":
        return y
    if out == "sigmoid":
        return (y > 0).astype(np.float64) if k == 1 else np.stack([(y == i) for i in range(k)], 1).astype(float)
    return np.stack([y * 0.5 + i for i in range(k)], 1) if k > 1 else y * 0.5


def run(proto, X):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": X})[0]


def check_same(model, X):
    """ONNX against ``model.forward`` on ``X``."""
    proto = to_onnx(model)
    got = run(proto, X)
    ref = model.forward(X)
    assert got.dtype == model.dtype and got.shape == ref.shape
    tol = TOL[model.dtype.name]
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * float(np.abs(ref).max()))
    return proto


def trained(layers, out, k=3, dtype="float32", epochs=3, normalizer=False):
    X, y = data()
    norm = Normalizer().fit(X)
    Xn = norm.transform(X).astype(dtype)
    model = Sequential(layers + [Dense(k, activation=out)], dtype=dtype, seed=1)
    fit(model, Xn, targets(out, y, k), epochs=epochs, batch_size=16)
    if normalizer:
        model.normalizer = norm
    return model, Xn, X.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "leaky_relu", "linear", None])
@pytest.mark.parametrize("out, k", [("softmax", 3), ("sigmoid", 1), ("sigmoid", 2), ("linear", 1), ("linear", 2)])
def test_dense_activations_and_outputs(act, out, k, dtype):
    model, Xn, _ = trained([Dense(7, activation=act), Dense(6, activation=act)], out, k, dtype)
    proto = check_same(model, Xn)
    assert proto.graph.output[0].name == ("output" if out == "linear" else "probabilities")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("slope", [0.01, 0.2, 0.0])
def test_leaky_slopes(slope, dtype):
    model, Xn, _ = trained([Dense(8, activation="leaky_relu", leaky_slope=slope),
                            Dense(8), Activation("leaky_relu", leaky_slope=slope)], "softmax", dtype=dtype)
    check_same(model, Xn)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("normalizer", [False, True])
@pytest.mark.parametrize("out, k", [("softmax", 3), ("sigmoid", 1), ("linear", 1)])
def test_batchnorm_dropout_and_normalizer(out, k, normalizer, dtype):
    layers = [Dense(16, use_bias=False), BatchNorm(momentum=0.5, eps=1e-3), Activation("relu"), Dropout(0.7),
              Dense(8, activation="tanh"), BatchNorm(), Dropout(0.9), Dense(8), Activation("sigmoid")]
    model, Xn, X = trained(layers, out, k, dtype, epochs=5, normalizer=normalizer)
    stats = dict(model.buffers())
    assert not np.allclose(stats["batchnorm_0.running_mean"], 0)  # trained: non-trivial statistics
    assert not np.allclose(stats["batchnorm_0.running_var"], 1)
    proto = check_same(model, X if normalizer else Xn)  # with a normaliser the model takes raw features
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 2 and "Dropout" not in ops
    assert (ops[:2] == ["Sub", "Div"]) == normalizer


def test_normalizer_with_a_constant_feature():
    X, y = data()
    X[:, 3] = 2.5
    norm = Normalizer().fit(X)
    model = Sequential([Dense(4, activation="relu"), Dense(3, activation="softmax")], dtype="float64", seed=0)
    fit(model, norm.transform(X), y, epochs=2)
    model.normalizer = norm
    check_same(model, X)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_single_layers(dtype):
    X, y = data()
    Xn = Normalizer().fit_transform(X).astype(dtype)
    for layers in ([Dense(3, activation="softmax")], [Dense(2, use_bias=False, activation="linear")],
                   [Dense(4), Activation("softmax")]):
        model = Sequential(layers, input_dim=5, dtype=dtype, seed=0)
        check_same(model, Xn)


def test_graph_contents_and_file(tmp_path):
    model, Xn, _ = trained([Dense(4, activation="relu")], "softmax")
    path = tmp_path / "m.onnx"
    proto = to_onnx(model, path)
    onnx.checker.check_model(proto)
    loaded = onnx.load(str(path))
    assert loaded.SerializeToString() == proto.SerializeToString()
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "X" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 5
    assert out.type.tensor_type.shape.dim[1].dim_value == 3
    assert {i.name for i in proto.graph.initializer} == {"dense_0.W", "dense_0.b", "dense_1.W", "dense_1.b"}
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add", "Softmax"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"X": Xn})[0], model.forward(Xn), rtol=1e-5, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left


def test_opset_choice():
    model, Xn, _ = trained([Dense(4, activation="leaky_relu")], "softmax")
    proto = to_onnx(model, opset=13)
    assert proto.opset_import[0].version == 13
    np.testing.assert_allclose(run(proto, Xn), model.forward(Xn), rtol=1e-5, atol=1e-6)
    for bad in (12, 10**6, "17", 17.0, True):
        with pytest.raises(ValueError, match="opset"):
            to_onnx(model, opset=bad)


def test_refusals(tmp_path):
    unbuilt = Sequential([Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match="not built"):
        to_onnx(unbuilt)
    with pytest.raises(TypeError, match="Sequential"):
        to_onnx(object())
    model = Sequential([Dense(3, activation="softmax")])
    model.normalizer = Normalizer().fit(np.ones((3, 5)))  # unbuilt: not checked yet
    model.build(4)
    with pytest.raises(ValueError, match="normalizer has 5 features"):
        to_onnx(model)
    model.normalizer = None
    with pytest.raises(FileNotFoundError, match="folder"):
        to_onnx(model, tmp_path / "missing" / "m.onnx")
    with pytest.raises(TypeError, match="path"):
        to_onnx(model, 3)


def test_missing_onnx_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    model = Sequential([Dense(3, activation="softmax")], input_dim=4)
    with pytest.raises(ImportError, match=r'pip install "fusednet\[onnx\]"'):
        to_onnx(model)


# ---- through Sequential.to_onnx (the method delegates to fusednet.onnx.to_onnx) -----------------


def test_model_to_onnx_method(tmp_path):
    model, Xn, X = trained([Dense(6, use_bias=False), BatchNorm(), Activation("tanh"), Dropout(0.8)], "softmax",
                           normalizer=True)
    path = tmp_path / "model.onnx"
    proto = model.to_onnx(path)
    assert proto.SerializeToString() == to_onnx(model).SerializeToString()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = model.forward(X)  # raw features: the model applies its normaliser
    np.testing.assert_allclose(sess.run(None, {"X": X})[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert model.to_onnx(opset=14).opset_import[0].version == 14
