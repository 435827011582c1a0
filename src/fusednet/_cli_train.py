"""What ``fusednet train`` shows while it runs: the first line, progress, compile time.

* :func:`describe` -- the one line saying what is trained (data, net, optimiser, backend).
* :class:`Progress` -- a tqdm bar that stays on screen on a terminal; one plain
  line per epoch (at most about :data:`MAX_LINES`) when stderr is a file or pipe.
* :class:`LastEpoch` -- the model's state at the end of the last completed epoch,
  saved when the run is interrupted.
* :class:`CompileWatch` -- Numba compilations.  Numba fires its ``numba:compile``
  event only when a kernel is not in its on-disk cache, so the watch says
  "compiling" exactly when a cold cache makes the user wait, about how long
  (:data:`COMPILE_SECONDS`), and measures how long it was.
"""

import math
import sys
import time
from collections import Counter

from .callbacks import Callback

#: a log file gets at most about this many epoch lines (every ``ceil(epochs / MAX_LINES)``-th epoch)
MAX_LINES = 50

#: Seconds a command's first run spends compiling on an empty Numba cache, with its
#: default options: the cold-minus-warm times of ``benchmarks/test_bench_compile.py``
#: on the 2-core development machine, rounded (``docs/PERFORMANCE.md``, "First run
#: after install", has the figures).  Other options compile other kernels (another
#: activation, batch norm, float64), which take about as long again; a gradient check
#: large enough for the batched evaluator compiles it too (several seconds).
COMPILE_SECONDS = {"train": 1.0, "predict": 1.0, "gradcheck": 2.0}


def describe_net(n_features, args, n_out):
    """``"64-64-32-10 relu/softmax"``, plus batch norm, dropout and L2 when on."""
    sizes = "-".join(str(n) for n in [n_features, *args.layers, n_out])
    out_act = "softmax" if n_out > 1 else "sigmoid"
    parts = [f"{sizes} {args.activation}/{out_act}"]
    if args.batch_norm:
        parts.append("batch norm")
    if args.keep_prob < 1.0:
        parts.append(f"keep_prob {args.keep_prob:g}")
    if args.l2:
        parts.append(f"l2 {args.l2:g}")
    parts.append(args.dtype)
    return ", ".join(parts)


def describe_backend(model, optimizer, batch_rows):
    """The kernel backend as used by this fit: the fused step, or the per-kernel choice."""
    from . import kernels

    name = kernels.get_backend()
    try:  # the trainer's own test for its one-call step (a private helper: best effort)
        from . import _fused

        if (_fused.why_not(model, optimizer) is None
                and _fused.rows_why_not(model, batch_rows, kernels.get_num_threads()) is None):
            return f"{name} (one compiled Cython call per mini-batch step)"
    except Exception:  # noqa: BLE001 - a description is not worth failing for
        pass
    if name != "auto":
        return name
    counts = Counter(kernels.backend_of(k, "auto") for k in kernels.KERNELS)
    return "auto (" + ", ".join(f"{b} for {n}" for b, n in counts.most_common()) + " kernels)"


def describe_optimizer(args, optimizer, schedule_name):
    lr = f"lr {optimizer.lr:g}"
    if args.schedule != "constant":
        lr += f" {schedule_name}"
    batch = "full batch" if args.batch_size is None else f"batch {args.batch_size}"
    return f"{args.optimizer} {lr}, {batch}, {args.epochs} epochs"


class Progress(Callback):
    """Training progress on ``stream``: a bar on a terminal, plain lines elsewhere.

    Parameters
    ----------
    epochs : int
    stream : file, default sys.stderr
    mode : {"bar", "lines", "off"} or None
        None: "bar" when ``stream`` is a terminal, else "lines".
    """

    def __init__(self, epochs, stream=None, mode=None):
        self.stream = sys.stderr if stream is None else stream
        if mode is None:
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode = mode
        self.epochs = epochs
        self.every = max(1, math.ceil(epochs / MAX_LINES))
        self.bar = None

    def on_train_begin(self, trainer):
        if self.mode == "bar":
            try:
                from tqdm import tqdm
            except ImportError:  # a dependency, but no reason to fail
                self.mode = "lines"
                return
            self.bar = tqdm(total=self.epochs, unit="epoch", leave=True, file=self.stream, dynamic_ncols=True)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.bar is not None:
            post = {"loss": f"{logs['train_loss']:.4g}"}
            if "dev_loss" in logs:
                post["dev"] = f"{logs['dev_loss']:.4g}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
            return
        n = epoch + 1
        if self.mode == "lines" and (n == 1 or n % self.every == 0 or n == self.epochs or trainer.stop_training):
            self.write(format_epoch(n, self.epochs, logs))

    def write(self, message):
        """One line on the stream (also with mode "off"), below the bar when there is one."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_epoch(n, epochs, logs):
    """``epoch 3/30  loss 0.1234  acc 0.9512  dev_loss 0.2011  dev_acc 0.9444  lr 0.001  0.05 s``."""
    parts = [f"epoch {n}/{epochs}", f"loss {logs['train_loss']:.4f}"]
    for key, label in (("train_accuracy", "acc"), ("dev_loss", "dev_loss"), ("dev_accuracy", "dev_acc")):
        if key in logs:
            parts.append(f"{label} {logs[key]:.4f}")
    parts.append(f"lr {logs['lr']:.4g}")
    parts.append(f"{logs['time']:.2f} s")
    return "  ".join(parts)


class LastEpoch(Callback):
    """Keeps ``model.state_dict()`` of the last completed epoch.

    ``saved`` is ``(epoch, state)`` (``epoch`` counts from 0), replaced in one
    assignment so that an interrupt never pairs one epoch's number with another's
    state; ``epoch`` is None after the fit, when the state is the final one (the
    best epoch's if an EarlyStopping listed before this callback restored it).
    """

    def __init__(self):
        self.saved = None

    def on_epoch_end(self, trainer, epoch, logs):
        self.saved = (epoch, trainer.model.state_dict())

    def on_train_end(self, trainer):
        self.saved = (None, trainer.model.state_dict())


class CompileWatch:
    """Counts the time Numba spends compiling (cache misses only) while active.

    ``say(message)`` is called once, at the first compilation: :data:`MESSAGE`,
    and when ``estimate`` (seconds) is given, about how long and why only
    once.  Without Numba the watch does nothing.
    """

    MESSAGE = "compiling kernels once"
    TAIL = " (Numba caches them, so later runs start at once; `fusednet warmup` compiles them all ahead)"

    def __init__(self, say, estimate=None):
        self.say = say
        self.message = self.MESSAGE if estimate is None else f"{self.MESSAGE}, about {estimate:.0f} s{self.TAIL}"
        self.seconds = 0.0
        self.count = 0
        self._said = False
        self._listener = None

    def __enter__(self):
        try:
            from numba.core import event
        except ImportError:
            return self
        watch = self

        class _Listener(event.Listener):
            depth = 0
            t0 = 0.0

            def on_start(self, ev):
                if self.depth == 0:
                    if not watch._said:
                        watch._said = True
                        watch.say(watch.message)
                    self.t0 = time.perf_counter()
                self.depth += 1

            def on_end(self, ev):
                self.depth -= 1
                if self.depth == 0:
                    watch.seconds += time.perf_counter() - self.t0
                    watch.count += 1

        self._event = event
        self._listener = _Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        if self._listener is not None:
            self._event.unregister("numba:compile", self._listener)
            self._listener = None
        return False
