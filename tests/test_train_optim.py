"""RAdam against a numpy reference of its update rule; learning-rate schedules."""
import math

import mxnet as mx
import numpy as np
import pytest

from bmxnet_ext.training import optim  # noqa: F401  (registers "radam")
from bmxnet_ext.training.optim import RAdam, make_lr_scheduler


def radam_reference(weight, grads, lr, beta1, beta2, eps, wd=0.0, rescale=1.0, clip=None,
                    threshold=5.0):
    """Liu et al. 2019, Algorithm 2, in float64: the weight after each gradient in ``grads``."""
    w = weight.astype(np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    rho_inf = 2 / (1 - beta2) - 1
    history = []
    for t, grad in enumerate(grads, start=1):
        g = grad * rescale + wd * w
        if clip is not None:
            g = np.clip(g, -clip, clip)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        rho_t = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)
        if rho_t > threshold:
            adaptive = np.sqrt(1 - beta2 ** t) / (np.sqrt(v) + eps)
            r_t = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                            / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            w = w - lr * r_t * m_hat * adaptive
        else:
            w = w - lr * m_hat
        history.append(w.copy())
    return history


CASES = {
    "recipe": dict(),
    "paper_beta2_and_eps": dict(beta2=0.99, epsilon=1e-8),
    "weight_decay": dict(wd=0.01),
    "rescale_and_clip": dict(rescale_grad=0.5, clip_gradient=0.3),
    "paper_threshold_4": dict(sma_threshold=4.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_radam_matches_numpy_reference_over_steps(case):
    kwargs = CASES[case]
    rng = np.random.RandomState(1)
    weight = rng.randn(3, 5).astype(np.float32)
    grads = [rng.randn(3, 5).astype(np.float32) for _ in range(12)]
    opt = mx.optimizer.create("radam", learning_rate=0.01, **kwargs)
    w = mx.nd.array(weight)
    state = opt.create_state(0, w)
    expected = radam_reference(
        weight, grads, 0.01, opt.beta1, opt.beta2, opt.epsilon, wd=kwargs.get("wd", 0.0),
        rescale=kwargs.get("rescale_grad", 1.0), clip=kwargs.get("clip_gradient"),
        threshold=opt.sma_threshold)
    for step, grad in enumerate(grads):
        opt.update(0, w, mx.nd.array(grad), state)
        np.testing.assert_allclose(w.asnumpy(), expected[step], rtol=2e-5, atol=2e-6,
                                   err_msg=f"step {step + 1}")


def test_radam_is_registered_with_the_recipe_defaults():
    opt = mx.optimizer.create("radam")
    assert isinstance(opt, RAdam)
    assert (opt.beta1, opt.beta2, opt.epsilon) == (0.95, 0.999, 1e-5)


@pytest.mark.parametrize("t,rectified", [(1, False), (5, False), (6, True), (1000, True)])
def test_rectification_starts_once_the_sma_exceeds_the_threshold(t, rectified):
    opt = RAdam()
    rho_t, r_t = opt.rectification(t)
    assert (r_t is not None) == rectified == (rho_t > 5)
    if rectified:
        assert 0 < r_t < 1


@pytest.mark.parametrize("kwargs,message", [({"beta1": 1.0}, "beta1"), ({"beta2": -0.1}, "beta2"),
                                            ({"epsilon": 0}, "epsilon"),
                                            ({"sma_threshold": 3}, "sma_threshold")])
def test_radam_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RAdam(**kwargs)


def test_radam_trains_through_gluon_trainer_with_per_parameter_counts():
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), "radam", {"learning_rate": 0.1})
    before = net.weight.data().asnumpy().copy()
    with mx.autograd.record():
        loss = net(mx.nd.ones((4, 3))).sum()
    loss.backward()
    trainer.step(4)
    # step 1 is the unrectified one: w -= lr * g (m_hat equals g)
    np.testing.assert_allclose(net.weight.data().asnumpy(), before - 0.1 * 4 / 4, rtol=1e-6)


def test_cosine_schedule_goes_from_base_to_zero_per_iteration():
    epochs, iters = 3, 4
    schedule = make_lr_scheduler("cosine", 0.002, epochs, iters)
    total = epochs * iters
    rates = [schedule(n) for n in range(1, total + 1)]
    expected = [0.002 * (1 + math.cos(math.pi * n / (total - 1))) / 2 for n in range(total)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12, atol=1e-15)
    assert rates[0] == 0.002 and rates[-1] == 0


def test_step_schedule_drops_at_the_given_epochs():
    schedule = make_lr_scheduler("step", 0.1, 4, 2, step_epochs=(1, 3), step_factor=0.5)
    rates = [schedule(n) for n in range(1, 9)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025])


def test_schedule_through_the_optimizer_uses_its_learning_rate_per_update():
    schedule = make_lr_scheduler("cosine", 0.5, 1, 3)
    opt = mx.optimizer.create("radam", learning_rate=0.5, lr_scheduler=schedule)
    w = mx.nd.ones(2)
    state = opt.create_state(0, w)
    seen = []
    for _ in range(3):
        opt.update(0, w, mx.nd.ones(2), state)
        seen.append(opt.learning_rate)
    np.testing.assert_allclose(seen, [0.5, 0.25, 0.0], atol=1e-12)


@pytest.mark.parametrize("args,message", [
    (("linear", 0.1, 2, 2), "unknown schedule"),
    (("cosine", 0.1, 0, 2), "epochs >= 1"),
    (("step", 0.1, 2, 2), "step_epochs"),
])
def test_schedule_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        make_lr_scheduler(*args)
