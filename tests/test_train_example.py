"""examples/imagenet/train.py and launch.py: every flag documented; one epoch on tiny generated
data end to end (checkpoint, logs, exports), resumed by a second call; command-line mistakes
refused in one line naming the flag; resume rules."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from bmxnet_ext.training.optim import make_lr_scheduler
from bmxnet_ext.training.records import folder_to_recordio
from train_helpers import CLASSES, write_image_folder

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
                  "--resume", "--reschedule", "--export", "--export-packed")
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


@pytest.fixture(scope="module")
def train_py():
    return _load("train")


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory):
    """train/ with three classes, val/ with two: as image folders and as RecordIO; and
    RecordIO of three classes without .classes files (as MXNet's own im2rec writes it)."""
    root = tmp_path_factory.mktemp("mismatched")
    write_image_folder(root / "full", per_class=2, size=10)
    shutil.copytree(root / "full", root / "folder")
    shutil.rmtree(root / "folder" / "val" / CLASSES[-1])
    for split in ("train", "val"):
        folder_to_recordio(str(root / "folder" / split), str(root / "rec" / split))
        folder_to_recordio(str(root / "full" / split), str(root / "unnamed" / split))
        os.remove(root / "unnamed" / f"{split}.classes")
    return root


def _one_error_line(capsys):
    """The single stderr line of a refused run (no usage text, no traceback)."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("train.py: error: ")
    return lines[0]


# (extra arguments, GPUs the machine has, what the one line says); {mismatched} and {file} are
# filled in by the test
REFUSALS = [
    (["--data", "{mismatched}/folder"], 0, "--data {mismatched}/folder: train and val have "
                                           "different classes (3 vs 2; only in train: cat)"),
    (["--data", "{mismatched}/rec"], 0, "--data {mismatched}/rec: train and val have different "
                                        "classes (3 vs 2; only in train: cat)"),
    (["--classes", "2"], 0, "--classes 2 is smaller than the 3 classes of the training data"),
    (["--data", "{mismatched}/unnamed", "--classes", "2"], 0,
     "--classes: a batch holds label 2 but the network has 2 outputs; build it with at least 3 "
     "classes"),
    (["--gpus", "0"], 0, "--gpus 0: GPU 0 requested but this machine has no GPU; leave --gpus "
                         "out"),
    (["--ctx", "gpu:0"], 0, "--ctx gpu:0: GPU 0 requested but this machine has no GPU"),
    (["--gpus", "0,1"], 1, "--gpus 0,1: GPU 1 requested but this machine has 1 GPU(s)"),
    (["--batch-size", "0"], 0, "--batch-size must be at least 1, got 0"),
    (["--batch-size", "19"], 0, "--batch-size 19 x 1 device(s): a batch of 19 is larger than "
                                "the 18 training images; use a batch of at most 18"),
    (["--ctx", "cpu:0,cpu:1", "--batch-size", "10"], 0,
     "--batch-size 10 x 2 device(s): a batch of 20 is larger than the 18 training images"),
    (["--lr", "-0.1"], 0, "--lr must be at least 0, got -0.1"),
    (["--output", "{file}"], 0, "--output {file} is an existing file; choose a directory"),
    (["--model-arg", "blocks=[1,1"], 0, "--model-arg 'blocks=[1,1': the value is not valid JSON"),
    (["--model-arg", "blocks"], 0, "--model-arg 'blocks': expected KEY=VALUE"),
    (["--model-arg", "no_such_argument=1"], 0, "--model-arg no_such_argument=1: meliusnet_flex "
                                               "cannot be built with them"),
    (["--optimizer-params", "{bad"], 0, "--optimizer-params: not valid JSON"),
    (["--optimizer-params", "[0.9]"], 0, "--optimizer-params: expected a JSON object"),
    (["--optimizer-params", '{"no_such_argument": 1}'], 0,
     "--optimizer-params: optimizer 'radam' with arguments {'no_such_argument': 1} cannot be "
     "created"),
    (["--reschedule"], 0, "--reschedule only applies with --resume"),
]


@needs_zoo
@pytest.mark.parametrize("extra,gpus,message", REFUSALS,
                         ids=[" ".join(extra) for extra, _, _ in REFUSALS])
def test_command_line_mistakes_are_one_line_naming_the_flag(extra, gpus, message, train_py,
                                                             data_dir, mismatched, tmp_path,
                                                             capsys, monkeypatch):
    monkeypatch.setattr(mx.context, "num_gpus", lambda: gpus)
    (tmp_path / "a-file").write_text("")

    def fill(text):
        return text.replace("{mismatched}", str(mismatched)).replace("{file}",
                                                                     str(tmp_path / "a-file"))

    argv = ["--data", data_dir, *MODEL, "--epochs", "1", "--output", str(tmp_path / "run"),
            "--quiet"] + [fill(arg) for arg in extra]
    assert train_py.main(argv) == 2
    assert fill(message) in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


@needs_zoo
def test_a_negative_lr_is_refused_from_the_shell(data_dir, tmp_path):
    done = _run("train.py", "--data", data_dir, *MODEL, "--lr", "-1", "--output",
                str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["train.py: error: --lr must be at least 0, got -1.0"]


def _argv(data_dir, out, *extra):
    return ["--data", data_dir, *MODEL, "--epochs", "1", "--output", str(out), "--quiet",
            *extra]


@pytest.fixture(scope="module")
def finished_run(train_py, data_dir, tmp_path_factory):
    """A one-epoch run (lr 0.002, batch 6: 3 steps per epoch) to resume."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train_py.main(_argv(data_dir, out)) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


@needs_zoo
def test_resume_on_an_empty_output_starts_a_new_run_and_says_so(train_py, data_dir, tmp_path,
                                                                capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert train_py.main(_argv(data_dir, out, "--resume")) == 0
    assert f"no checkpoint in {out / 'checkpoints'}: starting a new run" in \
        capsys.readouterr().out
    assert len(json.loads((out / "log.json").read_text())) == 1


@needs_zoo
@pytest.mark.parametrize("extra,differs,advice", [
    (["--lr", "0.01"], "--lr 0.002 -> 0.01", "pass --reschedule"),
    (["--epochs", "2"], "--epochs 1 -> 2", "pass --reschedule"),
    (["--batch-size", "3"], "--batch-size 6 -> 3", "pass --reschedule"),
    (["--schedule", "constant"], '--schedule "cosine" -> "constant"', "pass --reschedule"),
    (["--model-arg", "blocks=[1,1,1,2]"],
     '--model-arg {"blocks": [1, 1, 1, 1]} -> {"blocks": [1, 1, 1, 2]}', "cannot change"),
    (["--model", "binary_densenet_flex"], '--model "meliusnet_flex" -> "binary_densenet_flex"',
     "cannot change"),
    (["--model-arg", "blocks=[1,1,1,2]", "--lr", "0.01", "--reschedule"],
     "--lr 0.002 -> 0.01", "cannot change"),
])
def test_resume_with_other_settings_is_refused_naming_them(extra, differs, advice, train_py,
                                                           data_dir, run_copy, capsys):
    assert train_py.main(_argv(data_dir, run_copy, "--resume", *extra)) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"train.py: error: --resume: the run in {run_copy} was trained with "
                           "other settings (")
    assert differs in line and advice in line
    assert len(json.loads((run_copy / "log.json").read_text())) == 1


@needs_zoo
def test_a_second_run_into_a_checkpointed_output_needs_resume(train_py, data_dir, run_copy,
                                                              capsys):
    assert train_py.main(_argv(data_dir, run_copy)) == 2
    assert f"--output {run_copy} already holds a checkpoint (epoch 1); pass --resume" in \
        _one_error_line(capsys)


@needs_zoo
@pytest.mark.parametrize("lr,batch", [(0.01, 6), (0.002, 3)])
def test_reschedule_recomputes_the_schedule_for_the_new_settings(lr, batch, train_py, data_dir,
                                                                 run_copy, capsys):
    argv = _argv(data_dir, run_copy, "--resume", "--reschedule", "--epochs", "3", "--lr",
                 str(lr), "--batch-size", str(batch))
    assert train_py.main(argv) == 0
    steps = 18 // batch
    schedule = make_lr_scheduler("cosine", lr, 3, steps)
    assert (f"learning-rate schedule recomputed for" in capsys.readouterr().out)
    rows = json.loads((run_copy / "log.json").read_text())
    assert [row["num_update"] for row in rows] == [3, 3 + steps, 3 + 2 * steps]
    # the rate the trainer used at the end of epoch 2: the new schedule's, two epochs in
    assert rows[1]["lr"] == pytest.approx(schedule(2 * steps)) and rows[1]["lr"] > 0


@needs_zoo
def test_ctrl_c_names_the_epoch_and_the_resume_flags(train_py, data_dir, tmp_path, capsys,
                                                     monkeypatch):
    from bmxnet_ext.training import fit

    run_epoch = fit._run_epoch

    def interrupted_in_epoch_2(*args):
        if args[4] == 1:  # the second epoch, counted from 0
            raise KeyboardInterrupt
        return run_epoch(*args)

    monkeypatch.setattr(fit, "_run_epoch", interrupted_in_epoch_2)
    out = tmp_path / "run"
    argv = _argv(data_dir, out, "--epochs", "2")
    assert train_py.main(argv) == 130
    captured = capsys.readouterr()
    assert (f"interrupted in epoch 2/2; the last good checkpoint is epoch 1 in "
            f"{out / 'checkpoints' / 'epoch-0001'}") in captured.out
    assert captured.err.splitlines() == [
        f"train.py: interrupted; to continue, run the same command with --resume "
        f"(--output {out})"]
    assert "resume=True" not in captured.out + captured.err


def test_im2rec_refuses_existing_output_unless_overwrite(data_dir, tmp_path):
    assert _run("im2rec.py", data_dir, str(tmp_path)).returncode == 0
    again = _run("im2rec.py", data_dir, str(tmp_path))
    assert again.returncode == 2
    assert again.stderr.splitlines() == [
        f"im2rec.py: error: {tmp_path / 'train.rec'} already exists; pass --overwrite to "
        "replace it or choose another output directory"]
    replaced = _run("im2rec.py", data_dir, str(tmp_path), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
