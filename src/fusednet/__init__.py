"""fusednet: a fast CPU trainer for fully-connected neural networks.

Implements the Deep Learning Specialization's courses 1-2 (activations,
initialisation, L2, dropout, input normalisation, gradient checking,
mini-batches, momentum, RMSProp, Adam, learning-rate decay, batch norm, softmax,
hyperparameter search) with compiled kernels behind a thin Python layer.
"""

from ._version import __version__
from . import kernels
from .kernels import get_backend, set_backend, get_num_threads, set_num_threads
from . import data, datasets, optim, schedules, tune
from .diagnostics import diagnose
from . import layers, callbacks
from .model import Sequential
from .trainer import Trainer
from .history import History
from .errors import TrainingDiverged
from .io import load_model as load
from .gradcheck import GradCheck, gradcheck
from .info import info

__all__ = [
    "__version__",
    "kernels",
    "get_backend",
    "set_backend",
    "get_num_threads",
    "set_num_threads",
    "data",
    "datasets",
    "optim",
    "schedules",
    "tune",
    "diagnose",
    "info",
    "layers",
    "callbacks",
    "Sequential",
    "Trainer",
    "History",
    "TrainingDiverged",
    "load",
    "gradcheck",
    "GradCheck",
]
