"""Optimization for the paper's recipe: the RAdam optimizer and learning-rate schedules.

MXNet 1.9.1 ships no RAdam, so :class:`RAdam` is registered here under the name ``"radam"``
(``gluon.Trainer(params, "radam", ...)`` works once :mod:`bmxnet_ext` is imported). Schedules are
gluoncv's :class:`~gluoncv.utils.LRScheduler`, stepped per iteration.
"""
import math

import mxnet as mx
from mxnet import nd

__all__ = ["RAdam", "make_lr_scheduler", "SCHEDULES"]

SCHEDULES = ("cosine", "step", "constant")


@mx.optimizer.register
class RAdam(mx.optimizer.Optimizer):
    """Rectified Adam (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond",
    ICLR 2020), registered as ``"radam"``.

    At step ``t`` (per parameter), with ``g = clip(grad * rescale_grad + wd * weight)``::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)          # length of the approximated SMA
        if rho_t > sma_threshold:                                 # variance is tractable: rectify
            r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            w -= lr * r * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + epsilon)
        else:                                                     # first steps: momentum SGD
            w -= lr / (1 - beta1**t) * m

    The defaults are MeliusNet's recipe (beta1 0.95, epsilon 1e-5); the threshold 5 is the one of
    the authors' reference implementation (the paper's algorithm states 4, where ``r`` is 0).
    Weight decay is L2 added to the gradient, as in MXNet's Adam; the recipe uses none.

    Parameters
    ----------
    learning_rate : float
        Base learning rate (a ``lr_scheduler`` overrides it per iteration).
    beta1, beta2 : float
        Decay rates of the first and second moment estimates, in ``[0, 1)``.
    epsilon : float
        Added to ``sqrt(v)`` in the rectified step.
    sma_threshold : float
        The rectified step is taken once ``rho_t`` exceeds this (must be >= 4).
    **kwargs
        Arguments of :class:`mxnet.optimizer.Optimizer` (``wd``, ``rescale_grad``,
        ``clip_gradient``, ``lr_scheduler``, ``multi_precision``, ...).
    """

    def __init__(self, learning_rate=0.002, beta1=0.95, beta2=0.999, epsilon=1e-5,
                 sma_threshold=5.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"RAdam: {name} must be in [0, 1), got {value}")
        if epsilon <= 0:
            raise ValueError(f"RAdam: epsilon must be positive, got {epsilon}")
        if sma_threshold < 4:
            raise ValueError(f"RAdam: sma_threshold must be at least 4 (the rectification term "
                             f"is undefined below), got {sma_threshold}")
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.sma_threshold = sma_threshold

    def create_state(self, index, weight):
        """First and second moment estimates, zero, shaped like ``weight``."""
        return (nd.zeros(weight.shape, weight.context, dtype=weight.dtype),
                nd.zeros(weight.shape, weight.context, dtype=weight.dtype))

    def rectification(self, t):
        """``(rho_t, r_t)`` at step ``t``; ``r_t`` is None while ``rho_t <= sma_threshold``."""
        rho_inf = 2.0 / (1.0 - self.beta2) - 1.0
        beta2_t = self.beta2 ** t
        rho_t = rho_inf - 2.0 * t * beta2_t / (1.0 - beta2_t)
        if rho_t <= self.sma_threshold:
            return rho_t, None
        r_t = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        return rho_t, r_t

    def update(self, index, weight, grad, state):
        """Applies one RAdam step to ``weight`` in place (see the class docstring)."""
        self._update_count(index)
        lr = self._get_lr(index)
        wd = self._get_wd(index)
        t = self._index_update_count[index]
        mean, var = state
        bias1 = 1.0 - self.beta1 ** t
        _, r_t = self.rectification(t)
        if r_t is not None:
            # The rectified step is Adam's fused update with the rectified, bias-corrected lr.
            kwargs = {"beta1": self.beta1, "beta2": self.beta2, "epsilon": self.epsilon,
                      "rescale_grad": self.rescale_grad, "wd": wd,
                      "lr": lr * r_t * math.sqrt(1.0 - self.beta2 ** t) / bias1}
            if self.clip_gradient is not None:
                kwargs["clip_gradient"] = self.clip_gradient
            nd.adam_update(weight, grad, mean, var, out=weight, lazy_update=False, **kwargs)
            return
        g = grad * self.rescale_grad + wd * weight
        if self.clip_gradient is not None:
            g = nd.clip(g, -self.clip_gradient, self.clip_gradient)
        mean[:] = self.beta1 * mean + (1.0 - self.beta1) * g
        var[:] = self.beta2 * var + (1.0 - self.beta2) * nd.square(g)
        weight[:] -= (lr / bias1) * mean


def make_lr_scheduler(mode, base_lr, epochs, iters_per_epoch, target_lr=0.0, step_epochs=(),
                      step_factor=0.1):
    """A per-iteration learning-rate schedule (gluoncv's ``LRScheduler``), without warm-up.

    Parameters
    ----------
    mode : str
        ``"cosine"`` (the paper's: from ``base_lr`` at the first iteration to ``target_lr`` at the
        last), ``"step"`` (times ``step_factor`` from each epoch in ``step_epochs`` on) or
        ``"constant"``.
    base_lr : float
        Learning rate of the first iteration (an optimizer given this schedule sets it to its own
        ``learning_rate``).
    epochs, iters_per_epoch : int
        Length of training: the schedule spans ``epochs * iters_per_epoch`` iterations.
    target_lr : float
        Final learning rate of the cosine schedule.
    step_epochs : sequence of int
        Epochs at which the step schedule multiplies the rate by ``step_factor``.

    Returns
    -------
    gluoncv.utils.LRScheduler
        Its position is the optimizer's ``num_update``, which :meth:`gluon.Trainer.save_states`
        stores with it.
    """
    from gluoncv.utils import LRScheduler

    if mode not in SCHEDULES:
        raise ValueError(f"unknown schedule {mode!r}; expected one of {', '.join(SCHEDULES)}")
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"a schedule needs epochs >= 1 and iters_per_epoch >= 1, got "
                         f"{epochs} and {iters_per_epoch}")
    if mode == "step" and not step_epochs:
        raise ValueError("the step schedule needs step_epochs (epochs at which the rate drops)")
    if mode == "cosine" and epochs * iters_per_epoch == 1:
        mode = "constant"  # a one-iteration cosine has no decay to make (and gluoncv divides by 0)
    # MXNet asks for the rate of update n (counted from 1); offset 1 gives update 1 base_lr.
    return LRScheduler(mode, base_lr=base_lr, target_lr=target_lr, nepochs=epochs,
                       iters_per_epoch=iters_per_epoch, offset=1,
                       step_epoch=list(step_epochs) or None, step_factor=step_factor)
