"""The crash-safe loop: atomic checkpoints, NaN guard, Ctrl-C, exact resume after SIGKILL, logs,
plot and export."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from bmxnet_ext.training import fit, loop, recipe
from bmxnet_ext.training.checkpoint import CheckpointError, CheckpointManager
from bmxnet_ext.utils.files import atomic_write
from bmxnet_ext.inference.deploy import export
from bmxnet_ext.training.pipelines import Augmentation, open_image_data
from bmxnet_ext.training.records import folder_to_recordio
from bmxnet_ext.training.loop import NonFiniteLossError
from bmxnet_ext.training.optim import make_lr_scheduler
from train_helpers import tiny_net, write_image_folder

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), per_class=6, size=10)


@pytest.fixture(scope="module")
def recdir(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    for split in ("train", "val"):
        folder_to_recordio(os.path.join(folder, split), str(out / split))
    return str(out)


def _setup(folder, epochs=3, seed=0, lr=0.05, batch=6):
    """Seeded tiny network, trainer and pipelines over ``folder`` (image folder or RecordIO)."""
    fit.seed_everything(seed)
    train, val = open_image_data(folder, batch, Augmentation(size=8), seed=seed, workers=0)
    net = recipe.prepare_network(tiny_net(), input_shape=(1, 3, 8, 8))
    trainer = recipe.make_trainer(net, recipe.get_recipe("any").replace(lr=lr), len(train),
                                  epochs=epochs)
    return net, trainer, train, val


def _params(net):
    return {k: v.data().asnumpy().copy() for k, v in net._collect_params_with_prefix().items()}


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_fit_writes_checkpoints_logs_and_plot(folder, tmp_path):
    net, trainer, train, val = _setup(folder, epochs=2)
    result = fit.fit(net, trainer, train, 2, val_data=val, out_dir=str(tmp_path), quiet=True)
    assert result.epochs_run == 2 and [row["epoch"] for row in result.history] == [1, 2]
    rows = json.loads((tmp_path / "log.json").read_text())
    assert rows == result.history
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1",
            "val_top5", "lr", "num_update", "samples_per_second"} <= set(header)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manager = CheckpointManager(str(tmp_path / "checkpoints"))
    assert manager.latest()["epoch"] == 2
    assert rows[-1]["num_update"] == 2 * len(train) and rows[-1]["lr"] == 0.0
    restored = tiny_net()
    meta = manager.load(restored)
    assert meta["epoch"] == 2 and meta["history"] == rows
    _assert_same_params(_params(restored), _params(net))


def test_top5_counts_every_class_when_there_are_fewer(folder, tmp_path):
    net, trainer, train, val = _setup(folder, epochs=1)
    result = fit.fit(net, trainer, train, 1, val_data=val, quiet=True)
    assert result.history[0]["val_top5"] == 1.0  # 3 classes: the label is always in the top 5
    assert result.checkpoint is None


def test_resume_without_a_checkpoint_starts_a_new_run_and_says_so(folder, tmp_path):
    net, trainer, train, _ = _setup(folder, epochs=1)
    messages = []
    result = fit.fit(net, trainer, train, 1, out_dir=str(tmp_path), resume=True, quiet=True,
                     print_fn=messages.append)
    assert messages == [f"no checkpoint in {tmp_path / 'checkpoints'}: starting a new run"]
    assert result.epochs_run == 1


def test_fit_refuses_to_overwrite_a_checkpoint(folder, tmp_path):
    net, trainer, train, _ = _setup(folder, epochs=1)
    fit.fit(net, trainer, train, 1, out_dir=str(tmp_path), quiet=True)
    with pytest.raises(FileExistsError, match="resume=True"):
        fit.fit(net, trainer, train, 1, out_dir=str(tmp_path), quiet=True)


@pytest.mark.parametrize("with_val", [False, True])
def test_labels_beyond_the_outputs_are_refused(with_val, folder, tmp_path):
    _, _, train, val = _setup(folder)  # three classes
    small = recipe.prepare_network(tiny_net(classes=2), input_shape=(1, 3, 8, 8))
    trainer = recipe.make_trainer(small, recipe.get_recipe("any"), len(train), epochs=1)
    with pytest.raises(loop.LabelRangeError, match="label 2 but the network has 2 outputs; "
                                                   "build it with at least 3 classes"):
        if with_val:
            loop.evaluate_metrics(small, val)
        else:
            fit.fit(small, trainer, train, 1, quiet=True)


class _LossPoisonedFrom:
    """Softmax cross-entropy that turns NaN once ``epoch[0]`` reaches ``bad_epoch``."""

    def __init__(self, bad_epoch):
        self.bad_epoch, self.epoch = bad_epoch, [0]
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def __call__(self, output, label):
        loss = self.loss(output, label)
        return loss * np.nan if self.epoch[0] >= self.bad_epoch else loss


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(folder, tmp_path):
    net, trainer, train, _ = _setup(folder)
    loss_fn, snapshots = _LossPoisonedFrom(1), []

    def snapshot(epoch, row):
        snapshots.append(_params(net))
        loss_fn.epoch[0] = epoch + 1

    with pytest.raises(NonFiniteLossError, match=r"epoch 2/3: .*nan.*last good checkpoint is "
                                                 r"epoch 1"):
        fit.fit(net, trainer, train, 3, out_dir=str(tmp_path), quiet=True, loss_fn=loss_fn,
                on_epoch_end=snapshot)
    assert len(snapshots) == 1
    # the NaN step was not applied (the forward pass did update BN's running statistics)
    trainable = {k for k, p in net._collect_params_with_prefix().items() if p.grad_req != "null"}
    _assert_same_params({k: v for k, v in _params(net).items() if k in trainable},
                        {k: v for k, v in snapshots[0].items() if k in trainable})
    restored = tiny_net()
    assert CheckpointManager(str(tmp_path / "checkpoints")).load(restored)["epoch"] == 1
    _assert_same_params(_params(restored), snapshots[0])


def test_ctrl_c_leaves_the_last_checkpoint_and_resume_continues(folder, tmp_path):
    net, trainer, train, _ = _setup(folder)

    def interrupt(epoch, index, metrics):
        if epoch == 1 and index == 1:
            raise KeyboardInterrupt

    messages = []
    with pytest.raises(KeyboardInterrupt):
        fit.fit(net, trainer, train, 3, out_dir=str(tmp_path), quiet=True,
                on_batch_end=interrupt, print_fn=messages.append)
    # the epoch as the progress bar showed it (counted from 1), and the last finished one
    assert messages[-1].startswith("interrupted in epoch 2/3; the last good checkpoint is epoch 1")
    net, trainer, train, _ = _setup(folder)
    result = fit.fit(net, trainer, train, 3, out_dir=str(tmp_path), resume=True, quiet=True)
    assert result.epochs_run == 2 and [r["epoch"] for r in result.history] == [1, 2, 3]


def test_resuming_with_more_epochs_extends_the_schedule(folder, tmp_path):
    net, trainer, train, _ = _setup(folder, epochs=1)
    first = fit.fit(net, trainer, train, 1, out_dir=str(tmp_path), quiet=True)
    assert first.history[-1]["lr"] == 0.0  # a finished cosine schedule
    net, trainer, train, _ = _setup(folder, epochs=3)
    result = fit.fit(net, trainer, train, 3, out_dir=str(tmp_path), resume=True, quiet=True,
                     reschedule=True)
    rows = result.history
    assert [r["num_update"] for r in rows] == [len(train) * e for e in (1, 2, 3)]
    assert rows[1]["lr"] == pytest.approx(trainer.optimizer.lr_scheduler(2 * len(train)))
    assert rows[1]["lr"] > 0 and rows[2]["lr"] == 0.0


RUN = {"model": "tiny", "lr": 0.05, "batch_size": 6}


@pytest.mark.parametrize("change,run,listed,reschedulable", [
    ({"epochs": 3}, {}, "epochs 1 -> 3", True),
    ({"lr": 0.01}, {"lr": 0.01}, "lr 0.05 -> 0.01", True),
    ({"batch": 3}, {"batch_size": 3}, "iters_per_epoch 3 -> 6, batch_size 6 -> 3", True),
    ({}, {"model": "other"}, 'model "tiny" -> "other"', False),
])
def test_resume_with_other_settings_is_refused(change, run, listed, reschedulable, folder,
                                               tmp_path):
    net, trainer, train, _ = _setup(folder, epochs=1)
    fit.fit(net, trainer, train, 1, out_dir=str(tmp_path), quiet=True, run=RUN)
    epochs = change.pop("epochs", 1)
    net, trainer, train, _ = _setup(folder, epochs=epochs, **change)
    with pytest.raises(fit.RunMismatchError) as refused:
        fit.fit(net, trainer, train, epochs, out_dir=str(tmp_path), resume=True, quiet=True,
                run=dict(RUN, **run))
    assert refused.value.reschedulable == reschedulable
    for part in listed.split(", "):
        assert part in str(refused.value)
    if not reschedulable:  # reschedule=True does not make another model fit
        with pytest.raises(fit.RunMismatchError, match="cannot change"):
            fit.fit(net, trainer, train, epochs, out_dir=str(tmp_path), resume=True,
                    quiet=True, run=dict(RUN, **run), reschedule=True)


@pytest.mark.parametrize("lr,batch", [(0.05, 3), (0.01, 6)])
def test_reschedule_continues_on_the_new_schedule_at_the_resumed_epoch(lr, batch, folder,
                                                                       tmp_path):
    net, trainer, train, _ = _setup(folder, epochs=1)
    fit.fit(net, trainer, train, 1, out_dir=str(tmp_path), quiet=True, run=RUN)
    net, trainer, train, _ = _setup(folder, epochs=3, lr=lr, batch=batch)
    used, messages = {}, []

    def record(epoch, index, metrics):
        used.setdefault(epoch, trainer.learning_rate)  # the rate of the epoch's first update

    result = fit.fit(net, trainer, train, 3, out_dir=str(tmp_path), resume=True, quiet=True,
                     run=dict(RUN, lr=lr, batch_size=batch), reschedule=True,
                     on_batch_end=record, print_fn=messages.append)
    iters = len(train)
    expected = make_lr_scheduler("cosine", lr, 3, iters)
    assert used[1] == pytest.approx(expected(1 * iters + 1))
    assert used[2] == pytest.approx(expected(2 * iters + 1))
    assert result.history[1]["lr"] == pytest.approx(expected(2 * iters))
    assert any(m.startswith("learning-rate schedule recomputed") and
               f"epoch 2 starts at lr {expected(iters + 1):.3g}" in m for m in messages)


def test_a_plain_resume_after_a_reschedule_keeps_the_new_schedule(folder, tmp_path):
    net, trainer, train, _ = _setup(folder, epochs=1)
    fit.fit(net, trainer, train, 1, out_dir=str(tmp_path), quiet=True, run=RUN)
    net, trainer, train, _ = _setup(folder, epochs=3, batch=3)
    run = dict(RUN, batch_size=3)

    def stop_after_epoch_2(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit.fit(net, trainer, train, 3, out_dir=str(tmp_path), resume=True, quiet=True,
                run=run, reschedule=True, on_epoch_end=stop_after_epoch_2)
    # the run is now 3 epochs of 6 steps after 3 + 6 updates; its schedule is at step 12
    net, trainer, train, _ = _setup(folder, epochs=3, batch=3)
    used = {}
    fit.fit(net, trainer, train, 3, out_dir=str(tmp_path), resume=True, quiet=True, run=run,
            on_batch_end=lambda epoch, index, metrics: used.setdefault(
                epoch, trainer.learning_rate))
    assert used[2] == pytest.approx(make_lr_scheduler("cosine", 0.05, 3, 6)(2 * 6 + 1))


def test_log_columns_keep_their_order_when_a_resumed_run_adds_some(folder, tmp_path):
    net, trainer, train, val = _setup(folder, epochs=1)
    fit.fit(net, trainer, train, 1, out_dir=str(tmp_path), quiet=True)
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    first_row = list(json.loads((tmp_path / "log.json").read_text())[0])
    assert not any(column.startswith("val_") for column in header)
    net, trainer, train, val = _setup(folder, epochs=2)
    fit.fit(net, trainer, train, 2, val_data=val, out_dir=str(tmp_path), resume=True,
            quiet=True, reschedule=True)
    lines = (tmp_path / "log.csv").read_text().splitlines()
    columns = lines[0].split(",")
    assert columns[:len(header)] == header
    assert sorted(columns[len(header):]) == ["val_loss", "val_top1", "val_top5"]
    assert len(lines) == 3 and lines[1].endswith(",,,")  # epoch 1 had no validation
    rows = json.loads((tmp_path / "log.json").read_text())
    assert list(rows[0]) == first_row and list(rows[1]) == columns


class _FailingTrainer:
    """Writes half of the trainer state, then fails like a full disk."""

    def __init__(self, trainer):
        self.trainer = trainer

    def save_states(self, path):
        self.trainer.save_states(path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(28, "No space left on device")


def test_a_failed_checkpoint_write_never_replaces_the_good_one(folder, tmp_path):
    net, trainer, train, _ = _setup(folder)
    manager = CheckpointManager(str(tmp_path))
    manager.save(1, net, trainer, {"note": "good"})
    good = _params(net)
    fit.fit(net, trainer, train, 1, quiet=True)  # the network moves on
    with pytest.raises(OSError, match="No space"):
        manager.save(2, net, _FailingTrainer(trainer), {"note": "partial"})
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001", "latest.json"]  # no debris
    restored = tiny_net()
    assert manager.load(restored)["note"] == "good"
    _assert_same_params(_params(restored), good)


def test_a_corrupted_checkpoint_is_refused(folder, tmp_path):
    net, trainer, _, _ = _setup(folder)
    manager = CheckpointManager(str(tmp_path))
    manager.save(1, net, trainer, {})
    params = tmp_path / "epoch-0001" / "net.params"
    data = bytearray(params.read_bytes())
    data[-1] ^= 0xFF
    params.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the hash"):
        manager.load(tiny_net())


def test_checkpoint_of_another_network_is_refused(folder, tmp_path):
    net, trainer, _, _ = _setup(folder)
    manager = CheckpointManager(str(tmp_path))
    manager.save(1, net, trainer, {})
    with pytest.raises(CheckpointError, match="do not fit"):
        manager.load(tiny_net(classes=7))


def test_old_checkpoints_are_pruned(folder, tmp_path):
    net, trainer, _, _ = _setup(folder)
    manager = CheckpointManager(str(tmp_path), keep=2)
    for epoch in (1, 2, 3):
        manager.save(epoch, net, trainer, {})
    assert sorted(os.listdir(tmp_path)) == ["epoch-0002", "epoch-0003", "latest.json"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "log.json"
    target.write_text("old")

    def half_then_fail(path):
        with open(path, "w") as f:
            f.write("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), half_then_fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["log.json"]
    atomic_write(str(target), lambda path: open(path, "w").write("new"))
    assert target.read_text() == "new"


def test_export_float_reloads_with_the_same_outputs(folder, tmp_path):
    net, _, _, val = _setup(folder)
    files = export(net, str(tmp_path / "export" / "tiny"), packed=False, input_shape=(1, 3, 8, 8))
    reloaded = gluon.SymbolBlock.imports(files.symbol, ["data"], files.params)
    x = next(iter(val))[0]
    np.testing.assert_allclose(reloaded(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(tmp_path / "export")) == ["tiny-0000.params", "tiny-model.json",
                                                       "tiny-symbol.json"]


def test_two_devices_compute_the_one_device_gradient(tmp_path):
    """split_and_load over cpu(0), cpu(1): summed gradients = the whole batch's (no BN)."""
    rng = np.random.RandomState(0)
    x, y = rng.randn(16, 5).astype(np.float32), rng.randint(0, 3, 16).astype(np.float32)
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=8)
    results = []
    for ctx in ([mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]):
        mx.random.seed(1)
        net = recipe.prepare_network(gluon.nn.Dense(3, in_units=5), ctx)
        trainer = recipe.make_trainer(net, recipe.get_recipe("any"), len(loader), epochs=2)
        fit.fit(net, trainer, loader, 2, ctx=ctx, quiet=True)
        results.append(net.weight.data(ctx[0]).asnumpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import test_train_fit as t
    mode, folder, out = sys.argv[1:4]
    net, trainer, train, val = t._setup(folder, epochs=3)

    def kill_in_epoch_2(epoch, index, metrics):
        if mode == "kill" and epoch == 1 and index == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    t.fit.fit(net, trainer, train, 3, val_data=val, out_dir=out, resume=mode == "resume",
              quiet=True, on_batch_end=kill_in_epoch_2)
    net.save_parameters(os.path.join(out, "final.params"))
    trainer.save_states(os.path.join(out, "final.states"))
""")


def _child(mode, folder, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_ENGINE_TYPE="NaiveEngine")
    return subprocess.run([sys.executable, "-c", CHILD.format(tests=TESTS), mode, folder,
                           str(out)], env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("kind", ["folder", "recordio"])
def test_sigkilled_run_resumes_to_the_same_parameters(kind, folder, recdir, tmp_path):
    folder = folder if kind == "folder" else recdir
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    done = _child("straight", folder, straight)
    assert done.returncode == 0, done.stderr
    killed = _child("kill", folder, interrupted)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert CheckpointManager(str(interrupted / "checkpoints")).latest()["epoch"] == 1
    resumed = _child("resume", folder, interrupted)
    assert resumed.returncode == 0, resumed.stderr
    a = mx.nd.load(str(straight / "final.params"))
    b = mx.nd.load(str(interrupted / "final.params"))
    _assert_same_params({k: v.asnumpy() for k, v in a.items()},
                        {k: v.asnumpy() for k, v in b.items()})
    logs = [json.loads((d / "log.json").read_text()) for d in (straight, interrupted)]
    drop = ("seconds", "samples_per_second")
    assert ([{k: v for k, v in row.items() if k not in drop} for row in logs[0]]
            == [{k: v for k, v in row.items() if k not in drop} for row in logs[1]])
    assert (straight / "final.states").read_bytes() == (interrupted / "final.states").read_bytes()
