"""Small real image data that needs no download: scikit-learn's handwritten digits.

1797 grey 8x8 scans of the digits 0-9 (UCI), shipped inside the scikit-learn package. They are
upsampled to ``size`` x ``size`` and normalized, and split reproducibly into train and test sets.

The same split is also written out as an ImageNet-style image folder and as RecordIO
(:func:`digits_image_folder`, :func:`digits_recordio`), so that :func:`digits_data` feeds a
network through exactly the pipelines an ImageNet run uses.
"""
import os
import shutil

import numpy as np
from mxnet import gluon, nd

__all__ = ["digits_arrays", "digits_datasets", "DIGITS_CLASSES", "default_cache_dir",
           "digits_image_folder", "digits_recordio", "digits_augmentation", "digits_data"]

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


def default_cache_dir():
    """Where generated data sets are kept: ``$BMXNET_EXT_CACHE``, else
    ``$XDG_CACHE_HOME/bmxnet_ext`` (``~/.cache/bmxnet_ext``)."""
    if os.environ.get("BMXNET_EXT_CACHE"):
        return os.environ["BMXNET_EXT_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bmxnet_ext")


def digits_image_folder(root=None, store_size=32, test_fraction=0.2, seed=0):
    """The digits written as an ImageNet-style image folder; returns its directory.

    ``<dir>/train/<digit>/<index>.png`` and ``<dir>/val/<digit>/<index>.png``: RGB PNGs (the grey
    scans in all three channels, 0-16 scaled to 0-255) upsampled bilinearly to ``store_size``,
    split as :func:`digits_arrays` splits them. Written once into ``root`` (default: a
    sub-directory of :func:`default_cache_dir` named by the arguments), atomically: a folder that
    exists is complete.
    """
    import cv2
    from sklearn.datasets import load_digits

    if store_size < 8:
        raise ValueError(f"store_size must be at least 8 (the digits are 8x8), got {store_size}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    root = root or os.path.join(default_cache_dir(),
                                f"digits-{store_size}px-test{test_fraction:g}-seed{seed}")
    if os.path.isdir(root):
        return root
    digits = load_digits()
    order = np.random.RandomState(seed).permutation(len(digits.target))
    n_test = int(round(len(order) * test_fraction))
    splits = {"val": order[:n_test], "train": order[n_test:]}
    temp = f"{root}.tmp-{os.getpid()}"
    try:
        for split, indices in splits.items():
            for digit in DIGITS_CLASSES:
                os.makedirs(os.path.join(temp, split, digit))
            for index in indices:
                grey = (digits.images[index] * (255.0 / 16.0)).astype(np.float32)
                grey = cv2.resize(grey, (store_size, store_size), interpolation=cv2.INTER_LINEAR)
                image = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3,
                                  axis=2)
                path = os.path.join(temp, split, str(digits.target[index]), f"{index:04d}.png")
                if not cv2.imwrite(path, image):
                    raise OSError(f"could not write {path}")
        os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
        try:
            os.rename(temp, root)
        except OSError:
            if not os.path.isdir(root):  # else another process finished the same folder first
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return root


def digits_recordio(root=None, store_size=32, test_fraction=0.2, seed=0, folder=None):
    """The digits as RecordIO: ``train.rec/.idx/.classes`` and ``val.rec/.idx/.classes`` packed
    from :func:`digits_image_folder` (at ``folder``, default: the cache) by
    :func:`bmxnet_ext.training.records.folder_to_recordio`; returns ``root`` (default: the image
    folder's path suffixed ``-rec``)."""
    from .records import folder_to_recordio

    folder = digits_image_folder(folder, store_size, test_fraction, seed)
    root = root or folder + "-rec"
    for split in ("train", "val"):
        # .classes is written last: its presence means the split is complete
        if not os.path.isfile(os.path.join(root, f"{split}.classes")):
            folder_to_recordio(os.path.join(folder, split), os.path.join(root, split),
                               shuffle=split == "train", seed=seed)
    return root


def digits_augmentation(image_size=16):
    """The paper's augmentation scaled to the digits: crops of 50-100% of the image (a digit
    fills its frame), no flips (mirrored digits are other shapes), validation sees the whole
    image; ImageNet normalization, as for any RGB input."""
    from .pipelines import Augmentation
    return Augmentation(size=image_size, area=(0.5, 1.0), flip=False, resize=image_size)


def digits_data(kind="recordio", image_size=16, batch_size=64, seed=0, root=None,
                num_parts=1, part_index=0):
    """``(train, val)`` pipelines over the digits through the ImageNet code paths.

    ``kind`` is ``"recordio"`` (``ImageRecordIter``) or ``"folder"`` (gluon
    ``ImageFolderDataset`` + transforms); ``root`` is the data directory (default: the cache).
    Batches are ``(N, 3, image_size, image_size)`` float32 with float32 labels 0-9.
    """
    from .pipelines import open_image_data

    if kind not in ("recordio", "folder"):
        raise ValueError(f"kind must be 'recordio' or 'folder', got {kind!r}")
    path = digits_recordio(root) if kind == "recordio" else digits_image_folder(root)
    return open_image_data(path, batch_size, digits_augmentation(image_size), seed=seed,
                           num_parts=num_parts, part_index=part_index,
                           workers=1 if kind == "recordio" else 0)
