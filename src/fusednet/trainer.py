r"""The training loop: epochs, mini-batches, schedules, callbacks.

Per fit, the trainer validates the data once, converts the labels once, resolves
the kernels once and builds one workspace; a steady-state step then only
gathers its rows into the workspace, runs the model's forward and backward
passes on preallocated buffers and makes one optimiser call over the flat
parameter arena -- it allocates no arrays.  For Dense stacks (with BatchNorm,
Activation and Dropout layers after hidden Dense ones) on the Cython
backend, in float32 or float64 (mini-batches of any size when a step is small
enough to run on one thread; else of up to 1024 rows in float32 on an AVX2 or
AVX-512 CPU, 8192 in float64, 128 in float32 otherwise) all of that is one compiled call per
step, or per shuffled epoch (:mod:`fusednet._fused`); ``fused_step=False``
keeps the per-kernel path.

Mini-batches (C2W2): ``batch_size=None`` is batch gradient descent (the whole
set, no shuffling), ``1`` is stochastic gradient descent, anything between is
mini-batch gradient descent.  With ``shuffle=True`` the rows are permuted at the
start of every epoch by ``numpy.random.default_rng([seed, epoch]).permutation(m)``
(so epoch ``e``'s order depends only on the seed and ``e``), then cut into
batches of ``batch_size`` rows; the last, partial batch is kept.

Rows are gathered by index from ``X`` into a preallocated buffer, so an
``np.memmap`` larger than memory trains with bounded memory.
"""

import math
import numbers
import time

import numpy as np

from . import _fused
from . import kernels as _kernels
from . import optim as _optim
from .callbacks import Callback
from .errors import TrainingDiverged
from .history import History
from .kernels import _blas, _codes, _plan
from .model import Sequential, as_2d
from .optim import update_bound
from .schedules import as_schedule

__all__ = ["Trainer"]

_FULL, _SLICE, _GATHER = 0, 1, 2


def _seed_int(seed):
    if seed is None:
        return int(np.random.default_rng().integers(2**63))
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63))
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed}")
        return int(seed)
    raise TypeError(f"seed must be an int >= 0, a numpy.random.Generator or None, got {seed!r}")


def _checked_lr(lr, epoch, step):
    """A schedule's learning rate as a float, or ValueError naming the step."""
    value = float(lr) if isinstance(lr, numbers.Real) and not isinstance(lr, bool) else math.nan
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(
            f"the schedule gave lr={lr!r} for epoch {epoch}, step {step}: a learning rate must be "
            f"finite and > 0"
        )
    return value


def _sumsq64(x):
    """sum(x**2) accumulated in float64, a block at a time."""
    total = 0.0
    for s in range(0, x.size, 1 << 16):
        block = x[s : s + (1 << 16)].astype(np.float64)
        total += float(np.dot(block, block))
    return total


def _absmax(x):
    """max |x| as a float (0 for an empty array; NaN when x holds one)."""
    if x.size == 0:
        return 0.0
    hi, lo = float(x.max()), float(x.min())
    return max(hi, -lo) if hi == hi and lo == lo else math.nan


class Trainer:
    """Fits a :class:`~fusednet.Sequential` model.

    Parameters
    ----------
    model : Sequential
    optimizer : fusednet.optim.Optimizer, optional
        Default :class:`fusednet.optim.Adam` ``()``.  Its state carries over
        between fits.
    schedule : callable (epoch, step) -> lr, float or None
        The learning rate of each step; ``step`` is the mini-batch index within
        the epoch.  None: the optimiser's ``lr``.
    batch_size : int or None
        None: batch gradient descent; 1: stochastic; otherwise mini-batches.
    epochs : int
        Number of epochs (>= 0), counted from 0 (or from ``fit``'s ``initial_epoch``).
    shuffle : bool
        Permute the rows at the start of every epoch (ignored for batch GD).
    seed : int, numpy.random.Generator or None
        Seeds the shuffling.
    callbacks : sequence of Callback
        E.g. :class:`~fusednet.callbacks.EarlyStopping`.
    progress : bool
        Show a tqdm progress bar over the epochs.
    kernel_threads : int or None, default 1
        On the per-kernel path, the threads of the activation, loss, dropout,
        batch-norm and optimiser kernels inside the training loop (None: all
        of :func:`fusednet.get_num_threads`).  The matrix products run on every
        core through NumPy's BLAS either way; on a 2-core machine, parallel
        kernels launched between them compete with BLAS's spinning worker
        threads and one MNIST-sized epoch took 4.1 s instead of 0.99 s, hence
        the default.  The one-call step (``fused_step``) always runs on
        :func:`fusednet.get_num_threads` threads: there BLAS runs inside them.
    fused_step : bool, default True
        For a model of Dense layers (hidden ones optionally followed by
        BatchNorm, an Activation layer and Dropout, in that order), trained
        with GD, Momentum, RMSProp
        or Adam on the Cython backend in float32 or float64, in mini-batches
        of any size when a step is small enough to run on one thread, else of
        at most 1024 rows (float32 on an AVX2 or AVX-512 CPU), 8192 (float64) or 128
        (float32 otherwise; ``fusednet._fused.rows_why_not``), run each
        mini-batch step -- gather,
        forward, loss, backward, checks and update -- as one compiled call in
        one thread team, each thread computing its share of every matrix
        product (fusednet's own AVX2 or AVX-512 kernels in float32, else SciPy's BLAS;
        see ``fusednet._fused``; :func:`fusednet.info` says whether it is
        available).  False: always the per-kernel path.

    Attributes
    ----------
    history : History
        Of the last fit (also while it runs, and after a divergence).
    stop_training : bool
        A callback sets it to stop after the current epoch.
    """

    def __init__(
        self,
        model,
        optimizer=None,
        schedule=None,
        batch_size=64,
        epochs=100,
        shuffle=True,
        seed=0,
        callbacks=(),
        progress=True,
        kernel_threads=1,
        fused_step=True,
    ):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fusednet.Sequential, got {type(model).__name__}")
        if optimizer is None:
            optimizer = _optim.Adam()
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"optimizer must be a fusednet.optim optimiser, got {type(optimizer).__name__}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an int >= 1 or None (batch gradient descent), got {batch_size!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be a bool, got {shuffle!r}")
        if isinstance(callbacks, Callback):
            callbacks = [callbacks]
        callbacks = list(callbacks)
        for i, cb in enumerate(callbacks):
            if not all(callable(getattr(cb, h, None)) for h in ("on_train_begin", "on_epoch_end")):
                raise TypeError(f"callbacks[{i}] must be a fusednet.callbacks.Callback, got {type(cb).__name__}")
        if seed is not None and not isinstance(seed, np.random.Generator):
            _seed_int(seed)  # check now
        if kernel_threads is not None and (
            isinstance(kernel_threads, bool) or not isinstance(kernel_threads, numbers.Integral) or kernel_threads < 1
        ):
            raise ValueError(f"kernel_threads must be an int >= 1 or None, got {kernel_threads!r}")
        self.kernel_threads = None if kernel_threads is None else int(kernel_threads)
        if not isinstance(fused_step, (bool, np.bool_)):
            raise TypeError(f"fused_step must be a bool, got {fused_step!r}")
        self.fused_step = bool(fused_step)
        self.model = model
        self.optimizer = optimizer
        self.schedule = as_schedule(schedule)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.epochs = int(epochs)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.callbacks = callbacks
        self.progress = bool(progress)
        self.history = None
        self.stop_training = False
        self.metric_names = ()

    def fit(self, X, y, dev=None, *, initial_epoch=0):
        """Train; return the :class:`~fusednet.History` of this fit.

        Parameters
        ----------
        X : array_like or numpy.memmap, shape (m, n_features)
        y : array_like
            Labels as :class:`~fusednet.Sequential` takes them.
        dev : (X_dev, y_dev), optional
            Evaluated (inference mode) after every epoch.
        initial_epoch : int, default 0
            The epoch to start from (Keras's name): this fit runs epochs
            ``initial_epoch .. epochs - 1``, each shuffled, dropped out and
            scheduled as epoch of that number.  With the optimiser (and its
            state) of an earlier fit of ``initial_epoch`` epochs -- the same
            object, or one from :func:`fusednet.io.load_checkpoint` -- the two
            fits together equal one fit of ``epochs`` epochs, bit for bit.

        Raises
        ------
        ValueError
            On bad input, before anything changes.
        fusednet.TrainingDiverged
            When a batch cost (or gradient) becomes NaN or inf; raised before
            that step's update, with ``.history`` holding the epochs so far.
        """
        # BLAS owns the cores during the step loop: the per-step kernels are
        # small, and parallel ones fight BLAS's spinning threads (see kernels.limit_threads)
        if (isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral)
                or not 0 <= initial_epoch <= self.epochs):
            raise ValueError(f"initial_epoch must be an int in [0, epochs={self.epochs}], got {initial_epoch!r}")
        n_threads = _kernels.get_num_threads()  # the fused step's team owns every core
        with _kernels.limit_threads(self.kernel_threads):
            run = _Run(self, X, y, dev, n_threads)
            run.first_epoch = int(initial_epoch)
            if run.fused is None:
                return run.fit()
            with _blas.single_threaded():
                return run.fit()

    def __repr__(self):
        return (
            f"Trainer(optimizer={self.optimizer!r}, schedule={self.schedule!r}, "
            f"batch_size={self.batch_size}, epochs={self.epochs}, shuffle={self.shuffle}, "
            f"seed={self.seed!r})"
        )


class _Run:
    """One fit: validated data, buffers and counters; :meth:`step` is the hot path."""

    def __init__(self, trainer, X, y, dev, n_threads=1):
        model = trainer.model
        # ---- validation (nothing changes before it all passes) ----
        X = model._check_X(X, "X")
        m, nf = X.shape
        Y, ids = model._targets(y, m, "y", n_in=nf)
        dev_data = None
        if dev is not None:
            if not (isinstance(dev, (tuple, list)) and len(dev) == 2):
                raise TypeError("dev must be a pair (X_dev, y_dev)")
            Xd = as_2d(dev[0], "dev X")
            if Xd.shape[1] != nf:
                raise ValueError(f"dev X has {Xd.shape[1]} features but X has {nf}")
            Xd = model._check_X(Xd, "dev X")
            Yd, idsd = model._targets(dev[1], Xd.shape[0], "dev y", n_in=nf)
            dev_data = (Xd, Yd, idsd)
        B = m if trainer.batch_size is None else min(trainer.batch_size, m)
        if model._has_bn():
            if B < 2:
                raise ValueError(
                    f"batch_size={B}: BatchNorm needs at least 2 examples in every training batch"
                )
            if m % B == 1:
                raise ValueError(
                    f"with m={m} and batch_size={B} the last mini-batch holds one example, and "
                    f"BatchNorm needs at least 2; choose another batch_size"
                )
        names = ["train_loss", "lr", "time"]
        if model.is_classifier:
            names.append("train_accuracy")
        if dev_data is not None:
            names.append("dev_loss")
            if model.is_classifier:
                names.append("dev_accuracy")
        names = tuple(names)
        for cb in trainer.callbacks:
            check = getattr(cb, "check_metrics", None)
            if check is not None:
                check(names)
        # ---- state changes from here on ----
        trainer.metric_names = names
        model.build(nf)
        self.trainer = trainer
        self.model = model
        self.opt = trainer.optimizer
        self.schedule = trainer.schedule
        self.m = m
        self.B = B
        self.base_seed = _seed_int(trainer.seed)
        self.K = model._kernels()
        ws = model._workspace(B, train=True)
        self.v_full = ws.views(B)
        last = m % B
        self.v_last = ws.views(last) if last else self.v_full
        self.bounds = [(s, min(s + B, m)) for s in range(0, m, B)]
        dt = model.dtype
        if B == m:
            self.mode = _FULL
            self.X = X if (X.dtype == dt and X.flags.c_contiguous) else np.ascontiguousarray(X, dt)
        elif trainer.shuffle:
            self.mode = _GATHER
            self.X = X
            self.perm0 = np.arange(m)
            self.perm = np.arange(m)
        else:
            self.mode = _SLICE
            self.X = X
        self.direct = X.dtype == dt and X.flags.c_contiguous
        self.stage = None
        if self.mode == _GATHER and X.dtype != dt:
            buf = np.empty(B * nf, X.dtype)
            self.stage = {n: buf[: n * nf].reshape(n, nf) for n in {B, last or B}}
        self.Y = Y
        self.dev = dev_data
        self.loss = model._loss
        # train accuracy: predictions gathered per step into one epoch-wide buffer
        if ids is None:
            self.pred = None
        elif self.loss == _codes.CCE:
            self.pred, self.ids = np.empty(m, np.intp), ids
        else:
            self.pred, self.ids = np.empty(m, np.bool_), ids.astype(np.bool_)
        self.multilabel = model._loss == _codes.BCE and ids is None
        self.dropout = model._has_dropout()
        self.P, self.G = model._params, model._grads
        self.bn_stats = model._batch_stats()
        self.limit = float(np.finfo(model.dtype).max) / 4.0
        self.bound = (math.inf, math.inf, math.inf)
        self.n_decay = model._n_decay
        self.history = History()
        trainer.history = self.history
        trainer.stop_training = False
        self.loss_sum = 0.0
        self.correct = 0
        self.lr0 = None
        self.first_epoch = 0
        self.fused = None
        self.fused_epoch = False
        if trainer.fused_step:
            self.fused = _fused.step_for(model, self.opt, ws, self.v_full, n_threads)
        if self.fused is not None:
            # a whole shuffled epoch in one call: rows gathered inside, per-step costs and
            # predictions written by the kernel (multi-label accuracy stays per step)
            if self.mode == _GATHER and self.direct and not self.multilabel:
                self.fused_epoch = True
                n_steps = len(self.bounds)
                self.lrs = np.empty(n_steps, np.float64)
                self.costs = np.empty(n_steps, np.float64)
                if self.pred is None:
                    self.pred_i = np.empty(0, np.intp)
                elif self.pred.dtype == np.intp:
                    self.pred_i = self.pred
                else:
                    self.pred_i = np.empty(m, np.intp)
        self.whole = None
        self.whole_why_not = _WholeFit.why_not(self)
        if self.whole_why_not is None:
            self.whole = _WholeFit(self)
        _fused.record_fit(model, B, self.fused if self.fused is not None else self._why_not_fused(n_threads),
                          self.whole_why_not)

    def _why_not_fused(self, n_threads):
        """Why this fit runs the per-kernel path (for ``fusednet.info()["last_fit"]``)."""
        if not self.trainer.fused_step:
            return "Trainer(fused_step=False)"
        return _fused.why_not(self.model, self.opt) or _fused.rows_why_not(self.model, self.B, n_threads)

    # ---- the hot path ------------------------------------------------------------

    def step(self, epoch, step, s, e):
        """One mini-batch: gather, forward, check, backward, update (no allocation)."""
        n = e - s
        v = self.v_full if n == self.B else self.v_last
        mode = self.mode
        if self.fused is not None and mode == _GATHER and self.direct:
            self._fused_step(epoch, step, s, e, v, v.X, v.Y, self.perm[s:e])
            return
        if mode == _FULL:
            Xb, Yb = self.X, self.Y
        elif mode == _GATHER:
            idx = self.perm[s:e]
            if self.stage is None:
                self.X.take(idx, 0, v.X, "clip")
            else:
                st = self.stage[n]
                self.X.take(idx, 0, st, "clip")
                np.copyto(v.X, st, casting="unsafe")
            self.Y.take(idx, 0, v.Y, "clip")
            Xb, Yb = v.X, v.Y
        else:
            if self.direct:
                Xb = self.X[s:e]
            else:
                np.copyto(v.X, self.X[s:e], casting="unsafe")
                Xb = v.X
            Yb = self.Y[s:e]
        if self.fused is not None:
            self._fused_step(epoch, step, s, e, v, Xb, Yb, None)
            return
        lr = self._lr(epoch, step)
        model = self.model
        K = self.K
        cost = model._forward_train(v, K, Xb, Yb, (epoch, step) if self.dropout else None)
        if not math.isfinite(cost):
            raise TrainingDiverged(epoch, step, cost, "cost", self.history)
        model._backward(v, K, Yb)
        G = self.G
        gsq = float(np.dot(G, G))
        if not math.isfinite(gsq):  # a float32 sum overflows from a norm of 1.8e19: decide in float64
            gsq = _sumsq64(G)
            if not math.isfinite(gsq):
                raise TrainingDiverged(epoch, step, cost, "gradient", self.history)
        for mean, var in self.bn_stats:
            if not (_absmax(mean) < self.limit and _absmax(var) < self.limit):
                raise TrainingDiverged(epoch, step, cost, "batch-norm statistics", self.history)
        if not self._bounded(lr, model._l2 / n, gsq):
            raise TrainingDiverged(epoch, step, cost, "update", self.history)
        model._update_running(K)
        self.opt.step(self.P, G, lr, l2=model._l2 / n, n_decay=self.n_decay)
        self._record(s, e, v, Yb, cost)

    def _lr(self, epoch, step):
        """The learning rate of a step: the schedule's (checked) or the optimiser's."""
        sched = self.schedule
        if sched is None:
            lr = self.opt.lr
        else:
            lr = _checked_lr(sched(epoch, step), epoch, step)
        if step == 0:
            self.lr0 = lr
        return lr

    def _bounded(self, lr, l2, gsq):
        """Whether the per-kernel update of this step cannot overflow (see :func:`fusednet.optim.update_bound`).

        The bounds of the parameters and optimiser state carry over from step to
        step; when they are unknown (each epoch starts so, since callbacks may
        change the weights) or too loose, they are read off the arrays.
        """
        hypers = self.opt._fused(self.P, self.G)
        if hypers is None:  # an optimiser without the fused form: no bound to check
            return True
        kind, b1, b2, eps, bc1, _, s1, s2 = hypers
        args = (kind, lr, l2, b1, b2, eps, bc1, math.sqrt(gsq))
        ok, after = update_bound(*args, self.bound, self.limit)
        if not ok:  # too loose or unknown: take the bounds, and max |g|, from the arrays
            self.bound = (_absmax(self.P), _absmax(s1), _absmax(s2))
            args = args[:-1] + (min(args[-1], _absmax(self.G)),)
            ok, after = update_bound(*args, self.bound, self.limit)
        if ok:
            self.bound = after
        return ok

    def _fused_step(self, epoch, step, s, e, v, Xb, Yb, idx):
        """:meth:`step` as one compiled call (gathering ``X[idx]`` into ``Xb`` when ``idx`` is given)."""
        lr = self._lr(epoch, step)
        status, cost = self.fused(v, Xb, Yb, self.X, self.Y, idx, lr, epoch, step)
        if status:
            raise TrainingDiverged(epoch, step, cost, _fused.FAILED[status], self.history)
        self._record(s, e, v, Yb, cost)

    def _fused_epoch(self, epoch):
        """All of :meth:`step`'s work for one epoch as one compiled call (see ``FusedStep.epoch``).

        The schedule is asked for every step's learning rate first, in step order.
        """
        lrs = self.lrs
        sched = self.schedule
        if sched is None:
            lr0 = self.opt.lr
            lrs.fill(lr0)
        else:
            for i in range(lrs.shape[0]):
                lrs[i] = _checked_lr(sched(epoch, i), epoch, i)
            lr0 = lrs[0]
        self.lr0 = lr0
        steps, status, cost = self.fused.epoch(self.v_full, self.X, self.Y, self.perm, lrs, self.costs, self.pred_i,
                                               epoch)
        if status:
            raise TrainingDiverged(epoch, steps, cost, _fused.FAILED[status], self.history)
        total = 0.0
        for (s, e), c in zip(self.bounds, self.costs.tolist()):
            total += c * (e - s)
        self.loss_sum = total
        if self.pred is not None and self.pred_i is not self.pred:
            np.not_equal(self.pred_i, 0, out=self.pred)

    def _record(self, s, e, v, Yb, cost):
        """Add the batch's cost and predictions to the epoch's totals."""
        self.loss_sum += cost * (e - s)
        pred = self.pred
        if pred is not None:
            if self.loss == _codes.CCE:
                v.out.argmax(1, pred[s:e])
            else:
                np.greater(v.out[:, 0], 0.5, out=pred[s:e])
        elif self.multilabel:
            self.correct += int(np.count_nonzero((v.out > 0.5) == (Yb > 0.5)))

    # ---- epochs -------------------------------------------------------------------

    def run_epoch(self, epoch):
        """All the steps of one epoch; returns its logs (without dev values)."""
        t0 = time.perf_counter()
        if self.mode == _GATHER:
            perm = self.perm
            np.copyto(perm, self.perm0)
            np.random.default_rng([self.base_seed, epoch]).shuffle(perm)
        self.loss_sum = 0.0
        self.correct = 0
        # callbacks may have changed the weights: the update bounds start afresh
        self.bound = (math.inf, math.inf, math.inf)
        if self.fused is not None:
            self.fused.reset_bounds()
        if self.fused_epoch:
            self._fused_epoch(epoch)
        else:
            step = self.step
            i = 0
            for s, e in self.bounds:
                step(epoch, i, s, e)
                i += 1
        m = self.m
        logs = {"train_loss": self.loss_sum / m, "lr": self.lr0}
        if self.pred is not None:
            ids = self.ids[self.perm] if self.mode == _GATHER else self.ids
            logs["train_accuracy"] = np.count_nonzero(self.pred == ids) / m
        elif self.multilabel:
            logs["train_accuracy"] = self.correct / (m * self.Y.shape[1])
        if self.dev is not None:
            d = self.model._evaluate(*self.dev)
            logs["dev_loss"] = d["loss"]
            if "accuracy" in d:
                logs["dev_accuracy"] = d["accuracy"]
        logs["time"] = time.perf_counter() - t0
        return logs

    def fit(self):
        trainer = self.trainer
        bar = None
        if trainer.progress and trainer.epochs > self.first_epoch:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is a dependency, but a bar is not worth failing for
                tqdm = None
            if tqdm is not None:
                bar = tqdm(total=trainer.epochs, initial=self.first_epoch, unit="epoch", leave=False,
                           dynamic_ncols=True)
        try:
            # non-finite values are reported by TrainingDiverged, not warned about
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                self._epochs(bar)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def _epochs(self, bar):
        trainer = self.trainer
        callbacks = trainer.callbacks
        for cb in callbacks:
            cb.on_train_begin(trainer)
        shown = 0.0
        start = self.first_epoch
        if self.whole is not None:
            start = self.whole.train(bar)
        for epoch in range(start, trainer.epochs):
            for cb in callbacks:
                cb.on_epoch_begin(trainer, epoch)
            logs = self.run_epoch(epoch)
            self.history.append(logs)
            for cb in callbacks:
                cb.on_epoch_end(trainer, epoch, logs)
            if bar is not None:
                bar.update(1)
                now = time.perf_counter()
                if now - shown > 0.25 or epoch == trainer.epochs - 1:
                    shown = now
                    post = {"loss": f"{logs['train_loss']:.4g}"}
                    if "dev_loss" in logs:
                        post["dev"] = f"{logs['dev_loss']:.4g}"
                    bar.set_postfix(post, refresh=False)
            if trainer.stop_training:
                break
        for cb in callbacks:
            cb.on_train_end(trainer)


_DRAWN_ORDERS = None


def _drawn_orders_match():
    """Whether the extension's epoch orders (``epoch_order``) are NumPy's here: checked once per
    process on a few seeds, epochs and sizes; when not, the trainer draws them with NumPy."""
    global _DRAWN_ORDERS
    if _DRAWN_ORDERS is None:
        order = _fused._cython()._ck.epoch_order
        ok = True
        for seed, epoch, m in ((0, 0, 1), (3, 1, 5), (12345, 399, 320), (2**63 - 1, 2**32 + 1, 1000)):
            ref, got = np.arange(m), np.empty(m, np.intp)
            np.random.default_rng([seed, epoch]).shuffle(ref)
            order(seed, epoch, got)
            ok = ok and np.array_equal(ref, got)
        _DRAWN_ORDERS = ok
    return _DRAWN_ORDERS


def epoch_orders(base_seed, e0, e1, m):
    """(e1 - e0, m) int64: row ``i`` is epoch ``e0 + i``'s shuffling permutation of ``arange(m)``,
    ``np.random.default_rng([base_seed, epoch]).shuffle`` as the trainer draws it (by the extension's
    ``epoch_order`` when it is built and :func:`_drawn_orders_match`, else by NumPy: the same rows)."""
    perm = np.empty((e1 - e0, m), np.int64)
    perm[:] = np.arange(m)
    if 0 <= base_seed < 2**64 and _fused._cython() is not None and _drawn_orders_match():
        _fused._cython()._ck.epoch_orders(base_seed, e0, perm)
        return perm
    for i, epoch in enumerate(range(e0, e1)):
        np.random.default_rng([base_seed, epoch]).shuffle(perm[i])
    return perm


class _WholeFit:
    """Every epoch of a fit in one compiled call (``dense_fit``), or in a few.

    Taken when nothing needs Python between epochs: the fit takes the one-call step, with
    batch gradient descent or mini-batches of a C-contiguous ``X`` of the model's dtype, class
    ids or none (not multi-label), and no callback but one
    :class:`~fusednet.callbacks.EarlyStopping` (:meth:`why_not` names what stops it).  With a dev
    set, the call evaluates it after each epoch through :meth:`_dev`, the model's own
    inference-mode evaluation (per-kernel backend and NumPy's matrix products, as the per-epoch
    path runs it), called back with the GIL: a compiled evaluation would round differently.

    Before each call the schedule is asked for every step's learning rate, epoch by epoch in
    step order, and each epoch's shuffling permutation is drawn exactly as
    :meth:`_Run.run_epoch` draws it (in compiled code, as NumPy's generator does, when
    :func:`_drawn_orders_match`); the call writes each epoch's train loss, hits and time,
    decides early stopping as ``EarlyStopping.observe`` does (copying the best epoch's weights)
    and stops at a step whose cost, gradient, update or batch-norm statistics are not finite,
    leaving the last finite values.  Afterwards the history, the callback's state
    and the optimiser's step count are what the per-epoch path leaves, bit for bit.

    The first call runs one epoch and times it; the others cover about :data:`CALL_SECONDS` of
    training each (and at most :data:`MAX_PERM` permutation entries, epochs x m, when the orders
    are passed in), so that a progress bar moves and Ctrl-C is seen between them.  A
    schedule that gives a bad learning rate ends the calls before that epoch, and the per-epoch
    path runs it (and raises its error).
    """

    #: the most permutation entries (epochs x rows) one call precomputes: 32 MiB of indices
    MAX_PERM = 1 << 22
    #: the training time one call aims at: a progress bar moves, and Python sees signals, between calls
    CALL_SECONDS = 0.25

    @staticmethod
    def why_not(run):
        """None when ``run`` can take the whole-fit call, else the reason."""
        from .callbacks import EarlyStopping

        if run.fused is None:
            return "the fit does not take the one-call step"
        if run.mode != _FULL and not run.direct:
            return "X is not a C-contiguous array of the model's dtype"
        if run.multilabel:
            return "multi-label accuracy is counted per step in Python"
        cbs = run.trainer.callbacks
        for cb in cbs:
            if type(cb) is not EarlyStopping:
                return f"the callback {type(cb).__name__} runs Python between epochs"
            if cb.monitor not in _codes.FIT_MONITORS:
                return f"EarlyStopping monitors {cb.monitor!r}, which is computed in Python"
        if len(cbs) > 1:
            return "more than one EarlyStopping"
        return None

    def __init__(self, run):
        self.run = run
        self.es = run.trainer.callbacks[0] if run.trainer.callbacks else None
        self.steps = len(run.bounds)
        self.ids = np.empty(0, np.intp) if run.pred is None else np.ascontiguousarray(run.ids, np.intp)
        self.data = (run.X, run.Y, self.ids, None if run.dev is None else self._dev)
        if run.mode == _FULL:
            self.order = _codes.FIT_ORDER_BATCH
        elif run.mode == _SLICE:
            self.order = _codes.FIT_ORDER_FIXED
        elif run.base_seed < 2**64 and _drawn_orders_match():
            self.order = _codes.FIT_ORDER_DRAWN
        else:
            self.order = _codes.FIT_ORDER_GIVEN
        self.snapshot = None

    def _dev(self):
        """The dev set's cost and accuracy after an epoch: the per-epoch path's own evaluation."""
        d = self.run.model._evaluate(*self.run.dev)
        return d["loss"], d.get("accuracy", math.nan)

    def _chunk(self, first, last, per_epoch):
        """``(end, lrs, complete)``: epochs ``first`` .. ``end - 1`` for the next call and their
        learning rates; not complete when the schedule gave a bad one for epoch ``end`` (the per-epoch
        path asks again and raises it)."""
        run = self.run
        n = last - first
        if self.order == _codes.FIT_ORDER_GIVEN:
            n = min(n, max(1, self.MAX_PERM // run.m))
        if per_epoch is not None:
            n = min(n, max(1, int(self.CALL_SECONDS / max(per_epoch, 1e-9))))
        lrs = np.empty((n, self.steps), np.float64)
        sched = run.schedule
        if sched is None:
            lrs.fill(run.opt.lr)
            return first + n, lrs, True
        for k in range(n):
            epoch = first + k
            try:
                for i in range(self.steps):
                    lrs[k, i] = _checked_lr(sched(epoch, i), epoch, i)
            except ValueError:
                return epoch, lrs[:k], False
        return first + n, lrs, True

    def _perms(self, first, end):
        run = self.run
        if self.order == _codes.FIT_ORDER_BATCH:
            return np.empty((0, run.m), np.intp)
        if self.order != _codes.FIT_ORDER_GIVEN:  # FIXED: 0 .. m-1; DRAWN: a buffer the call fills
            return np.arange(run.m)[None, :]
        return epoch_orders(run.base_seed, first, end, run.m)

    def train(self, bar):
        """Run the fit's epochs in whole-fit calls; return the first epoch left to the per-epoch path
        (the fit's end when none is)."""
        run = self.run
        trainer, model, es = run.trainer, run.model, self.es
        history, m = run.history, run.m
        epoch, last = run.first_epoch, trainer.epochs
        per_epoch = math.inf  # the first call runs one epoch and times it
        rec = _plan.fit_record(0, 1, _codes.dropout_key(model.seed), self.order,  # splitmix64(seed)
                               run.base_seed & ((1 << 64) - 1))
        snapshot = None
        if es is not None:
            rec["monitor"] = _codes.FIT_MONITORS[es.monitor]
            rec["maximize"] = int(es.mode == "max")
            rec["patience"], rec["min_delta"] = es.patience, es.min_delta
            rec["best"], rec["wait"] = es.best, es.wait
            if es.restore_best:
                rec["restore"] = 1
                snapshot = self.snapshot = (np.empty_like(model._params), model._stats,
                                            np.empty_like(model._stats))
        names = trainer.metric_names
        while epoch < last:
            end, lrs, complete = self._chunk(epoch, last, per_epoch)
            if end == epoch:
                return epoch
            n = end - epoch
            rec["epoch0"], rec["epochs"] = epoch, n
            hist = np.zeros(n, _plan.HIST_DTYPE)
            t0 = time.perf_counter()
            done, status, step, cost = run.fused.fit(self.data, rec, self._perms(epoch, end), lrs, hist, snapshot)
            per_epoch = (time.perf_counter() - t0) / max(done, 1)
            # the history in the per-epoch path's order of keys, as columns (a record's fields read
            # one by one cost a microsecond each, as much as a planar step)
            cols = {"train_loss": hist["train_loss"][:done], "lr": lrs[:done, 0]}
            if "train_accuracy" in names:
                cols["train_accuracy"] = hist["correct"][:done] / m
            for key in ("dev_loss", "dev_accuracy"):
                if key in names:
                    cols[key] = hist[key][:done]
            cols["time"] = hist["seconds"][:done]
            history._extend(cols)
            if es is not None:
                for k, value in enumerate(cols[es.monitor].tolist()):
                    if es.observe(epoch + k, value) and snapshot is not None:
                        es._snapshot = snapshot[0], snapshot[2]
            if bar is not None and done:
                bar.update(done)
                post = {"loss": f"{history['train_loss'][-1]:.4g}"}
                if "dev_loss" in names:
                    post["dev"] = f"{history['dev_loss'][-1]:.4g}"
                bar.set_postfix(post, refresh=False)
            if status:
                raise TrainingDiverged(epoch + done, step, cost, _fused.FAILED[status], history)
            epoch += done
            if rec["stop"][0]:
                trainer.stop_training = True
                return last
            if not complete:
                return epoch
        return epoch
