"""fusednet: a fast CPU trainer for fully-connected neural networks.

Implements the Deep Learning Specialization's courses 1-2 (activations,
initialisation, L2, dropout, input normalisation, gradient checking,
mini-batches, momentum, RMSProp, Adam, learning-rate decay, batch norm, softmax,
hyperparameter search) with compiled kernels behind a thin Python layer.
"""

from . import callbacks, data, datasets, kernels, layers, optim, schedules, tune
from ._version import __version__
from .diagnostics import diagnose
from .errors import TrainingDiverged
from .gradcheck import GradCheck, gradcheck
from .history import History
from .info import info
from .io import load_model as load
from .kernels import get_backend, get_num_threads, set_backend, set_num_threads
from .model import Sequential
from .population import Population
from .trainer import Trainer

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
    "Population",
    "Trainer",
    "History",
    "TrainingDiverged",
    "load",
    "gradcheck",
    "GradCheck",
]
