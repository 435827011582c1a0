r"""scikit-learn estimators trained by fusednet: :class:`MLPClassifier`, :class:`MLPRegressor`.

Drop-in counterparts of :class:`sklearn.neural_network.MLPClassifier` and
:class:`~sklearn.neural_network.MLPRegressor` for the stochastic solvers: the
same parameter names where the meaning is the same, the same fitted attributes
(``classes_``, ``loss_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``,
``best_validation_score_``, ``n_iter_``, ``t_``, ``n_features_in_``,
``feature_names_in_``, ``n_outputs_``, ``out_activation_``), the same stopping
rule, plus fusednet's dropout, batch norm, leaky ReLU and the course's
optimisers.  ``model_`` is the fitted :class:`fusednet.Sequential` (save it,
export it with ``model_.to_onnx``, or read ``model_.parameters()``).

Training runs through :class:`fusednet.Trainer`: one call per ``fit`` with a
callback that applies scikit-learn's ``tol`` / ``n_iter_no_change`` rule after
every epoch, one epoch per ``partial_fit``.  scikit-learn is an optional extra
(``pip install "fusednet[sklearn]"``); ``import fusednet`` does not import it.
"""

import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fusednet.sklearn needs scikit-learn, an optional extra: pip install "fusednet[sklearn]"'
    ) from None
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d

try:
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # scikit-learn < 1.6
    def _validate_data(est, *args, **kwargs):
        return est._validate_data(*args, **kwargs)

from . import layers as _layers
from . import optim as _optim
from .callbacks import Callback
from .model import Sequential
from .trainer import Trainer

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "leaky_relu": "leaky_relu"}
_SOLVERS = ("adam", "sgd", "gd", "momentum", "rmsprop")

_PARAMS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default (100,)
        The width of each hidden layer; ``()`` gives no hidden layer.
    activation : {"relu", "tanh", "logistic", "identity", "leaky_relu"}, default "relu"
        Of the hidden layers ("leaky_relu": slope 0.01).  Weights start from
        He's init for relu/leaky_relu and the course's Xavier otherwise
        (scikit-learn uses a uniform Glorot init).
    solver : {"adam", "sgd", "gd", "momentum", "rmsprop"}, default "adam"
        "adam": :class:`fusednet.optim.Adam` ``(learning_rate_init, beta_1, beta_2,
        epsilon)``; "sgd" and "momentum": :class:`~fusednet.optim.Momentum`
        ``(learning_rate_init, beta=momentum)`` (plain gradient descent when
        ``momentum=0``); "gd": :class:`~fusednet.optim.GD`; "rmsprop":
        :class:`~fusednet.optim.RMSProp` ``(learning_rate_init, beta=beta_2,
        eps=epsilon)`` (its squared-gradient average is Adam's second moment).
        scikit-learn's "lbfgs" is not offered.
    alpha : float, default 0.0001
        L2 strength :math:`\\lambda`: the cost gets
        :math:`\\frac{\\lambda}{2m}\\sum_l \\|W^{[l]}\\|_F^2` with ``m`` the mini-batch
        size (the course's L2, and the same term as scikit-learn's ``alpha``);
        biases and batch-norm parameters are not regularised.
    batch_size : int or "auto", default "auto"
        "auto": ``min(200, n_samples)``; larger values are clipped to
        ``n_samples`` with a warning.
    learning_rate_init : float, default 0.001
        The (constant) learning rate.
    max_iter : int, default 200
        Epochs of ``fit``.
    shuffle : bool, default True
        Permute the rows every epoch.
    random_state : int, RandomState instance or None
        Seeds the initial weights, the shuffling, dropout and the early-stopping
        split; an int gives the same fit every time (for the same thread count).
    tol : float, default 1e-4
        As scikit-learn: an epoch *improves* when the training loss drops below
        ``best_loss_ - tol`` (with ``early_stopping``: when the validation score
        rises above ``best_validation_score_ + tol``); training stops once more
        than ``n_iter_no_change`` epochs in a row did not improve.
    verbose : bool, default False
        Print the loss (and validation score) of every epoch.
    warm_start : bool, default False
        ``fit`` continues from the previous weights instead of starting over
        (with a fresh optimiser, as scikit-learn).
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the rows (stratified for single-label
        classification), stop on the validation score (accuracy or R²) and
        keep the weights of the best epoch.
    validation_fraction : float, default 0.1
    n_iter_no_change : int, default 10
    beta_1, beta_2 : float, default 0.9, 0.999
        Adam's moment decay rates (``beta_2`` also RMSProp's).
    epsilon : float, default 1e-8
        Adam's / RMSProp's ``eps``.
    momentum : float, default 0.9
        The ``beta`` of the "sgd" / "momentum" solvers.
    keep_prob : float, default 1.0
        Inverted dropout after every hidden layer, keeping units with this
        probability (1: no dropout).
    batch_norm : bool, default False
        Batch norm in every hidden layer (Dense without bias, BatchNorm, then
        the activation).  If the last mini-batch would hold a single example
        the batch size is raised by one (BatchNorm needs two).
    dtype : {"float32", "float64"}, default "float32"
        The precision of training; predictions are float64 either way.

    .. warning::
       Two conventions differ from scikit-learn's.  Momentum is the course's
       :math:`v \\leftarrow \\beta v + (1-\\beta) g,\\; w \\leftarrow w - \\alpha v`,
       not scikit-learn's :math:`v \\leftarrow \\beta v - \\alpha g,\\; w \\leftarrow w + v`
       (with Nesterov's correction): the steady-state step is :math:`1-\\beta`
       times scikit-learn's, so ``learning_rate_init / (1 - momentum)`` matches
       its step size.  Adam adds ``epsilon`` to :math:`\\sqrt{\\hat{v}}` of the
       bias-corrected second moment (as PyTorch and optax), while scikit-learn
       adds it to :math:`\\sqrt{v}` before the correction, i.e. an effective
       :math:`\\epsilon / \\sqrt{1 - \\beta_2^t}`.  Also, scikit-learn's squared error
       averages over outputs as well as examples; fusednet's
       :math:`\\frac{1}{2m}\\sum (a - y)^2` sums over outputs (the same for one output).
"""


def _check(name, value, kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """``value`` as ``kind`` (int or float) in its interval, or an error naming the parameter."""
    ok_type = numbers.Integral if kind is int else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, ok_type):
        raise TypeError(f"{name} must be {'an int' if kind is int else 'a real number'}, got {value!r}")
    v = kind(value)
    if not np.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi)):
        left, right = "(" if lo_open else "[", ")" if hi_open or hi is None else "]"
        raise ValueError(f"{name} must be in {left}{lo}, {'inf' if hi is None else hi}{right}, got {value!r}")
    return v


class _Monitor(Callback):
    """After every epoch: the curves and scikit-learn's ``tol`` / ``n_iter_no_change`` rule."""

    def __init__(self, est, val, incremental):
        self.est, self.val, self.incremental = est, val, incremental

    def on_epoch_end(self, trainer, epoch, logs):
        est = self.est
        loss = float(logs["train_loss"])
        est.loss_ = loss
        est.loss_curve_.append(loss)
        est.n_iter_ += 1
        est.t_ += est._n_train
        est._epochs_done += 1
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        if self.val is not None:
            score = est._val_score(*self.val)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            worse = score < est.best_validation_score_ + est.tol
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_state = est.model_.state_dict()
        else:
            worse = loss > est.best_loss_ - est.tol
            if loss < est.best_loss_:
                est.best_loss_ = loss
        est._no_improvement_count = est._no_improvement_count + 1 if worse else 0
        if est._no_improvement_count > est.n_iter_no_change and not self.incremental:
            if est.verbose:
                what = "Validation score" if self.val is not None else "Training loss"
                print(f"{what} did not improve more than tol={est.tol:f} for "
                      f"{est.n_iter_no_change} consecutive epochs. Stopping.")
            est._stopped = True
            trainer.stop_training = True


class _BaseMLP(BaseEstimator):
    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, beta_1=0.9, beta_2=0.999, epsilon=1e-8, momentum=0.9, keep_prob=1.0,
                 batch_norm=False, dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.momentum = momentum
        self.keep_prob = keep_prob
        self.batch_norm = batch_norm
        self.dtype = dtype

    # ---- parameters -------------------------------------------------------------------

    def _check_params(self):
        """The hyperparameters, checked (errors name the parameter); nothing is changed."""
        h = self.hidden_layer_sizes
        h = [h] if isinstance(h, numbers.Integral) or not hasattr(h, "__iter__") else list(h)
        hidden = tuple(_check("hidden_layer_sizes[%d]" % i, v, int, 1) for i, v in enumerate(h))
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {list(_SOLVERS)}, got {self.solver!r}")
        _check("alpha", self.alpha, float, 0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check("batch_size", self.batch_size, int, 1)
        _check("learning_rate_init", self.learning_rate_init, float, 0, lo_open=True)
        _check("max_iter", self.max_iter, int, 1)
        _check("tol", self.tol, float, 0)
        _check("validation_fraction", self.validation_fraction, float, 0, 1, True, True)
        _check("n_iter_no_change", self.n_iter_no_change, int, 1)
        for name in ("beta_1", "beta_2", "momentum"):
            _check(name, getattr(self, name), float, 0, 1, hi_open=True)
        _check("epsilon", self.epsilon, float, 0, lo_open=True)
        _check("keep_prob", self.keep_prob, float, 0, 1, lo_open=True)
        for name in ("shuffle", "verbose", "warm_start", "early_stopping", "batch_norm"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        try:
            dt = np.dtype(self.dtype)
        except TypeError:
            dt = None
        if dt not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        return hidden, dt

    def _make_model(self, hidden, n_in, n_out, out_act, dt, seed):
        act = _ACTIVATIONS[self.activation]
        L = _layers
        layers = []
        for width in hidden:
            if self.batch_norm:
                layers += [L.Dense(width, use_bias=False), L.BatchNorm()]
                if act != "linear":
                    layers.append(L.Activation(act))
            else:
                layers.append(L.Dense(width, activation=act))
            if self.keep_prob < 1.0:
                layers.append(L.Dropout(self.keep_prob))
        layers.append(L.Dense(n_out, activation=out_act))
        return Sequential(layers, input_dim=n_in, l2=float(self.alpha), dtype=dt, seed=seed)

    def _make_optimizer(self):
        lr = float(self.learning_rate_init)
        if self.solver == "adam":
            return _optim.Adam(lr, beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon)
        if self.solver == "rmsprop":
            return _optim.RMSProp(lr, beta=self.beta_2, eps=self.epsilon)
        if self.solver == "gd" or (self.solver == "sgd" and self.momentum == 0):
            return _optim.GD(lr)
        return _optim.Momentum(lr, beta=self.momentum)

    def _batch_size(self, n):
        if self.batch_size == "auto":
            B = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` larger than the sample size. It is going to be clipped")
            B = min(int(self.batch_size), n)
        if self.batch_norm:
            if n < 2:
                raise ValueError(f"batch_norm=True needs at least 2 training samples, got {n} sample(s)")
            while n % B == 1:  # BatchNorm needs two examples in the last batch
                B += 1
        return B

    # ---- fitting ------------------------------------------------------------------------

    def fit(self, X, y):
        """Fit the network to ``X`` (n_samples, n_features) and ``y``; returns ``self``."""
        return self._fit(X, y, incremental=False)

    def _fit(self, X, y, incremental, classes=None):
        hidden, dt = self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "model_") or not (incremental or self.warm_start)
        if first and hasattr(self, "model_"):
            del self.model_  # a refit starts over: a refused one leaves no stale model behind
        X, y = _validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32), reset=first,
                              **self._y_kwargs())
        Y, n_out, out_act = self._encode(y, first, classes)  # sets classes_ on a first fit
        if not first and n_out != self.n_outputs_:
            raise ValueError(f"y has {n_out} outputs but the model was fitted with {self.n_outputs_}")
        X = np.ascontiguousarray(X, dtype=dt if first else self.model_.dtype)
        if first:
            rs = check_random_state(self.random_state)
            self._seed = int(rs.randint(np.iinfo(np.int32).max))
            self.model_ = self._make_model(hidden, X.shape[1], n_out, out_act, dt, self._seed)
            self.n_outputs_ = n_out
            self.out_activation_ = {"linear": "identity", "sigmoid": "logistic"}.get(out_act, out_act)
            self.n_layers_ = len(hidden) + 2
            self.t_ = 0
            self._epochs_done = 0
            self._optimizer = None
            self.loss_curve_ = []
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -np.inf if self.early_stopping else None
            self.best_loss_ = None if self.early_stopping else np.inf
            self._no_improvement_count = 0
        if not incremental:
            self._optimizer = None  # fit (warm or not) starts a fresh optimiser, as scikit-learn
            self._no_improvement_count = 0
        if self._optimizer is None:
            self._optimizer = self._make_optimizer()
        val = None
        if self.early_stopping:
            stratify = y if (hasattr(self, "classes_") and not self._multilabel) else None
            idx_tr, idx_val = train_test_split(np.arange(X.shape[0]), random_state=self._seed,
                                               test_size=self.validation_fraction, stratify=stratify)
            if idx_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            val = (X[idx_val], y[idx_val])
            X, Y = X[idx_tr], Y[idx_tr]
            if self.validation_scores_ is None:  # a warm start after a fit without early stopping
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
        self._n_train = X.shape[0]
        self.n_iter_ = 0
        self._stopped = False
        self._best_state = None
        seed = int(np.random.SeedSequence([self._seed, self._epochs_done]).generate_state(1)[0])
        trainer = Trainer(self.model_, optimizer=self._optimizer, batch_size=self._batch_size(X.shape[0]),
                          epochs=1 if incremental else int(self.max_iter), shuffle=bool(self.shuffle),
                          seed=seed, callbacks=[_Monitor(self, val, incremental)], progress=False)
        trainer.fit(X, Y)
        if self._best_state is not None:  # early stopping keeps the best epoch
            self.model_.load_state_dict(self._best_state)
        self._best_state = None
        if not incremental and not self._stopped and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          f"optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        return self

    def _forward(self, X):
        check_is_fitted(self, "model_")
        X = _validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        return self.model_.forward(np.ascontiguousarray(X, dtype=self.model_.dtype)).astype(np.float64)

    def __sklearn_is_fitted__(self):
        return hasattr(self, "model_")

    def _expected_failed_checks(self):
        """scikit-learn estimator checks this configuration fails, with the reason.

        For ``parametrize_with_checks(..., expected_failed_checks=...)`` (scikit-learn
        >= 1.6) and the ``_xfail_checks`` tag of older versions.
        """
        if np.dtype(self.dtype) != np.float32:
            return {}
        return {"check_methods_subset_invariance": (
            "float32 predictions of a row may differ by an ulp (about 6e-8 relative) between batch "
            "sizes, because BLAS picks a different sgemm kernel for a different number of rows; the "
            "check's tolerance is 1e-7.  dtype='float64' passes it.")}


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = """A multi-layer perceptron classifier trained by fusednet.

    Binary problems get one sigmoid output unit, several classes a softmax
    output, multi-label indicator targets one sigmoid unit per label; the loss is
    the matching cross-entropy.  ``classes_`` holds any labels scikit-learn
    accepts (ints, strings, ...).
    """ + _PARAMS_DOC + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    model_ : fusednet.Sequential
        The fitted network.
    loss_, best_loss_ : float
        The last epoch's training cost (L2 included) and the lowest
        (``best_loss_`` is None with ``early_stopping``).
    loss_curve_ : list of float
    validation_scores_ : list of float or None
        Accuracy on the held-out rows after each epoch (``early_stopping`` only).
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run by the last ``fit`` / ``partial_fit``.
    t_ : int
        Training samples seen, over all fits.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When ``X`` had string column names (a DataFrame).
    n_outputs_ : int
    out_activation_ : {"logistic", "softmax"}
    """

    def _y_kwargs(self):
        return {}

    def _encode(self, y, first, classes):
        check_classification_targets(y)
        if type_of_target(y) == "multilabel-indicator":
            if first:
                self.classes_ = np.arange(y.shape[1])
                self._multilabel = True
            elif not self._multilabel:
                raise ValueError("y is a multi-label indicator matrix but the model was fitted on labels")
            return np.asarray(y, dtype=np.float64), y.shape[1], "sigmoid"
        y = column_or_1d(y, warn=True)
        if first:
            labels = unique_labels(y if classes is None else np.asarray(classes))
            if labels.shape[0] < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                                 f"got 1 class: {labels[0]!r}")
            self.classes_, self._multilabel = labels, False
        elif self._multilabel:
            raise ValueError("y holds labels but the model was fitted on a multi-label indicator matrix")
        unseen = np.setdiff1d(unique_labels(y), self.classes_)
        if unseen.shape[0]:
            raise ValueError(f"y has classes not in classes_ {self.classes_.tolist()}: {unseen.tolist()}")
        ids = np.searchsorted(self.classes_, y)
        if self.classes_.shape[0] == 2:
            return ids.astype(np.float64), 1, "sigmoid"
        return ids, self.classes_.shape[0], "softmax"

    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``; the first call needs ``classes`` (all the labels)."""
        if not hasattr(self, "model_"):
            if classes is None and type_of_target(y) != "multilabel-indicator":
                raise ValueError("classes must be passed on the first call to partial_fit.")
        elif classes is not None and not np.array_equal(unique_labels(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={classes!r} is not the same as on the first call to partial_fit: "
                             f"{self.classes_.tolist()}")
        return self._fit(X, y, incremental=True, classes=classes)

    def _val_score(self, X, y):
        return accuracy_score(y, self._labels(self.model_.forward(X)))

    def _labels(self, A):
        if self._multilabel:
            return (A > 0.5).astype(np.int64)
        if A.shape[1] == 1:
            return self.classes_[(A[:, 0] > 0.5).astype(np.intp)]
        return self.classes_[np.argmax(A, axis=1)]

    def predict(self, X):
        """Class labels ``(n_samples,)`` (multi-label: 0/1 of shape (n_samples, n_labels))."""
        return self._labels(self._forward(X))

    def predict_proba(self, X):
        """Probabilities ``(n_samples, n_classes)`` in the order of ``classes_``, float64."""
        A = self._forward(X)
        if A.shape[1] == 1 and not self._multilabel:
            return np.hstack([1.0 - A, A])
        return A

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multilabel": True, "_xfail_checks": self._expected_failed_checks()}


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = """A multi-layer perceptron regressor trained by fusednet.

    A linear output of ``n_outputs`` units with the squared error
    :math:`\\frac{1}{2m}\\sum (a - y)^2`; targets are not scaled.
    """ + _PARAMS_DOC + """
    Attributes
    ----------
    model_ : fusednet.Sequential
        The fitted network.
    loss_, best_loss_, loss_curve_, validation_scores_, best_validation_score_,
    n_iter_, t_, n_features_in_, feature_names_in_, n_outputs_
        As :class:`MLPClassifier` (validation scores are R²).
    out_activation_ : "identity"
    """

    def _y_kwargs(self):
        return {"y_numeric": True}

    def _encode(self, y, first, classes):
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return y, 1 if y.ndim == 1 else y.shape[1], "linear"

    def partial_fit(self, X, y):
        """One epoch over ``(X, y)``."""
        return self._fit(X, y, incremental=True)

    def _val_score(self, X, y):
        A = self.model_.forward(X)
        return r2_score(y, A[:, 0] if A.shape[1] == 1 else A)

    def predict(self, X):
        """Predicted values, float64: ``(n_samples,)``, or ``(n_samples, n_outputs)``."""
        A = self._forward(X)
        return A[:, 0] if A.shape[1] == 1 else A

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True, "_xfail_checks": self._expected_failed_checks()}
