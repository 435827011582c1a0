"""scikit-learn estimators: the estimator checks, the meta-estimators, and the MLP semantics."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

import joblib  # noqa: E402
from sklearn import neural_network  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fusednet import optim  # noqa: E402
from fusednet.layers import BatchNorm, Dropout  # noqa: E402
from fusednet.model import Sequential  # noqa: E402
from fusednet.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ESTIMATORS = [  # the defaults, and fusednet's own options in float64
    MLPClassifier(),
    MLPRegressor(),
    MLPClassifier(dtype="float64", batch_norm=True, keep_prob=0.9, solver="rmsprop", activation="leaky_relu"),
    MLPRegressor(dtype="float64", batch_norm=True, solver="momentum", learning_rate_init=0.01, activation="tanh"),
]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: est._expected_failed_checks())
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_only_float32_declares_an_expected_failure():
    assert list(MLPClassifier()._expected_failed_checks()) == ["check_methods_subset_invariance"]
    assert MLPRegressor(dtype="float64")._expected_failed_checks() == {}


def digits(n=600):
    from fusednet.datasets import digits as load

    X, y = load()
    return X[:n] / 16.0, y[:n]


def blobs(m=150, nf=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, nf)) * 3
    y = rng.integers(0, k, m)
    return centers[y] + rng.standard_normal((m, nf)), y


# ---- meta-estimators, persistence ---------------------------------------------------------------


def test_pipeline_clone_grid_search_cross_val():
    X, y = digits()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=20,
                                                         random_state=0))
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.9
    twin = clone(pipe)
    assert not hasattr(twin[-1], "model_") and twin.get_params()["mlpclassifier__max_iter"] == 20
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1.0], "mlpclassifier__keep_prob": [1.0, 0.8]}, cv=2)
    grid.fit(X, y)
    assert set(grid.best_params_) == {"mlpclassifier__alpha", "mlpclassifier__keep_prob"}
    assert grid.best_estimator_[-1].model_.l2 == grid.best_params_["mlpclassifier__alpha"]
    scores = cross_val_score(MLPRegressor(hidden_layer_sizes=(16,), max_iter=30, random_state=0), X, y * 1.0, cv=3)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))


def test_pickle_and_joblib_round_trip(tmp_path):
    X, y = digits(300)
    est = MLPClassifier(hidden_layer_sizes=(16,), batch_norm=True, keep_prob=0.8, max_iter=5, random_state=0)
    est.fit(X, y)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    joblib.dump(est, tmp_path / "est.joblib")
    back = joblib.load(tmp_path / "est.joblib")
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    back.partial_fit(X, y)  # and it trains on
    assert back.n_iter_ == 1


# ---- what a fit builds ---------------------------------------------------------------------------


def test_string_labels_and_the_fitted_attributes():
    X, y = digits(300)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]
    est = MLPClassifier(hidden_layer_sizes=(32, 16), learning_rate_init=0.01, max_iter=30, tol=0.0,
                        random_state=0).fit(X, names)
    assert est.classes_.tolist() == sorted(set(names.tolist()))
    assert set(est.predict(X).tolist()) == set(names.tolist())
    P = est.predict_proba(X)
    assert P.shape == (300, 10) and P.dtype == np.float64
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(est.classes_[P.argmax(1)], est.predict(X))
    assert isinstance(est.model_, Sequential) and est.model_.dtype == np.float32
    assert [type(layer).__name__ for layer in est.model_.layers] == ["Dense", "Dense", "Dense"]
    assert est.n_features_in_ == 64 and est.n_outputs_ == 10 and est.out_activation_ == "softmax"
    assert est.n_iter_ == 30 and len(est.loss_curve_) == 30 and est.loss_ == est.loss_curve_[-1]
    assert est.best_loss_ == min(est.loss_curve_) and est.validation_scores_ is None
    assert est.t_ == 30 * 300
    assert est.score(X, names) > 0.9


def test_binary_labels_use_one_sigmoid_unit():
    X, y = blobs(k=2)
    labels = np.where(y == 1, "yes", "no")
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(X, labels)
    assert est.out_activation_ == "logistic" and est.model_.output_dim == 1
    P = est.predict_proba(X)
    p = est.model_.forward(X.astype(np.float32))[:, 0]
    np.testing.assert_allclose(P, np.stack([1 - p, p], 1), rtol=1e-6)
    assert est.predict(X).tolist() == np.where(p > 0.5, "yes", "no").tolist()
    np.testing.assert_allclose(est.predict_log_proba(X), np.log(P))


def test_multilabel_indicator_targets():
    X, y = blobs(k=3)
    Y = np.stack([y == 0, y != 1, X[:, 0] > 0], 1).astype(int)
    est = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=100, random_state=0).fit(X, Y)
    assert est.classes_.tolist() == [0, 1, 2] and est.out_activation_ == "logistic"
    P = est.predict_proba(X)
    assert P.shape == (150, 3) and est.predict(X).tolist() == (P > 0.5).astype(int).tolist()
    assert np.mean(est.predict(X) == Y) > 0.9


def test_hidden_layers_dropout_and_batch_norm():
    X, y = blobs()
    est = MLPClassifier(hidden_layer_sizes=(8, 4), activation="tanh", batch_norm=True, keep_prob=0.5,
                        max_iter=2, random_state=0).fit(X, y)
    kinds = [(type(layer).__name__, getattr(layer, "activation", None)) for layer in est.model_.layers]
    assert kinds == [("Dense", None), ("BatchNorm", None), ("Activation", "tanh"), ("Dropout", None),
                     ("Dense", None), ("BatchNorm", None), ("Activation", "tanh"), ("Dropout", None),
                     ("Dense", "softmax")]
    assert all(layer.keep_prob == 0.5 for layer in est.model_.layers if isinstance(layer, Dropout))
    assert sum(isinstance(layer, BatchNorm) for layer in est.model_.layers) == 2
    empty = MLPRegressor(hidden_layer_sizes=(), max_iter=2).fit(X, y * 1.0)
    assert len(empty.model_.layers) == 1


def test_batch_norm_avoids_a_last_batch_of_one():
    X, y = blobs(m=201)  # batch_size "auto" = 200 would leave one example in the last batch
    est = MLPClassifier(hidden_layer_sizes=(4,), batch_norm=True, max_iter=2, random_state=0).fit(X, y)
    assert est.n_iter_ == 2


@pytest.mark.parametrize(
    "solver, cls, hyper",
    [
        ("adam", optim.Adam, {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-7}),
        ("rmsprop", optim.RMSProp, {"lr": 0.01, "beta": 0.99, "eps": 1e-7}),
        ("sgd", optim.Momentum, {"lr": 0.01, "beta": 0.5}),
        ("momentum", optim.Momentum, {"lr": 0.01, "beta": 0.5}),
        ("gd", optim.GD, {"lr": 0.01}),
    ],
)
def test_solvers(solver, cls, hyper):
    X, y = blobs()
    est = MLPClassifier(hidden_layer_sizes=(8,), solver=solver, learning_rate_init=0.01, beta_1=0.8, beta_2=0.99,
                        epsilon=1e-7, momentum=0.5, max_iter=20, random_state=0).fit(X, y)
    assert type(est._optimizer) is cls
    got = est._optimizer.hyperparameters()
    assert {k: got[k] for k in hyper} == pytest.approx(hyper)
    assert est.loss_curve_[-1] < est.loss_curve_[0]


def test_sgd_without_momentum_is_gradient_descent():
    est = MLPClassifier(solver="sgd", momentum=0.0, max_iter=1).fit(*blobs())
    assert type(est._optimizer) is optim.GD


def test_alpha_is_the_l2_of_the_course_and_of_scikit_learn():
    X, y = blobs(m=64)
    est = MLPRegressor(hidden_layer_sizes=(5,), alpha=0.3, batch_size=64, dtype="float64", max_iter=1,
                       shuffle=False, random_state=0)
    est.fit(X, y * 1.0)
    assert est.model_.l2 == 0.3
    # one epoch of batch GD: loss_ is the cost before the step; rebuild it with scikit-learn's formula
    init = Sequential.from_config(est.model_.get_config())  # the initial weights, from the same seed
    A = init.forward(X)[:, 0]
    W = [w for name, w in init.parameters() if name.endswith(".W")]
    sk = ((y - A) ** 2).mean() / 2 + 0.5 * 0.3 * sum((w**2).sum() for w in W) / 64
    assert est.loss_ == pytest.approx(sk, rel=1e-12)


def test_deterministic_given_random_state():
    X, y = blobs()

    def fit(rs):
        return MLPClassifier(hidden_layer_sizes=(8,), keep_prob=0.8, max_iter=5, random_state=rs).fit(X, y)

    np.testing.assert_array_equal(fit(3).predict_proba(X), fit(3).predict_proba(X))
    assert not np.array_equal(fit(3).predict_proba(X), fit(4).predict_proba(X))
    fit(None).predict(X)
    fit(np.random.RandomState(0)).predict(X)


def test_float64_training():
    X, y = blobs()
    est = MLPRegressor(hidden_layer_sizes=(8,), dtype="float64", max_iter=3).fit(X, y * 1.0)
    assert est.model_.dtype == np.float64 and est.predict(X).dtype == np.float64


def test_feature_names_from_a_dataframe():
    pd = pytest.importorskip("pandas")
    X, y = blobs()
    cols = ["a", "b", "c", "d"]
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(pd.DataFrame(X, columns=cols), y)
    assert est.feature_names_in_.tolist() == cols and est.n_features_in_ == 4
    with pytest.warns(UserWarning, match="feature names"):
        est.predict(X)
    with pytest.raises(ValueError, match="feature names"):
        est.predict(pd.DataFrame(X, columns=["a", "b", "c", "e"]))


# ---- stopping, early stopping, warm start, partial_fit -----------------------------------------------


@pytest.mark.parametrize("early_stopping", [False, True])
def test_stopping_rule_is_scikit_learn_s(early_stopping):
    X, y = digits(400)
    kw = dict(hidden_layer_sizes=(8,), tol=1e3, n_iter_no_change=3, early_stopping=early_stopping, random_state=0)
    ours = MLPClassifier(**kw).fit(X, y)
    theirs = neural_network.MLPClassifier(**kw).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ == 5  # the first epoch improves, then 4 > n_iter_no_change do not
    assert len(ours.loss_curve_) == 5


def test_tol_zero_runs_every_epoch_and_warns():
    X, y = blobs()
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        est = MLPClassifier(hidden_layer_sizes=(4,), tol=0.0, max_iter=7).fit(X, y)
    assert est.n_iter_ == 7


def test_early_stopping_keeps_the_best_epoch():
    X, y = digits(500)
    est = MLPClassifier(hidden_layer_sizes=(16,), early_stopping=True, validation_fraction=0.2,
                        n_iter_no_change=2, tol=0.0, max_iter=40, learning_rate_init=0.05, random_state=0).fit(X, y)
    assert len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert est.best_loss_ is None and est.t_ == est.n_iter_ * 400
    from sklearn.model_selection import train_test_split

    _, Xv, _, yv = train_test_split(X, y, random_state=est._seed, test_size=0.2, stratify=y)
    assert est.score(Xv, yv) == est.best_validation_score_


def test_warm_start_continues_from_the_weights():
    X, y = blobs()
    est = MLPClassifier(hidden_layer_sizes=(8,), warm_start=True, max_iter=3, tol=0.0, random_state=0).fit(X, y)
    model, first = est.model_, list(est.loss_curve_)
    est.fit(X, y)
    assert est.model_ is model and est.loss_curve_[:3] == first and len(est.loss_curve_) == 6
    assert est.n_iter_ == 3 and est.loss_curve_[3] < first[0]
    cold = est.set_params(warm_start=False).fit(X, y)
    assert cold.model_ is not model and len(cold.loss_curve_) == 3


def test_partial_fit():
    X, y = digits(400)
    labels = np.asarray([f"d{i}" for i in y])
    est = MLPClassifier(hidden_layer_sizes=(16,), random_state=0)
    with pytest.raises(ValueError, match="classes"):
        est.partial_fit(X, labels)
    est.partial_fit(X[:200], labels[:200], classes=np.unique(labels))
    opt = est._optimizer
    for _ in range(4):
        est.partial_fit(X[200:], labels[200:])
    assert est._optimizer is opt and opt.t == 5 * 1  # 200 rows = one batch of "auto" size
    assert est.n_iter_ == 1 and len(est.loss_curve_) == 5 and est.loss_curve_[-1] < est.loss_curve_[1]
    with pytest.raises(ValueError, match="classes"):
        est.partial_fit(X, np.full(400, "d10"))
    with pytest.raises(ValueError, match="classes"):
        est.partial_fit(X, labels, classes=["d0", "d1"])
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y * 1.0)
    reg = MLPRegressor(hidden_layer_sizes=(4,)).partial_fit(X, y * 1.0).partial_fit(X, y * 1.0)
    assert len(reg.loss_curve_) == 2


def test_each_partial_fit_shuffles_anew(monkeypatch):
    import fusednet.sklearn as mod

    seeds = []

    class Spy(mod.Trainer):
        def __init__(self, *args, **kw):
            seeds.append(kw["seed"])
            super().__init__(*args, **kw)

    monkeypatch.setattr(mod, "Trainer", Spy)
    X, y = blobs(m=40)
    fitted = []
    for _ in range(2):
        est = MLPClassifier(hidden_layer_sizes=(4,), batch_size=8, random_state=0)
        for _ in range(3):
            est.partial_fit(X, y, classes=[0, 1, 2])
        fitted.append(est.predict_proba(X))
    assert len(set(seeds[:3])) == 3 and seeds[3:] == seeds[:3]
    np.testing.assert_array_equal(*fitted)


# ---- refusals, output -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, exc",
    [
        ({"activation": "softplus"}, ValueError),
        ({"solver": "lbfgs"}, ValueError),
        ({"hidden_layer_sizes": (10, 0)}, ValueError),
        ({"hidden_layer_sizes": (10.5,)}, TypeError),
        ({"alpha": -1.0}, ValueError),
        ({"batch_size": 0}, ValueError),
        ({"batch_size": "big"}, TypeError),
        ({"learning_rate_init": 0.0}, ValueError),
        ({"max_iter": 0}, ValueError),
        ({"tol": -1.0}, ValueError),
        ({"validation_fraction": 1.0}, ValueError),
        ({"n_iter_no_change": 0}, ValueError),
        ({"beta_1": 1.0}, ValueError),
        ({"momentum": -0.1}, ValueError),
        ({"epsilon": 0.0}, ValueError),
        ({"keep_prob": 0.0}, ValueError),
        ({"keep_prob": 1.5}, ValueError),
        ({"shuffle": "yes"}, TypeError),
        ({"dtype": "float16"}, ValueError),
    ],
)
def test_bad_parameters_are_named_and_keep_the_old_fit(params, exc):
    X, y = blobs()
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
    before = est.predict_proba(X)
    est.set_params(**params)
    with pytest.raises(exc, match=list(params)[0]):
        est.fit(X, y)
    np.testing.assert_array_equal(est.predict_proba(X), before)


def test_unfitted_and_one_class():
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2 classes"):
        MLPClassifier().fit(np.zeros((4, 3)), ["a"] * 4)


def test_verbose_prints_every_epoch(capsys):
    MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, verbose=True, tol=0.0).fit(*blobs())
    out = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in out] == ["Iteration 1", "Iteration 2", "Iteration 3"]
    assert out[0].startswith("Iteration 1, loss = ")


def test_import_fusednet_does_not_import_sklearn():
    code = "import sys, fusednet; assert 'sklearn' not in sys.modules; import fusednet.sklearn; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
