"""The crash-safe training loop: epochs of training and validation, with a checkpoint, log rows
and a plot after every epoch, exact resume, and a NaN guard.

>>> result = fit(net, trainer, train_data, epochs=10, val_data=val_data, out_dir="run1")
>>> result = fit(net, trainer, train_data, epochs=10, val_data=val_data, out_dir="run1",
...              resume=True)           # after a crash, SIGKILL or Ctrl-C: continues exactly
>>> result = fit(net, trainer, train_data, epochs=20, val_data=val_data, out_dir="run1",
...              resume=True, reschedule=True)   # longer: the schedule is recomputed for 20

What "exactly" takes: the checkpoint holds parameters, optimizer state, update counts and the
schedule's position; each epoch reseeds Python's, numpy's and MXNet's generators from
``(seed, epoch)`` and calls ``train_data.set_epoch(epoch)`` when it exists, so epoch ``e`` shuffles
and augments the same way whether or not the run was interrupted before it. Data decoded in
worker processes (``num_workers > 0``) or MXNet's threaded engine on several threads can still
make runs differ in the last bits.
"""
import os
import random
import time
from dataclasses import dataclass, field

import mxnet as mx
import numpy as np

from .checkpoint import CheckpointManager
from .distributed import WorkerSync
from .history import TrainingLog
from .loop import NonFiniteLossError, evaluate_metrics, train_epoch_metrics
from .runs import RESCHEDULABLE, RunMismatchError, changed_settings, run_settings, \
    shifted_schedule, show_setting

__all__ = ["FitResult", "RunMismatchError", "RESCHEDULABLE", "fit", "seed_everything"]

@dataclass
class FitResult:
    """What :func:`fit` did: ``history`` (one dict per epoch, resumed epochs included),
    ``epochs_run`` (in this call), ``checkpoint`` (directory of the last commit, or None)."""

    history: list = field(default_factory=list)
    epochs_run: int = 0
    checkpoint: str = None


def seed_everything(seed, epoch=0):
    """Seeds Python's ``random``, numpy's and MXNet's generators (all devices) from
    ``(seed, epoch)``."""
    value = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] % (2 ** 31 - 1))
    random.seed(value)
    np.random.seed(value)
    mx.random.seed(value)


def fit(net, trainer, train_data, epochs, val_data=None, ctx=mx.cpu(), out_dir=None,
        resume=False, loss_fn=None, topk=(1, 5), seed=0, kvstore=None, keep_checkpoints=2,
        quiet=False, on_batch_end=None, on_epoch_end=None, print_fn=print, run=None,
        reschedule=False):
    """Trains ``net`` for ``epochs`` epochs (counted from 0, including resumed ones).

    Parameters
    ----------
    net : gluon.Block
        Initialized on ``ctx``.
    trainer : gluon.Trainer
        With its learning-rate schedule (see :func:`bmxnet_ext.training.recipe.make_trainer`).
    train_data, val_data : iterable of (data, label)
        E.g. :mod:`bmxnet_ext.training.pipelines` objects or gluon DataLoaders; ``set_epoch(epoch)``
        is called when present.
    epochs : int
        Total epochs of the run.
    ctx : Context or list of Context
        Devices; each batch is split across them.
    out_dir : str, optional
        Where ``checkpoints/``, ``log.csv``, ``log.json`` and ``curves.png`` go. Without it
        nothing is written and ``resume`` is impossible.
    resume : bool
        Continue from the last checkpoint in ``out_dir``: parameters, optimizer state and update
        count come from it, the learning-rate schedule is ``trainer``'s. With no checkpoint
        there, a new run starts (and says so). Without ``resume`` an ``out_dir`` that already
        holds a checkpoint is refused, not overwritten.
    loss_fn, topk
        Per-sample loss (softmax cross-entropy) and the accuracies measured (top-1, top-5).
    seed : int
        Base of the per-epoch seeds (:func:`seed_everything`).
    kvstore : mx.kv.KVStore, optional
        A distributed kvstore (``dist_sync``, ``dist_device_sync``): workers start from rank 0's
        parameters, sum gradients each step, stay in lock step and average BatchNorm statistics
        after every epoch (:class:`bmxnet_ext.training.distributed.WorkerSync`). The trainer must
        then have no kvstore of its own (:func:`bmxnet_ext.training.recipe.make_trainer`).
    keep_checkpoints : int
        Committed checkpoints kept on disk.
    quiet : bool
        No progress bars and no per-epoch lines.
    on_batch_end, on_epoch_end : callable, optional
        ``on_batch_end(epoch, batch_index, metrics)``; ``on_epoch_end(epoch, row)`` after the
        epoch's checkpoint is committed.
    run : dict, optional
        JSON-able settings of the run (e.g. ``model``, ``model_kwargs``, ``batch_size``, ``lr``,
        ``schedule``, ``optimizer``), stored in every checkpoint with ``epochs`` and
        ``iters_per_epoch`` (``len(train_data)``), which are always recorded. ``resume`` with
        other values raises :class:`RunMismatchError` before anything is loaded.
    reschedule : bool
        With ``resume``: accept other values of the :data:`RESCHEDULABLE` settings (more epochs,
        another lr or batch size) and continue on ``trainer``'s schedule at the position of the
        resumed epoch (``epoch * len(train_data)`` updates into it), not at the restored update
        count.

    Returns
    -------
    FitResult

    Raises
    ------
    NonFiniteLossError
        When a loss becomes NaN or infinite; the message names the last good checkpoint, which
        is left as it was.
    RunMismatchError
        ``resume`` with other settings than the checkpoint's run (see ``run``, ``reschedule``).
    KeyboardInterrupt
        Passed on after saying in which epoch (counted from 1, as the progress bar shows it)
        and which checkpoint a ``resume`` will continue from.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    sync = WorkerSync(kvstore)
    # gluon.Trainer keeps its kvstore argument here; a distributed one would reduce twice
    if sync.distributed and trainer._kvstore_params.get("kvstore") is not None:
        raise ValueError("for distributed training build the trainer without a kvstore "
                         "(bmxnet_ext.training.recipe.make_trainer does): fit sums gradients "
                         "over the workers itself")
    manager = CheckpointManager(os.path.join(out_dir, "checkpoints"), keep_checkpoints) \
        if out_dir else None
    run = run_settings(run, epochs, train_data)
    history, start, update_offset = [], 0, 0
    if resume and manager is None:
        raise ValueError("resume=True needs the out_dir of the run to continue")
    if resume and manager.latest() is None:
        _say(print_fn, False, f"no checkpoint in {manager.directory}: starting a new run")
    elif resume:
        changes = changed_settings(manager.read_meta().get("run"), run)
        if changes and not (reschedule and all(key in RESCHEDULABLE for key, _, _ in changes)):
            raise RunMismatchError(manager.directory, changes)
        schedule = trainer.optimizer.lr_scheduler
        meta = manager.load(net, trainer, ctx=ctx)
        # load_states brings back the saved optimizer with its schedule; the schedule itself is
        # this call's, its position the restored update count plus the saved offset
        history, start = list(meta["history"]), meta["epoch"]
        update_offset = meta.get("update_offset", 0)
        if reschedule and run["iters_per_epoch"] is not None:
            update_offset = start * run["iters_per_epoch"] - meta["num_update"]
        trainer.optimizer.lr_scheduler = shifted_schedule(schedule, update_offset)
        _say(print_fn, quiet, f"resumed from {manager.directory} after epoch {start} "
                              f"(update {meta['num_update']}, lr {meta['lr']:.3g})")
        if reschedule:
            _say(print_fn, False, "learning-rate schedule recomputed for " + (
                ", ".join(f"{key} {show_setting(new)}" for key, _, new in changes) or
                "the same settings") + f": epoch {start + 1} starts at lr "
                f"{_next_lr(trainer):.3g}")
    elif manager is not None and manager.latest() is not None:
        raise FileExistsError(f"{out_dir} already holds a checkpoint (epoch "
                              f"{manager.latest()['epoch']}); pass resume=True to continue it or "
                              "choose another out_dir")
    sync.setup(net)  # distributed: every worker continues from rank 0's parameters
    log = TrainingLog(out_dir, history) if out_dir else None
    result = FitResult(history=history, checkpoint=_committed(manager))

    for epoch in range(start, epochs):
        try:
            row = _run_epoch(net, trainer, train_data, val_data, epoch, epochs, ctx, loss_fn,
                             topk, seed, sync, quiet, on_batch_end)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"epoch {epoch + 1}/{epochs}: {err}. Stopped; "
                                     f"{_last_good(manager)}") from err
        except KeyboardInterrupt:
            _say(print_fn, False, f"interrupted in epoch {epoch + 1}/{epochs}; "
                                  f"{_last_good(manager)}")
            raise
        history.append(row)
        if manager is not None:
            meta = {"history": history, "num_update": row["num_update"], "lr": row["lr"],
                    "seed": seed, "run": run, "update_offset": update_offset}
            result.checkpoint = manager.save(epoch + 1, net, trainer, meta)
            log.append(row)
        result.epochs_run += 1
        _say(print_fn, quiet, _epoch_line(row, epochs))
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    return result


def _run_epoch(net, trainer, train_data, val_data, epoch, epochs, ctx, loss_fn, topk, seed,
               sync, quiet, on_batch_end):
    for data in (train_data, val_data):
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
    seed_everything(seed, epoch)
    start = time.perf_counter()
    batch_hook = None if on_batch_end is None else (
        lambda index, metrics: on_batch_end(epoch, index, metrics))
    train = train_epoch_metrics(net, trainer, train_data, loss_fn, ctx, topk, sync,
                                desc=f"epoch {epoch + 1}/{epochs}", quiet=quiet,
                                on_batch_end=batch_hook)
    seconds = time.perf_counter() - start
    sync.average_aux_states(net)
    row = {"epoch": epoch + 1}
    row.update({f"train_{key}": value for key, value in train.items() if key != "samples"})
    if val_data is not None:
        val = evaluate_metrics(net, val_data, ctx, loss_fn, topk)
        row.update({f"val_{key}": value for key, value in val.items() if key != "samples"})
    row.update(lr=float(trainer.learning_rate), num_update=int(trainer.optimizer.num_update),
               seconds=seconds, samples_per_second=train["samples"] / max(seconds, 1e-9))
    return row


def _next_lr(trainer):
    """The learning rate of the trainer's next update."""
    optimizer = trainer.optimizer
    if optimizer.lr_scheduler is None:
        return float(trainer.learning_rate)
    return float(optimizer.lr_scheduler(optimizer.num_update + 1))


def _committed(manager):
    record = manager.latest() if manager is not None else None
    return os.path.join(manager.directory, record["dir"]) if record else None


def _last_good(manager):
    record = manager.latest() if manager is not None else None
    if record is None:
        return "no checkpoint was written (nothing finished an epoch yet)"
    return (f"the last good checkpoint is epoch {record['epoch']} in "
            f"{os.path.join(manager.directory, record['dir'])}; resuming continues from it")


def _epoch_line(row, epochs):
    parts = [f"epoch {row['epoch']}/{epochs}", f"train loss {row['train_loss']:.4f}"]
    parts += [f"train {k} {row[f'train_{k}']:.4f}" for k in ("top1", "top5")
              if f"train_{k}" in row]
    parts += [f"val {k} {row[f'val_{k}']:.4f}" for k in ("loss", "top1", "top5")
              if f"val_{k}" in row]
    parts += [f"lr {row['lr']:.3g}", f"{row['samples_per_second']:.0f} img/s",
              f"{row['seconds']:.1f} s"]
    return ", ".join(parts)


def _say(print_fn, quiet, message):
    if not quiet and print_fn is not None:
        print_fn(message)
