"""The bmxnet-ext command line under misuse: wrong model names, impossible sizes, unreadable
images, missing, damaged or foreign weight files. Each ends with exit status 2 and one error
line (argparse adds its usage line for malformed arguments), never a traceback.
"""
import json
import os
import re
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import bmxnet_ext
from bmxnet_ext import model_zoo
from bmxnet_ext.apps.cli import main
from bmxnet_ext.inference.model_card import read_model_card


def _fails_with_one_line(argv, capsys, message):
    """main(argv) returns 2 (or argparse exits 2); the last stderr line holds ``message``."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse: usage line + error line
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert "Traceback" not in err
    assert re.search(message, err.splitlines()[-1]), err
    return err


@pytest.fixture(scope="module")
def packed_export(tmp_path_factory):
    """A converted meliusnet_flex export written by `bmxnet-ext convert --params`: its prefix."""
    out = tmp_path_factory.mktemp("packed")
    net = model_zoo.get_model("meliusnet_flex", classes=10, input_size=16)
    net.initialize(mx.init.Xavier(magnitude=2))
    net(mx.nd.zeros((1, 3, 16, 16)))
    net.save_parameters(str(out / "weights.params"))
    assert main(["convert", "meliusnet_flex", "--out", str(out), "--classes", "10",
                 "--input-size", "16", "--params", str(out / "weights.params")]) == 0
    return str(out / "meliusnet_flex")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    import cv2
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    cv2.imwrite(str(directory / "ok.png"), (rng.rand(20, 30, 3) * 255).astype(np.uint8))
    (directory / "garbage.jpg").write_bytes(rng.bytes(300))
    (directory / "empty.png").write_bytes(b"")
    (directory / "text.png").write_text("not an image\n")
    (directory / "folder.png").mkdir()
    return directory


# --- names and sizes ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["summary", "meliusnet23"], "unknown model 'meliusnet23'; did you mean .*meliusnet22"),
    (["summary", "MeliusNet22"], "unknown model 'MeliusNet22'; did you mean meliusnet22"),
    (["summary", ""], "unknown model ''"),
    (["convert", "mobilenet", "--out", "{tmp}"], "unknown model 'mobilenet'"),
    (["convert", "../meliusnet22", "--out", "{tmp}"], "unknown model"),
])
def test_wrong_model_names(argv, message, tmp_path, capsys):
    _fails_with_one_line([a.format(tmp=tmp_path) for a in argv], capsys, message)


@pytest.mark.parametrize("argv", [
    ["summary", "meliusnet22", "--input-size", "0"],
    ["summary", "meliusnet22", "--input-size", "-1"],
    ["summary", "meliusnet22", "--input-size", "abc"],
    ["summary", "meliusnet22", "--classes", "0"],
    ["convert", "meliusnet22", "--out", "{tmp}", "--input-size", "-1"],
    ["convert", "meliusnet22", "--out", "{tmp}", "--classes", "-3"],
    ["predict", "{tmp}/p", "{tmp}/x.png", "--topk", "0"],
    ["predict", "{tmp}/p", "{tmp}/x.png", "--input-size", "-5"],
    ["predict", "{tmp}/p", "{tmp}/x.png", "--batch-size", "0"],
], ids=lambda argv: "-".join(argv[:1] + argv[-2:]))
def test_impossible_sizes_are_usage_errors(argv, tmp_path, capsys):
    _fails_with_one_line([a.format(tmp=tmp_path) for a in argv], capsys,
                         r"argument --[a-z-]+: must be a positive integer")


@pytest.mark.parametrize("argv,message", [
    (["summary", "meliusnet22", "--input-size", "4"], "smallest input it takes is 8"),
    (["summary", "meliusnet22", "--input-size", "8", "--stem", "imagenet"],
     r"smallest input it takes is 29 \(or stem='thumbnail'"),
    (["summary", "resnet_e18", "--input-size", "3"], "smallest input it takes is 5"),
    (["convert", "meliusnet22", "--out", "{tmp}", "--input-size", "7"],
     "smallest input it takes is 8"),
    (["summary", "meliusnet22", "--stem", "tiny"], "unknown stem 'tiny'"),
])
def test_inputs_too_small_for_the_network_name_the_smallest(argv, message, tmp_path, capsys):
    _fails_with_one_line([a.format(tmp=tmp_path) for a in argv], capsys, message)


SMALLEST = [("meliusnet22", "thumbnail", 8), ("meliusnet22", "grouped_stem", 29),
            ("meliusnet_a", "imagenet", 29), ("binary_densenet28", "imagenet", 29),
            ("resnet_e18", "thumbnail", 5), ("resnet_e18", "imagenet", 17),
            ("quicknet", "thumbnail", 8), ("quicknet_small", "quicknet", 29)]


@pytest.mark.parametrize("name,stem,smallest", SMALLEST)
def test_the_smallest_input_size_named_works_and_one_less_is_refused(name, stem, smallest):
    net = model_zoo.get_model(name, stem=stem, input_size=smallest, classes=3)
    net.initialize()
    assert net(mx.nd.zeros((1, 3, smallest, smallest))).shape == (1, 3)
    with pytest.raises(ValueError, match=f"smallest input it takes is {smallest}"):
        model_zoo.get_model(name, stem=stem, input_size=smallest - 1, classes=3)


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_demo_refuses_non_positive_epochs(epochs, capsys):
    _fails_with_one_line(["demo", "--epochs", epochs], capsys,
                         f"epochs must be at least 1, got {epochs}")


def test_input_too_large_for_memory_is_one_line(tmp_path):
    """A probe of 3 x 100000 x 100000 floats: MemoryError, reported on one line. (The address
    space is limited so that the test cannot take the machine's memory whatever the OS does.
    The limit is set by the shell, not by a preexec_fn: that would make Python fork the large
    test process instead of spawning, which the kernel refused with ENOMEM late in a CI run.)"""
    limit_kib = 16 * 2 ** 20
    result = subprocess.run(["bash", "-c", f'ulimit -v {limit_kib} && exec "$0" "$@"',
                             sys.executable, "-m", "bmxnet_ext.apps.cli", "convert",
                             "meliusnet_flex", "--out", str(tmp_path), "--input-size", "100000"],
                            capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert last.startswith("bmxnet-ext convert: error: not enough memory")


# --- images --------------------------------------------------------------------------------------

@pytest.mark.parametrize("image,message", [
    ("garbage.jpg", "cannot read .*garbage.jpg as an image"),
    ("empty.png", "cannot read .*empty.png as an image"),
    ("text.png", "cannot read .*text.png as an image"),
    ("folder.png", "no image files .* in this folder"),
    ("missing.png", "no image file at .*missing.png"),
])
def test_unreadable_images_are_one_line_each_and_exit_1(packed_export, images, image, message,
                                                        capsys):
    path = str(images / image)
    assert main(["predict", packed_export, path]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.match(f"{re.escape(path)}: error: {message}", err), err


def test_a_readable_image_after_an_unreadable_one_is_still_predicted(packed_export, images,
                                                                     capsys):
    assert main(["predict", packed_export, str(images / "garbage.jpg"),
                 str(images / "ok.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{images / 'ok.png'}: ")
    assert captured.err.startswith(f"{images / 'garbage.jpg'}: error: cannot read")


def test_class_names_that_do_not_match_the_outputs(packed_export, images, tmp_path, capsys):
    import shutil
    prefix = str(tmp_path / "m")
    for suffix in ("-symbol.json", "-0000.params"):
        shutil.copy(packed_export + suffix, prefix + suffix)
    card = read_model_card(packed_export)
    card.update(class_names=["a", "b", "c"], classes=3)  # a card edited by hand
    with open(prefix + "-model.json", "w") as f:
        json.dump(card, f)
    _fails_with_one_line(["predict", prefix, str(images / "ok.png")], capsys,
                         "says the network has 3 outputs")


def test_predict_works_on_the_export(packed_export, images, capsys):
    assert main(["predict", packed_export, str(images / "ok.png"), "--topk", "20"]) == 0
    assert capsys.readouterr().out.count("(") == 10  # topk beyond the classes: all of them


# --- weight files and output folders -------------------------------------------------------------

def _saved(tmp_path, name="meliusnet22", **kwargs):
    net = model_zoo.get_model(name, input_size=16, **kwargs)
    net.initialize()
    net(mx.nd.zeros((1, 3, 16, 16)))
    path = str(tmp_path / f"{name}-{kwargs.get('classes', 1000)}.params")
    net.save_parameters(path)
    return path


@pytest.mark.parametrize("params,message", [
    ("{tmp}/none.params", "no params file at"),
    ("{tmp}", "no params file at"),
    ("{tmp}/damaged.params", "is not a readable MXNet params file: it is truncated or damaged"),
    ("{other_classes}", r"does not fit meliusnet22 built with classes=10.*shape incompatible"),
    ("{other_network}", "does not fit meliusnet22 built with .* unexpected"),
    ("{export_params}", r"was written by export\(\), not save_parameters\(\)"),
])
def test_convert_with_weights_that_do_not_fit(params, message, tmp_path, packed_export, capsys):
    (tmp_path / "damaged.params").write_bytes(b"\x12\x01\x00\x00\x00\x00\x00\x00garbage")
    paths = dict(tmp=tmp_path, export_params=packed_export + "-0000.params")
    if "other_classes" in params:
        paths["other_classes"] = _saved(tmp_path, classes=12)
    if "other_network" in params:
        paths["other_network"] = _saved(tmp_path, "meliusnet29", classes=10)
    _fails_with_one_line(["convert", "meliusnet22", "--out", str(tmp_path / "out"), "--classes",
                          "10", "--input-size", "16", "--params", params.format(**paths)],
                         capsys, message)


def test_convert_refuses_an_output_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fails_with_one_line(["convert", "meliusnet22", "--out", str(tmp_path / "file"),
                          "--input-size", "16"], capsys, "exists and is not a directory")


def test_convert_an_export_whose_params_are_damaged(tmp_path, capsys):
    net = model_zoo.get_model("meliusnet_flex", classes=10, input_size=16)
    net.initialize()
    prefix = str(tmp_path / "float")
    bmxnet_ext.export(net, prefix, packed=False)
    with open(prefix + "-0000.params", "r+b") as f:
        f.truncate(os.path.getsize(prefix + "-0000.params") // 2)
    _fails_with_one_line(["convert", prefix, "--out", str(tmp_path / "out")], capsys,
                         "truncated or damaged")


def test_the_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bmxnet_ext.apps.cli", "summary", "meliusnet22",
                             "--input-size", "0"], capture_output=True, text=True, timeout=120,
                            cwd=str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "bmxnet-ext summary: error: argument --input-size: must be a positive integer, got 0")
