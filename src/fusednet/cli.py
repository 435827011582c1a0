"""The ``fusednet`` command: train, predict, gradcheck, tune, bench, info, warmup.

Bad arguments or data end with exit code 2 and one line naming the problem; a
run interrupted with Ctrl-C ends with exit code 130 (``train --out`` first saves
the model of the last completed epoch).
"""

import argparse
import os
import sys

from . import _cli_data as _data
from ._version import __version__

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process killed by it


class UsageError(Exception):
    """A bad argument or bad data: reported on one line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C, after the command cleaned up: its one line, exit code 130."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default; a help text that states its own default is left as written."""

    def _get_help_string(self, action):
        if action.required or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, no usage block
        raise UsageError(message)


def _int_list(text):
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return values


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return v


def _batch_size(text):
    if text.lower() in ("none", "full", "batch", "all"):
        return None
    return _positive_int(text)


def _float(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")


ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid"]
OPTIMIZERS = ["gd", "momentum", "rmsprop", "adam"]
SCHEDULES = ["constant", "inverse-time", "exponential", "inverse-sqrt"]
#: --decay-rate when not given: inverse-time's rate r and exponential's base (both decay)
DECAY_DEFAULTS = {"inverse-time": 1.0, "exponential": 0.95}
LR_DEFAULTS = "gd 0.1, momentum 0.01, rmsprop 0.001, adam 0.001"


def _add_model_args(p, layers="64,32", activation="relu"):
    p.add_argument("--layers", type=_int_list, default=layers, help="hidden layer sizes, comma-separated")
    p.add_argument("--activation", choices=ACTIVATIONS, default=activation, help="hidden activation")
    p.add_argument("--l2", type=_float, default=0.0, help="L2 regularisation lambda")
    p.add_argument("--keep-prob", type=_float, default=1.0, help="dropout keep probability (1: no dropout)")
    p.add_argument("--batch-norm", action="store_true", help="batch norm after each hidden Dense")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights, split, shuffling)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="float type")


def _add_data_args(p, label_default=None):
    p.add_argument("--data", default=None,
                   help="a .npz (X, y), .csv/.tsv/.txt or MNIST IDX images file (default: the built-in digits)")
    last = " (default: the last column)" if label_default is None else ""
    p.add_argument("--label-column", default=label_default,
                   help=f"text files: the label column, an index from 0 (negative from the end) or a header name{last}")


def build_parser():
    parser = _Parser(prog="fusednet", description="Fast CPU trainer for fully-connected neural networks.")
    parser.add_argument("--version", action="version", version=f"fusednet {__version__}")
    parser.add_argument("--backend", choices=["auto", "numpy", "numba", "cython"], default=None,
                        help="kernel backend (default: $FUSEDNET_BACKEND, else auto)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="kernel threads (default: the usable cores)")
    sub = parser.add_subparsers(dest="command", metavar="{train,predict,gradcheck,tune,bench,info,warmup}",
                                parser_class=_Parser)

    t = sub.add_parser("train", help="train a network (default: the digits data)")
    _add_data_args(t)
    _add_model_args(t)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimiser")
    t.add_argument("--lr", type=_float, default=None, help=f"learning rate (default: the optimiser's: {LR_DEFAULTS})")
    t.add_argument("--beta", type=_float, default=0.9, help="momentum / RMSProp beta")
    t.add_argument("--beta1", type=_float, default=0.9, help="Adam beta1")
    t.add_argument("--beta2", type=_float, default=0.999, help="Adam beta2")
    t.add_argument("--eps", type=_float, default=1e-8, help="RMSProp / Adam epsilon")
    t.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="learning-rate schedule: lr0/(1 + r*epoch), lr0*base**epoch, lr0/sqrt(epoch + 1)")
    t.add_argument("--decay-rate", type=_float, default=None,
                   help="inverse-time rate r (> 0) or exponential base (in (0, 1)) "
                        "(default: inverse-time 1.0, exponential 0.95)")
    t.add_argument("--batch-size", type=_batch_size, default="64", help="mini-batch size, or 'full' (batch GD)")
    t.add_argument("--epochs", type=_positive_int, default=30, help="epochs")
    t.add_argument("--dev", type=_float, default=0.1, help="dev fraction")
    t.add_argument("--test", type=_float, default=0.1, help="test fraction")
    t.add_argument("--patience", type=int, default=None,
                   help="early stopping patience on the dev loss (default: no early stopping)")
    t.add_argument("--out", default=None, help="save the trained model to this file (.npz) (default: not saved)")
    t.add_argument("--plot", default=None, help="save the cost curves to this PNG (default: no plot)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or epoch lines")

    p = sub.add_parser("predict", help="predict with a saved model")
    p.add_argument("--model", required=True, help="a model file written by fusednet train --out")
    p.add_argument("--data", required=True,
                   help="a .npz, .csv/.tsv/.txt or IDX file of the model's features, with or without labels")
    p.add_argument("--label-column", default=None,
                   help="text files with labels: their column, an index from 0 or a header name "
                        "(default: the last column)")
    p.add_argument("--out", default=None, help="write the predictions here, one per line (default: stdout)")

    g = sub.add_parser("gradcheck", help="check backpropagation against two-sided differences")
    _add_data_args(g)
    _add_model_args(g, layers="5,3", activation="tanh")
    g.add_argument("--examples", type=_positive_int, default=32, help="examples used")
    g.add_argument("--eps", type=_float, default=1e-7, help="two-sided difference step")
    g.add_argument("--sample", type=_positive_int, default=None,
                   help="check a random subset of this many coordinates (default: all)")
    g.add_argument("--top", type=_positive_int, default=5, help="worst coordinates shown")

    u = sub.add_parser("tune", help="random search, coarse to fine, many models in parallel")
    _add_data_args(u, label_default="-1")
    u.add_argument("--trials", type=_positive_int, default=12, help="trials per round")
    u.add_argument("--rounds", type=_positive_int, default=1, help="coarse-to-fine rounds")
    u.add_argument("--epochs", type=_positive_int, default=15, help="epochs per trial")
    u.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: the cores)")
    u.add_argument("--seed", type=int, default=0, help="random seed")
    u.add_argument("--out", default=None, help="append trials to this JSON-lines file, resuming it (default: none)")
    u.add_argument("--no-progress", action="store_true", help="no progress bar")

    b = sub.add_parser("bench", help="kernel and trainer speed against NumPy (and PyTorch)")
    b.add_argument("--quick", action="store_true", help="small sizes only")
    b.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")

    sub.add_parser("info", help="versions, backends, threads")
    w = sub.add_parser("warmup", help="compile every Numba kernel now (else each compiles on its first use, once)")
    w.add_argument("--jobs", type=_positive_int, default=None,
                   help="processes compiling at once (default: the usable cores)")
    return parser


# ---- checks made before any work -------------------------------------------------------


def _check_output(option, path):
    """``path`` can be written: its folder exists and is writable, and it is not a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder, expected a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: the folder {os.path.dirname(path) or '.'} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: the folder {os.path.dirname(path) or '.'} is not writable")


def _check_plot(path):
    _check_output("--plot", path)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, an optional extra: pip install 'fusednet[plot]' (or pip install matplotlib)"
        ) from None
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    kinds = Figure().canvas.get_supported_filetypes()
    if suffix and suffix not in kinds:
        raise UsageError(f"--plot {path}: matplotlib cannot write .{suffix} files; use one of .{', .'.join(kinds)}")


def _optimizer(args):
    import fusednet as fn

    kw = {} if args.lr is None else {"lr": args.lr}
    if args.optimizer == "gd":
        return fn.optim.GD(**kw)
    if args.optimizer == "momentum":
        return fn.optim.Momentum(beta=args.beta, **kw)
    if args.optimizer == "rmsprop":
        return fn.optim.RMSProp(beta=args.beta, eps=args.eps, **kw)
    return fn.optim.Adam(beta1=args.beta1, beta2=args.beta2, eps=args.eps, **kw)


def _schedule(args, lr0):
    """``(schedule or None, its description)``; a decaying schedule always decays."""
    import fusednet as fn

    rate = args.decay_rate
    if args.schedule in ("constant", "inverse-sqrt"):
        if rate is not None:
            raise UsageError(f"--decay-rate applies to --schedule inverse-time or exponential, not {args.schedule}")
        if args.schedule == "constant":
            return None, "constant"
        return fn.schedules.InverseSqrtDecay(lr0), "/ sqrt(epoch + 1)"
    if rate is None:
        rate = DECAY_DEFAULTS[args.schedule]
    if args.schedule == "inverse-time":
        if not rate > 0:
            raise UsageError(f"--decay-rate must be > 0 for --schedule inverse-time (0 does not decay), got {rate:g}")
        return fn.schedules.InverseTimeDecay(lr0, rate), f"/ (1 + {rate:g} epoch)"
    if not 0 < rate < 1:
        raise UsageError(
            f"--decay-rate is the exponential schedule's base and must be in (0, 1) to decay, got {rate:g}"
        )
    return fn.schedules.ExponentialDecay(lr0, base=rate), f"* {rate:g}**epoch"


def _label_column(args):
    col = args.label_column
    if col is None:
        return None
    if args.data is None or not _data.is_text(args.data):
        if str(col) != "-1":
            raise UsageError("--label-column applies to --data files in text form (.csv, .tsv, .txt)")
        return None
    return col


# ---- data ----------------------------------------------------------------------------------


class _Data:
    """A labelled data set for train/gradcheck: raw ``X``, class ``ids``, ``classes``, ``source``."""

    def __init__(self, args):
        import fusednet as fn

        label_column = _label_column(args)
        if args.data is None:
            X, labels = fn.datasets.digits()
            self.source, text = "digits (built in)", False
        else:
            X, labels = _data.load_labelled(args.data, label_column)
            self.source, text = args.data, _data.is_text(args.data)
        where = f"the label column of {args.data}" if text else f"the labels of {self.source}"
        self.X = X
        self.ids, self.classes = _data.encode_labels(labels, where, text_file=text)


def _load_data(args):
    """``(X, class ids)`` of ``--data`` (or the digits); used by ``tune``."""
    d = _Data(args)
    return d.X, d.ids


def _build_model(args, n_features, n_classes):
    import fusednet as fn

    if not 0.0 < args.keep_prob <= 1.0:
        raise UsageError(f"--keep-prob: keep_prob must be in (0, 1], got {args.keep_prob}")
    layers = []
    for units in args.layers:
        if args.batch_norm:
            layers += [fn.layers.Dense(units, use_bias=False), fn.layers.BatchNorm(),
                       fn.layers.Activation(args.activation)]
        else:
            layers.append(fn.layers.Dense(units, activation=args.activation))
        if args.keep_prob < 1.0:
            layers.append(fn.layers.Dropout(args.keep_prob))
    if n_classes <= 2:
        layers.append(fn.layers.Dense(1, activation="sigmoid"))
    else:
        layers.append(fn.layers.Dense(n_classes, activation="softmax"))
    return fn.Sequential(layers, input_dim=n_features, l2=args.l2, dtype=args.dtype, seed=args.seed)


def _table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


# ---- commands -------------------------------------------------------------------------------


def cmd_train(args):
    import fusednet as fn

    from . import _cli_train as show

    # everything that can be refused is refused before the data are read
    if not 0.0 < args.keep_prob <= 1.0:
        raise UsageError(f"--keep-prob: keep_prob must be in (0, 1], got {args.keep_prob}")
    if args.out:
        _check_output("--out", args.out)
    if args.plot:
        _check_plot(args.plot)
    opt = _optimizer(args)
    schedule, schedule_name = _schedule(args, opt.lr)
    progress = show.Progress(args.epochs, mode="off" if args.no_progress else None)
    with show.CompileWatch(progress.write, show.COMPILE_SECONDS["train"]) as compiling:
        data = _Data(args)
        X, n_classes = data.X, len(data.classes)
        (Xtr, ytr), (Xdv, ydv), (Xte, yte) = fn.data.split(X, data.ids, dev=args.dev, test=args.test, seed=args.seed)
        model = _build_model(args, X.shape[1], n_classes)
        # the model normalises its raw input itself, in training and after loading
        model.normalizer = fn.data.Normalizer().fit(Xtr)
        model.classes = data.classes
        last = show.LastEpoch()
        callbacks = [last, progress]
        if args.patience is not None:
            callbacks.insert(0, fn.callbacks.EarlyStopping(patience=args.patience))
        trainer = fn.Trainer(model, optimizer=opt, schedule=schedule, batch_size=args.batch_size, epochs=args.epochs,
                             seed=args.seed, callbacks=callbacks, progress=False)
        rows = len(Xtr) if args.batch_size is None else min(args.batch_size, len(Xtr))
        print(f"train {data.source}: {X.shape[0]} x {X.shape[1]}, {n_classes} classes "
              f"({len(Xtr)} train, {len(Xdv)} dev, {len(Xte)} test) | "
              f"net {show.describe_net(X.shape[1], args, model.output_dim)} | "
              f"{show.describe_optimizer(args, opt, schedule_name)} | "
              f"backend {show.describe_backend(model, opt, rows)}", flush=True)
        saved = False
        try:
            try:
                history = trainer.fit(Xtr, ytr, dev=(Xdv, ydv) if len(Xdv) else None)
            finally:
                progress.close()
            results = []
            errors = {}
            for name, (Xs, ys) in (("train", (Xtr, ytr)), ("dev", (Xdv, ydv)), ("test", (Xte, yte))):
                if len(Xs) == 0:
                    continue
                # on one thread, with the serial kernels the fit's dev passes compiled: the parallel
                # ones would be compiled for these three calls alone (0.5 s on an empty Numba cache),
                # and give the same bits (no kernel's result depends on its thread count)
                with fn.kernels.limit_threads(1):
                    ev = model.evaluate(Xs, ys)
                errors[name] = 1.0 - ev["accuracy"]
                results.append((name, len(Xs), f"{ev['loss']:.4f}", f"{ev['accuracy']:.4f}"))
            if args.out:
                model.save(args.out)
                saved = True
        except fn.TrainingDiverged as exc:
            what = f"the cost became {exc.cost:g}" if exc.what == "cost" else f"the {exc.what} is not finite"
            nothing = f"; nothing saved to {args.out}" if args.out else ""
            raise UsageError(
                f"training diverged in epoch {exc.epoch + 1}/{args.epochs}, mini-batch {exc.step + 1}: {what}; "
                f"try an --lr smaller than {opt.lr:g}{nothing}"
            ) from None
        except KeyboardInterrupt:
            raise Interrupted(_save_interrupted(args, model, last, trainer, saved)) from None
    print(_table(results, ["set", "examples", "loss", "accuracy"]))
    compile_note = f"   numba compile: {compiling.seconds:.2f} s" if compiling.count else ""
    print(f"epochs: {history.epochs}   time: {sum(history['time']):.2f} s{compile_note}   backend: {fn.get_backend()}")
    if "train" in errors and "dev" in errors:
        d = fn.diagnose(train_error=errors["train"], dev_error=errors["dev"])
        print(f"diagnosis: {d.verdict} (avoidable bias {d.bias:.3f}, variance {d.variance:.3f})")
    if saved:
        print(f"model saved to {args.out}")
    if args.plot:
        history.plot(args.plot)
        print(f"cost curves saved to {args.plot}")
    return 0


def _save_interrupted(args, model, last, trainer, saved):
    """On Ctrl-C: save the model of the last completed epoch (with --out); the one line to print."""
    done = int(trainer.history.epochs) if trainer.history is not None else 0
    where = f"after epoch {done}/{args.epochs}" if done else "in the first epoch"
    if not args.out:
        return f"interrupted {where}"
    if saved:
        return f"interrupted {where}; the trained model was saved to {args.out}"
    if last.saved is None:
        return f"interrupted {where}; nothing saved to {args.out}"
    epoch, state = last.saved
    model.load_state_dict(state)
    model.save(args.out)
    if epoch is None:
        return f"interrupted after training; the trained model was saved to {args.out}"
    return f"interrupted {where}; saved the model of epoch {epoch + 1} (the last completed) to {args.out}"


def cmd_predict(args):
    import fusednet as fn

    from . import _cli_train as show

    if args.out:
        _check_output("--out", args.out)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    with show.CompileWatch(say, show.COMPILE_SECONDS["predict"]):
        model = fn.load(args.model)
        X, labels = _data.load_for_predict(args.data, model.input_dim, args.label_column)
        predicted = _data.as_labels(model, model.predict(X))
    lines = [_data.as_text(row) for row in predicted]
    text = "".join(line + "\n" for line in lines)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"{len(lines)} predictions written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if labels is not None and model.is_classifier and predicted.ndim == 1:
        correct = _data.count_correct(model, predicted, labels)
        if correct is None:
            print("accuracy: not computed, the model file has no class names to compare with the labels",
                  file=sys.stderr)
        else:
            print(f"accuracy: {correct / len(lines):.4f} ({correct}/{len(lines)}, against the labels in {args.data})",
                  file=sys.stderr)
    return 0


def cmd_gradcheck(args):
    import numpy as np

    import fusednet as fn

    from . import _cli_train as show

    data = _Data(args)
    X, y = data.X, data.ids
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(X), size=min(args.examples, len(X)), replace=False)
    X, y = np.asarray(X)[idx], np.asarray(y)[idx]
    X = fn.data.Normalizer().fit_transform(X)
    args.dtype = "float64"
    model = _build_model(args, X.shape[1], len(data.classes))
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    # "auto" checks the Cython extension's backpropagation when it is built: it is compiled ahead of
    # time, so an empty Numba cache makes the check wait only for the numeric side's forward kernels
    analytic = "cython" if fn.get_backend() == "auto" and "cython" in fn.kernels.available() else None
    with show.CompileWatch(say, show.COMPILE_SECONDS["gradcheck"]):
        g = fn.gradcheck(model, X, y, eps=args.eps, sample=args.sample, analytic_backend=analytic)
    print(f"parameters checked: {g.n_checked}")
    print(f"difference: {g.difference:.3e}")
    print(f"verdict:    {g.verdict}")
    rows = [(name, str(tuple(int(i) for i in np.atleast_1d(index))), f"{num:+.6e}", f"{ana:+.6e}",
             f"{abs(num - ana):.2e}") for name, index, num, ana in g.worst[: args.top]]
    print(_table(rows, ["parameter", "index", "numeric", "analytic", "|diff|"]))
    return 0


def cmd_tune(args):
    from .tune_cli import run_tune

    return run_tune(args, _load_data, _table)


def cmd_bench(args):
    from .bench import run_bench

    return run_bench(quick=args.quick, torch=not args.no_torch)


def cmd_info(args):
    from .info import format_info

    print(format_info())
    return 0


def cmd_warmup(args):
    import time

    import fusednet as fn

    t0 = time.perf_counter()
    terminal = sys.stderr.isatty()

    def progress(done, total):
        if terminal:
            print(f"\rcompiling kernels: {done}/{total}", end="", file=sys.stderr, flush=True)

    jobs = args.jobs if args.jobs is not None else fn.kernels._affinity_count()
    if not fn.kernels.warmup(progress=progress, jobs=jobs):
        print("Numba is not installed: there are no kernels to compile")
        return 0
    if terminal:
        print(file=sys.stderr)
    on = f" by {jobs} processes" if jobs > 1 else ""
    print(f"every Numba kernel compiled (or found in the cache){on} in {time.perf_counter() - t0:.1f} s; "
          "later runs start at once")
    return 0


COMMANDS = {"train": cmd_train, "predict": cmd_predict, "gradcheck": cmd_gradcheck, "tune": cmd_tune,
            "bench": cmd_bench, "info": cmd_info, "warmup": cmd_warmup}


def _one_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv=None):
    """Entry point of the ``fusednet`` console script; returns the exit code."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        if args.command is None:
            raise UsageError("a command is required: train, predict, gradcheck, tune, bench, info or warmup "
                             "(see fusednet --help)")
        import fusednet as fn

        if args.backend is not None:
            fn.set_backend(args.backend)
        if args.threads is not None:
            fn.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"fusednet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"fusednet: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`fusednet predict ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (ValueError, TypeError, OSError, FloatingPointError) as exc:
        # bad data (fusednet.datasets, fusednet.load), an unwritable file, a divergence outside train
        print(f"fusednet: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fusednet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
