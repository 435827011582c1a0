"""Bias/variance diagnosis: the course's table, thresholds, advice and bad input."""

import dataclasses
import json
import math

import numpy as np
import pytest

from fusednet.diagnostics import Diagnosis, diagnose

COURSE_TABLE = [
    # train, dev, verdict  (C2W1 "Bias / Variance", Bayes error ~ 0)
    (0.01, 0.11, "high variance"),
    (0.15, 0.16, "high bias"),
    (0.15, 0.30, "high bias and high variance"),
    (0.005, 0.01, "low bias and low variance"),
]


@pytest.mark.parametrize(("train", "dev", "verdict"), COURSE_TABLE)
def test_course_table(train, dev, verdict):
    d = diagnose(train, dev)
    assert isinstance(d, Diagnosis)
    assert d.verdict == verdict
    assert d.bias == pytest.approx(train)
    assert d.variance == pytest.approx(dev - train)
    assert (d.train_error, d.dev_error, d.bayes_error) == (train, dev, 0.0)
    assert d.high_bias == ("high bias" in verdict)
    assert d.high_variance == ("high variance" in verdict)


@pytest.mark.parametrize(("train", "dev", "verdict"), COURSE_TABLE)
def test_keywords_match_positional(train, dev, verdict):
    d = diagnose(train_error=train, dev_error=dev, bayes_error=0.0, threshold=0.05)
    assert d == diagnose(train, dev)


def test_bayes_error_makes_high_train_error_acceptable():
    # 15% train error is fine when the best possible (e.g. human) error is 15%
    d = diagnose(0.15, 0.16, bayes_error=0.15)
    assert d.bias == pytest.approx(0.0)
    assert d.verdict == "low bias and low variance"


def test_bayes_above_train_gives_negative_bias_counted_low():
    d = diagnose(0.02, 0.03, bayes_error=0.10)
    assert d.bias == pytest.approx(-0.08)
    assert not d.high_bias
    assert d.verdict == "low bias and low variance"


def test_dev_better_than_train_gives_negative_variance_counted_low():
    d = diagnose(0.20, 0.10)
    assert d.variance == pytest.approx(-0.10)
    assert d.verdict == "high bias"


@pytest.mark.parametrize(
    ("train", "dev", "threshold", "high_bias", "high_variance"),
    [
        (0.05, 0.05, 0.05, False, False),  # bias exactly at the threshold: not high
        (0.10, 0.15, 0.05, True, False),  # 0.15 - 0.10 is 0.04999... or 0.0500...1 in floats: not high
        (0.0501, 0.0501, 0.05, True, False),
        (0.01, 0.0601, 0.05, False, True),
        (0.15, 0.16, 0.20, False, False),  # a looser threshold
        (0.03, 0.05, 0.01, True, True),  # a stricter one
        (0.0, 0.0, 0.0, False, False),
    ],
)
def test_high_means_strictly_above_threshold(train, dev, threshold, high_bias, high_variance):
    d = diagnose(train, dev, threshold=threshold)
    assert (d.high_bias, d.high_variance) == (high_bias, high_variance)
    assert d.threshold == threshold


@pytest.mark.parametrize(
    ("train", "dev", "must_have", "must_not_have"),
    [
        (0.15, 0.16, ["bigger network", "longer", "architecture"], ["more training data", "regularisation"]),
        (0.01, 0.11, ["more training data", "regularisation", "dropout", "L2"], ["bigger network"]),
        (0.15, 0.30, ["bigger network", "longer", "more training data", "regularisation"], ["Done"]),
        (0.005, 0.01, ["Done"], ["bigger network", "more training data"]),
    ],
)
def test_advice_is_the_basic_recipe(train, dev, must_have, must_not_have):
    advice = diagnose(train, dev).advice
    assert isinstance(advice, list) and advice
    assert all(isinstance(item, str) for item in advice)
    text = " ".join(advice)
    for phrase in must_have:
        assert phrase in text
    for phrase in must_not_have:
        assert phrase not in text


def test_both_high_gives_bias_advice_first():
    advice = diagnose(0.15, 0.30).advice
    first_variance = next(i for i, a in enumerate(advice) if "more training data" in a)
    first_bias = next(i for i, a in enumerate(advice) if "bigger network" in a)
    assert first_bias < first_variance


def test_repr_and_str():
    d = diagnose(0.15, 0.30)
    r = repr(d)
    assert r.startswith("Diagnosis(") and "'high bias and high variance'" in r
    s = str(d)
    assert "15.00%" in s and "30.00%" in s
    assert "verdict: high bias and high variance" in s
    for item in d.advice:
        assert item in s


def test_result_is_frozen_and_serialisable():
    d = diagnose(0.01, 0.11)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.verdict = "high bias"
    data = json.loads(json.dumps(d.to_dict()))
    assert data["verdict"] == "high variance"
    assert data["variance"] == pytest.approx(0.10)


def test_accepts_numpy_scalars():
    d = diagnose(np.float32(0.15), np.float64(0.16), bayes_error=np.float64(0.0))
    assert d.verdict == "high bias"
    assert type(d.bias) is float


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"train_error": math.nan, "dev_error": 0.1}, ValueError, "train_error"),
        ({"train_error": 0.1, "dev_error": -0.01}, ValueError, "dev_error"),
        ({"train_error": 0.1, "dev_error": 1.5}, ValueError, "dev_error"),
        ({"train_error": 0.1, "dev_error": 0.2, "bayes_error": math.inf}, ValueError, "bayes_error"),
        ({"train_error": 15, "dev_error": 0.16}, ValueError, "pass 0.15"),
        ({"train_error": "0.1", "dev_error": 0.2}, TypeError, "train_error"),
        ({"train_error": None, "dev_error": 0.2}, TypeError, "train_error"),
        ({"train_error": True, "dev_error": 0.2}, TypeError, "train_error"),
        ({"train_error": 0.1, "dev_error": [0.2]}, TypeError, "dev_error"),
        ({"train_error": 0.1, "dev_error": 0.2, "threshold": -0.1}, ValueError, "threshold"),
        ({"train_error": 0.1, "dev_error": 0.2, "threshold": 1.0}, ValueError, "threshold"),
        ({"train_error": 0.1, "dev_error": 0.2, "threshold": math.nan}, ValueError, "threshold"),
    ],
)
def test_bad_input(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        diagnose(**kwargs)
