"""The command line, run as a user runs it: a subprocess, exit codes, one-line errors."""

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
