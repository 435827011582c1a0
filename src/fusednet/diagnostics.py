r"""Bias/variance diagnosis and the course's "basic recipe" (C2W1).

Compare the training error with the Bayes (optimal, e.g. human-level) error to
see how far the model is from fitting the training set (avoidable bias), and
the dev error with the training error to see how badly it generalises
(variance).  Each gap that is large calls for its own remedies: a bigger network
or longer training for bias, more data or regularisation for variance.

With Bayes error 0 and the default threshold of 5 points, the course's table:

=============  ===========  ============================
train error    dev error    verdict
=============  ===========  ============================
1%             11%          high variance
15%            16%          high bias
15%            30%          high bias and high variance
0.5%           1%           low bias and low variance
=============  ===========  ============================
"""

from dataclasses import dataclass, field

from ._validation import check_real

__all__ = ["Diagnosis", "diagnose"]

#: differences within this of the threshold count as equal to it (not "high")
_TOLERANCE = 1e-12

HIGH_BIAS = "high bias"
HIGH_VARIANCE = "high variance"
BOTH = "high bias and high variance"
NEITHER = "low bias and low variance"

_BIAS_ADVICE = (
    "High bias (the training set is not fit well): try a bigger network, "
    "with more hidden units or more layers.",
    "Train longer (more epochs), or use a better optimisation algorithm "
    "(momentum, RMSProp, Adam) and tune its learning rate.",
    "Try another neural network architecture (hyperparameter search).",
)
_VARIANCE_ADVICE = (
    "High variance (the model does not generalise to the dev set): get more "
    "training data (or augment it).",
    "Add regularisation: L2 weight decay (l2 > 0) or dropout (keep_prob < 1).",
    "Try another neural network architecture (hyperparameter search).",
)
_DONE_ADVICE = (
    "Done: low bias and low variance. Confirm the result once on the test set.",
)


@dataclass(frozen=True, repr=False)
class Diagnosis:
    r"""Result of :func:`diagnose`.

    Attributes
    ----------
    train_error, dev_error, bayes_error : float
        The errors given, as fractions in ``[0, 1]``.
    threshold : float
        A gap strictly above it is "high".
    bias : float
        Avoidable bias, ``train_error - bayes_error``; negative when the
        training error beats the Bayes estimate (then the bias is low).
    variance : float
        ``dev_error - train_error``; negative when the dev set does better than
        the training set (then the variance is low).
    high_bias, high_variance : bool
        ``bias > threshold`` and ``variance > threshold``.
    verdict : str
        ``"high bias"``, ``"high variance"``, ``"high bias and high variance"`` or
        ``"low bias and low variance"``.
    advice : list of str
        The course's basic recipe for the verdict: bias remedies first (fix the
        fit on the training set before the generalisation), then variance
        remedies; "done" when neither gap is high.
    """

    train_error: float
    dev_error: float
    bayes_error: float
    threshold: float
    bias: float
    variance: float
    high_bias: bool
    high_variance: bool
    verdict: str
    advice: list = field(default_factory=list)

    def __repr__(self):
        return (
            f"Diagnosis(train_error={self.train_error!r}, dev_error={self.dev_error!r}, "
            f"bayes_error={self.bayes_error!r}, bias={self.bias:.4g}, "
            f"variance={self.variance:.4g}, verdict={self.verdict!r})"
        )

    def __str__(self):
        def pct(value):
            return f"{100.0 * value:.2f}%"

        lines = [
            f"train error {pct(self.train_error)}, dev error {pct(self.dev_error)}, "
            f"Bayes error {pct(self.bayes_error)}",
            f"avoidable bias {pct(self.bias)} ({'high' if self.high_bias else 'low'}), "
            f"variance {pct(self.variance)} ({'high' if self.high_variance else 'low'}); "
            f"high means above {pct(self.threshold)}",
            f"verdict: {self.verdict}",
        ]
        lines += [f"  - {item}" for item in self.advice]
        return "\n".join(lines)

    def to_dict(self):
        """The diagnosis as plain data (JSON-serialisable).

        Returns
        -------
        dict
        """
        return {
            "train_error": self.train_error,
            "dev_error": self.dev_error,
            "bayes_error": self.bayes_error,
            "threshold": self.threshold,
            "bias": self.bias,
            "variance": self.variance,
            "high_bias": self.high_bias,
            "high_variance": self.high_variance,
            "verdict": self.verdict,
            "advice": list(self.advice),
        }


def diagnose(train_error, dev_error, bayes_error=0.0, threshold=0.05):
    r"""Diagnose bias and variance from training and dev errors.

    .. math::

        \text{bias} = E_\text{train} - E_\text{Bayes}, \qquad
        \text{variance} = E_\text{dev} - E_\text{train},

    each "high" when strictly above ``threshold`` (gaps equal to it within
    1e-12, e.g. ``0.15 - 0.10``, are not high).

    Parameters
    ----------
    train_error : float
        Error on the training set, a fraction in ``[0, 1]`` (``0.15`` for 15%).
    dev_error : float
        Error on the dev set, a fraction in ``[0, 1]``.
    bayes_error : float, default 0.0
        Estimate of the optimal (Bayes) error, e.g. human-level error, in
        ``[0, 1]``.  It need not be below ``train_error``: a negative bias then
        just counts as low.
    threshold : float, default 0.05
        Gap above which bias or variance is "high", in ``[0, 1)``.

    Returns
    -------
    Diagnosis
        With ``bias``, ``variance``, ``verdict`` and ``advice``.

    Raises
    ------
    TypeError
        An argument is not a real number.
    ValueError
        An argument is NaN or outside its interval (for instance 15 instead of 0.15).

    Examples
    --------
    >>> diagnose(0.01, 0.11).verdict
    'high variance'
    >>> diagnose(train_error=0.15, dev_error=0.16).verdict
    'high bias'
    >>> diagnose(0.15, 0.30).verdict
    'high bias and high variance'
    >>> diagnose(0.005, 0.01).verdict
    'low bias and low variance'
    >>> diagnose(0.15, 0.16, bayes_error=0.15).verdict   # the task is hard for humans too
    'low bias and low variance'
    """
    values = {}
    for name, value in (
        ("train_error", train_error),
        ("dev_error", dev_error),
        ("bayes_error", bayes_error),
    ):
        try:
            values[name] = check_real(name, value, 0.0, 1.0)
        except ValueError:
            hint = ""
            if isinstance(value, (int, float)) and 1.0 < value <= 100.0:
                hint = f" (a fraction: for {value}% pass {value / 100.0})"
            raise ValueError(
                f"{name} must be an error rate as a fraction in [0, 1], got {value!r}{hint}"
            ) from None
    threshold = check_real("threshold", threshold, 0.0, 1.0, high_open=True)
    train, dev, bayes = values["train_error"], values["dev_error"], values["bayes_error"]
    bias = train - bayes
    variance = dev - train
    high_bias = bias > threshold + _TOLERANCE
    high_variance = variance > threshold + _TOLERANCE
    if high_bias and high_variance:
        verdict, advice = BOTH, _BIAS_ADVICE + _VARIANCE_ADVICE[:2]
    elif high_bias:
        verdict, advice = HIGH_BIAS, _BIAS_ADVICE
    elif high_variance:
        verdict, advice = HIGH_VARIANCE, _VARIANCE_ADVICE
    else:
        verdict, advice = NEITHER, _DONE_ADVICE
    return Diagnosis(
        train_error=train,
        dev_error=dev,
        bayes_error=bayes,
        threshold=threshold,
        bias=bias,
        variance=variance,
        high_bias=high_bias,
        high_variance=high_variance,
        verdict=verdict,
        advice=list(advice),
    )
