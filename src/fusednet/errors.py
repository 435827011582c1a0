"""Exceptions of fusednet."""

__all__ = ["TrainingDiverged"]


class TrainingDiverged(FloatingPointError):
    """A training step's cost, gradient or batch-norm statistics became NaN or inf, or its update would overflow.

    Raised before that step's update: every parameter, optimiser state and
    BatchNorm running statistic keeps its value from before the step.

    Attributes
    ----------
    epoch, step : int
        Where it happened (both counted from 0; ``step`` within the epoch).
    cost : float
        The batch cost of that step (may be finite when the gradient is not).
    what : str
        ``"cost"``, ``"gradient"``, ``"batch-norm statistics"`` or ``"update"``.
    history : fusednet.History or None
        The epochs completed before it.
    """

    def __init__(self, epoch, step, cost, what="cost", history=None):
        self.epoch = int(epoch)
        self.step = int(step)
        self.cost = float(cost)
        self.what = what
        self.history = history
        if what == "cost":
            detail = f"the cost is {self.cost}"
        elif what == "update":
            detail = f"the update would overflow the parameters' floating-point range (cost {self.cost})"
        else:
            detail = f"the {what} is not finite (cost {self.cost})"
        super().__init__(
            f"training diverged at epoch {self.epoch}, step {self.step}: {detail}; "
            f"the model keeps its parameters from before this step "
            f"(try a smaller learning rate, or check the data)"
        )

    def __reduce__(self):
        return (type(self), (self.epoch, self.step, self.cost, self.what, None))
