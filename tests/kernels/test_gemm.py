"""The fused step's own float32 matrix products (``kernels/_gemm.h``, ``gemm_f32``).

* every form (A @ B, A.T @ B, A @ B.T, and rows read in place by index) equals
  NumPy's float64 product within float32 rounding, on odd shapes, strided rows
  and read-only inputs;
* any block of C, computed on its own as a thread computes its share, has the
  same bits as the whole product;
* every element is one chain of fused multiply-adds over k in order, checked exactly against
  an emulation in float64, so the AVX2 and AVX-512 copies compute the same bits;
* products deeper than a chunk (4096) chain the chunks, and narrow weight
  gradients (few units) walk C transposed, each with the bits of any other walk;
* the AVX2 and AVX-512 copies of the extension have the kernels and the baseline does not;
* a training step with a first layer of many inputs and few units (its forward
  product split by rows among the team) has the same bits on any thread count.
"""

import numpy as np
import pytest

from fusednet import kernels, optim
from fusednet.layers import Dense
from fusednet.model import Sequential
from fusednet.trainer import Trainer

_cython = pytest.importorskip("fusednet.kernels._cython", reason="the Cython extension is not built")

OWN = [v for v in _cython.VARIANTS if v.FUSED_GEMM]
SIZES = [1, 7, 8, 9, 16, 17, 31, 33, 70, 100]
DEPTHS = [1, 5, 128, 300]


def _operands(rng, a_shape, b_shape, pad=3):
    """Random float32 A and B whose rows are strided (views into wider arrays), read-only."""
    A = rng.standard_normal((a_shape[0], a_shape[1] + pad), dtype=np.float32)[:, :a_shape[1]]
    B = rng.standard_normal((b_shape[0], b_shape[1] + pad), dtype=np.float32)[:, : b_shape[1]]
    A.flags.writeable = False
    B.flags.writeable = False
    return A, B


def _check(C, a, b):
    """C against a @ b in float64, within the bound of a k-term float32 dot product."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    ref = a @ b
    tol = a.shape[1] * np.finfo(np.float32).eps * (np.abs(a) @ np.abs(b))
    assert np.all(np.abs(C - ref) <= tol), np.max(np.abs(C - ref) / tol)


def test_the_avx2_and_avx512_copies_have_the_kernels_and_the_baseline_does_not():
    for v in _cython.VARIANTS:
        assert v.FUSED_GEMM == (v.ISA in ("x86-64-v3", "x86-64-v4"))
        if not v.FUSED_GEMM:
            C = np.zeros((4, 20), np.float32)
            assert v.gemm_f32(np.ones((4, 3), np.float32), np.ones((3, 20), np.float32), C) is False
            assert not C.any()


@pytest.fixture(params=OWN, ids=[v.ISA for v in OWN])
def ck(request):
    return request.param


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("k", DEPTHS)
def test_nn(ck, m, n, k):
    rng = np.random.default_rng([m, n, k])
    A, B = _operands(rng, (m, k), (k, n))
    C = np.full((m, n + 5), np.nan, np.float32)
    assert ck.gemm_f32(A, B, C[:, :n])
    _check(C[:, :n], A, B)
    assert np.isnan(C[:, n:]).all(), "wrote outside C"


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("k", DEPTHS)
def test_tn(ck, m, n, k):
    rng = np.random.default_rng([m, n, k, 1])
    A, B = _operands(rng, (k, m), (k, n))
    C = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(A, B, C, trans_a=True)
    _check(C, A.T, B)


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("k", [*DEPTHS, 256, 257, 600])  # K chunks of 128 (AVX-512) or 256 in B's transposed panels
def test_nt(ck, m, n, k):
    rng = np.random.default_rng([m, n, k, 2])
    A, B = _operands(rng, (m, k), (n, k))
    C = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(A, B, C, trans_b=True)
    _check(C, A, B.T)


@pytest.mark.parametrize("m", [1, 9, 128])
@pytest.mark.parametrize("n", [1, 17, 64])
def test_rows_read_in_place_by_index(ck, m, n):
    """The gathered first layer: X[idx] @ W and X[idx][:, col:col + j].T @ dZ, X never copied."""
    rng = np.random.default_rng([m, n, 3])
    k = 50
    X, W = _operands(rng, (300, k), (k, n))
    idx = rng.integers(0, X.shape[0], m).astype(np.intp)
    C = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(X, W, C, idx=idx)
    _check(C, X[idx], W)

    dZ = rng.standard_normal((m, n), dtype=np.float32)
    col, width = 13, 21
    dW = np.full((width, n), np.nan, np.float32)
    assert ck.gemm_f32(X, dZ, dW, trans_a=True, idx=idx, col=col)
    _check(dW, X[idx][:, col:col + width].T, dZ)


@pytest.mark.parametrize("form", ["nn", "tn", "nt"])
def test_any_block_of_c_has_the_bits_of_the_whole_product(ck, form):
    """What makes a fused step's bits independent of the thread count."""
    rng = np.random.default_rng(4)
    m, n, k = 37, 75, 300
    shapes = {"nn": ((m, k), (k, n)), "tn": ((k, m), (k, n)), "nt": ((m, k), (n, k))}[form]
    A, B = (np.ascontiguousarray(x) for x in _operands(rng, *shapes))
    kw = {"trans_a": form == "tn", "trans_b": form == "nt"}
    whole = np.empty((m, n), np.float32)
    assert ck.gemm_f32(A, B, whole, **kw)
    for r0, r1, c0, c1 in [(0, m, 0, 16), (0, m, 16, 40), (0, m, 40, n), (5, 13, 0, n), (13, m, 3, 70)]:
        part = np.empty((r1 - r0, c1 - c0), np.float32)
        a = {"nn": A[r0:r1], "tn": A[:, r0:r1], "nt": A[r0:r1]}[form]
        b = {"nn": B[:, c0:c1], "tn": B[:, c0:c1], "nt": B[c0:c1]}[form]
        assert ck.gemm_f32(a, b, part, **kw)
        np.testing.assert_array_equal(part, whole[r0:r1, c0:c1])


def _fma_chain(a, b):
    """a (m, K) @ b (K, n) as one float32 fused multiply-add chain per element, k in order.

    float32 x float32 is exact in float64 (48 of 53 bits); the float64 sum then rounds once
    more before the float32 rounding, which a true fma does not, but a double rounding can only
    differ where the float64 sum lands exactly halfway between two floats: not in these data
    (the seeds are fixed, and the check is exact, so it holds or fails the same on every CPU).
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k in range(a.shape[1]):
        acc = (np.outer(a[:, k], b[k]) + acc).astype(np.float32)
    return acc


@pytest.mark.parametrize("form, m, n, k", [
    ("nn", 37, 75, 300), ("nn", 13, 9, 4100),  # tails of rows and columns; two depth chunks
    ("nn", 13, 20, 4100), ("tn", 40, 70, 300),  # two panels, the second one vector (AVX2: 20, AVX-512: 70)
    ("nn", 37, 100, 300), ("tn", 29, 130, 70),  # wide panels of 4 and 3 vectors, 6 and 8 rows (AVX-512)
    ("tn", 37, 75, 300), ("tn", 300, 20, 209), ("tn", 70, 5, 33),  # the narrow walks
    ("nt", 37, 75, 300), ("nt", 9, 17, 600), ("nt", 9, 40, 600),  # B's transposed panels, K in chunks
    ("nt", 200, 100, 10), ("nt", 13, 130, 300),  # wide panels of 4 and 3 vectors (AVX-512)
])
def test_every_element_is_one_fma_chain_in_k_order(ck, form, m, n, k):
    """The same bits on every vector width: each C[i, j] = fma(a_ik, b_kj, ...) for k = 0 .. K-1."""
    rng = np.random.default_rng([m, n, k, 5])
    shapes = {"nn": ((m, k), (k, n)), "tn": ((k, m), (k, n)), "nt": ((m, k), (n, k))}[form]
    A, B = _operands(rng, *shapes)
    C = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(A, B, C, trans_a=form == "tn", trans_b=form == "nt")
    a = A.T if form == "tn" else A
    b = B.T if form == "nt" else B
    np.testing.assert_array_equal(C, _fma_chain(a, b))


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (37, 75, 300), (200, 100, 64), (13, 70, 5), (9, 33, 4100)])
def test_a_relu_layer_s_product_has_the_bits_of_the_product_then_its_pass(ck, m, n, k):
    """fg_nn_relu: relu(A @ B + bias) as the product and then the point function over C + bias
    give it, bit for bit (0 where the sum is <= 0, -0 included; NaN kept), in every panel shape
    and across depth chunks."""
    rng = np.random.default_rng([m, n, k, 11])
    A, B = _operands(rng, (m, k), (k, n))
    A = A.copy()
    A.flat[3::19] = np.nan
    bias = rng.standard_normal(n, dtype=np.float32)
    C = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_relu_f32(A, B, bias, C)
    P = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(A, B, P)
    with np.errstate(invalid="ignore"):
        Z = P + bias
        ref = np.where(Z <= 0, np.float32(0), Z)
    np.testing.assert_array_equal(C.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("k", [4097, 9000, 12288])
def test_long_products_chain_their_depth_chunks(ck, k):
    """Beyond FG_MAX_K (4096) A @ B runs in depth chunks, each starting from C: still one chain per element.

    The narrow A.T @ B (few columns, many rows: C^T's vectors along the rows) walks the whole
    depth at once, so it equals the chunked product bit for bit only if chunking changed no
    rounding.
    """
    rng = np.random.default_rng(k)
    m, n = 64, 20  # the cats network's first layer: 12288 inputs, 20 units
    A, B = _operands(rng, (m, k), (k, n))
    C = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(A, B, C)
    _check(C, A, B)
    CT = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(np.ascontiguousarray(A.T), B, CT, trans_a=True)
    np.testing.assert_array_equal(CT, C)


@pytest.mark.parametrize("m, n", [(64, 100), (128, 10), (64, 1), (192, 37), (64, 6)])
def test_gathered_weight_gradients_along_the_inputs_have_the_bits_of_the_walk(ck, m, n):
    """X[idx][:, col:col + m].T @ dZ with m whole vectors of 64 and n not (digits: 64 inputs, 100
    units) runs its vectors along the inputs, its tiles stored transposed; the same bits as the
    product of the rows copied out, which walks its vectors along the units."""
    rng = np.random.default_rng([m, n, 9])
    K, col = 200, 5
    X = rng.standard_normal((300, col + m + 4), dtype=np.float32)
    dZ = rng.standard_normal((K, n), dtype=np.float32)
    idx = rng.integers(0, X.shape[0], K).astype(np.intp)
    by_index = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(X, dZ, by_index, trans_a=True, idx=idx, col=col)
    _check(by_index, X[idx][:, col:col + m].T, dZ)
    copied = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(np.ascontiguousarray(X[idx][:, col:col + m]), dZ, copied, trans_a=True)
    np.testing.assert_array_equal(by_index, copied)


def test_narrow_weight_gradients_have_the_bits_of_the_wide_walk(ck):
    """A.T @ B with few columns (a layer of few units) takes the transposed walk; any other walk of
    the same product (blocks of few rows, rows read by index) gives the same bits."""
    rng = np.random.default_rng(6)
    K, m, n = 209, 300, 20
    A, B = _operands(rng, (K, m), (K, n))
    whole = np.full((m, n), np.nan, np.float32)
    assert ck.gemm_f32(A, B, whole, trans_a=True)
    _check(whole, A.T, B)
    for r0, r1 in [(0, 17), (17, 50), (50, 51), (283, 300)]:
        part = np.empty((r1 - r0, n), np.float32)
        assert ck.gemm_f32(A[:, r0:r1], B, part, trans_a=True)
        np.testing.assert_array_equal(part, whole[r0:r1])
    by_index = np.empty((m, n), np.float32)
    assert ck.gemm_f32(A, B, by_index, trans_a=True, idx=np.arange(K, dtype=np.intp))
    np.testing.assert_array_equal(by_index, whole)
    for n in (1, 4, 7, 13, 26, 33):  # other narrow widths (13, 26: blocks of equal units), against float64
        Bn = np.ascontiguousarray(B[:, :1].repeat(n, axis=1) * rng.standard_normal(n).astype(np.float32))
        C = np.full((m, n), np.nan, np.float32)
        assert ck.gemm_f32(A, Bn, C, trans_a=True)
        _check(C, A.T, Bn)


def test_bad_shapes_raise(ck):
    C = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="do not make C"):
        ck.gemm_f32(np.ones((3, 5), np.float32), np.ones((6, 4), np.float32), C)
    with pytest.raises(ValueError, match="do not make C"):
        ck.gemm_f32(np.ones((5, 3), np.float32), np.ones((5, 4), np.float32), C, trans_a=True, trans_b=True)
    with pytest.raises(ValueError, match="is not a row of A"):
        ck.gemm_f32(np.ones((3, 5), np.float32), np.ones((5, 4), np.float32), C,
                    idx=np.array([0, 1, 3], np.intp))
    with pytest.raises(ValueError, match="must be contiguous"):
        ck.gemm_f32(np.ones((3, 10), np.float32)[:, ::2], np.ones((5, 4), np.float32), C)


@pytest.mark.skipif(not OWN, reason="no copy of the extension with the own products")
@pytest.mark.parametrize("batch_size", [None, 48], ids=["batch", "gathered"])
def test_a_wide_first_layer_trains_with_the_same_bits_on_any_thread_count(batch_size):
    """4100 inputs (two depth chunks), 20 units: the forward product split by rows, the narrow
    weight gradient walked transposed; the per-kernel path (NumPy's products) agrees."""
    rng = np.random.default_rng(8)
    X = rng.random((96, 4100), dtype=np.float32)
    y = (rng.random(96) < 0.4).astype(np.int64)

    def train(n_threads, fused=True):
        kernels.set_num_threads(n_threads)
        model = Sequential([Dense(20, "relu"), Dense(7, "tanh"), Dense(1, "sigmoid")], input_dim=4100,
                           dtype="float32", seed=2)
        h = Trainer(model, optim.GD(0.01), batch_size=batch_size, epochs=3, progress=False,
                    fused_step=fused).fit(X, y)
        return model._params.copy(), np.array(h["train_loss"])

    before = kernels.get_num_threads()
    try:
        one, two, ref = train(1), train(2), train(2, fused=False)
    finally:
        kernels.set_num_threads(before)
    np.testing.assert_array_equal(two[0], one[0])
    np.testing.assert_array_equal(two[1], one[1])
    np.testing.assert_allclose(one[1], ref[1], rtol=1e-5)
    np.testing.assert_allclose(one[0], ref[0], rtol=1e-3, atol=1e-5)
