"""Training-loop pieces a user reuses: one epoch of training, evaluation, prediction.

Every function takes ``ctx`` as one context or a list; batches are split across a list with
``gluon.utils.split_and_load``. :func:`bmxnet_ext.training.fit.fit` builds the crash-safe loop over
epochs from these.
"""
import itertools
import math

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .distributed import WorkerSync

__all__ = ["NonFiniteLossError", "LabelRangeError", "train_epoch", "train_epoch_metrics",
           "evaluate", "evaluate_metrics", "predict"]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the step that produced it was not applied.

    (Its forward pass did run, so BatchNorm running statistics saw the batch; a checkpoint
    written before it is the state to continue from.)
    """


class LabelRangeError(ValueError):
    """A class label outside ``[0, outputs)``: the network was built for fewer classes than the
    data has (softmax cross-entropy would silently clip such a label)."""


def _check_labels(label, outputs):
    """Raises :class:`LabelRangeError` unless every label indexes one of ``outputs`` columns."""
    classes = outputs.shape[-1]
    low, high = float(label.min().asscalar()), float(label.max().asscalar())
    if low < 0 or high >= classes:
        raise LabelRangeError(f"a batch holds label {int(low if low < 0 else high)} but the "
                              f"network has {classes} outputs; build it with at least "
                              f"{int(high) + 1} classes")


def _contexts(ctx):
    ctx = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    if not ctx:
        raise ValueError("ctx must be a context or a non-empty list of contexts")
    return list(ctx)


def _split(data, label, contexts):
    # a short last batch is spread over as many devices as it has samples
    contexts = contexts[:max(1, min(len(contexts), data.shape[0]))]
    return (gluon.utils.split_and_load(data, contexts, even_split=False),
            gluon.utils.split_and_load(label, contexts, even_split=False))


def _topk_correct(output, label, k):
    """Samples of the batch whose label is among the ``k`` largest outputs."""
    k = min(k, output.shape[1])
    top = output.topk(k=k, ret_typ="indices")
    return float((top == label.reshape((-1, 1)).astype(top.dtype)).sum().asscalar())


def _progress_bar(desc, quiet):
    if quiet:
        return None
    from tqdm import tqdm
    # counts images, so its rate is the throughput; disable=None: shown on a terminal only
    return tqdm(desc=desc, leave=False, unit="img", unit_scale=True, disable=None)


def _batches(loader):
    """``(data, label)`` batches, then None forever: a worker that ran out keeps answering."""
    for batch in loader:
        yield batch
    while True:
        yield None


def train_epoch_metrics(net, trainer, loader, loss_fn=None, ctx=mx.cpu(), topk=(1, 5),
                        sync=None, desc="train", quiet=False, on_batch_end=None):
    """Trains ``net`` for one pass over ``loader``; returns a dict of metrics over the pass:
    ``loss`` (mean per sample), ``top1``, ``top5`` (one per entry of ``topk``), ``samples``.

    Parameters
    ----------
    net : gluon.Block
    trainer : gluon.Trainer
        Its ``step`` (``update`` when distributed) is called once per batch with the number of
        samples of the step over all workers, so gradients are means over the global batch.
    loader : iterable of (data, label)
        NDArray batches (any context; split across ``ctx``).
    loss_fn : gluon.loss.Loss
        Per-sample loss; softmax cross-entropy by default.
    ctx : Context or list of Context
    topk : tuple of int
        Accuracies to measure (k larger than the number of classes counts as every class).
    sync : WorkerSync, optional
        For distributed training (after its ``setup(net)``): sums gradients and each step's
        loss over the workers, and stops the epoch of every worker when one runs out of data.
        ``trainer`` must then have no kvstore of its own.
    on_batch_end : callable, optional
        ``on_batch_end(batch_index, metrics_so_far)`` after every applied step.

    Raises
    ------
    NonFiniteLossError
        Before the update, when a step's loss (summed over all workers) is NaN or infinite.
    LabelRangeError
        With the default loss, before the update, when a label is not one of the network's
        outputs.
    """
    check_labels = loss_fn is None
    loss_fn = loss_fn or gluon.loss.SoftmaxCrossEntropyLoss()
    contexts, sync = _contexts(ctx), sync or WorkerSync()
    totals = {"loss": 0.0, **{f"top{k}": 0.0 for k in topk}}
    seen = global_seen = 0
    bar = _progress_bar(desc, quiet)
    batches = _batches(loader)
    try:
        for index in itertools.count():
            batch = next(batches)
            if batch is None:
                sync.step(0.0, 0, False)
                break
            data, label = batch
            if data.shape[0] < len(contexts):
                # an idle device would add its previous step's gradient to the sum
                raise ValueError(f"a training batch of {data.shape[0]} cannot be split over "
                                 f"{len(contexts)} devices; drop short last batches "
                                 "(DataLoader last_batch='discard')")
            datas, labels = _split(data, label, contexts)
            with autograd.record():
                outputs = [net(x) for x in datas]
                losses = [loss_fn(out, y) for out, y in zip(outputs, labels)]
            if check_labels:
                _check_labels(label, outputs[0])
            autograd.backward(losses)
            batch_loss = sum(float(loss.sum().asscalar()) for loss in losses)
            step_loss, step_samples, everyone = sync.step(batch_loss, data.shape[0], True)
            if not everyone:
                break  # another worker's shard ended: nobody takes this step
            if not math.isfinite(step_loss):
                raise NonFiniteLossError(
                    f"training loss became {step_loss} at batch {index} (after {seen} samples "
                    f"of this pass); the update was not applied")
            if sync.distributed:
                sync.allreduce_grads()
                trainer.update(step_samples)
            else:
                trainer.step(step_samples)
            seen += data.shape[0]
            global_seen += step_samples
            totals["loss"] += step_loss
            for k in topk:
                totals[f"top{k}"] += sum(_topk_correct(out, y, k)
                                         for out, y in zip(outputs, labels))
            if bar is not None:
                if index == 0 and hasattr(loader, "__len__"):
                    bar.total = len(loader) * data.shape[0]
                bar.update(data.shape[0])
                bar.set_postfix(loss=f"{totals['loss'] / global_seen:.3f}",
                                top1=f"{totals.get('top1', 0) / seen:.3f}", refresh=False)
            if on_batch_end is not None:
                on_batch_end(index, _means(totals, seen, global_seen))
    finally:
        if bar is not None:
            bar.close()
    return _means(totals, seen, global_seen)


def _means(totals, seen, global_seen):
    # the loss is all-reduced (global); accuracies are this worker's
    metrics = {key: value / max(seen, 1) for key, value in totals.items() if key != "loss"}
    metrics["loss"] = totals["loss"] / max(global_seen, 1)
    metrics["samples"] = seen
    return metrics


def train_epoch(net, trainer, loader, loss_fn=None, ctx=mx.cpu(), desc="train", quiet=False):
    """Trains ``net`` for one pass over ``loader``; returns ``(mean loss, accuracy)``.

    Raises :class:`NonFiniteLossError` (before the update) when a batch's loss is NaN or inf.
    See :func:`train_epoch_metrics` for multiple devices, top-k and distributed training.
    """
    metrics = train_epoch_metrics(net, trainer, loader, loss_fn, ctx, topk=(1,), desc=desc,
                                  quiet=quiet)
    return metrics["loss"], metrics["top1"]


def evaluate_metrics(net, loader, ctx=mx.cpu(), loss_fn=None, topk=(1, 5)):
    """``{"loss", "top1", "top5", "samples"}`` of ``net`` over ``loader`` (no updates); with the
    default loss a label that is not one of the outputs raises :class:`LabelRangeError`."""
    check_labels = loss_fn is None
    loss_fn = loss_fn or gluon.loss.SoftmaxCrossEntropyLoss()
    contexts = _contexts(ctx)
    totals = {"loss": 0.0, **{f"top{k}": 0.0 for k in topk}}
    seen = 0
    for data, label in loader:
        datas, labels = _split(data, label, contexts)
        for x, y in zip(datas, labels):
            output = net(x)
            if check_labels:
                _check_labels(y, output)
            totals["loss"] += float(loss_fn(output, y).sum().asscalar())
            for k in topk:
                totals[f"top{k}"] += _topk_correct(output, y, k)
        seen += data.shape[0]
    return _means(totals, seen, seen)


def predict(net, loader, ctx=mx.cpu()):
    """Concatenated outputs (logits) of ``net`` over ``loader`` as a numpy array."""
    contexts = _contexts(ctx)
    outputs = []
    for data, label in loader:
        datas, _ = _split(data, label, contexts)
        outputs += [net(x).asnumpy() for x in datas]
    return np.concatenate(outputs)


def evaluate(net, loader, ctx=mx.cpu()):
    """Top-1 accuracy of ``net`` over ``loader``."""
    return evaluate_metrics(net, loader, ctx, topk=(1,))["top1"]
