"""The ``fusednet`` command: train, gradcheck, tune, bench, info.

Bad arguments or data end with exit code 2 and one line naming the problem.
"""

import argparse
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument or bad data: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
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


def _add_model_args(p, layers="64,32", activation="relu"):
    p.add_argument("--layers", type=_int_list, default=_int_list(layers), help=f"hidden layer sizes (default {layers})")
    p.add_argument("--activation", choices=ACTIVATIONS, default=activation, help="hidden activation")
    p.add_argument("--l2", type=_float, default=0.0, help="L2 regularisation lambda (default 0)")
    p.add_argument("--keep-prob", type=_float, default=1.0, help="dropout keep probability (default 1: off)")
    p.add_argument("--batch-norm", action="store_true", help="batch norm after each hidden Dense")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")


def _add_data_args(p):
    p.add_argument("--data", default=None, help="a .npz (X, y), .csv or MNIST IDX images file (default: digits)")
    p.add_argument("--label-column", default="-1", help="CSV label column: index or header name (default last)")


def build_parser():
    parser = _Parser(prog="fusednet", description="Fast CPU trainer for fully-connected neural networks.")
    parser.add_argument("--backend", choices=["auto", "numpy", "numba", "cython"], default=None)
    parser.add_argument("--threads", type=_positive_int, default=None, help="kernel threads")
    sub = parser.add_subparsers(dest="command", metavar="{train,gradcheck,tune,bench,info}", parser_class=_Parser)

    t = sub.add_parser("train", help="train a network (default: the digits data)")
    _add_data_args(t)
    _add_model_args(t)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    t.add_argument("--lr", type=_float, default=None, help="learning rate (default: the optimiser's)")
    t.add_argument("--beta", type=_float, default=0.9, help="momentum / RMSProp beta")
    t.add_argument("--beta1", type=_float, default=0.9, help="Adam beta1")
    t.add_argument("--beta2", type=_float, default=0.999, help="Adam beta2")
    t.add_argument("--eps", type=_float, default=1e-8, help="RMSProp / Adam epsilon")
    t.add_argument("--schedule", choices=SCHEDULES, default="constant")
    t.add_argument("--decay-rate", type=_float, default=1.0, help="inverse-time decay rate; exponential base")
    t.add_argument("--batch-size", type=_batch_size, default=64, help="mini-batch size, or 'full' (default 64)")
    t.add_argument("--epochs", type=_positive_int, default=30)
    t.add_argument("--dev", type=_float, default=0.1, help="dev fraction (default 0.1)")
    t.add_argument("--test", type=_float, default=0.1, help="test fraction (default 0.1)")
    t.add_argument("--patience", type=int, default=None, help="early stopping patience on dev loss")
    t.add_argument("--out", default=None, help="save the trained model to this file (.npz)")
    t.add_argument("--plot", default=None, help="save the cost curves to this PNG")
    t.add_argument("--no-progress", action="store_true")

    g = sub.add_parser("gradcheck", help="check backpropagation against two-sided differences")
    _add_data_args(g)
    _add_model_args(g, layers="5,3", activation="tanh")
    g.add_argument("--examples", type=_positive_int, default=32, help="examples used (default 32)")
    g.add_argument("--eps", type=_float, default=1e-7)
    g.add_argument("--sample", type=_positive_int, default=None, help="check a random subset of coordinates")
    g.add_argument("--top", type=_positive_int, default=5, help="worst coordinates shown")

    u = sub.add_parser("tune", help="random search, coarse to fine, many models in parallel")
    _add_data_args(u)
    u.add_argument("--trials", type=_positive_int, default=12, help="trials per round")
    u.add_argument("--rounds", type=_positive_int, default=1)
    u.add_argument("--epochs", type=_positive_int, default=15)
    u.add_argument("--workers", type=_positive_int, default=None)
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--out", default=None, help="append trials to this JSON-lines file (resumes)")
    u.add_argument("--no-progress", action="store_true")

    b = sub.add_parser("bench", help="kernel and trainer speed against NumPy (and PyTorch)")
    b.add_argument("--quick", action="store_true", help="small sizes only")
    b.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")

    sub.add_parser("info", help="versions, backends, threads")
    return parser


def _load_data(args):
    from . import datasets

    if args.data is None:
        return datasets.digits()
    col = args.label_column
    col = int(col) if col.lstrip("-").isdigit() else col
    return datasets.load(args.data, label_column=col)


def _n_classes(y):
    import numpy as np

    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.shape[1]
    return int(y.max()) + 1 if y.size else 0


def _build_model(args, n_features, n_classes):
    import fusednet as fn

    if not 0.0 < args.keep_prob <= 1.0:
        raise UsageError(f"--keep-prob: keep_prob must be in (0, 1], got {args.keep_prob}")
    layers = []
    for units in args.layers:
        if args.batch_norm:
            layers += [fn.layers.Dense(units, use_bias=False), fn.layers.BatchNorm(), fn.layers.Activation(args.activation)]
        else:
            layers.append(fn.layers.Dense(units, activation=args.activation))
        if args.keep_prob < 1.0:
            layers.append(fn.layers.Dropout(args.keep_prob))
    if n_classes <= 2:
        layers.append(fn.layers.Dense(1, activation="sigmoid"))
    else:
        layers.append(fn.layers.Dense(n_classes, activation="softmax"))
    return fn.Sequential(layers, input_dim=n_features, l2=args.l2, dtype=args.dtype, seed=args.seed)


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
    import fusednet as fn

    if args.schedule == "constant":
        return None
    if args.schedule == "inverse-time":
        return fn.schedules.InverseTimeDecay(lr0, args.decay_rate)
    if args.schedule == "exponential":
        return fn.schedules.ExponentialDecay(lr0, base=args.decay_rate)
    return fn.schedules.InverseSqrtDecay(lr0)


def _table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def cmd_train(args):
    import fusednet as fn

    X, y = _load_data(args)
    (Xtr, ytr), (Xdv, ydv), (Xte, yte) = fn.data.split(X, y, dev=args.dev, test=args.test, seed=args.seed)
    norm = fn.data.Normalizer().fit(Xtr)
    Xtr, Xdv, Xte = norm.transform(Xtr), norm.transform(Xdv), norm.transform(Xte)
    model = _build_model(args, X.shape[1], _n_classes(y))
    opt = _optimizer(args)
    callbacks = []
    if args.patience is not None:
        callbacks.append(fn.callbacks.EarlyStopping(patience=args.patience))
    trainer = fn.Trainer(
        model,
        optimizer=opt,
        schedule=_schedule(args, opt.lr),
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        callbacks=callbacks,
        progress=not args.no_progress,
    )
    history = trainer.fit(Xtr, ytr, dev=(Xdv, ydv) if len(Xdv) else None)
    rows = []
    errors = {}
    for name, (Xs, ys) in (("train", (Xtr, ytr)), ("dev", (Xdv, ydv)), ("test", (Xte, yte))):
        if len(Xs) == 0:
            continue
        ev = model.evaluate(Xs, ys)
        errors[name] = 1.0 - ev["accuracy"]
        rows.append((name, len(Xs), f"{ev['loss']:.4f}", f"{ev['accuracy']:.4f}"))
    print(_table(rows, ["set", "examples", "loss", "accuracy"]))
    print(f"epochs: {history.epochs}   time: {sum(history['time']):.2f} s   backend: {fn.get_backend()}")
    if "train" in errors and "dev" in errors:
        d = fn.diagnose(train_error=errors["train"], dev_error=errors["dev"])
        print(f"diagnosis: {d.verdict} (avoidable bias {d.bias:.3f}, variance {d.variance:.3f})")
    if args.out:
        model.normalizer = norm
        model.save(args.out)
        print(f"model saved to {args.out}")
    if args.plot:
        history.plot(args.plot)
        print(f"cost curves saved to {args.plot}")
    return 0


def cmd_gradcheck(args):
    import numpy as np

    import fusednet as fn

    X, y = _load_data(args)
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(X), size=min(args.examples, len(X)), replace=False)
    X, y = np.asarray(X)[idx], np.asarray(y)[idx]
    X = fn.data.Normalizer().fit_transform(X)
    args.dtype = "float64"
    model = _build_model(args, X.shape[1], _n_classes(y))
    g = fn.gradcheck(model, X, y, eps=args.eps, sample=args.sample)
    print(f"parameters checked: {g.n_checked}")
    print(f"difference: {g.difference:.3e}")
    print(f"verdict:    {g.verdict}")
    rows = [(name, str(tuple(int(i) for i in np.atleast_1d(index))), f"{num:+.6e}", f"{ana:+.6e}", f"{abs(num - ana):.2e}")
            for name, index, num, ana in g.worst[: args.top]]
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


COMMANDS = {"train": cmd_train, "gradcheck": cmd_gradcheck, "tune": cmd_tune, "bench": cmd_bench, "info": cmd_info}


def main(argv=None):
    """Entry point of the ``fusednet`` console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("a command is required: train, gradcheck, tune, bench or info (see fusednet --help)")
        import fusednet as fn

        if args.backend is not None:
            fn.set_backend(args.backend)
        if args.threads is not None:
            fn.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"fusednet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"fusednet: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fusednet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
