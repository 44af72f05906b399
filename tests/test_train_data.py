"""Data pipelines read back what was written: labels, shapes, normalization, shards; the
folder-to-RecordIO tool; the digits as an image folder and RecordIO."""
import os
import shutil

import mxnet as mx
import numpy as np
import pytest

from bmxnet_ext.training import data, pipelines, records
from bmxnet_ext.training.pipelines import Augmentation, ImageFolderData, RecordData, ShardSampler
from train_helpers import CLASSES, colour, decode, write_image_folder

PER_CLASS = 8
SIZE = 12
# identity geometry: validation resizes 12 -> 12 and center-crops 12, so pixels pass unchanged
EXACT = Augmentation(size=SIZE, resize=SIZE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), PER_CLASS, SIZE)


@pytest.fixture(scope="module")
def recdir(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    for split in ("train", "val"):
        records.folder_to_recordio(os.path.join(folder, split), str(out / split),
                                   shuffle=split == "train", seed=3)
    return str(out)


def _make(kind, folder, recdir, train, aug=EXACT, **kwargs):
    if kind == "folder":
        return ImageFolderData(os.path.join(folder, "train" if train else "val"), 5, train,
                               aug, **kwargs)
    split = "train" if train else "val"
    return RecordData(os.path.join(recdir, f"{split}.rec"), 5, train, aug, threads=1, **kwargs)


def _read_all(pipeline):
    colours, labels, shapes = [], [], []
    for x, y in pipeline:
        colours.append(decode(x, pipelines.MEAN_RGB, pipelines.STD_RGB))
        labels.append(y.asnumpy())
        shapes.append(x.shape)
        assert x.dtype == np.float32 and y.dtype == np.float32
    return np.concatenate(colours), np.concatenate(labels), shapes


def _expected_colours():
    return {colour(label, index) for label in range(len(CLASSES)) for index in range(PER_CLASS)}


@pytest.mark.parametrize("kind", ["folder", "recordio"])
def test_validation_reads_back_every_image_exactly_normalized(kind, folder, recdir):
    pipe = _make(kind, folder, recdir, train=False)
    x, y = next(iter(pipe))  # validation keeps folder order: class 0, images 0-4
    mean = np.array(pipelines.MEAN_RGB, np.float32)[:, None, None]
    std = np.array(pipelines.STD_RGB, np.float32)[:, None, None]
    expected = np.stack([(np.array(colour(int(label), index), np.float32)[:, None, None]
                          - mean) / std * np.ones((3, SIZE, SIZE), np.float32)
                         for index, label in enumerate(y.asnumpy())])
    np.testing.assert_allclose(x.asnumpy(), expected, rtol=1e-5, atol=1e-5)
    colours, labels, shapes = _read_all(pipe)
    assert len(labels) == pipe.num_samples == len(CLASSES) * PER_CLASS
    assert {tuple(c) for c in np.rint(colours).astype(int)} == _expected_colours()
    np.testing.assert_array_equal(np.rint(colours[:, 0]), 40 * labels + 20)
    assert all(s[1:] == (3, SIZE, SIZE) for s in shapes)


@pytest.mark.parametrize("kind", ["folder", "recordio"])
@pytest.mark.parametrize("size", [8, 16])
def test_training_batches_keep_labels_with_their_images(kind, size, folder, recdir):
    aug = Augmentation(size=size)  # the paper's crop and flip, at a small size
    pipe = _make(kind, folder, recdir, train=True, aug=aug)
    colours, labels, shapes = _read_all(pipe)
    assert all(s == (5, 3, size, size) for s in shapes)  # full batches only
    assert len(shapes) == len(pipe) == (len(CLASSES) * PER_CLASS) // 5
    # flat images stay flat under any crop, resize or flip: the red channel names the class
    np.testing.assert_allclose(colours[:, 0], 40 * labels + 20, atol=0.5)
    assert set(labels.tolist()) <= set(range(len(CLASSES)))


@pytest.mark.parametrize("kind", ["folder", "recordio"])
def test_training_order_depends_only_on_seed_and_epoch(kind, folder, recdir):
    def order(seed, epoch):
        pipe = _make(kind, folder, recdir, train=True, seed=seed)
        pipe.set_epoch(epoch)
        return np.rint(_read_all(pipe)[0][:, 1]).tolist()

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)


@pytest.mark.parametrize("kind", ["folder", "recordio"])
def test_shards_are_disjoint_and_cover_the_data(kind, folder, recdir):
    parts = [_read_all(_make(kind, folder, recdir, train=False, num_parts=2, part_index=i))[0]
             for i in range(2)]
    seen = [{tuple(c) for c in np.rint(p).astype(int)} for p in parts]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == _expected_colours()


@pytest.mark.parametrize("length,parts", [(10, 3), (9, 3), (1, 2)])
def test_shard_sampler_parts_are_equal_and_cover_all(length, parts):
    shards = []
    for index in range(parts):
        sampler = ShardSampler(length, seed=5, num_parts=parts, part_index=index)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert {len(s) for s in shards} == {-(-length // parts)}
    assert set().union(*shards) == set(range(length))


def test_unsharded_samples_are_disjoint_when_length_divides():
    shards = [list(ShardSampler(12, seed=0, num_parts=3, part_index=i)) for i in range(3)]
    assert sorted(sum(shards, [])) == list(range(12))


@pytest.mark.parametrize("kwargs,message", [({"num_parts": 2, "part_index": 2}, "part_index"),
                                            ({"length": 0}, "length")])
def test_shard_sampler_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShardSampler(**{"length": 4, **kwargs})


def test_recordio_holds_the_files_with_folder_labels_and_classes(folder, recdir):
    items, classes = records.list_image_folder(os.path.join(folder, "val"))
    assert classes == list(CLASSES)
    assert records.read_classes(os.path.join(recdir, "val.rec")) == list(CLASSES)
    reader = mx.recordio.MXIndexedRecordIO(os.path.join(recdir, "val.idx"),
                                           os.path.join(recdir, "val.rec"), "r")
    assert sorted(reader.keys) == list(range(len(items)))
    for index, (path, label) in enumerate(items):
        header, payload = mx.recordio.unpack(reader.read_idx(index))
        assert (header.label, header.id) == (label, index)
        with open(path, "rb") as f:
            assert payload == f.read()


def test_gluon_image_folder_labels_agree_with_the_tool(folder):
    dataset = mx.gluon.data.vision.ImageFolderDataset(os.path.join(folder, "train"))
    items, classes = records.list_image_folder(os.path.join(folder, "train"))
    assert dataset.synsets == classes
    assert [(p, l) for p, l in dataset.items] == items


def test_recordio_resize_reencodes_shorter_side(folder, tmp_path):
    records.folder_to_recordio(os.path.join(folder, "val"), str(tmp_path / "small"), resize=6,
                               encoding=".png")
    reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / "small.idx"),
                                           str(tmp_path / "small.rec"), "r")
    header, image = mx.recordio.unpack_img(reader.read_idx(0))
    assert image.shape == (6, 6, 3)
    assert tuple(image[0, 0][::-1]) == colour(int(header.label), 0)


def test_open_image_data_prefers_recordio_and_explains_bad_layouts(folder, recdir, tmp_path):
    train, val = pipelines.open_image_data(recdir, 4, EXACT, workers=1)
    assert isinstance(train, RecordData) and train.classes == list(CLASSES)
    train, val = pipelines.open_image_data(folder, 4, EXACT, workers=0)
    assert isinstance(val, ImageFolderData) and val.classes == list(CLASSES)
    with pytest.raises(FileNotFoundError, match="neither a RecordIO"):
        pipelines.open_image_data(str(tmp_path), 4)


@pytest.mark.parametrize("kind", ["folder", "recordio"])
@pytest.mark.parametrize("batch,num_parts,message", [
    (0, 1, "batch size must be a positive integer, got 0"),
    (25, 1, "a batch of 25 is larger than the 24 training images; use a batch of at most 24"),
    (9, 3, "a batch of 9 is larger than the 8 training images of this worker"),
])
def test_a_batch_that_does_not_fit_the_training_set_is_refused(kind, batch, num_parts, message,
                                                               folder, recdir):
    path = folder if kind == "folder" else recdir
    with pytest.raises(pipelines.BatchSizeError, match=message):
        pipelines.open_image_data(path, batch, EXACT, num_parts=num_parts, workers=0)


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory):
    """Image folders whose val lacks a class, and RecordIO packed from them."""
    root = tmp_path_factory.mktemp("mismatched")
    write_image_folder(root / "folder", per_class=2, size=8)
    shutil.rmtree(root / "folder" / "val" / CLASSES[-1])
    for split in ("train", "val"):
        records.folder_to_recordio(str(root / "folder" / split), str(root / "rec" / split))
    return root


@pytest.mark.parametrize("kind", ["folder", "rec"])
def test_train_and_val_with_other_classes_are_refused(kind, mismatched):
    with pytest.raises(ValueError, match=r"train and val have different classes \(3 vs 2; "
                                         rf"only in train: {CLASSES[-1]}\)"):
        pipelines.open_image_data(str(mismatched / kind), 2, EXACT, workers=0)


@pytest.mark.parametrize("train,val,detail", [
    (["a", "b"], ["a", "c"], "only in train: b; only in val: c"),
    (["a", "b"], ["b", "a"], "the same names in another order"),
])
def test_check_same_classes_says_what_differs(train, val, detail):
    with pytest.raises(ValueError, match=detail):
        pipelines.check_same_classes(train, val)


def test_records_refuse_to_overwrite_when_asked(folder, tmp_path):
    prefix = str(tmp_path / "val")
    records.folder_to_recordio(os.path.join(folder, "val"), prefix)
    with pytest.raises(FileExistsError, match=r"val\.rec already exists"):
        records.folder_to_recordio(os.path.join(folder, "val"), prefix, overwrite=False)
    assert records.folder_to_recordio(os.path.join(folder, "val"), prefix) == 24


@pytest.mark.parametrize("kwargs,message", [({"size": 0}, "size"), ({"area": (0, 1)}, "area"),
                                            ({"ratio": (2, 1)}, "ratio"),
                                            ({"size": 32, "resize": 16}, "resize")])
def test_augmentation_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(**kwargs)


@pytest.mark.parametrize("size,resize", [(224, 256), (32, 37)])
def test_validation_resize_follows_the_224_256_ratio(size, resize):
    assert Augmentation(size=size).val_resize == resize


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache") / "digits")


def test_digits_image_folder_has_the_array_split(digits_root):
    root = data.digits_image_folder(digits_root, store_size=16)
    _, y_train, _, y_test = data.digits_arrays(size=8)
    for split, labels in (("train", y_train), ("val", y_test)):
        counts = [len(os.listdir(os.path.join(root, split, d))) for d in data.DIGITS_CLASSES]
        np.testing.assert_array_equal(counts, np.bincount(labels, minlength=10))
    assert data.digits_image_folder(digits_root, store_size=16) == root  # reused, not rewritten


@pytest.mark.parametrize("kind", ["folder", "recordio"])
def test_digits_flow_through_the_imagenet_pipelines(kind, digits_root, tmp_path):
    folder = data.digits_image_folder(digits_root, store_size=16)
    root = folder if kind == "folder" else data.digits_recordio(str(tmp_path / "rec"),
                                                               store_size=16, folder=folder)
    train, val = pipelines.open_image_data(root, 64, data.digits_augmentation(16), workers=0)
    _, y_train, _, y_test = data.digits_arrays(size=8)
    x, y = next(iter(train))
    assert x.shape == (64, 3, 16, 16)
    labels = np.concatenate([label.asnumpy() for _, label in val])
    np.testing.assert_array_equal(np.bincount(labels.astype(int), minlength=10),
                                  np.bincount(y_test, minlength=10))
    assert train.num_samples == len(y_train)


def test_digits_data_uses_the_cache_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("BMXNET_EXT_CACHE", str(tmp_path))
    train, val = data.digits_data("folder", image_size=8, batch_size=32)
    assert isinstance(train, ImageFolderData)
    assert os.listdir(tmp_path) and data.default_cache_dir() == str(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        data.digits_data("hdf5")
