"""Data sets: the packaged UCI digits, the course's 2-D toy sets, and a file loader.

Every function returns ``(X, y)`` with examples in rows: ``X`` float32 (or
float64 on request) of shape ``(m, n_features)`` and ``y`` int64 class ids of
shape ``(m,)``.

Functions
---------
digits
    UCI optical handwritten digits, 1797 8x8 images, 10 classes (shipped).
planar_flower
    The course's two-class "flower" (C1W3 planar data).
moons, circles, spirals
    More 2-D toy classification sets, seeded.
load
    A user's ``.npz``, ``.csv`` or MNIST IDX file.
"""

from ._digits import digits
from ._files import load
from ._synthetic import circles, moons, planar_flower, spirals

__all__ = ["circles", "digits", "load", "moons", "planar_flower", "spirals"]
