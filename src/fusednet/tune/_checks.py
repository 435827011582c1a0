"""Argument checks shared by the search's modules.

Each raises ``TypeError`` for a value of the wrong type and ``ValueError`` for
one out of range, naming the argument, what it must be and what it got:
``"n_trials must be a positive int; got 0"``.
"""

import math
import numbers


def integer(name, value, wanted="an int"):
    """``value`` as an ``int``; a ``bool`` or a non-integer is a TypeError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {wanted}; got {type(value).__name__} {value!r}")
    return int(value)


def integer_at_least(name, value, minimum, wanted):
    """``value`` as an ``int >= minimum``; ``wanted`` says so in the message ("a positive int")."""
    integer(name, value, wanted)
    if value < minimum:
        raise ValueError(f"{name} must be {wanted}; got {value!r}")
    return int(value)


def finite(name, value):
    """``value`` as a finite ``float``; a ``bool`` or a non-real is a TypeError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return value


def seed(value):
    """A search's ``seed``: an ``int >= 0``."""
    integer("seed", value)
    if value < 0:
        raise ValueError(f"seed must be >= 0; got {value!r}")
    return int(value)


def keep(value):
    """Coarse to fine's ``keep``: a fraction in ``(0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1]; got {value!r}")
    return float(value)
