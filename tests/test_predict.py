"""bmxnet_ext.Predictor and ``bmxnet-ext predict``: preprocessing from the model card, the
same numbers as a direct forward pass, batching, threads, damaged and unreadable files."""
import json
import re
import shutil
import warnings

import mxnet as mx
import numpy as np
import pytest
from conftest import CLASS_NAMES
from PIL import Image
from thread_helpers import run_in_threads

from bmxnet_ext import Predictor, load_xnor
from bmxnet_ext.apps.cli import main
from bmxnet_ext.inference.model_card import ModelFileError, read_model_card
from bmxnet_ext.inference.predictor import DamagedImageWarning, ImageReadError
from bmxnet_ext.utils.imagenet import eval_transform

# (packed, channels): the packed and the float export of the RGB MeliusNet, a packed grayscale one
EXPORTS = [(True, 3), (False, 3), (True, 1)]
SIZES = [(16, 16), (20, 30), (40, 18), (17, 64), (33, 33)]


def _images(channels, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, size=(h, w, channels)).astype(np.uint8) for h, w in SIZES]


def _save(image, path, format=None):
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path, format=format)
    return str(path)


def _png_files(tmp_path, images):
    return [_save(image, tmp_path / f"{i}.png") for i, image in enumerate(images)]


def _reference_probabilities(prefix, images):
    """softmax(net(eval_transform(image))) with the card's preprocessing, in numpy."""
    card = read_model_card(prefix)
    transform = eval_transform(card["input_size"], card["mean"], card["std"])
    batch = mx.nd.stack(*[transform(mx.nd.array(image, dtype=np.uint8)) for image in images])
    logits = load_xnor(prefix)(batch).asnumpy().astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _expected_top(probs, topk):
    return [[(CLASS_NAMES[i], p[i]) for i in np.argsort(-p)[:topk]] for p in probs]


def _check_equal(predictions, expected):
    assert [[name for name, _ in p.top] for p in predictions] == \
        [[name for name, _ in top] for top in expected]
    np.testing.assert_allclose([[prob for _, prob in p.top] for p in predictions],
                               [[prob for _, prob in top] for top in expected],
                               rtol=1e-5, atol=1e-6)


# --- the library -----------------------------------------------------------------------------

@pytest.mark.parametrize("packed,channels", EXPORTS)
def test_files_give_what_a_direct_forward_gives(exported_model, tmp_path, packed, channels):
    prefix = exported_model(packed=packed, channels=channels)
    images = _images(channels)
    predictions = Predictor(prefix).predict_files(_png_files(tmp_path, images), topk=2)
    _check_equal(predictions, _expected_top(_reference_probabilities(prefix, images), 2))
    assert [p.path for p in predictions] == _png_files(tmp_path, images)
    assert all(p.error is None and p.warning is None for p in predictions)


@pytest.mark.parametrize("packed,channels", EXPORTS)
def test_arrays_give_what_a_direct_forward_gives(exported_model, packed, channels):
    prefix = exported_model(packed=packed, channels=channels)
    images = _images(channels, seed=1)
    predictions = Predictor(prefix).predict_arrays(images, topk=3)
    _check_equal(predictions, _expected_top(_reference_probabilities(prefix, images), 3))


def test_grayscale_images_may_be_two_dimensional(exported_model):
    predictor = Predictor(exported_model(channels=1))
    images = _images(1, seed=2)
    assert predictor.predict_arrays([image[:, :, 0] for image in images]) == \
        predictor.predict_arrays(images)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_batch_size_does_not_change_the_results(exported_model, tmp_path, batch_size):
    paths = _png_files(tmp_path, _images(3, seed=3))
    everything_at_once = Predictor(exported_model(), batch_size=len(paths))
    expected = everything_at_once.predict_files(paths, topk=3)
    predictions = Predictor(exported_model(), batch_size=batch_size).predict_files(paths, topk=3)
    # oneDNN's float layers may round differently for other batch shapes: probabilities agree
    # to float precision, not to the bit
    _check_equal(predictions, [p.top for p in expected])
    assert [p.path for p in predictions] == paths


def test_threads_get_the_serial_results(exported_model, tmp_path):
    predictor = Predictor(exported_model(), batch_size=2)
    paths = _png_files(tmp_path, _images(3, seed=4))
    arrays = _images(3, seed=5)
    serial = (predictor.predict_files(paths, topk=3), predictor.predict_arrays(arrays, topk=3))

    def work(i):
        return (predictor.predict_files(paths, topk=3), predictor.predict_arrays(arrays, topk=3))

    assert run_in_threads(work, 4) == [serial] * 4


def test_topk_beyond_the_classes_gives_all_of_them_summing_to_one(exported_model):
    (prediction,) = Predictor(exported_model()).predict_arrays(_images(3)[:1], topk=10)
    assert sorted(name for name, _ in prediction.top) == sorted(CLASS_NAMES)
    assert sum(prob for _, prob in prediction.top) == pytest.approx(1.0)
    assert [CLASS_NAMES[i] for i in prediction.indices] == [name for name, _ in prediction.top]


def test_without_class_names_the_indices_name_the_classes(exported_model):
    predictor = Predictor(exported_model(class_names=None))
    (prediction,) = predictor.predict_arrays(_images(3)[:1], topk=3)
    assert [name for name, _ in prediction.top] == [str(i) for i in prediction.indices]
    assert sorted(prediction.indices) == [0, 1, 2]


def _copy_export(prefix, tmp_path, card=True):
    copy = str(tmp_path / "copy")
    suffixes = ("-symbol.json", "-0000.params") + (("-model.json",) if card else ())
    for suffix in suffixes:
        shutil.copy(prefix + suffix, copy + suffix)
    return copy


def _rewrite_card(prefix, **changes):
    card = read_model_card(prefix)
    card.update(changes)
    with open(f"{prefix}-model.json", "w") as f:
        json.dump(card, f)


@pytest.mark.parametrize("trained,warns", [(False, 1), (True, 0), ("absent", 0)])
def test_a_card_of_untrained_weights_warns_once(exported_model, tmp_path, trained, warns):
    prefix = _copy_export(exported_model(), tmp_path)
    if trained != "absent":
        _rewrite_card(prefix, trained=trained)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor(prefix)
        predictor.predict_arrays(_images(3)[:2])
        predictor.predict_arrays(_images(3)[:2])
    assert [str(w.message) for w in caught if "never trained" in str(w.message)] == \
        [f"{prefix}-model.json says the weights of {prefix} were never trained (random): its "
         "predictions mean nothing"] * warns


def test_without_a_card_imagenet_preprocessing_is_assumed_with_a_warning(exported_model,
                                                                          tmp_path):
    prefix = _copy_export(exported_model(), tmp_path, card=False)
    with pytest.warns(UserWarning, match="copy-model.json does not exist: assuming RGB input of "
                                         "16x16 pixels"):
        predictor = Predictor(prefix, input_size=16)
    images = _images(3, seed=6)
    # the fixture's card holds ImageNet's mean and std: the same preprocessing
    assert [p.indices for p in predictor.predict_arrays(images)] == \
        [p.indices for p in Predictor(exported_model()).predict_arrays(images)]


def test_class_names_that_do_not_fit_the_outputs_are_refused(exported_model, tmp_path):
    prefix = _copy_export(exported_model(), tmp_path)
    _rewrite_card(prefix, class_names=["a", "b"])
    with pytest.raises(ModelFileError, match="names 2 classes for a network with 3 outputs"):
        Predictor(prefix)


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
    ({"input_size": 32}, "input_size=32 differs from the input size 16"),
])
def test_bad_predictor_arguments(exported_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Predictor(exported_model(), **kwargs)


@pytest.mark.parametrize("images,kwargs,message", [
    ([np.zeros((8, 8, 3), np.uint8)], {"topk": 0}, "topk must be a positive integer, got 0"),
    ([np.zeros((8, 8, 1), np.uint8)], {}, r"images\[0\] must be a decoded uint8 image of shape "
                                          r"\(H, W, 3\), got uint8 of shape \(8, 8, 1\)"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], {},
     r"images\[1\] must be a decoded uint8 image .* got float32"),
    ([np.zeros((0, 8, 3), np.uint8)], {}, r"images\[0\] is empty"),
])
def test_bad_arrays(exported_model, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Predictor(exported_model()).predict_arrays(images, **kwargs)


def _bad_files(directory):
    """name -> path of files that cannot be predicted, and a truncated JPEG that can."""
    good = _images(3, seed=7)[1]
    jpeg = _save(np.repeat(np.repeat(good, 4, 0), 4, 1), directory / "whole.jpg")
    with open(jpeg, "rb") as f:
        data = f.read()
    (directory / "truncated.jpg").write_bytes(data[:len(data) * 2 // 3])
    (directory / "garbage.png").write_bytes(np.random.RandomState(0).bytes(300))
    (directory / "empty.png").write_bytes(b"")
    png = _save(good, directory / "whole.png")
    with open(png, "rb") as f:
        data = f.read()
    (directory / "truncated.png").write_bytes(data[:len(data) // 2])  # OpenCV refuses it
    return {name: str(directory / name) for name in
            ("truncated.jpg", "garbage.png", "empty.png", "truncated.png", "missing.png")}


@pytest.mark.parametrize("name,error,message", [
    ("garbage.png", ImageReadError, "cannot read .*garbage.png as an image"),
    ("empty.png", ImageReadError, "cannot read .*empty.png as an image: the file is empty"),
    ("truncated.png", ImageReadError, "cannot read .*truncated.png as an image"),
    ("missing.png", FileNotFoundError, "no image file at .*missing.png"),
])
def test_unreadable_files_raise_or_are_reported(exported_model, tmp_path, name, error, message):
    path = _bad_files(tmp_path)[name]
    good = _png_files(tmp_path, _images(3)[:1])[0]
    predictor = Predictor(exported_model())
    with pytest.raises(error, match=message):
        predictor.predict_files([good, path])
    reported = predictor.predict_files([good, path, good], errors="report")
    assert reported[0] == reported[2] == predictor.predict_files([good])[0]
    assert reported[1].top == () and reported[1].path == path
    assert re.search(message, reported[1].error)


@pytest.mark.parametrize("pillow_loads_truncated", [False, True], ids=["pillow", "after-gluoncv"])
def test_a_truncated_jpeg_warns_and_is_predicted(exported_model, tmp_path, monkeypatch,
                                                 pillow_loads_truncated):
    from PIL import ImageFile

    # importing gluoncv.data sets Pillow's LOAD_TRUNCATED_IMAGES for the whole process
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", pillow_loads_truncated)
    path = _bad_files(tmp_path)["truncated.jpg"]
    predictor = Predictor(exported_model())
    with pytest.warns(DamagedImageWarning, match="truncated.jpg: the file is damaged or "
                                                 "truncated"):
        (prediction,) = predictor.predict_files([path], topk=3)
    assert len(prediction.top) == 3 and prediction.warning.startswith("the file is damaged")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedImageWarning)  # "report" does not warn
        assert predictor.predict_files([path], topk=3, errors="report") == [prediction]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is pillow_loads_truncated  # left as it was


def test_errors_must_be_raise_or_report(exported_model):
    with pytest.raises(ValueError, match="errors must be 'raise' or 'report', got 'ignore'"):
        Predictor(exported_model()).predict_files([], errors="ignore")


# --- bmxnet-ext predict ----------------------------------------------------------------------

def _folder_tree(tmp_path):
    """inputs/a/{1.png, sub/2.jpg, notes.txt}, inputs/b/{3.png, 4.bmp}, inputs/5.PNG."""
    images = _images(3, seed=8)
    root = tmp_path / "inputs"
    (root / "a" / "sub").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "notes.txt").write_text("not an image")
    _save(images[0], root / "a" / "1.png")
    _save(images[1], root / "a" / "sub" / "2.jpg")
    _save(images[2], root / "b" / "3.png")
    _save(images[3], root / "b" / "4.bmp")
    _save(images[4], root / "5.PNG", format="PNG")
    return root


def _printed_paths(out):
    return [line.split(": ", 1)[0] for line in out.strip().splitlines()]


def test_cli_takes_folders_globs_and_files_in_order(exported_model, tmp_path, capsys):
    root = _folder_tree(tmp_path)
    assert main(["predict", exported_model(), str(root / "a"), str(root / "b" / "*.png"),
                 str(root / "5.PNG"), "--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert _printed_paths(out) == [str(root / "a" / "1.png"), str(root / "a" / "sub" / "2.jpg"),
                                   str(root / "b" / "3.png"), str(root / "5.PNG")]
    for line in out.strip().splitlines():
        labels = line.split(": ", 1)[1].split(", ")
        assert len(labels) == 2 and all(label.split(" (")[0] in CLASS_NAMES for label in labels)


def test_cli_expands_recursive_globs(exported_model, tmp_path, capsys):
    root = _folder_tree(tmp_path)
    assert main(["predict", exported_model(), str(root / "**" / "*.jpg")]) == 0
    assert _printed_paths(capsys.readouterr().out) == [str(root / "a" / "sub" / "2.jpg")]


def test_cli_output_does_not_depend_on_the_batch_size(exported_model, tmp_path, capsys):
    root = _folder_tree(tmp_path)
    outputs = []
    for batch_size in ("1", "3"):  # two runs of one command, compared: not a test loop
        assert main(["predict", exported_model(), str(root), "--batch-size", batch_size]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 5


def test_cli_json_is_one_document_with_the_class_names(exported_model, tmp_path, capsys):
    root = _folder_tree(tmp_path)
    assert main(["predict", exported_model(), str(root), "--json", "--topk", "3"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["class_names"] == list(CLASS_NAMES) and document["errors"] == []
    assert len(document["predictions"]) == 5
    for prediction in document["predictions"]:
        assert sorted(entry["class"] for entry in prediction["top"]) == sorted(CLASS_NAMES)
        assert sum(entry["probability"] for entry in prediction["top"]) == pytest.approx(1.0)


def test_cli_reports_an_unreadable_file_and_goes_on(exported_model, tmp_path, capsys):
    bad = _bad_files(tmp_path)
    good = _png_files(tmp_path, _images(3)[:2])
    assert main(["predict", exported_model(), good[0], bad["garbage.png"], bad["missing.png"],
                 good[1]]) == 1
    captured = capsys.readouterr()
    assert _printed_paths(captured.out) == good
    assert captured.err.splitlines() == [
        f"{bad['garbage.png']}: error: cannot read {bad['garbage.png']} as an image (a damaged "
        "file or not an image)",
        f"{bad['missing.png']}: error: no image file at {bad['missing.png']}"]


def test_cli_json_lists_the_errors(exported_model, tmp_path, capsys):
    bad = _bad_files(tmp_path)
    good = _png_files(tmp_path, _images(3)[:1])
    assert main(["predict", exported_model(), bad["empty.png"], good[0], "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [p["path"] for p in document["predictions"]] == good
    assert [e["path"] for e in document["errors"]] == [bad["empty.png"]]


def test_cli_warns_about_a_truncated_file_and_predicts_it(exported_model, tmp_path, capsys):
    path = _bad_files(tmp_path)["truncated.jpg"]
    assert main(["predict", exported_model(), path]) == 0
    captured = capsys.readouterr()
    assert _printed_paths(captured.out) == [path]
    assert captured.err.startswith(f"{path}: warning: the file is damaged or truncated")


@pytest.mark.parametrize("pattern,message", [
    ("{tmp}/*.nothing", "no file matches this pattern"),
    ("{tmp}/empty_folder", "no image files (.jpg .jpeg .png .bmp) in this folder"),
])
def test_cli_inputs_that_name_no_image(exported_model, tmp_path, capsys, pattern, message):
    (tmp_path / "empty_folder").mkdir()
    item = pattern.format(tmp=tmp_path)
    assert main(["predict", exported_model(), item]) == 1
    assert capsys.readouterr().err == f"{item}: error: {message}\n"


def test_cli_says_when_the_weights_are_untrained(exported_model, tmp_path, capsys):
    prefix = _copy_export(exported_model(), tmp_path)
    _rewrite_card(prefix, trained=False)
    good = _png_files(tmp_path, _images(3)[:1])
    assert main(["predict", prefix, good[0]]) == 0
    err = capsys.readouterr().err
    assert err.startswith("bmxnet-ext predict: warning: ") and "never trained" in err
