# The step's own float32 products (_gemm.h), exposed for their tests.
# Included by _ckernels.pyx (one extension module per instruction-set level).

# ==================================================================================
# the own products, called directly
# ==================================================================================

def gemm_f32(const float[:, :] A, const float[:, :] B, float[:, :] C, bint trans_a=False,
             bint trans_b=False, const Py_ssize_t[::1] idx=None, Py_ssize_t col=0):
    """C = op(A) @ op(B) by the fused step's own float32 kernels (``_gemm.h``).

    op(A) is A, or A.T with ``trans_a``; op(B) is B, or B.T with ``trans_b`` (not
    both).  With ``idx`` the kernels read the rows A[idx] where they lie, as a
    gathered first layer does: op(A) is A[idx], or A[idx][:, col:col + m].T.  Rows
    may be strided, elements within a row must be contiguous.  Returns False,
    leaving C untouched, where this copy of the extension has no such kernel or
    the shape is left to BLAS.
    """
    cdef Py_ssize_t m = C.shape[0], n = C.shape[1], r, i
    cdef Py_ssize_t rows_a = idx.shape[0] if idx is not None else A.shape[0]
    cdef Py_ssize_t k = rows_a if trans_a else A.shape[1]
    cdef Py_ssize_t lda = A.strides[0] // sizeof(float)
    cdef Py_ssize_t ldb = B.strides[0] // sizeof(float), ldc = C.strides[0] // sizeof(float)
    cdef const float* rows[MAXR]
    cdef const float** rp = NULL
    cdef int done
    if (((col + m > A.shape[1]) if trans_a else rows_a != m) or col < 0 or (col and not trans_a)
            or (trans_b and (trans_a or idx is not None))
            or (B.shape[1] != k or B.shape[0] != n if trans_b else B.shape[0] != k or B.shape[1] != n)):
        raise ValueError(f"gemm_f32: op(A) of A ({A.shape[0]}, {A.shape[1]}) with {rows_a} rows, col={col}, "
                         f"trans_a={bool(trans_a)} and B ({B.shape[0]}, {B.shape[1]}), "
                         f"trans_b={bool(trans_b)} do not make C ({m}, {n})")
    for name, view in (("A", A), ("B", B), ("C", C)):
        if view.shape[1] > 1 and view.strides[1] != sizeof(float):
            raise ValueError(f"gemm_f32: the rows of {name} must be contiguous")
    if idx is not None:
        if rows_a > MAXR:
            raise ValueError(f"gemm_f32: at most {MAXR} rows by index, got {rows_a}")
        for r in range(rows_a):
            i = idx[r]
            if i < 0 or i >= A.shape[0]:
                raise ValueError(f"gemm_f32: idx[{r}] = {i} is not a row of A")
            rows[r] = &A[i, 0]
        rp = rows
    if m == 0 or n == 0 or k == 0:
        return False
    with nogil:
        if trans_b:
            done = fg_nt(m, n, k, &A[0, 0], lda, &B[0, 0], ldb, &C[0, 0], ldc)
        elif trans_a:
            done = fg_tn(m, n, k, &A[0, col] if rp == NULL else NULL, lda, rp, col, &B[0, 0], ldb,
                         &C[0, 0], ldc)
        else:
            done = fg_nn(m, n, k, &A[0, 0] if rp == NULL else NULL, lda, rp, &B[0, 0], ldb, &C[0, 0], ldc)
    return bool(done)


def gemm_relu_f32(const float[:, :] A, const float[:, :] B, const float[::1] bias, float[:, :] C):
    """C = relu(A @ B + bias) by fg_nn_relu (a hidden ReLU layer's forward in one pass): 0 where
    a sum is <= 0, else the sum (NaN kept), each sum rounded as the product and then the point
    function give it.  Returns False, leaving C untouched, where this copy of the extension has
    no own kernels."""
    cdef Py_ssize_t m = C.shape[0], n = C.shape[1], k = A.shape[1]
    if A.shape[0] != m or B.shape[0] != k or B.shape[1] != n or bias.shape[0] != n:
        raise ValueError(f"gemm_relu_f32: A ({A.shape[0]}, {A.shape[1]}), B ({B.shape[0]}, {B.shape[1]}) and "
                         f"bias ({bias.shape[0]},) do not make C ({m}, {n})")
    for name, view in (("A", A), ("B", B), ("C", C)):
        if view.shape[1] > 1 and view.strides[1] != sizeof(float):
            raise ValueError(f"gemm_relu_f32: the rows of {name} must be contiguous")
    if m == 0 or n == 0 or k == 0 or not FG_AVAILABLE:
        return False
    with nogil:
        fg_nn_relu(m, n, k, &A[0, 0], A.strides[0] // sizeof(float), NULL, &B[0, 0], B.strides[0] // sizeof(float),
                   &bias[0], &C[0, 0], C.strides[0] // sizeof(float))
    return True
