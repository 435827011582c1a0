r"""Many models of one architecture trained together: :class:`Population` (the course's "caviar").

Course 2, week 3 advises training many models in parallel and keeping the
best.  For the course's small networks one fit is a few milliseconds of
compute, and fitting K models one after another pays K times the per-fit
overheads and reads every mini-batch K times.  A :class:`Population` trains
K configurations of one layer list in one compiled call
(:mod:`fusednet.kernels._population`): every model sees the same shuffled
mini-batches, the batch is gathered once and the first layer's product runs
for all the models in one pass over it, and the K optimiser updates run over
one ``(K, n_params)`` arena.  A net of Dense layers small enough to stay off
BLAS (the course's moons and planar nets) runs on the extension's lanes
engine instead (:mod:`fusednet.kernels._population_lanes`): 16 models side by
side, one per lane of every vector, with subnormal values counted as 0.  A
larger net of Dense layers only (the digits net, 64-64-10) runs model by model
on the trainer's own compiled step (:mod:`fusednet._population_steps`): each
worker thread's step pointed at each of its models in turn.

Model ``k`` is exactly the model :class:`~fusednet.Trainer` would give::

    Sequential(layers with every Dropout's keep_prob = configs[k]["keep_prob"],
               input_dim=input_dim, l2=configs[k]["l2"], seed=configs[k]["seed"], dtype=dtype)
    Trainer(model, optimizer=<Optimizer>(**configs[k]'s optimiser arguments),
            batch_size=batch_size, epochs=epochs, seed=seed, shuffle=shuffle).fit(X, y, dev)

the same formulas on the same mini-batches, with the same dropout masks
(keyed by the model's seed, as :class:`~fusednet.Sequential` keys them) --
only the order of the additions inside the products differs, so the results
agree to rounding (on the trainer's step they are its bits, dev losses aside:
``tests/test_population_steps.py``): ``tests/test_population.py`` (and, for the lanes,
``tests/test_population_lanes.py``) holds the weights, running statistics and
histories of every optimiser, with dropout, batch norm and L2, within 1e-10
(relative to the largest weight) of the trainer's in float64 and within 1e-4
in float32, after three epochs.  A model's numbers do not depend on
the number of threads, nor on the other models of its population -- except
when its first layer's products are batched into one BLAS product over the
models (a first layer of at least ``kernels._population.BLAS_MACS``
multiply-adds per batch), whose rows BLAS may round differently for another
number of models.

Not taken from the trainer: learning-rate schedules and callbacks (a config's
``lr`` is constant), and data larger than memory (``X`` is converted to one
C-contiguous array of the dtype once per fit).
"""

import contextlib
import math
import numbers
import time

import numpy as np

from . import _population_steps as _steps
from . import kernels as _kernels
from . import optim as _optim
from ._fused import FAILED
from ._validation import check_bool, check_real
from .history import History
from .kernels import _blas, _codes
from .kernels import _population as _engine
from .kernels import _population_lanes as _lanes
from .kernels._memory import LINE, zeros_aligned
from .layers import Activation, Dense, Dropout, Layer
from .model import Sequential, _DropoutNode, as_2d
from .model import _inputs as _model_inputs
from .trainer import _seed_int, epoch_orders

__all__ = ["Population"]

#: optimiser names -> classes; a class itself is accepted too
OPTIMIZERS = {"gd": _optim.GD, "momentum": _optim.Momentum, "rmsprop": _optim.RMSProp, "adam": _optim.Adam}
_KINDS = {_optim.GD: _codes.OPT_GD, _optim.Momentum: _codes.OPT_MOMENTUM, _optim.RMSProp: _codes.OPT_RMSPROP,
          _optim.Adam: _codes.OPT_ADAM}
#: per-model keys besides the optimiser's constructor arguments
MODEL_KEYS = ("l2", "keep_prob", "seed")
#: a call runs its models on a team of threads from this many floating-point operations in its products
#: (6 x rows x weights x epochs x models); below it, on the calling thread.  Chosen with
#: benchmarks/test_bench_population.py, whose smallest workload (moons, 245 MFLOP) already ran faster on
#: the team.
PARALLEL_FLOPS = 50_000_000
#: on the team, the models are cut into chunks of about this many, handed out to the threads one at a
#: time (a thread that finishes early takes the next chunk: on a shared machine a descheduled thread holds
#: up one chunk, not half of the population).  Fewer models per chunk balance better; more make the first
#: layer's product over the chunk wider (benchmarks/test_bench_population.py, digits: 4 per chunk)
CHUNK_MODELS = 4
#: calls a team's work is cut into (each chunk's epochs in ``SLICES // chunks`` calls, at least one), so
#: that a thread that starts late takes over part of the work instead of holding up its chunk
#: (benchmarks/test_bench_population.py, moons: 2 chunks, 8 calls each)
SLICES = 16
#: bytes between two workers' lane buffers: two cache lines (a line's neighbour is fetched with it)
_PAD = 2 * LINE


def _optimizer_class(optimizer):
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]
    if isinstance(optimizer, type) and optimizer in _KINDS:
        return optimizer
    raise ValueError(
        f"optimizer must be one of {sorted(OPTIMIZERS)} or a fusednet.optim class (GD, Momentum, RMSProp, Adam), "
        f"got {optimizer!r}"
    )


def _optimizer_args(cls):
    """The names of ``cls``'s constructor arguments a config may set (``backend`` is not one)."""
    return tuple(h for h in cls._hypers)


def _check_layers(layers):
    """The layer list checked as :class:`~fusednet.Sequential` checks it, plus what the engine needs."""
    _model_inputs.check_layers(layers)
    if not isinstance(layers[0], Dense):
        raise ValueError(
            f"layers[0] must be a Dense layer in a Population (its product is shared by the models), "
            f"got {type(layers[0]).__name__}"
        )
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, (Dense, Activation)) and layer.act == _codes.SOFTMAX:
            raise ValueError(f"layers[{i}]: a hidden softmax activation is not supported in a Population")
    return list(layers)


def _check_config(i, cfg, cls, has_dropout):
    """Config ``i`` as ``(optimiser kwargs, l2, keep_prob or None, seed or None)``; ValueError naming index and key."""
    if not isinstance(cfg, dict):
        raise TypeError(f"configs[{i}] must be a dict, got {type(cfg).__name__}")
    known = _optimizer_args(cls)
    opt_args = {}
    l2, keep, seed = 0.0, None, None
    for key, value in cfg.items():
        where = f"configs[{i}][{key!r}]"
        if key in known:
            try:
                cls(**{key: value})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: {exc}") from None
            opt_args[key] = value
        elif key == "l2":
            l2 = _checked(where, _model_inputs.check_l2, value)
        elif key == "keep_prob":
            if not has_dropout:
                raise ValueError(f"{where}: keep_prob is given but the layers hold no Dropout layer")
            keep = _checked(where, lambda v: check_real("keep_prob", v, 0, 1, low_open=True), value)
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{where}: seed must be an int >= 0 (the model's initialisation), got {value!r}")
            seed = int(value)
        else:
            raise ValueError(
                f"{where}: unknown key; a config sets {cls.__name__}'s arguments {list(known)} and "
                f"{list(MODEL_KEYS)} (widths and layer kinds are the population's layers: models of "
                f"another shape belong to another population)"
            )
    return opt_args, l2, keep, seed


def _checked(where, check, value):
    try:
        return check(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _with_keep_prob(layers, keep):
    """Copies of ``layers`` with every Dropout's keep_prob set to ``keep`` (None: unchanged)."""
    out = []
    for layer in layers:
        layer = Layer.from_config(layer.get_config())
        if keep is not None and isinstance(layer, Dropout):
            layer.keep_prob = keep
        out.append(layer)
    return out


class Population:
    r"""K models of one layer list, trained together on the same mini-batches.

    Parameters
    ----------
    layers : list of Layer
        As :class:`~fusednet.Sequential` takes it; the first layer must be a
        Dense one, and hidden layers may not use softmax.
    input_dim : int
        ``n_features``.
    configs : list of dict
        One per model.  Keys: the optimiser's constructor arguments (``lr``;
        ``beta`` and ``bias_correction`` for Momentum; ``beta``, ``eps`` for
        RMSProp; ``beta1``, ``beta2``, ``eps`` for Adam), ``"l2"`` (the model's
        :math:`\lambda`), ``"keep_prob"`` (of every Dropout layer) and
        ``"seed"`` (the model's initial weights and dropout masks; default:
        ``seed``).  Missing keys take the defaults of the optimiser and of
        :class:`~fusednet.Sequential`.
    optimizer : {"gd", "momentum", "rmsprop", "adam"} or a fusednet.optim class
    batch_size : int or None
        As :class:`~fusednet.Trainer`'s (None: batch gradient descent).
    epochs : int
    seed : int
        Plays the trainer's role for every model: epoch ``e``'s row order is
        ``numpy.random.default_rng([seed, e]).permutation(m)``.
    dtype : {"float32", "float64"}
    shuffle : bool

    Attributes
    ----------
    models : list of Sequential
        The K models (plain :class:`~fusednet.Sequential` objects), with the
        weights of the last fit.
    configs : list of dict
        The configurations, as given.
    histories : list of History
        Of the last fit, one per model.
    diverged : list of dict or None
        Per model, None, or ``{"epoch", "step", "what"}`` when a NaN or inf
        (``what``: "cost", "gradient", "update" or "batch-norm statistics")
        stopped it; its parameters are those from before that step, its
        history ends with the last whole epoch, and the other models go on.
    engine : str or None
        Which engine trained the last fit, and why the faster ones did not:
        the vector lanes, the trainer's one-call step model by model, or the
        model-by-model Numba engine.

    Raises
    ------
    ValueError, TypeError
        On a bad argument, before anything is built; a bad config names its
        index and key (``configs[3]['lr']: ...``).
    """

    def __init__(self, layers, *, input_dim, configs, optimizer="adam", batch_size=64, epochs=10, seed=0,
                 dtype="float32", shuffle=True):
        layers = _check_layers(layers)
        input_dim = _model_inputs.check_input_dim(input_dim)
        cls = _optimizer_class(optimizer)
        if isinstance(configs, dict) or not isinstance(configs, (list, tuple)):
            raise TypeError(f"configs must be a list of dicts, got {type(configs).__name__}")
        if len(configs) == 0:
            raise ValueError("configs must hold at least one config")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an int >= 1 or None (batch gradient descent), got {batch_size!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        shuffle = check_bool("shuffle", shuffle)
        dtype = _model_inputs.check_dtype(dtype)
        has_dropout = any(isinstance(layer, Dropout) for layer in layers)
        checked = [_check_config(i, cfg, cls, has_dropout) for i, cfg in enumerate(configs)]
        # ---- state from here on ----
        self.layers = layers
        self.input_dim = input_dim
        self.configs = [dict(cfg) for cfg in configs]
        self.optimizer = cls
        self.batch_size = None if batch_size is None else int(batch_size)
        self.epochs = int(epochs)
        self.seed = int(seed)
        self.dtype = dtype
        self.shuffle = shuffle
        self.optimizers = [cls(**args) for args, *_ in checked]
        # (l2, keep_prob, seed) per model; one model built per distinct (keep_prob, seed), whose initial
        # parameters and statistics its models share: the K models themselves are built when asked for
        self._specs = [(l2, keep, self.seed if mseed is None else mseed) for _, l2, keep, mseed in checked]
        self._templates = {}
        for _, keep, mseed in self._specs:
            if (keep, mseed) not in self._templates:
                self._templates[keep, mseed] = self._model(0.0, keep, mseed)
        self._models = None
        first = self._template(0)
        plan = first.plan()
        self._net = plan["layers"]
        self._n_decay = plan["n_decay"]
        self._loss = first._loss
        self._kind = _KINDS[cls]
        K, n = len(self._specs), first.n_params
        self._P = np.stack([self._template(k)._params for k in range(K)])
        self._R = np.stack([self._template(k)._stats for k in range(K)])
        self._G = np.zeros_like(self._P)
        slots = len(cls._slots)
        self._S1 = np.zeros((K, n if slots >= 1 else 0), dtype)
        self._S2 = np.zeros((K, n if slots >= 2 else 0), dtype)
        self._hyp, self._keys, self._corrected = self._tables()
        self._t = 0
        self.histories = [History() for _ in range(K)]
        self.diverged = [None] * K
        #: which engine trained the last fit, and why (None before one)
        self.engine = None
        self._layout = None

    def _model(self, l2, keep, mseed):
        """A model of the population's layers with that L2, Dropout keep_prob and seed, in its initial state."""
        return Sequential(_with_keep_prob(self.layers, keep), input_dim=self.input_dim, l2=l2, seed=mseed,
                          dtype=self.dtype)

    def _template(self, k):
        """The model built for model ``k``'s keep_prob and seed (its initial state, its nodes)."""
        _, keep, mseed = self._specs[k]
        return self._templates[keep, mseed]

    @property
    def models(self):
        """The K models (plain :class:`~fusednet.Sequential` objects) with the weights of the last fit,
        built on first access."""
        if self._models is None:
            models = []
            for k, spec in enumerate(self._specs):
                mdl = self._model(*spec)
                mdl._params[...] = self._P[k]
                mdl._stats[...] = self._R[k]
                models.append(mdl)
            self._models = models
        return self._models

    def _tables(self):
        """Per-model ``hyp`` (float64 (K, 6)), ``keys`` (uint64 (K, 2)) and which bias corrections apply."""
        K = len(self)
        n_layers = len(self.layers)
        hyp = np.zeros((K, _engine.KEEP + n_layers), np.float64)
        keys = np.zeros((K, 1 + n_layers), np.uint64)
        corrected = np.zeros((K, 2), bool)
        for k, opt in enumerate(self.optimizers):
            l2, _, _ = self._specs[k]
            mdl = self._template(k)
            hp = opt.hyperparameters()
            hyp[k, _engine.LR] = hp["lr"]
            if isinstance(opt, _optim.Adam):
                hyp[k, _engine.BETA1], hyp[k, _engine.BETA2], hyp[k, _engine.EPS] = hp["beta1"], hp["beta2"], hp["eps"]
                corrected[k] = True
            elif isinstance(opt, _optim.Momentum):
                hyp[k, _engine.BETA1] = hp["beta"]
                corrected[k, 0] = hp["bias_correction"]
            elif isinstance(opt, _optim.RMSProp):
                hyp[k, _engine.BETA2], hyp[k, _engine.EPS] = hp["beta"], hp["eps"]
            hyp[k, _engine.L2] = l2
            keys[k, 0] = mdl.seed & 0xFFFFFFFFFFFFFFFF
            for i, node in enumerate(mdl._nodes):
                keep = node.keep_prob if isinstance(node, _DropoutNode) else 1.0
                hyp[k, _engine.KEEP + i] = keep
                keys[k, 1 + i] = _codes.dropout_threshold(keep)
        return hyp, keys, corrected

    # ---- public API --------------------------------------------------------------

    def __len__(self):
        return len(self._specs)

    def fit(self, X, y, dev=None, *, initial_epoch=0):
        """Train every model; return one :class:`~fusednet.History` per model.

        Parameters
        ----------
        X : array_like, shape (m, n_features)
        y : array_like
            Labels as :class:`~fusednet.Sequential` takes them.
        dev : (X_dev, y_dev), optional
            Evaluated (inference mode) after every epoch, for every model.
        initial_epoch : int, default 0
            As :meth:`fusednet.Trainer.fit`'s: run epochs ``initial_epoch ..
            epochs - 1`` from the models' and optimisers' current state.

        Returns
        -------
        list of History
            ``train_loss``, ``lr``, ``train_accuracy`` (classifiers),
            ``dev_loss``, ``dev_accuracy`` (with ``dev``) and ``time`` per
            epoch, as the trainer records them; ``time`` is the wall time of
            the epoch's share of the call (the K models share each pass).
        """
        if (isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral)
                or not 0 <= initial_epoch <= self.epochs):
            raise ValueError(f"initial_epoch must be an int in [0, epochs={self.epochs}], got {initial_epoch!r}")
        data = self._data(X, y, dev)
        self.histories = [History() for _ in range(len(self))]
        self._run(data, int(initial_epoch), self.epochs, self.histories)
        return self.histories

    def best_index(self, metric="dev_loss"):
        """The index of the best model by the last epoch's ``metric`` (losses: lowest; accuracies: highest).

        Models that diverged are left out.  ValueError when no model recorded ``metric``.
        """
        higher = "accuracy" in metric
        best, value = None, None
        for k, (h, div) in enumerate(zip(self.histories, self.diverged)):
            if div is not None or metric not in h or not h[metric]:
                continue
            v = h[metric][-1]
            if not math.isfinite(v):
                continue
            if value is None or (v > value if higher else v < value):
                best, value = k, v
        if best is None:
            have = sorted({name for h in self.histories for name in h})
            raise ValueError(f"metric {metric!r} was not recorded by any model that trained; recorded: {have}"
                             + ("" if "dev" not in metric else " (give fit a dev set)"))
        return best

    def best(self, metric="dev_loss"):
        """The best model (a :class:`~fusednet.Sequential`) by the last epoch's ``metric``: see :meth:`best_index`."""
        return self.models[self.best_index(metric)]

    def __repr__(self):
        return (f"Population({len(self)} models, optimizer={self.optimizer.__name__}, "
                f"batch_size={self.batch_size}, epochs={self.epochs}, seed={self.seed}, dtype={self.dtype.name!r})")

    # ---- the run ---------------------------------------------------------------------

    def _data(self, X, y, dev):
        """The checked and converted data of a fit, as the trainer checks it (nothing changes before)."""
        tmpl = self._template(0)
        X = tmpl._check_X(X, "X")
        m, nf = X.shape
        Y, ids = tmpl._targets(y, m, "y", n_in=nf)
        dev_data = None
        if dev is not None:
            if not (isinstance(dev, (tuple, list)) and len(dev) == 2):
                raise TypeError("dev must be a pair (X_dev, y_dev)")
            Xd = as_2d(dev[0], "dev X")
            if Xd.shape[1] != nf:
                raise ValueError(f"dev X has {Xd.shape[1]} features but X has {nf}")
            Xd = tmpl._check_X(Xd, "dev X")
            Yd, idsd = tmpl._targets(dev[1], Xd.shape[0], "dev y", n_in=nf)
            dev_data = (Xd, Yd, idsd)
        B = m if self.batch_size is None else min(self.batch_size, m)
        if tmpl._has_bn():
            if B < 2:
                raise ValueError(f"batch_size={B}: BatchNorm needs at least 2 examples in every training batch")
            if m % B == 1:
                raise ValueError(
                    f"with m={m} and batch_size={B} the last mini-batch holds one example, and "
                    f"BatchNorm needs at least 2; choose another batch_size"
                )
        dt = self.dtype

        def arrays(X, Y, ids):
            ids = np.zeros(X.shape[0], np.int64) if ids is None else np.ascontiguousarray(ids, np.int64)
            return np.ascontiguousarray(X, dt), np.ascontiguousarray(Y, dt), ids

        X, Y, ids = arrays(X, Y, ids)
        if dev_data is None:
            dev_arrays = (np.zeros((0, nf), dt), np.zeros((0, Y.shape[1]), dt), np.zeros(0, np.int64))
        else:
            dev_arrays = arrays(*dev_data)
        dev_arrays = dev_arrays + (np.arange(dev_arrays[0].shape[0], dtype=np.int64),)
        return {"X": X, "Y": Y, "ids": ids, "dev": dev_arrays, "B": B, "has_dev": dev_data is not None}

    def _orders(self, m, B, e0, e1):
        """Each epoch's row order, as the trainer draws it: (e1 - e0, m) int64."""
        if self.shuffle and B < m:
            return epoch_orders(_seed_int(self.seed), e0, e1, m)
        perm = np.empty((e1 - e0, m), np.int64)
        perm[:] = np.arange(m)
        return perm

    def _bias_corrections(self, t0, n):
        """``(table, cols)``: the bias corrections of steps ``t0 + 1 .. t0 + n`` (``optim.bias_correction``),
        once per distinct pair of corrections: table float64 (n, U, 2), model k's in column ``cols[k]``
        (int64 (K,)); 1 where a model's optimiser corrects nothing."""
        pairs = [(self._hyp[k, _engine.BETA1] if c1 else None, self._hyp[k, _engine.BETA2] if c2 else None)
                 for k, (c1, c2) in enumerate(self._corrected.tolist())]
        distinct = list(dict.fromkeys(pairs))  # a search varies the learning rate more often than the betas
        cols = np.array([distinct.index(pair) for pair in pairs], np.int64)
        t = np.arange(t0 + 1, t0 + n + 1, dtype=np.float64)
        table = np.ones((n, len(distinct), 2), np.float64)
        for u, pair in enumerate(distinct):
            for col, beta in enumerate(pair):
                if beta is not None:
                    table[:, u, col] = _optim.bias_correction(beta, t)
        return table, cols

    def _chunks(self, flops, lanes):
        """``(bounds, n_workers)``: the chunks of models and the threads that run them.

        Small work: one chunk on the calling thread (0 workers).  Else one worker per thread and chunks of
        about :data:`CHUNK_MODELS` models (at least one per worker), or with ``lanes`` one chunk per group
        of :data:`~fusednet.kernels._population_lanes.V` models (a team when there are two groups or more).
        """
        K = len(self)
        units = -(-K // _lanes.V) if lanes else K
        if flops < PARALLEL_FLOPS:
            return np.array([0, K], np.int64), 0
        n = min(units, _kernels.get_num_threads())
        if n > 1:
            import numba

            n = min(n, numba.get_num_threads())
        if n == 1 and (flops < math.inf or lanes):
            return np.array([0, K], np.int64), 0
        if lanes:
            return np.array([min(K, _lanes.V * c) for c in range(units + 1)], np.int64), n
        n_chunks = min(K, max(n, -(-K // CHUNK_MODELS)))
        return np.array([(K * c) // n_chunks for c in range(n_chunks + 1)], np.int64), n

    def _run(self, data, e0, e1, histories, team=None, lanes=None, steps=None):
        """Epochs ``e0 .. e1 - 1`` of every model still training; appends to ``histories``.

        ``team``: None, the calling thread or a team by the size of the work (:meth:`_chunks`); False, the
        calling thread; True, the team's kernel (with one worker per thread).  ``lanes``: None, the
        models side by side in vector lanes when the net allows it
        (:func:`~fusednet.kernels._population_lanes.eligible`); False, model by model.  ``steps`` (model
        by model): None, by the trainer's step when the net allows it (:func:`._population_steps.why_not`);
        False, by the Numba engine.
        """
        if e1 <= e0:
            return
        m, B = data["X"].shape[0], data["B"]
        K = len(self)
        n_steps = -(-m // B)
        E = e1 - e0
        dense = self._net["op"] == _codes.DENSE
        weights = int(np.sum(self._net["n_in"][dense] * self._net["n_out"][dense]))
        why_not_lanes = _lanes.why_not(self._net, B) if lanes is None else None if lanes else "asked for"
        lanes = why_not_lanes is None
        why_not_steps = "asked for" if steps is False else None if lanes else _steps.why_not(self, B)
        steps = not lanes and why_not_steps is None
        bounds, n_workers = self._chunks(6 * m * weights * E * K if team is None else 0 if not team else math.inf,
                                         lanes)
        # the team's threads start now and find their CPUs while this thread prepares the call
        with _engine.Team(n_workers) if n_workers else contextlib.nullcontext() as workers:
            args, steps = self._call_args(data, e0, e1, int(np.max(np.diff(bounds))), max(n_workers, 1), lanes,
                                          steps)
            kernel = _lanes.fit_lanes if lanes else _steps.fit_steps if steps else _engine.fit_chunk
            t0 = time.perf_counter()
            # the model-by-model kernel's BLAS products run on its own threads; the lanes call no BLAS (and
            # setting BLAS's thread count back wakes its threads, which then spin beside the team)
            blas = contextlib.nullcontext() if lanes else _blas.single_threaded()
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"), blas:
                if workers is None:
                    kernel(0, K, 0, *args)
                else:
                    workers.run(bounds, *args, chunk=kernel, slices=max(1, SLICES // (bounds.size - 1)))
        elapsed = (time.perf_counter() - t0) / E
        if lanes:
            self.engine = f"vector lanes: {_lanes.V} models side by side, one per lane"
        elif steps:
            self.engine = "the trainer's one-call step, model by model"
        else:
            self.engine = (f"model by model (Numba): not the lanes ({why_not_lanes}), not the trainer's step "
                           f"({why_not_steps or 'a narrow net there'})")
        self._t += E * n_steps
        self._record(data, e0, args[-2], args[-1], histories, elapsed)
        self._sync_models()

    def _call_args(self, data, e0, e1, chunk, n_workers, lanes, steps):
        """``(args, steps)``: the chunk kernel's arguments after the worker index for epochs ``e0 .. e1 - 1``
        (chunks of up to ``chunk`` models, ``n_workers`` work rows; ``out`` and ``status``, the last two,
        fresh), and whether they are the step engine's (``steps`` and the net not narrow)."""
        X, Y, m, B = data["X"], data["Y"], data["X"].shape[0], data["B"]
        K, E, n_steps = len(self), e1 - e0, -(-m // B)
        if self._layout is None or self._layout[0] != (B, chunk):
            at, info = _engine.layout(self._net, chunk, B, self._P.shape[1])
            self._layout = ((B, chunk), at, info)
        _, at, info = self._layout
        info = info.copy()
        info[_engine.EPOCH0], info[_engine.N_EPOCHS], info[_engine.N_STEPS] = e0, E, n_steps
        info[_engine.LOSS], info[_engine.OPT] = self._loss, self._kind
        info[_engine.ACC] = {_codes.CCE: _engine.ACC_ARGMAX, _codes.BCE: _engine.ACC_THRESHOLD}.get(
            self._loss, _engine.ACC_NONE)
        status = np.zeros((K, 3), np.int64)
        for k, div in enumerate(self.diverged):
            if div is not None:
                status[k, 0] = -1  # stopped in an earlier call
        out = np.zeros((E, K, 4), np.float64)
        work = _steps.work(self, n_workers, B, e0) if steps else None
        steps = work is not None
        if not steps:
            work = self._work(n_workers, int(info[_engine.WS_SIZE]), lanes, B)
        return (self._net, at, info, (X, Y, data["ids"], self._orders(m, B, e0, e1)), data["dev"],
                (self._P, self._G, self._S1, self._S2, self._R), self._hyp, self._keys,
                self._bias_corrections(self._t, E * n_steps), work, out, status), steps

    def _work(self, n_workers, ws_size, lanes, B):
        """The chunk kernel's ``work``: per worker, the workspace of :func:`~fusednet.kernels._population.layout`
        or the lane buffers for batches of ``B`` rows (:func:`~fusednet.kernels._population_lanes.lane_rows`)."""
        if not lanes:
            return _engine.scratch(n_workers, ws_size, self.dtype)
        rows = _lanes.lane_rows(self._net, self._P.shape[1], self._S1.shape[1], self._S2.shape[1], B)
        lw = zeros_aligned((n_workers, rows * _lanes.V + _PAD // self.dtype.itemsize), self.dtype)
        sums = zeros_aligned((n_workers, _lanes.lane_sums(self._net) + _PAD // 8))
        return lw, sums

    def _record(self, data, e0, out, status, histories, elapsed):
        """Append each model's epochs of ``out`` to ``histories`` (replaced by extended copies) and note
        the models that stopped."""
        m = data["X"].shape[0]
        md = data["dev"][0].shape[0]
        acc_denom = {_codes.CCE: 1, _codes.BCE: data["Y"].shape[1]}.get(self._loss)
        E, K = out.shape[0], len(self)
        # name -> K lists of E Python floats, in the trainer's order of the names
        columns = {"train_loss": (out[:, :, _engine.TRAIN_SUM] / m).T.tolist(),
                   "lr": [[lr] * E for lr in self._hyp[:, _engine.LR].tolist()]}
        if acc_denom is not None:
            columns["train_accuracy"] = (out[:, :, _engine.TRAIN_CORRECT] / (m * acc_denom)).T.tolist()
        if data["has_dev"]:
            columns["dev_loss"] = out[:, :, _engine.DEV_LOSS].T.tolist()
            if acc_denom is not None:
                columns["dev_accuracy"] = (out[:, :, _engine.DEV_CORRECT] / (md * acc_denom)).T.tolist()
        columns["time"] = [[elapsed] * E for _ in range(K)]
        for k in range(K):
            code, stop_epoch, stop_step = (int(v) for v in status[k])
            if code < 0:
                continue
            n = E if code == 0 else max(0, stop_epoch - e0)
            old = histories[k]._data  # extended copies: a history returned by an earlier fit stays as it was
            histories[k] = History._of_floats({name: _joined(old.get(name), rows[k], n)
                                                 for name, rows in columns.items()})
            if code > 0:
                self.diverged[k] = {"epoch": stop_epoch, "step": stop_step, "what": FAILED[code]}

    def _sync_models(self):
        """Copy the arenas' rows into the models (their parameters and running statistics), once built."""
        for k, mdl in enumerate(self._models or ()):
            mdl._params[...] = self._P[k]
            mdl._stats[...] = self._R[k]

    def _compact(self, keep):
        """Keep only the models at the indices ``keep`` (in that order): dropped models cost nothing after."""
        keep = [int(k) for k in keep]
        self._specs = [self._specs[k] for k in keep]
        if self._models is not None:
            self._models = [self._models[k] for k in keep]
        self.configs = [self.configs[k] for k in keep]
        self.optimizers = [self.optimizers[k] for k in keep]
        self.histories = [self.histories[k] for k in keep]
        self.diverged = [self.diverged[k] for k in keep]
        for name in ("_P", "_R", "_G", "_S1", "_S2", "_hyp", "_keys", "_corrected"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name)[keep]))
        self._layout = None


def _joined(old, new, n):
    """``old + new[:n]`` as a new list (``new[:n]`` itself when ``old`` is empty: ``new`` is a list of
    this call's own)."""
    new = new if n == len(new) else new[:n]
    return old + new if old else new


def warmup(dtypes=("float32", "float64")):
    """Compile (or load from Numba's on-disk cache) the population engine for each of ``dtypes``.

    Its kernels take the same types whatever the layers, optimiser, loss and
    number of models, so one tiny fit per dtype
    (:func:`~fusednet.kernels._population.fit_chunk`) compiles all of it; on a
    team (:class:`~fusednet.kernels._population.Team`) each thread runs the
    same kernel, so that fit runs on the calling thread and on the team.
    :func:`fusednet.kernels.warmup` (``fusednet warmup``) calls it.
    """
    X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    y = np.array([1, 1, 0, 0])
    for dtype in dtypes:
        pop = Population([Dense(2, activation="relu"), Dense(1, activation="sigmoid")], input_dim=2,
                         configs=[{}, {}], batch_size=2, epochs=1, dtype=dtype)
        data = pop._data(X, y, (X, y))
        for team in (False, True):
            for lanes in (False, True):
                pop._run(data, 0, 1, pop.histories, team=team, lanes=lanes)
