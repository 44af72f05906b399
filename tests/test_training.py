"""Data set, training-loop helpers: shapes, reproducibility, NaN guard, accuracy."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from bmxnet_ext.training.data import digits_arrays, digits_datasets
from bmxnet_ext.training.loop import (NonFiniteLossError, evaluate, evaluate_metrics, predict,
                                 train_epoch)


def test_digits_split_shapes_labels_and_normalization():
    x_train, y_train, x_test, y_test = digits_arrays(size=16, test_fraction=0.25, seed=3)
    assert x_train.shape[1:] == (1, 16, 16) and x_train.dtype == np.float32
    assert len(x_train) + len(x_test) == 1797
    assert len(x_test) == round(1797 * 0.25)
    assert set(np.unique(y_train)) == set(range(10))
    np.testing.assert_allclose(x_train.mean(), 0, atol=1e-4)
    np.testing.assert_allclose(x_train.std(), 1, atol=1e-4)


def test_digits_split_is_reproducible_and_disjoint():
    a = digits_arrays(size=8, seed=1)
    b = digits_arrays(size=8, seed=1)
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)
    train_rows = {row.tobytes() for row in a[0]}
    # the digits set holds a few exact duplicate scans; the split itself shares no index
    assert sum(row.tobytes() in train_rows for row in a[2]) < 10


@pytest.mark.parametrize("kwargs,message", [({"size": 4}, "size must be at least 8"),
                                            ({"test_fraction": 1.0}, "test_fraction")])
def test_digits_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        digits_arrays(**kwargs)


def _tiny_problem():
    rng = np.random.RandomState(0)
    x = rng.randn(64, 4).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    return gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=16)


def test_train_epoch_learns_and_evaluate_matches_numpy():
    mx.random.seed(0)
    loader = _tiny_problem()
    net = gluon.nn.Dense(2, in_units=4)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.05})
    first_loss, _ = train_epoch(net, trainer, loader, quiet=True)
    for _ in range(10):
        loss, _ = train_epoch(net, trainer, loader, quiet=True)
    assert loss < first_loss
    logits = predict(net, loader)
    labels = np.concatenate([label.asnumpy() for _, label in loader])
    assert evaluate(net, loader) == pytest.approx((logits.argmax(1) == labels).mean())


def test_nan_loss_stops_before_the_update():
    loader = _tiny_problem()
    net = gluon.nn.Dense(2, in_units=4)
    net.initialize()
    net.weight.set_data(mx.nd.full((2, 4), np.nan))
    before = net.bias.data().asnumpy().copy()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    with pytest.raises(NonFiniteLossError, match="training loss became nan"):
        train_epoch(net, trainer, loader, quiet=True)
    np.testing.assert_array_equal(net.bias.data().asnumpy(), before)


def test_digits_datasets_yield_float_labels_for_the_loss():
    train, test = digits_datasets(size=8)
    image, label = train[0]
    assert image.shape == (1, 8, 8) and isinstance(label, np.float32)


def test_a_batch_smaller_than_the_device_count_is_refused():
    net = gluon.nn.Dense(2, in_units=4)
    net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    loader = [(mx.nd.ones((1, 4)), mx.nd.zeros(1))]
    with pytest.raises(ValueError, match="batch of 1 cannot be split over 2 devices"):
        train_epoch(net, trainer, loader, ctx=[mx.cpu(0), mx.cpu(1)], quiet=True)


@pytest.mark.parametrize("k,expected", [(1, 0.5), (2, 1.0), (5, 1.0)])
def test_topk_accuracy_counts_labels_among_the_k_best(k, expected):
    net = gluon.nn.HybridLambda(lambda F, x: x)  # the input is the logits
    logits = mx.nd.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    loader = [(logits, mx.nd.array([2, 0]))]  # sample 0: label ranked 2nd; sample 1: 1st
    metrics = evaluate_metrics(net, loader, topk=(k,))
    assert metrics[f"top{k}"] == expected
