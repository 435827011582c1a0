"""``fusednet tune``: random search (coarse to fine) for a network on the digits data or a user file.

The trial function lives at module level so that spawned worker processes can
import it by name. Each trial reads the data as the ``train`` command does:
:func:`fusednet._cli_data.load_labelled`, then class ids by the labels' sorted
unique values (:func:`fusednet._cli_data.encode_labels`), so labels ``1..k``
make ``k`` classes and word labels work too.
"""

from . import _cli_data


def _trial_data(data, label_column):
    """``(X, class ids, number of classes)`` of ``data`` (None: the digits), labels encoded as ``train`` does."""
    import fusednet as fn

    X, labels = fn.datasets.digits() if data is None else _cli_data.load_labelled(data, label_column)
    ids, classes = _cli_data.encode_labels(labels, f"the labels of {'the digits' if data is None else data}")
    return X, ids, len(classes)


def train_trial(lr, beta1, hidden, activation, l2, epochs, seed, data=None, label_column=-1):
    """Train one network and score it by dev accuracy (the search's ``train_fn``).

    Parameters
    ----------
    lr, beta1 : float
        Adam's learning rate and first-moment beta.
    hidden : int
        Width of the two hidden layers (second one half as wide).
    activation : str
        Hidden activation.
    l2 : float
        L2 regularisation lambda.
    epochs, seed : int
    data : str or None
        A data file, read as the ``train`` command reads it; None: the digits.
    label_column : int or str
        The labels' column of a text file: an index (-1: the last) or a header name.

    Returns
    -------
    dict
        ``{"score": dev accuracy, "dev_loss", "train_accuracy"}``.
    """
    import fusednet as fn

    X, y, n_classes = _trial_data(data, label_column)
    (Xtr, ytr), (Xdv, ydv), _ = fn.data.split(X, y, dev=0.15, test=0.15, seed=seed)
    norm = fn.data.Normalizer().fit(Xtr)
    Xtr, Xdv = norm.transform(Xtr), norm.transform(Xdv)
    if n_classes > 2:
        out = fn.layers.Dense(n_classes, activation="softmax")
    else:
        out = fn.layers.Dense(1, activation="sigmoid")
    hidden = int(hidden)
    hidden_layers = [fn.layers.Dense(width, activation=activation) for width in (hidden, max(2, hidden // 2))]
    model = fn.Sequential([*hidden_layers, out], input_dim=X.shape[1], l2=l2, seed=seed)
    fn.Trainer(model, optimizer=fn.optim.Adam(lr=lr, beta1=beta1), batch_size=64, epochs=epochs, seed=seed,
               progress=False).fit(Xtr, ytr)
    dev = model.evaluate(Xdv, ydv)
    train = model.evaluate(Xtr, ytr)
    return {"score": dev["accuracy"], "dev_loss": dev["loss"], "train_accuracy": train["accuracy"]}


def run_tune(args, load_data, table):
    """The ``tune`` command: search, then print the trials best first."""
    import fusednet as fn

    # fail fast on bad data, in this process, before any worker starts
    X, _ = load_data(args)
    if len(X) < 20:
        raise ValueError(f"--data needs at least 20 examples to split into train/dev, got {len(X)}")
    label_column = _cli_data._label_arg(args.label_column)  # -1, another index, or a header name
    space = {
        "lr": fn.tune.LogUniform(1e-4, 1e-1),
        "beta1": fn.tune.OneMinusLogUniform(0.8, 0.99),
        "hidden": fn.tune.LogIntUniform(16, 256),
        "activation": fn.tune.Choice(["relu", "tanh", "leaky_relu"]),
        "l2": fn.tune.LogUniform(1e-5, 1e-1),
        "epochs": args.epochs,
        "seed": args.seed,
        "data": args.data,
        "label_column": label_column,
    }
    kwargs = dict(seed=args.seed, n_workers=args.workers, out=args.out, progress=not args.no_progress)
    if args.rounds > 1:
        results = fn.tune.coarse_to_fine(train_trial, space, args.trials, rounds=args.rounds, **kwargs)
    else:
        results = fn.tune.random_search(train_trial, space, args.trials, **kwargs)
    rows = []
    for r in results:
        p = r["params"]
        score = f"{r['score']:.4f}" if r["status"] == "ok" else "failed"
        rows.append((r["trial"], r.get("round", 0), score, f"{p['lr']:.2e}", f"{p['beta1']:.4f}", p["hidden"],
                     p["activation"], f"{p['l2']:.1e}", (r.get("error") or "")[:40]))
    print(table(rows, ["trial", "round", "dev acc", "lr", "beta1", "hidden", "activation", "l2", "error"]))
    ok = [r for r in results if r["status"] == "ok"]
    if ok:
        best = ok[0]["params"]
        print(f"best: lr={best['lr']:.3e} beta1={best['beta1']:.4f} hidden={best['hidden']} "
              f"activation={best['activation']} l2={best['l2']:.2e}  dev accuracy {ok[0]['score']:.4f}")
    return 0 if ok else 1
