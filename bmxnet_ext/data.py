"""Small real image data that needs no download: scikit-learn's handwritten digits.

1797 grey 8x8 scans of the digits 0-9 (UCI), shipped inside the scikit-learn package. They are
upsampled to ``size`` x ``size`` and normalized, and split reproducibly into train and test sets.
"""
import numpy as np
from mxnet import gluon, nd

__all__ = ["digits_arrays", "digits_datasets", "DIGITS_CLASSES"]

DIGITS_CLASSES = [str(d) for d in range(10)]


def digits_arrays(size=16, test_fraction=0.2, seed=0):
    """Returns ``(x_train, y_train, x_test, y_test)``: float32 NCHW (1 channel) and int labels.

    Images are upsampled bilinearly from 8x8 to ``size`` x ``size`` and normalized with the
    training set's mean and standard deviation.
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"size must be at least 8 (the digits are 8x8), got {size}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = nd.array(digits.images[:, None].astype(np.float32))
    if size != 8:
        images = nd.contrib.BilinearResize2D(images, height=size, width=size)
    images = images.asnumpy()
    labels = digits.target.astype(np.int64)
    order = np.random.RandomState(seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    return images[train], labels[train], images[test], labels[test]


def digits_datasets(size=16, test_fraction=0.2, seed=0):
    """The same split as :func:`digits_arrays`, as two ``gluon.data.ArrayDataset``."""
    x_train, y_train, x_test, y_test = digits_arrays(size, test_fraction, seed)
    return (gluon.data.ArrayDataset(x_train, y_train.astype(np.float32)),
            gluon.data.ArrayDataset(x_test, y_test.astype(np.float32)))
