"""Image data pipelines with the paper's augmentation: RecordIO files and image folders.

Both yield ``(data, label)`` batches: float32 ``(N, 3, size, size)`` normalized with the ImageNet
mean and standard deviation, float32 labels. Training: random resized crop (area 0.08-1, aspect
3/4-4/3) and horizontal flip; validation: resize the shorter side to ``size / 0.875`` (256 for
224), center crop. Every pipeline has ``set_epoch(epoch)``: the order and augmentation of an epoch
depend only on ``(seed, epoch)``, so a resumed run sees the data a run without interruption saw;
``num_parts`` / ``part_index`` give each distributed worker a disjoint shard.

Layouts :func:`open_image_data` understands (ImageNet's, or anything shaped like it)::

    DATA/train.rec, train.idx, val.rec, val.idx      (RecordIO, e.g. from training.records)
    DATA/train/<class>/<image>, DATA/val/<class>/... (image folders)
"""
import math
import os
from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon.data.vision import transforms

from ..utils.imagenet import (IMAGENET_MEAN, IMAGENET_STD, eval_resize, eval_transform,
                              normalize_steps)

__all__ = ["MEAN_RGB", "STD_RGB", "Augmentation", "train_transform", "val_transform",
           "ShardSampler", "ImageFolderData", "RecordData", "open_image_data", "BatchSizeError",
           "check_batch_size", "check_same_classes"]

MEAN_RGB, STD_RGB = IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Augmentation:
    """What the pipelines do to an image; the defaults are the paper's ImageNet setting.

    Parameters
    ----------
    size : int
        Height = width of the network input (224 for ImageNet; small for small data).
    area : (float, float)
        Range of the random crop's area as a fraction of the image (training).
    ratio : (float, float)
        Range of the random crop's aspect ratio, width / height (training).
    flip : bool
        Random horizontal flips (training).
    resize : int or None
        Validation resizes the shorter side to this before the center crop; None means
        ``round(size / 0.875)`` (256 for 224).
    mean, std : (float, float, float)
        Per-channel (RGB) mean and standard deviation on the 0-255 scale.
    """

    size: int = 224
    area: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip: bool = True
    resize: int = None
    mean: tuple = MEAN_RGB
    std: tuple = STD_RGB

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"Augmentation: size must be a positive int, got {self.size!r}")
        if not 0 < self.area[0] <= self.area[1] <= 1:
            raise ValueError(f"Augmentation: area must satisfy 0 < min <= max <= 1, got "
                             f"{self.area}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"Augmentation: ratio must satisfy 0 < min <= max, got {self.ratio}")
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"Augmentation: resize ({self.resize}) must be at least size "
                             f"({self.size})")

    @property
    def val_resize(self):
        """Shorter side of validation images before the center crop."""
        return self.resize if self.resize is not None else eval_resize(self.size)


def train_transform(aug=Augmentation()):
    """gluon transform of a training image, HWC uint8 RGB -> normalized CHW float32."""
    steps = [transforms.RandomResizedCrop(aug.size, scale=tuple(aug.area),
                                          ratio=tuple(aug.ratio))]
    if aug.flip:
        steps.append(transforms.RandomFlipLeftRight())
    return transforms.Compose(steps + normalize_steps(aug.mean, aug.std))


def val_transform(aug=Augmentation()):
    """gluon transform of a validation image: resize shorter side, center crop, normalize
    (:func:`bmxnet_ext.utils.imagenet.eval_transform`, which prediction uses too)."""
    return eval_transform(aug.size, aug.mean, aug.std, aug.val_resize)


class ShardSampler(gluon.data.Sampler):
    """Indices ``0 .. length-1``, shuffled per epoch by ``(seed, epoch)``, split into shards.

    Every shard has ``ceil(length / num_parts)`` indices (the permutation is padded by wrapping
    around), so workers of synchronous distributed training run the same number of steps.
    """

    def __init__(self, length, shuffle=True, seed=0, num_parts=1, part_index=0):
        if length < 1:
            raise ValueError(f"ShardSampler: length must be at least 1, got {length}")
        if not 0 <= part_index < num_parts:
            raise ValueError(f"ShardSampler: part_index must be in [0, num_parts={num_parts}), "
                             f"got {part_index}")
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.num_parts, self.part_index = num_parts, part_index
        self.epoch = 0

    def set_epoch(self, epoch):
        """Selects the permutation of ``epoch``."""
        self.epoch = epoch

    def __len__(self):
        return math.ceil(self.length / self.num_parts)

    def __iter__(self):
        order = np.arange(self.length)
        if self.shuffle:
            order = np.random.RandomState([self.seed, self.epoch]).permutation(self.length)
        padded = np.resize(order, len(self) * self.num_parts)
        return iter(padded[self.part_index::self.num_parts].tolist())


class BatchSizeError(ValueError):
    """A batch size that is not positive, or larger than a worker's training set."""


def check_batch_size(batch_size, num_samples, num_parts=1):
    """Raises :class:`BatchSizeError` unless ``1 <= batch_size <= ceil(num_samples /
    num_parts)`` (the training images of one of ``num_parts`` workers): a larger training batch
    would make epochs of zero steps. ``num_samples=None`` checks positivity only (validation
    keeps a short last batch)."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise BatchSizeError(f"batch size must be a positive integer, got {batch_size!r}")
    if num_samples is None:
        return
    per_part = math.ceil(num_samples / num_parts)
    if batch_size > per_part:
        where = "" if num_parts == 1 else f" of this worker ({num_samples} over {num_parts})"
        raise BatchSizeError(f"a batch of {batch_size} is larger than the {per_part} training "
                             f"images{where}; use a batch of at most {per_part}")


def check_same_classes(train_classes, val_classes):
    """Raises ValueError when the class names of the training and validation sets differ (a
    label would then mean one class in training and another in validation); None (unknown
    names) passes."""
    if train_classes is None or val_classes is None or list(train_classes) == list(val_classes):
        return
    train_only = sorted(set(train_classes) - set(val_classes))
    val_only = sorted(set(val_classes) - set(train_classes))
    detail = "; ".join(part for part in (
        f"only in train: {', '.join(train_only[:5])}" if train_only else "",
        f"only in val: {', '.join(val_only[:5])}" if val_only else "") if part) or \
        "the same names in another order"
    raise ValueError(f"train and val have different classes ({len(train_classes)} vs "
                     f"{len(val_classes)}; {detail}); both need the same class folders or "
                     ".classes files")


def _float_labels(data, label):
    return data, label.astype("float32")


class ImageFolderData:
    """Batches from an image folder (``root/<class>/<image>``), through gluon's
    ``ImageFolderDataset`` and a :class:`ShardSampler`.

    Parameters
    ----------
    root : str
        Folder with one sub-folder per class; classes are the sorted sub-folder names.
    batch_size : int
        Images per batch (per worker; split further across devices by the training loop).
    train : bool
        Training augmentation, shuffling and full batches only; else the validation transform,
        fixed order and every image exactly once (``num_parts`` must then be 1 per reader).
    aug : Augmentation
    seed, num_parts, part_index : int
        See :class:`ShardSampler`.
    num_workers : int
        DataLoader worker processes; 0 decodes in this process, which makes augmentation
        reproducible from the seeds the training loop sets per epoch.
    """

    def __init__(self, root, batch_size, train=True, aug=Augmentation(), seed=0, num_parts=1,
                 part_index=0, num_workers=0):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root!r} does not exist")
        dataset = gluon.data.vision.ImageFolderDataset(root, flag=1)
        if len(dataset) == 0:
            raise ValueError(f"image folder {root!r} holds no images (expected "
                             f"{root}/<class>/<image>.jpg|png)")
        self.classes = list(dataset.synsets)
        self.num_samples = len(dataset)
        check_batch_size(batch_size, self.num_samples if train else None, num_parts)
        transform = train_transform(aug) if train else val_transform(aug)
        self.sampler = ShardSampler(len(dataset), shuffle=train, seed=seed,
                                    num_parts=num_parts, part_index=part_index)
        self._loader = gluon.data.DataLoader(
            dataset.transform_first(transform), batch_size=batch_size, sampler=self.sampler,
            last_batch="discard" if train else "keep",
            num_workers=num_workers)

    def set_epoch(self, epoch):
        """Shuffles as in ``epoch`` (the training loop also seeds augmentation per epoch)."""
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for data, label in self._loader:
            yield _float_labels(data, label)


class RecordData:
    """Batches from an indexed RecordIO file (``.rec`` + ``.idx``) through MXNet's C++
    ``ImageRecordIter`` (multi-threaded decoding and augmentation).

    Arguments as :class:`ImageFolderData`, plus ``path_imgrec`` (the ``.rec`` file; the ``.idx``
    next to it), ``classes`` (optional names, for reports) and ``threads`` (decoding threads).
    A new iterator is made per epoch, seeded with ``(seed, epoch)`` for shuffling and
    augmentation. ``num_parts`` splits the file into byte ranges, so shards hold nearly, not
    exactly, equal numbers of images; the training loop stops every worker's epoch when the
    first runs out.
    """

    def __init__(self, path_imgrec, batch_size, train=True, aug=Augmentation(), seed=0,
                 num_parts=1, part_index=0, threads=4, classes=None):
        path_imgidx = os.path.splitext(path_imgrec)[0] + ".idx"
        for path in (path_imgrec, path_imgidx):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"RecordIO file {path!r} does not exist")
        if not 0 <= part_index < num_parts:
            raise ValueError(f"RecordData: part_index must be in [0, num_parts={num_parts}), "
                             f"got {part_index}")
        with open(path_imgidx) as index:
            self.num_samples = sum(1 for line in index if line.strip())
        if self.num_samples == 0:
            raise ValueError(f"RecordIO file {path_imgrec!r} holds no records")
        check_batch_size(batch_size, self.num_samples if train else None, num_parts)
        self.classes = classes
        self.batch_size, self.train, self.aug, self.seed = batch_size, train, aug, seed
        self.num_parts, self.part_index, self.threads = num_parts, part_index, threads
        self._paths = (path_imgrec, path_imgidx)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Shuffles and augments as in ``epoch``."""
        self.epoch = epoch

    def __len__(self):
        per_part = math.ceil(self.num_samples / self.num_parts)
        return per_part // self.batch_size if self.train else math.ceil(per_part /
                                                                         self.batch_size)

    def _iterator(self):
        aug = self.aug
        kwargs = dict(path_imgrec=self._paths[0], path_imgidx=self._paths[1],
                      data_shape=(3, aug.size, aug.size), batch_size=self.batch_size,
                      num_parts=self.num_parts, part_index=self.part_index,
                      preprocess_threads=self.threads, verbose=False,
                      mean_r=aug.mean[0], mean_g=aug.mean[1], mean_b=aug.mean[2],
                      std_r=aug.std[0], std_g=aug.std[1], std_b=aug.std[2])
        if self.train:
            seed = int(np.random.RandomState([self.seed, self.epoch]).randint(2 ** 31 - 1))
            kwargs.update(shuffle=True, seed=seed, seed_aug=seed,
                          random_resized_crop=True, min_random_area=aug.area[0],
                          max_random_area=aug.area[1], min_aspect_ratio=aug.ratio[0],
                          max_aspect_ratio=aug.ratio[1], rand_mirror=aug.flip)
        else:
            kwargs.update(shuffle=False, resize=aug.val_resize)
        # round_batch=False reports pad 0 for a padded last batch; round_batch=True reports it
        # correctly on an iterator's first pass, and each epoch makes a new iterator.
        return mx.io.ImageRecordIter(round_batch=True, **kwargs)

    def __iter__(self):
        iterator = self._iterator()
        for batch in iterator:
            data, label = batch.data[0], batch.label[0]
            keep = data.shape[0] - batch.pad
            if self.train and batch.pad:
                break  # training takes full batches only
            if batch.pad:
                data, label = data[:keep], label[:keep]
            yield data, label.astype("float32")


def open_image_data(path, batch_size, aug=Augmentation(), seed=0, num_parts=1, part_index=0,
                    workers=4):
    """``(train, val)`` pipelines for a data directory in one of the two layouts above.

    RecordIO is preferred when both are present. ``workers``: decoding threads of the RecordIO
    iterator, or DataLoader processes for image folders (0 for exact reproducibility).
    Validation is not sharded: every worker evaluates the whole validation set.

    Raises :class:`BatchSizeError` for a batch larger than a worker's training images, and
    ValueError when train and val hold different classes (names or count).
    """
    records = [os.path.join(path, f"{split}.rec") for split in ("train", "val")]
    folders = [os.path.join(path, split) for split in ("train", "val")]
    if all(os.path.isfile(r) for r in records):
        from .records import read_classes

        # without .classes files (e.g. MXNet's own im2rec) the names are unknown: not compared
        classes = [read_classes(record) for record in records]
        check_same_classes(*classes)
        return (RecordData(records[0], batch_size, True, aug, seed, num_parts, part_index,
                           threads=max(workers, 1), classes=classes[0]),
                RecordData(records[1], batch_size, False, aug, seed, threads=max(workers, 1),
                           classes=classes[1]))
    if all(os.path.isdir(f) for f in folders):
        train = ImageFolderData(folders[0], batch_size, True, aug, seed, num_parts, part_index,
                                num_workers=workers)
        val = ImageFolderData(folders[1], batch_size, False, aug, seed, num_workers=workers)
        check_same_classes(train.classes, val.classes)
        return train, val
    raise FileNotFoundError(
        f"{path!r} is neither a RecordIO data directory (train.rec, train.idx, val.rec, val.idx) "
        "nor an image-folder one (train/<class>/..., val/<class>/...)")
