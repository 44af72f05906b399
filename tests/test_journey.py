"""The user's whole path through the command line, on an image folder the test makes:
im2rec -> train.py on two CPU contexts with --export --export-packed -> bmxnet-ext convert of
the float export -> bmxnet-ext predict (class names) -> load_xnor == SymbolBlock.imports.
Nothing here is prepared by hand that the product should write (no model card, no class list)."""
import json
import os
import subprocess
import sys
import warnings

import cv2
import mxnet as mx
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "imagenet")
CLASSES = ("cat", "dog")
SIZE = 16


def _run(argv, cwd):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=cwd,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, f"{argv[1:3]} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _image_folder(root):
    """Two classes that differ in colour, noise on top; root/{train,val}/{cat,dog}/*.png."""
    rng = np.random.RandomState(0)
    for split, count in (("train", 12), ("val", 4)):
        for label, name in enumerate(CLASSES):
            os.makedirs(os.path.join(root, split, name))
            for i in range(count):
                image = rng.randint(0, 60, (20, 24, 3)) + (160 if label else 20)
                cv2.imwrite(os.path.join(root, split, name, f"{i}.png"), image.astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    work = tmp_path_factory.mktemp("journey")
    images = _image_folder(str(work / "images"))
    data = str(work / "records")
    _run([sys.executable, os.path.join(EXAMPLES, "im2rec.py"), images, data], cwd=str(work))
    run = str(work / "run")
    trained = _run([sys.executable, os.path.join(EXAMPLES, "train.py"), "--data", data,
                    "--model", "meliusnet_flex", "--model-arg", "blocks=[1,1,1]",
                    "--model-arg", "reductions=[0.5,0.5]", "--image-size", str(SIZE),
                    "--batch-size", "4", "--epochs", "2", "--ctx", "cpu:0,cpu:1",
                    "--workers", "1", "--output", run, "--export", "--export-packed",
                    "--quiet"], cwd=str(work))
    export = os.path.join(run, "export", "meliusnet_flex")
    converted = os.path.join(str(work / "converted"), "meliusnet_flex")
    _run([sys.executable, "-m", "bmxnet_ext", "convert", export, "--out",
          str(work / "converted")], cwd=str(work))
    return dict(work=work, images=images, run=run, export=export, converted=converted,
                train_output=trained.stdout)


def test_the_exports_carry_what_the_data_said(journey):
    for prefix, packed in ((journey["export"], False), (journey["export"] + "-packed", True),
                           (journey["converted"], True)):
        with open(prefix + "-model.json") as f:
            card = json.load(f)
        assert card["class_names"] == list(CLASSES) and card["classes"] == 2
        assert card["model"] == "meliusnet_flex" and card["input_size"] == SIZE
        assert card["packed"] is packed and card["fused"] is packed and card["trained"] is True
        assert card["source_checkpoint"].startswith(os.path.join(journey["run"], "checkpoints"))


def test_predict_names_the_classes(journey):
    files = [os.path.join(journey["images"], "val", name, "0.png") for name in CLASSES]
    result = _run([sys.executable, "-m", "bmxnet_ext", "predict", journey["converted"], *files,
                   "--topk", "2"], cwd=str(journey["work"]))
    for path in files:
        line = next(line for line in result.stdout.splitlines() if path in line)
        assert all(name in line for name in CLASSES), result.stdout


def _packed_outputs(prefix, x):
    from bmxnet_ext import load_xnor
    return load_xnor(prefix)(mx.nd.array(x)).asnumpy()


def test_convert_of_the_float_export_equals_the_packed_export(journey):
    x = np.random.RandomState(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(_packed_outputs(journey["converted"], x),
                               _packed_outputs(journey["export"] + "-packed", x),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("which", ["export-packed", "converted"])
def test_load_xnor_equals_symbolblock_imports(journey, which):
    import bmxnet_ext  # noqa: F401  (the bmx_* operators for SymbolBlock.imports)

    prefix = journey["converted"] if which == "converted" else journey["export"] + "-packed"
    x = np.random.RandomState(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        imported = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"],
                                                prefix + "-0000.params")
    np.testing.assert_array_equal(_packed_outputs(prefix, x),
                                  imported(mx.nd.array(x)).asnumpy())
