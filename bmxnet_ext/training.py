"""Training-loop pieces a user reuses: one epoch of training, evaluation, prediction."""
import math

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

__all__ = ["NonFiniteLossError", "train_epoch", "evaluate", "predict"]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the step that produced it was not applied."""


def _progress(iterable, desc, total, quiet):
    if quiet:
        return iterable
    from tqdm import tqdm
    # disable=None: bars on a terminal, nothing in logs and pipes
    return tqdm(iterable, desc=desc, total=total, leave=False, unit="batch", disable=None)


def train_epoch(net, trainer, loader, loss_fn=None, ctx=mx.cpu(), desc="train", quiet=False):
    """Trains ``net`` for one pass over ``loader``; returns ``(mean loss, accuracy)``.

    Raises :class:`NonFiniteLossError` (before the update) when a batch's loss is NaN or inf.
    """
    loss_fn = loss_fn or gluon.loss.SoftmaxCrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    for data, label in _progress(loader, desc, len(loader), quiet):
        data, label = data.as_in_context(ctx), label.as_in_context(ctx)
        with autograd.record():
            output = net(data)
            loss = loss_fn(output, label)
        loss.backward()
        batch_loss = float(loss.sum().asscalar())
        if not math.isfinite(batch_loss):
            raise NonFiniteLossError(f"training loss became {batch_loss} after {seen} samples")
        trainer.step(data.shape[0])
        total_loss += batch_loss
        correct += int((output.argmax(axis=1) == label.astype(output.dtype)).sum().asscalar())
        seen += data.shape[0]
    return total_loss / max(seen, 1), correct / max(seen, 1)


def predict(net, loader, ctx=mx.cpu()):
    """Concatenated outputs (logits) of ``net`` over ``loader`` as a numpy array."""
    outputs = [net(data.as_in_context(ctx)).asnumpy() for data, _ in loader]
    return np.concatenate(outputs)


def evaluate(net, loader, ctx=mx.cpu()):
    """Top-1 accuracy of ``net`` over ``loader``."""
    correct, seen = 0, 0
    for data, label in loader:
        output = net(data.as_in_context(ctx))
        correct += int((output.argmax(axis=1) == label.as_in_context(ctx).astype(output.dtype))
                       .sum().asscalar())
        seen += data.shape[0]
    return correct / max(seen, 1)
