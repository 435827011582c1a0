# The point functions applied element-wise, for the parity tests against fusednet.kernels.reference,
# and _vmath.h's functions, for their accuracy tests.
# Included by _ckernels.pyx (one extension module per instruction-set level).

from _point cimport (vm_expf, vm_exp, vm_logf, vm_log, vm_log1pf, vm_log1p, vm_tanhf, vm_tanh,
                     vm_sigmoidf, vm_sigmoid)

# ==================================================================================
# the point functions, applied element-wise: for the parity tests only
# ==================================================================================

def point(str name, const floating[::1] x, double slope, floating[::1] out):
    """out[i] = <name>(x[i]) with the compiled point function of that name."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating s = <floating>slope
    if name == "sigmoid":
        for i in range(n):
            out[i] = sigmoid(x[i])
    elif name == "sigmoid_grad":
        for i in range(n):
            out[i] = sigmoid_grad(x[i])
    elif name == "tanh":
        for i in range(n):
            out[i] = tanh(x[i])
    elif name == "tanh_grad":
        for i in range(n):
            out[i] = tanh_grad(x[i])
    elif name == "relu":
        for i in range(n):
            out[i] = relu(x[i])
    elif name == "relu_grad":
        for i in range(n):
            out[i] = relu_grad(x[i])
    elif name == "leaky_relu":
        for i in range(n):
            out[i] = leaky_relu(x[i], s)
    elif name == "leaky_relu_grad":
        for i in range(n):
            out[i] = leaky_relu_grad(x[i], s)
    elif name == "flush":
        for i in range(n):
            out[i] = flush(x[i])
    else:
        raise ValueError(f"no point function {name!r}")


#: the optimiser point functions of :func:`point_update`: name -> (array arguments, scalar arguments)
UPDATES = {"decayed": (2, 1), "ewa": (2, 2), "gd_step": (2, 1), "momentum_step": (2, 2),
           "rmsprop_step": (3, 2), "adam_step": (3, 4)}


def point_update(str name, const floating[::1] a, const floating[::1] b, const floating[::1] c,
                 const double[::1] s, floating[::1] out):
    """out[i] = <name>(a[i], b[i][, c[i]], *s) with the compiled optimiser point function of that name.

    ``s`` holds the scalar arguments in the reference's order, cast to the arrays' type.
    """
    cdef Py_ssize_t i, n = out.shape[0]
    if name not in UPDATES:
        raise ValueError(f"no optimiser point function {name!r}")
    if a.shape[0] != n or b.shape[0] != n or (UPDATES[name][0] == 3 and c.shape[0] != n):
        raise ValueError(f"a, b (and c) must hold {n} values each")
    if s.shape[0] != UPDATES[name][1]:
        raise ValueError(f"{name} takes {UPDATES[name][1]} scalars, got {s.shape[0]}")
    cdef floating s0 = <floating>s[0]
    cdef floating s1 = <floating>s[1] if s.shape[0] > 1 else 0
    cdef floating s2 = <floating>s[2] if s.shape[0] > 2 else 0
    cdef floating s3 = <floating>s[3] if s.shape[0] > 3 else 0
    if name == "decayed":
        for i in range(n):
            out[i] = decayed(a[i], b[i], s0)
    elif name == "ewa":
        for i in range(n):
            out[i] = ewa(a[i], b[i], s0, s1)
    elif name == "gd_step":
        for i in range(n):
            out[i] = gd_step(a[i], b[i], s0)
    elif name == "momentum_step":
        for i in range(n):
            out[i] = momentum_step(a[i], b[i], s0, s1)
    elif name == "rmsprop_step":
        for i in range(n):
            out[i] = rmsprop_step(a[i], b[i], c[i], s0, s1)
    else:
        for i in range(n):
            out[i] = adam_step(a[i], b[i], c[i], s0, s1, s2, s3)


def point_hash(const uint64_t[::1] i, uint64_t key, uint32_t[::1] out):
    """out = dropout_hash(i, key), the compiled point function."""
    cdef Py_ssize_t k
    cdef uint32_t k1 = <uint32_t>(key & 0xFFFFFFFFULL), k2 = <uint32_t>(key >> 32)
    for k in range(i.shape[0]):
        out[k] = dropout_hash(i[k], k1, k2)


def point_fmix32(const uint32_t[::1] h, uint32_t[::1] out):
    """out = fmix32(h), the compiled point function."""
    cdef Py_ssize_t k
    for k in range(h.shape[0]):
        out[k] = fmix32(h[k])


# ==================================================================================
# _vmath.h's functions, applied element-wise: for their accuracy tests only
# ==================================================================================

#: the functions of :func:`vmath`
VMATH = ("exp", "log", "log1p", "tanh", "sigmoid")


def vmath(str name, const floating[::1] x, floating[::1] out):
    """out[i] = <name>(x[i]) by _vmath.h's function of that name (float or double by the type).

    Each loop is the kind the kernels run, vectorised by the compiler, with a scalar
    remainder for the last elements.
    """
    cdef Py_ssize_t i, n = x.shape[0]
    cdef int f
    if out.shape[0] != n:
        raise ValueError(f"out must hold {n} values, got {out.shape[0]}")
    if name not in VMATH:
        raise ValueError(f"no vector function {name!r}")
    f = VMATH.index(name)
    with nogil:
        if floating is float:
            if f == 0:
                for i in range(n):
                    out[i] = vm_expf(x[i])
            elif f == 1:
                for i in range(n):
                    out[i] = vm_logf(x[i])
            elif f == 2:
                for i in range(n):
                    out[i] = vm_log1pf(x[i])
            elif f == 3:
                for i in range(n):
                    out[i] = vm_tanhf(x[i])
            else:
                for i in range(n):
                    out[i] = vm_sigmoidf(x[i])
        else:
            if f == 0:
                for i in range(n):
                    out[i] = vm_exp(x[i])
            elif f == 1:
                for i in range(n):
                    out[i] = vm_log(x[i])
            elif f == 2:
                for i in range(n):
                    out[i] = vm_log1p(x[i])
            elif f == 3:
                for i in range(n):
                    out[i] = vm_tanh(x[i])
            else:
                for i in range(n):
                    out[i] = vm_sigmoid(x[i])


def cce_by_row(const floating[:, ::1] Z, const floating[::1] b, const floating[:, ::1] Y,
               floating[:, ::1] A, double[::1] cost):
    """Softmax and cross-entropy of each row alone, by _cce_row (the per-row formula that
    loss_forward's blocks of rows, _cce_rows, are held to bit for bit): A, and cost[i] of row i."""
    cdef Py_ssize_t i, m = Z.shape[0], n = Z.shape[1]
    cdef double t[TILE]
    if b.shape[0] != n or Y.shape[0] != m or Y.shape[1] != n or A.shape[0] != m or A.shape[1] != n:
        raise ValueError(f"b, Y and A must match Z's shape {(m, n)}")
    if cost.shape[0] != m:
        raise ValueError(f"cost must hold {m} values, got {cost.shape[0]}")
    with nogil:
        for i in range(m):
            cost[i] = _cce_row(&Z[i, 0], &b[0], &Y[i, 0], &A[i, 0], n, t)
