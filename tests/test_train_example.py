"""examples/imagenet/train.py and launch.py: every flag documented; one epoch on tiny generated
data end to end (checkpoint, logs, exports), resumed by a second call."""
import importlib.util
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from train_helpers import write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "imagenet")


def _zoo_ready():
    try:
        from bmxnet_ext.model_zoo import list_models
    except ImportError:
        return False
    return "meliusnet_flex" in list_models()


needs_zoo = pytest.mark.skipif(not _zoo_ready(), reason="train.py needs the zoo")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script, *args, env=None, timeout=300):
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


@pytest.mark.parametrize("script", [pytest.param("train", marks=needs_zoo), "launch", "im2rec"])
def test_help_documents_every_flag(script):
    parser = _load(script)._parser()
    text = parser.format_help()
    for action in parser._actions:
        assert action.help and action.help.strip(), action.dest
        for option in action.option_strings:
            assert option in text


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), per_class=6, size=10)


MODEL = ["--model", "meliusnet_flex", "--model-arg", "blocks=[1,1,1,1]", "--image-size", "8",
         "--batch-size", "6", "--workers", "0"]


@needs_zoo
def test_one_epoch_on_tiny_data_then_resume_and_export(data_dir, tmp_path):
    from bmxnet_ext.model_zoo import get_model

    out = tmp_path / "run"
    first = _run("train.py", "--data", data_dir, *MODEL, "--epochs", "1", "--output", str(out))
    assert first.returncode == 0, first.stderr
    assert "epoch 1/1" in first.stdout
    assert len(json.loads((out / "log.json").read_text())) == 1

    second = _run("train.py", "--data", data_dir, *MODEL, "--epochs", "2", "--output", str(out),
                  "--resume", "--export", "--export-packed")
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout and "epoch 2/2" in second.stdout
    rows = json.loads((out / "log.json").read_text())
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[-1]["num_update"] == 2 * (3 * 6 // 6)

    trained = get_model("meliusnet_flex", blocks=[1, 1, 1, 1], classes=3, input_size=8)
    trained.load_parameters(str(out / "checkpoints" / "epoch-0002" / "net.params"))
    export = out / "export"
    reloaded = mx.gluon.SymbolBlock.imports(str(export / "meliusnet_flex-symbol.json"),
                                            ["data"], str(export / "meliusnet_flex-0000.params"))
    x = mx.nd.random.normal(shape=(4, 3, 8, 8))
    np.testing.assert_allclose(reloaded(x).asnumpy(), trained(x).asnumpy(), rtol=1e-4,
                               atol=1e-4)
    assert (export / "meliusnet_flex-packed-symbol.json").exists()
    assert (out / "curves.png").exists()


@needs_zoo
@pytest.mark.parametrize("args,message", [
    (["--data", "/nonexistent/imagenet"], "neither a RecordIO"),
    (["--ctx", "tpu:0"], "--ctx"),
])
def test_user_errors_end_with_a_message(args, message, tmp_path):
    done = _run("train.py", *args, "--output", str(tmp_path / "run"), "--epochs", "1")
    assert done.returncode == 2 and message in done.stderr


@needs_zoo
def test_default_is_the_embedded_digits(tmp_path):
    done = _run("train.py", "--model-arg", "blocks=[1,1,1,1]", "--image-size", "8", "--epochs",
                "1", "--output", str(tmp_path / "run"), env={"BMXNET_EXT_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "1438 training images" in done.stdout


def test_launch_needs_a_command():
    done = _run("launch.py", "--local", "2")
    assert done.returncode == 2 and "worker command" in done.stderr


def test_im2rec_packs_folders_that_train_py_reads(data_dir, tmp_path):
    from bmxnet_ext.training.pipelines import RecordData, open_image_data

    done = _run("im2rec.py", data_dir, str(tmp_path), "--resize", "8", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "train: 18 images" in done.stdout and "val: 18 images" in done.stdout
    train, val = open_image_data(str(tmp_path), 6, workers=1)
    assert isinstance(train, RecordData) and train.classes == ["ant", "bee", "cat"]
    assert train.num_samples == val.num_samples == 18
