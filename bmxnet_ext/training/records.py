"""Packing an image folder into indexed RecordIO (what MXNet's ``im2rec`` tool does; the script
is not in the pip wheel), with MXNet's own :mod:`mxnet.recordio`.

``folder_to_recordio("imagenet/train", "rec/train")`` writes ``rec/train.rec`` (the records),
``rec/train.idx`` (their offsets, for ``ImageRecordIter``'s sharding and shuffling) and
``rec/train.classes`` (one class name per line; line ``i`` is label ``i``). Labels follow gluon's
``ImageFolderDataset``: sorted sub-folder names, so both pipelines label a folder identically.
"""
import os
import random
from concurrent.futures import ProcessPoolExecutor

import mxnet as mx

from ..utils.files import replacing

__all__ = ["IMAGE_EXTENSIONS", "list_image_folder", "recordio_files", "folder_to_recordio",
           "read_classes"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def list_image_folder(root):
    """``(items, classes)`` of an image folder ``root/<class>/<image>``: ``items`` is a list of
    ``(path, label)`` in gluon's ``ImageFolderDataset`` order, ``classes`` the sorted names."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    classes = sorted(name for name in os.listdir(root)
                     if os.path.isdir(os.path.join(root, name)))
    items = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        items += [(os.path.join(folder, file), label) for file in sorted(os.listdir(folder))
                  if os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS]
    if not items:
        raise ValueError(f"image folder {root!r} holds no images (expected "
                         f"{root}/<class>/<image>{{{','.join(IMAGE_EXTENSIONS)}}})")
    return items, classes


def _encode(job):
    """One record's bytes: the file as it is, or re-encoded with its shorter side resized."""
    index, path, label, resize, quality, encoding = job
    header = mx.recordio.IRHeader(0, float(label), index, 0)
    if resize is None:
        with open(path, "rb") as f:
            return mx.recordio.pack(header, f.read())
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path!r}")
    height, width = image.shape[:2]
    scale = resize / min(height, width)
    image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return mx.recordio.pack_img(header, image, quality=quality, img_fmt=encoding)


def recordio_files(prefix):
    """The files :func:`folder_to_recordio` writes for ``prefix``: ``.rec``, ``.idx``,
    ``.classes``."""
    return [f"{prefix}.rec", f"{prefix}.idx", f"{prefix}.classes"]


def folder_to_recordio(root, prefix, shuffle=True, seed=0, resize=None, quality=95,
                       encoding=".jpg", workers=1, overwrite=True):
    """Packs the image folder ``root`` into ``prefix.rec`` / ``prefix.idx`` / ``prefix.classes``.

    Parameters
    ----------
    root : str
        ``root/<class>/<image>`` (``.jpg``, ``.jpeg``, ``.png``).
    prefix : str
        Output path without extension; its directory is created.
    shuffle : bool
        Store records in an order shuffled by ``seed`` (sequential reads of a sharded file then
        see mixed classes); record ids stay the images' indices in folder order.
    resize : int or None
        Resize the shorter side to this and re-encode (ImageNet: 256 or larger, as ``im2rec
        --resize``); None stores each file's bytes unchanged.
    quality, encoding : int, str
        JPEG quality (or PNG compression) and format (``".jpg"`` / ``".png"``) of re-encoded
        images.
    workers : int
        Processes that read and encode in parallel.
    overwrite : bool
        False: raise FileExistsError, before reading anything, when one of the three files
        exists.

    Returns
    -------
    int
        The number of records written. The three files appear only once complete.
    """
    targets = recordio_files(prefix)
    existing = [path for path in targets if os.path.exists(path)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True to replace it")
    items, classes = list_image_folder(root)
    order = list(range(len(items)))
    if shuffle:
        random.Random(seed).shuffle(order)
    jobs = [(i, items[i][0], items[i][1], resize, quality, encoding) for i in order]
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with replacing(*targets) as temps:
        record = mx.recordio.MXIndexedRecordIO(temps[1], temps[0], "w")
        try:
            if workers > 1:
                with ProcessPoolExecutor(workers) as pool:
                    packed = pool.map(_encode, jobs, chunksize=64)
                    for job, data in zip(jobs, packed):
                        record.write_idx(job[0], data)
            else:
                for job in jobs:
                    record.write_idx(job[0], _encode(job))
        finally:
            record.close()
        with open(temps[2], "w") as f:
            f.write("".join(f"{name}\n" for name in classes))
    return len(items)


def read_classes(path_imgrec):
    """Class names stored next to a ``.rec`` file by :func:`folder_to_recordio`, or None."""
    path = os.path.splitext(path_imgrec)[0] + ".classes"
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]
