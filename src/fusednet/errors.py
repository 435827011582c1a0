"""Exceptions of fusednet."""

__all__ = ["TrainingDiverged"]


class TrainingDiverged(FloatingPointError):
    """The cost (or the gradient) of a training step became NaN or inf.

    Raised before that step's update, so the model keeps the last finite
    parameters it had.

    Attributes
    ----------
    epoch, step : int
        Where it happened (both counted from 0; ``step`` within the epoch).
    cost : float
        The batch cost of that step (may be finite when the gradient is not).
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
        else:
            detail = f"the {what} is not finite (cost {self.cost})"
        super().__init__(
            f"training diverged at epoch {self.epoch}, step {self.step}: {detail}; "
            f"the model keeps its parameters from before this step "
            f"(try a smaller learning rate, or check the data)"
        )

    def __reduce__(self):
        return (type(self), (self.epoch, self.step, self.cost, self.what, None))
