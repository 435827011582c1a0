"""The command line, run as a user runs it: a subprocess, exit codes, one-line errors."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import fusednet as fn


def run(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "fusednet", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_train_default_digits(tmp_path):
    out, plot = tmp_path / "m.npz", tmp_path / "c.png"
    r = run("train", "--epochs", "8", "--no-progress", "--out", str(out), "--plot", str(plot))
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "diagnosis:" in r.stdout
    test_line = next(line for line in r.stdout.splitlines() if line.startswith("test"))
    assert float(test_line.split()[-1]) > 0.9  # digits are easy
    model = fn.load(out)
    assert model.normalizer is not None
    assert plot.stat().st_size > 1000


def test_train_flags(tmp_path):
    r = run("train", "--epochs", "2", "--no-progress", "--layers", "16", "--activation", "tanh", "--batch-norm",
            "--keep-prob", "0.9", "--l2", "0.01", "--optimizer", "rmsprop", "--lr", "0.01", "--schedule",
            "exponential", "--decay-rate", "0.9", "--batch-size", "full", "--dtype", "float64", "--seed", "3")
    assert r.returncode == 0, r.stderr


def test_train_user_csv(tmp_path):
    X, y = fn.datasets.moons(m=120, seed=0)
    path = tmp_path / "moons.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="x1,x2,label", comments="")
    r = run("train", "--data", str(path), "--epochs", "3", "--no-progress", "--label-column", "label")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--layers", "0"], "--layers"),
        (["train", "--epochs", "-3"], "--epochs"),
        (["train", "--keep-prob", "1.5"], "keep_prob"),
        (["train", "--optimizer", "sgdx"], "--optimizer"),
        (["train", "--data", "/no/such/file.csv"], "no/such/file.csv"),
        (["train", "--lr", "abc"], "--lr"),
        (["frobnicate"], "frobnicate"),
        ([], "command"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, words):
    r = run(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert words in lines[0]


def test_bad_data_file_exit_2(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,label\n1,2,0\n3,x,1\n")
    r = run("train", "--data", str(path), "--no-progress")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "bad.csv" in r.stderr


def test_gradcheck_command():
    r = run("gradcheck", "--examples", "16")
    assert r.returncode == 0, r.stderr
    assert "difference" in r.stdout
    assert any(v in r.stdout for v in ("great", "ok"))


def test_info_command():
    r = run("info")
    assert r.returncode == 0, r.stderr
    assert "backends" in r.stdout and "numpy" in r.stdout


def test_tune_command(tmp_path):
    out = tmp_path / "trials.jsonl"
    r = run("tune", "--trials", "2", "--epochs", "2", "--workers", "2", "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "best:" in r.stdout
    assert len(out.read_text().splitlines()) == 2


def test_bench_command_quick():
    r = run("bench", "--quick", "--no-torch", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "adam" in r.stdout and "textbook" in r.stdout


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "fusednet"]
    assert eps and eps[0].value == "fusednet.cli:main"


# ---- helpers -----------------------------------------------------------------------------


def one_error_line(r):
    """The single stderr line of a failed run (no traceback)."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def blobs(m=90, n_features=4, k=3, seed=0):
    """Well separated Gaussian blobs: ``(X, ids)``."""
    rng = np.random.default_rng(seed)
    ids = np.arange(m) % k
    centres = rng.normal(scale=6.0, size=(k, n_features))
    return centres[ids] + rng.normal(size=(m, n_features)), ids


def write_csv(path, X, labels, label_first=False, header=None):
    with open(path, "w") as f:
        if header:
            f.write(",".join(header) + "\n")
        for row, label in zip(X, labels):
            cells = [f"{v:.5f}" for v in row]
            cells = [str(label), *cells] if label_first else [*cells, str(label)]
            f.write(",".join(cells) + "\n")


IRIS_NAMES = np.array(["virginica", "setosa", "versicolor"])


# ---- interruption and divergence ---------------------------------------------------------


def test_ctrl_c_saves_the_last_completed_epoch_and_exits_130(tmp_path):
    out = tmp_path / "m.npz"
    p = subprocess.Popen([sys.executable, "-m", "fusednet", "train", "--epochs", "100000", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:  # stderr is a pipe: one plain line per epoch (every N-th)
            if line.startswith("epoch 1/"):
                break
        else:
            pytest.fail("no epoch line before the end of stderr")
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    done = re.match(r"fusednet: interrupted after epoch (\d+)/100000; saved the model of epoch (\d+) "
                    r"\(the last completed\) to (.+)$", last)
    assert done, last
    assert done[1] == done[2] and int(done[1]) >= 1 and done[3] == str(out)
    model = fn.load(out)
    assert model.normalizer is not None
    assert model.classes == list(range(10))


def test_ctrl_c_without_out_exits_130(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "fusednet", "train", "--epochs", "100000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if line.startswith("epoch 1/"):
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130
    assert err.strip().splitlines()[-1].startswith("fusednet: interrupted")


def test_diverging_run_exits_2_with_one_line(tmp_path):
    out = tmp_path / "m.npz"
    r = run("train", "--optimizer", "gd", "--lr", "1e6", "--epochs", "5", "--no-progress", "--out", str(out))
    assert r.returncode == 2
    line = one_error_line(r)
    assert "diverged" in line and "--lr" in line
    assert not out.exists()


# ---- output files, checked before training -----------------------------------------------------


@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_output_into_missing_folder_fails_before_training(tmp_path, option):
    target = tmp_path / "no" / "such" / "folder" / "file.png"
    r = run("train", "--epochs", "1000", option, str(target))
    assert r.returncode == 2
    line = one_error_line(r)
    assert option in line and "does not exist" in line
    assert r.stdout == ""  # no first line: nothing was loaded or trained


def test_plot_without_matplotlib_fails_before_training(tmp_path):
    out, plot = tmp_path / "m.npz", tmp_path / "c.png"
    script = ("import sys; sys.modules['matplotlib'] = None\n"
              "from fusednet.cli import main\n"
              f"sys.exit(main(['train', '--epochs', '1000', '--out', {str(out)!r}, '--plot', {str(plot)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    line = one_error_line(r)
    assert "--plot" in line and "matplotlib" in line
    assert r.stdout == "" and not out.exists() and not plot.exists()


# ---- predict ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "digits.npz"
    r = run("train", "--epochs", "10", "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_predict_labelled_csv_writes_labels_and_accuracy(digits_model, tmp_path):
    X, y = fn.datasets.digits()
    data, preds = tmp_path / "d.csv", tmp_path / "p.csv"
    write_csv(data, X, y)
    r = run("predict", "--model", str(digits_model), "--data", str(data), "--out", str(preds))
    assert r.returncode == 0, r.stderr
    lines = preds.read_text().splitlines()
    assert len(lines) == len(X)
    assert np.mean(np.array(lines).astype(int) == y) > 0.9
    acc = next(line for line in r.stderr.splitlines() if line.startswith("accuracy:"))
    assert float(acc.split()[1]) > 0.9


def test_predict_features_only_to_stdout_matches_the_model(digits_model, tmp_path):
    X, _ = fn.datasets.digits()
    data = tmp_path / "features.csv"
    np.savetxt(data, X[:50], delimiter=",", fmt="%g")
    r = run("predict", "--model", str(digits_model), "--data", str(data))
    assert r.returncode == 0, r.stderr
    assert "accuracy" not in r.stderr
    model = fn.load(digits_model)  # applies its stored normaliser to raw X
    assert r.stdout.split() == [str(c) for c in model.predict(X[:50])]


def test_predict_n_features_mismatch_names_both_numbers(digits_model, tmp_path):
    data = tmp_path / "narrow.csv"
    np.savetxt(data, np.ones((4, 7)), delimiter=",")
    r = run("predict", "--model", str(digits_model), "--data", str(data))
    assert r.returncode == 2
    line = one_error_line(r)
    assert "7 columns" in line and "64 features" in line


@pytest.mark.parametrize("which", ["model", "data"])
def test_predict_bad_file_exit_2(digits_model, tmp_path, which):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive")
    model, data = (bad, digits_model) if which == "model" else (digits_model, bad)
    r = run("predict", "--model", str(model), "--data", str(data))
    assert r.returncode == 2
    assert "bad.npz" in one_error_line(r)


def test_predict_missing_model_exit_2(tmp_path):
    r = run("predict", "--model", str(tmp_path / "none.npz"), "--data", str(tmp_path / "none.csv"))
    assert r.returncode == 2
    assert "none.npz" in one_error_line(r)


# ---- version, help, schedules --------------------------------------------------------------------


def test_version_prints_the_package_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"fusednet {fn.__version__}"


def test_help_shows_every_default():
    r = run("train", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # argparse wraps lines
    for expected in ("(default: 64,32)", "(default: constant)", "(default: adam)", "(default: 30)",
                     "(default: 64)", "(default: 1.0)", "(default: the optimiser's: gd 0.1",
                     "(default: inverse-time 1.0, exponential 0.95)", "(default: the last column)"):
        assert expected in text, expected
    options = [w for w in r.stdout.split() if w.startswith("--") and w != "--help"]
    assert text.count("(default") >= len(set(options))
    top = run("--help")
    assert "predict" in top.stdout and "--version" in top.stdout


@pytest.mark.parametrize("schedule", ["inverse-time", "exponential", "inverse-sqrt"])
def test_decaying_schedule_without_rate_decays(schedule):
    from fusednet.cli import _schedule, build_parser

    args = build_parser().parse_args(["train", "--schedule", schedule])
    sched, _ = _schedule(args, 0.01)
    assert sched(0, 0) == 0.01
    assert sched(5, 0) < sched(1, 0) < 0.01


@pytest.mark.parametrize(
    "flags",
    [["--schedule", "exponential", "--decay-rate", "1"], ["--schedule", "inverse-time", "--decay-rate", "0"],
     ["--decay-rate", "0.5"]],
)
def test_schedule_that_would_not_decay_is_an_error(flags):
    r = run("train", *flags)
    assert r.returncode == 2
    assert "--decay-rate" in one_error_line(r)


def test_schedule_lr_decays_in_the_epoch_lines():
    r = run("train", "--epochs", "3", "--schedule", "exponential", "--lr", "0.01")
    assert r.returncode == 0, r.stderr
    lrs = [float(line.split("lr ")[1].split()[0]) for line in r.stderr.splitlines() if line.startswith("epoch")]
    assert lrs == pytest.approx([0.01, 0.0095, 0.009025])


# ---- labels -------------------------------------------------------------------------------------


def test_string_labels_are_encoded_in_sorted_order(tmp_path):
    X, ids = blobs()
    data, out = tmp_path / "iris.csv", tmp_path / "m.npz"
    write_csv(data, X, IRIS_NAMES[ids], header=["sl", "sw", "pl", "pw", "species"])
    r = run("train", "--data", str(data), "--epochs", "30", "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "3 classes" in r.stdout.splitlines()[0]
    model = fn.load(out)
    assert model.classes == ["setosa", "versicolor", "virginica"]
    preds = tmp_path / "p.csv"
    r = run("predict", "--model", str(out), "--data", str(data), "--out", str(preds))
    assert r.returncode == 0, r.stderr
    got = preds.read_text().split()
    assert set(got) <= set(IRIS_NAMES)
    assert np.mean(np.array(got) == IRIS_NAMES[ids]) > 0.9


def test_string_labels_without_header(tmp_path):
    X, ids = blobs(seed=1)
    data = tmp_path / "iris.csv"
    write_csv(data, X, IRIS_NAMES[ids])
    r = run("train", "--data", str(data), "--epochs", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "90 x 4, 3 classes" in r.stdout.splitlines()[0]


def test_labels_1_to_k_make_k_classes(tmp_path):
    X, ids = blobs(k=3)
    data, out = tmp_path / "d.csv", tmp_path / "m.npz"
    write_csv(data, X, ids + 1)
    r = run("train", "--data", str(data), "--epochs", "2", "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    model = fn.load(out)
    assert model.output_dim == 3
    assert model.classes == [1, 2, 3]


def test_label_in_first_column_hint_and_option(tmp_path):
    X, ids = blobs()
    data = tmp_path / "first.csv"
    write_csv(data, X, IRIS_NAMES[ids], label_first=True)
    r = run("train", "--data", str(data), "--epochs", "2", "--no-progress")
    assert r.returncode == 2
    line = one_error_line(r)
    assert "--label-column 0" in line and "first.csv" in line
    r = run("train", "--data", str(data), "--epochs", "2", "--no-progress", "--label-column", "0")
    assert r.returncode == 0, r.stderr


def test_numbers_that_are_not_labels_get_the_label_column_hint(tmp_path):
    X, ids = blobs()
    data = tmp_path / "first.csv"
    write_csv(data, X, ids, label_first=True)  # the last column is a continuous feature
    r = run("train", "--data", str(data), "--no-progress")
    assert r.returncode == 2
    line = one_error_line(r)
    assert "not class labels" in line and "--label-column" in line
    r = run("train", "--data", str(data), "--epochs", "2", "--no-progress", "--label-column", "0")
    assert r.returncode == 0, r.stderr


def test_label_column_on_non_text_data_is_an_error():
    r = run("train", "--label-column", "0")
    assert r.returncode == 2
    assert "--label-column" in one_error_line(r)


# ---- what is shown while training -------------------------------------------------------------


def test_first_line_says_what_is_trained():
    r = run("train", "--epochs", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    for words in ("digits", "1797 x 64", "10 classes", "64-64-32-10 relu/softmax", "adam", "lr 0.001",
                  f"backend {fn.get_backend()}"):
        assert words in first, (words, first)


def test_progress_is_one_line_per_epoch_when_stderr_is_not_a_terminal():
    r = run("train", "--epochs", "3")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("epoch")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("loss" in line and "dev_loss" in line for line in lines)


def test_progress_lines_thin_out_for_many_epochs():
    from fusednet._cli_train import MAX_LINES

    r = run("train", "--epochs", str(4 * MAX_LINES), "--layers", "8", "--batch-size", "full")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("epoch")]
    assert len(lines) <= MAX_LINES + 1
    assert lines[-1].split()[1] == f"{4 * MAX_LINES}/{4 * MAX_LINES}"


def test_progress_bar_stays_on_a_terminal():
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns
    try:
        p = subprocess.Popen([sys.executable, "-m", "fusednet", "train", "--epochs", "3"],
                             stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        out, _ = p.communicate(timeout=120)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    screen = b"".join(chunks).decode()
    assert p.returncode == 0, screen
    assert "\r" in screen  # a bar, redrawn
    last = screen.replace("\r\n", "\n").split("\r")[-1]
    assert "3/3" in last and last.endswith("\n")  # its final frame is left on screen


def test_compile_watch_reports_numba_compilation():
    numba = pytest.importorskip("numba")
    from fusednet._cli_train import CompileWatch

    said = []
    with CompileWatch(said.append) as watch:
        numba.njit(lambda x: x + 1)(1)  # a new function: never cached
        numba.njit(lambda x: x + 2)(1)
    assert said == [CompileWatch.MESSAGE]
    assert watch.count == 2 and watch.seconds > 0
    numba.njit(lambda x: x + 3)(1)  # no longer watched
    assert watch.count == 2


def test_cold_numba_cache_says_compiling_once_and_times_it(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))  # an empty cache: a fresh install
    args = [sys.executable, "-m", "fusednet", "--backend", "numba", "train", "--epochs", "1", "--layers", "4"]
    cold = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert cold.returncode == 0, cold.stderr
    from fusednet._cli_train import CompileWatch

    assert cold.stderr.count(CompileWatch.MESSAGE) == 1
    assert "numba compile:" in cold.stdout
    warm = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert warm.returncode == 0, warm.stderr
    assert CompileWatch.MESSAGE not in warm.stderr and "numba compile:" not in warm.stdout
