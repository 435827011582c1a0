# The population engine by the trainer's own step (fusednet.kernels._population_steps): models of one
# plain Dense net trained one after the other by _step_core, the one-call step of _step.pxi.
#
# A worker's StepPlan (built by Python for the worker's workspace, on one thread) is pointed at each
# model's rows of the population's arenas in turn (_ps_bind), with the model's learning rate, L2
# coefficient, betas and eps; the step, its checks, bounds and bias corrections are the trainer's,
# so a model's parameters and train losses are those of its own Trainer fit, bit for bit.  A model
# runs every epoch of the call before the next one starts: its arenas and the batch stay in cache.
# The dev set (when given) is evaluated after each epoch by the step's forward pass and loss, in
# batches of the plan's rows: a plain Dense net (no batch norm, no dropout) computes the same in
# training and inference.


cdef void _ps_bind(StepPlan plan, char* P, char* G, char* S1, char* S2) noexcept nogil:
    """Point the plan's net at one model's arena rows (weights, biases, their gradients, the optimiser's
    state); the plan's layer offsets are the population's (every model has the template's layout)."""
    cdef Net* net = &plan.net
    cdef Py_ssize_t isz = plan.isz
    cdef int l
    plan.P = P
    plan.G = G
    plan.S1 = S1
    plan.S2 = S2
    for l in range(net.L):
        net.W[l] = P + net.woff[l] * isz
        net.dW[l] = G + net.woff[l] * isz
        if net.has_bias[l]:
            net.b[l] = P + net.boff[l] * isz
            net.db[l] = G + net.boff[l] * isz


cdef Py_ssize_t _ps_hits(Net* net, int isz, int acc, const Py_ssize_t* ids, const Py_ssize_t* rows,
                         Py_ssize_t s, Py_ssize_t n) noexcept nogil:
    """The population's correct predictions of the batch just computed (net.A, its targets in net.Y):
    the argmax equal to the class id (softmax), or each output > 0.5 agreeing with its target > 0.5."""
    cdef Py_ssize_t r, hits = 0, k = net.n[net.L]
    cdef const float* a32 = <const float*>net.A
    cdef const double* a64 = <const double*>net.A
    cdef const float* y32 = <const float*>net.Y
    cdef const double* y64 = <const double*>net.Y
    if acc == LACC_ARGMAX:
        return _n_correct(net, isz, ids, rows, s, n)
    if acc == LACC_THRESHOLD:
        for r in range(n * k):
            if isz == 4:
                hits += (a32[r] > 0.5) == (y32[r] > 0.5)
            else:
                hits += (a64[r] > 0.5) == (y64[r] > 0.5)
    return hits


cdef void _ps_dev(StepPlan plan, const void* Xd, const void* Yd, const Py_ssize_t* idsd, const Py_ssize_t* dorder,
                  Py_ssize_t md, Py_ssize_t B, double lam, Py_ssize_t n_decay, int acc, double* loss,
                  Py_ssize_t* hits) noexcept nogil:
    """The dev set's cost (L2 included) and correct predictions for the plan's current model."""
    cdef Net* net = &plan.net
    cdef double part[KMAX]
    cdef double total = 0.0
    cdef Py_ssize_t s = 0, nb, pieces, K, c, n = net.n[net.L]
    cdef int l
    hits[0] = 0
    while s < md:
        nb = B if md - s > B else md - s
        net.m = nb
        pieces = nb if net.loss == CCE else _spans(nb, n)
        K = KMAX if pieces > KMAX else pieces
        if plan.isz == 4:
            _step_gather(<const float*>Xd, <const float*>Yd, dorder + s, net, 0)
            for l in range(net.L):
                _step_forward(<const float*>plan.P, net, l, 0)
            _step_loss(<const float*>plan.P, net, 0, part)
        else:
            _step_gather(<const double*>Xd, <const double*>Yd, dorder + s, net, 0)
            for l in range(net.L):
                _step_forward(<const double*>plan.P, net, l, 0)
            _step_loss(<const double*>plan.P, net, 0, part)
        for c in range(K):
            total += part[c]
        hits[0] += _ps_hits(net, plan.isz, acc, idsd, dorder, s, nb)
        s += nb
    if net.loss == MSE:
        total = 0.5 * total
    total = total / md
    if lam != 0.0:
        if plan.isz == 4:
            total = total + lam / (2.0 * md) * _sumsq(<const float*>plan.P, 0, n_decay)
        else:
            total = total + lam / (2.0 * md) * _sumsq(<const double*>plan.P, 0, n_decay)
    loss[0] = total


def population_steps(Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t c, net_, at, info, data, dev, arenas, hyp, keys,
                     bc, work, out, status):
    """``fusednet.kernels._population.fit_chunk`` by the trainer's step: models ``k0 .. k1 - 1`` one after
    the other, each every epoch of the call, with the GIL released.

    The arguments are ``fit_chunk``'s (``net_``, ``at``, ``keys`` and ``bc`` unused: the plan describes the
    net, a plain Dense net has no dropout, and the step computes its own bias corrections).  ``work``:
    ``(plans, bounds, steps, corrected)``: a StepPlan per worker (``c``) for batches of ``info[BATCH]``
    rows, built for the population's layout on one thread; float64 (K, 3) the models' update bounds
    (written); int64 ``(t, e)``: the steps every model had taken before epoch ``e`` of the fit; int64 (K,)
    each model's bias correction (0 none, 1 the first moment, 2 both).  IN/OUT as there: the arenas,
    ``out`` and ``status``.
    """
    cdef StepPlan plan = work[0][c]
    cdef double[:, ::1] bounds = work[1]
    cdef const int64_t[::1] steps = work[2]
    cdef const int64_t[::1] corrected = work[3]
    cdef const double[:, ::1] h = hyp
    cdef double[:, :, ::1] o = out
    cdef int64_t[:, ::1] st = status
    cdef const int64_t[:, ::1] perm
    cdef const int64_t[::1] ids
    cdef const int64_t[::1] idsd
    cdef const int64_t[::1] dorder
    cdef Net* net = &plan.net
    cdef OptSpec spec
    cdef Py_ssize_t B = info[2], E = info[1], epoch0 = info[0], n_steps = info[6], acc = info[5]
    cdef Py_ssize_t K = h.shape[0], m, md, kk, ei, epoch, step, s, e, t, n_params = plan.n_params
    cdef Py_ssize_t isz = plan.isz, dhits
    cdef Py_ssize_t n1, n2
    cdef int code = 0
    cdef double lam, res[2]
    cdef double dloss
    cdef char* Pb
    cdef char* Gb
    cdef char* S1b
    cdef char* S2b
    cdef const void* xp
    cdef const void* yp
    cdef const void* xdp = NULL
    cdef const void* ydp = NULL
    X, Y, ids_, perm_ = data
    Xd, Yd, idsd_, dorder_ = dev
    P, G, S1, S2 = arenas[0], arenas[1], arenas[2], arenas[3]
    perm = perm_
    ids = ids_
    idsd = idsd_
    dorder = dorder_
    m = X.shape[0]
    md = Xd.shape[0]
    if not (0 <= k0 <= k1 <= K) or P.shape[0] != K:
        raise ValueError(f"k0, k1: models {k0} .. {k1} of {K}, the arena holds {P.shape[0]}")
    if P.dtype != plan.dtype or P.shape[1] != n_params:
        raise ValueError(f"arenas: ({K}, {n_params}) of {plan.dtype} for the plan, got {P.shape} of {P.dtype}")
    if B > plan.rows or perm.shape[0] < E or perm.shape[1] != m or bounds.shape[0] != K or corrected.shape[0] != K:
        raise ValueError("work, data: a plan of fewer rows than the batch, or orders, bounds or corrections "
                         "of other sizes than the call's")
    n1 = S1.shape[1]
    n2 = S2.shape[1]
    _batch(plan, plan._batch_x, plan._batch_y, B)
    xp = _data(X, plan.dtype, m * net.n[0], "data X", False)
    yp = _data(Y, plan.dtype, m * net.n[net.L], "data Y", False)
    if md > 0:
        xdp = _data(Xd, plan.dtype, md * net.n[0], "dev X", False)
        ydp = _data(Yd, plan.dtype, md * net.n[net.L], "dev Y", False)
    Pb = <char*>_data(P, plan.dtype, K * n_params, "arenas[0]")
    Gb = <char*>_data(G, plan.dtype, K * n_params, "arenas[1]")
    S1b = <char*>_data(S1, plan.dtype, K * n1, "arenas[2]") if n1 else NULL
    S2b = <char*>_data(S2, plan.dtype, K * n2, "arenas[3]") if n2 else NULL
    spec.kind = <int>info[4]
    with nogil:
        for kk in range(k0, k1):
            if st[kk, 0] != 0:
                continue
            _ps_bind(plan, Pb + kk * n_params * isz, Gb + kk * n_params * isz,
                     S1b + kk * n1 * isz if S1b != NULL else NULL, S2b + kk * n2 * isz if S2b != NULL else NULL)
            net.bound = &bounds[kk, 0]
            _refresh(plan)
            spec.bias_correction = <int>corrected[kk]
            spec.beta1 = h[kk, LH_BETA1]
            spec.beta2 = h[kk, LH_BETA2]
            spec.eps = h[kk, LH_EPS]
            plan.h.kind = spec.kind
            plan.h.beta1 = spec.beta1
            plan.h.beta2 = spec.beta2
            plan.h.eps = spec.eps
            lam = h[kk, LH_L2]
            code = 0
            for ei in range(E):
                epoch = epoch0 + ei
                for t in range(4):
                    o[ei, kk, t] = 0.0
                for step in range(n_steps):
                    s = step * B
                    e = s + B if s + B < m else m
                    net.m = e - s
                    plan.h.lr = h[kk, LH_LR]
                    t = steps[0] + (epoch - steps[1]) * n_steps + step + 1
                    _bias_corrections(&spec, t, &plan.h)
                    if isz == 4:
                        code = _step_core(<float*>plan.P, <float*>plan.G, <float*>plan.S1, <float*>plan.S2, net,
                                          &plan.h, lam, n_params, <const float*>xp, <const float*>yp,
                                          <const Py_ssize_t*>&perm[ei, s], res)
                    else:
                        code = _step_core(<double*>plan.P, <double*>plan.G, <double*>plan.S1, <double*>plan.S2,
                                          net, &plan.h, lam, n_params, <const double*>xp, <const double*>yp,
                                          <const Py_ssize_t*>&perm[ei, s], res)
                    if code != 0:
                        st[kk, 0] = code
                        st[kk, 1] = epoch
                        st[kk, 2] = step
                        break
                    o[ei, kk, 0] = o[ei, kk, 0] + res[0] * <double>(e - s)
                    o[ei, kk, 1] += <double>_ps_hits(net, <int>isz, <int>acc, <const Py_ssize_t*>&ids[0],
                                                     <const Py_ssize_t*>&perm[ei, 0], s, e - s)
                if code != 0:
                    break
                if md > 0:
                    _ps_dev(plan, xdp, ydp, <const Py_ssize_t*>&idsd[0], <const Py_ssize_t*>&dorder[0], md, B, lam,
                            plan.h.n_decay, <int>acc, &dloss, &dhits)
                    o[ei, kk, 2] = dloss
                    o[ei, kk, 3] = <double>dhits
