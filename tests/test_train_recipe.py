"""The paper's recipe: table, initialization, weight-decay policy, trainer, and one training step
of every registered network."""
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

from bmxnet_ext import QConv2D
from bmxnet_ext.training import recipe
from bmxnet_ext.training.optim import RAdam

try:
    from bmxnet_ext.model_zoo import get_model, list_models
    ZOO = list_models()
except ImportError:  # the zoo is a separate part of the package
    ZOO = []


@pytest.mark.parametrize("name,lr,epochs,batch,devices", [
    ("meliusnet22", 0.002, 120, 32, 2), ("meliusnet29", 0.002, 120, 32, 2),
    ("meliusnet42", 0.002, 120, 16, 4), ("meliusnet59", 0.003, 120, 32, 8),
    ("meliusnet_a", 0.002, 120, 32, 2), ("meliusnet_b", 0.002, 120, 32, 2),
    ("meliusnet_c", 0.002, 120, 32, 4), ("binary_densenet28", 0.002, 120, 32, 2),
    ("binary_densenet37", 0.002, 120, 16, 2), ("binary_densenet45", 0.002, 120, 32, 2),
])
def test_recipe_table_follows_the_paper(name, lr, epochs, batch, devices):
    r = recipe.get_recipe(name)
    assert (r.lr, r.epochs, r.batch_per_device, r.devices) == (lr, epochs, batch, devices)
    assert (r.optimizer, r.optimizer_params, r.wd, r.schedule) == (
        "radam", {"beta1": 0.95, "epsilon": 1e-5}, 0.0, "cosine")


@pytest.mark.parametrize("name,top1", [("meliusnet22", 63.6), ("meliusnet29", 65.8),
                                       ("meliusnet42", 69.2), ("meliusnet59", 71.0),
                                       ("meliusnet_a", 63.4), ("meliusnet_b", 65.7),
                                       ("meliusnet_c", 64.1)])
def test_recipe_records_reported_accuracy(name, top1):
    assert recipe.get_recipe(name).top1 == top1


# The command lines of the published runs (hpi-xnor/BMXNet-v2-wiki,
# experiment/mnes/<run>/details.md), transcribed: --lr, --epochs, --batch-size (default 32),
# number of --gpus, and the best top-1 of CurrentBestResults.md.
PUBLISHED_RUNS = {
    "3b3ab86be3cba31b658301ed0f3e2226": dict(lr=0.002, epochs=120, batch=32, gpus=2, top1=63.6),
    "b75427ab9a420b4bd5cbc1472e05b558": dict(lr=0.002, epochs=120, batch=32, gpus=2, top1=65.8),
    "27dec8d4da3dec75b65653643cc02eca": dict(lr=0.002, epochs=120, batch=16, gpus=4, top1=69.2),
    "b32820e3e829cd0d9715848cc2d8ba07": dict(lr=0.003, epochs=120, batch=32, gpus=8, top1=70.7),
    "b20876e68c314e4908b5067df11a9333": dict(lr=0.002, epochs=120, batch=32, gpus=2, top1=63.4),
    "ac6b05b34203a249cb9568ea60d84be9": dict(lr=0.002, epochs=120, batch=32, gpus=2, top1=65.7),
    "c02c02a12a5e18be506533bfd730bcb8": dict(lr=0.002, epochs=120, batch=32, gpus=4, top1=64.1),
    "c04facb13305fcbbb2bc9a65a59dd190": dict(lr=0.002, epochs=120, batch=32, gpus=2, top1=61.7),
    "71ab0b402671b22cc16f7c0a2c2fe9bd": dict(lr=0.002, epochs=120, batch=16, gpus=2, top1=63.3),
}
# Where the recipe keeps the paper's number instead of the run's (see recipe's docstring).
PAPER_TOP1 = {"meliusnet59": 71.0}


# larq-zoo's QuickNet tasks (larq/zoo larq_zoo/training/sota_experiments.py): epochs, global
# batch, the binary weights' Adam learning rate; top-1 from larq_zoo/sota/quicknet.py's tables.
LARQ_ZOO_TASKS = {
    "TrainQuickNetSmall": dict(model="quicknet_small", epochs=600, batch=2048, lr=1e-2, top1=59.4),
    "TrainQuickNet": dict(model="quicknet", epochs=600, batch=2048, lr=1e-2, top1=63.3),
    "TrainQuickNetLarge": dict(model="quicknet_large", epochs=600, batch=2048, lr=1e-2,
                               top1=66.9),
}


@pytest.mark.parametrize("name", sorted(recipe.RECIPES))
def test_every_recipe_cites_a_published_run(name):
    source = recipe.RECIPES[name].source
    assert re.fullmatch(r"BMXNet-v2-wiki experiment/mnes/[0-9a-f]{32}/details\.md", source) or \
        re.fullmatch(r"larq/zoo larq_zoo/training/sota_experiments\.py TrainQuickNet\w*", source)


@pytest.mark.parametrize("task", sorted(LARQ_ZOO_TASKS))
def test_quicknet_recipes_follow_larq_zoos_tasks(task):
    run = LARQ_ZOO_TASKS[task]
    r = recipe.get_recipe(run["model"])
    assert r.source == f"larq/zoo larq_zoo/training/sota_experiments.py {task}"
    assert (r.epochs, r.batch_per_device * r.devices, r.lr, r.top1) == (
        run["epochs"], run["batch"], run["lr"], run["top1"])
    # Keras' Adam defaults, no weight decay, cosine to 0 (larq-zoo's warm-up is not recorded)
    assert (r.optimizer, r.optimizer_params, r.wd, r.schedule) == (
        "adam", {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7}, 0.0, "cosine")


@pytest.mark.parametrize("name", sorted(n for n in recipe.RECIPES
                                        if recipe.RECIPES[n].source.startswith("BMXNet")))
def test_every_recipe_follows_the_run_it_cites(name):
    r = recipe.RECIPES[name]
    match = re.fullmatch(r"BMXNet-v2-wiki experiment/mnes/([0-9a-f]{32})/details\.md", r.source)
    assert match, f"{name} cites no published run: {r.source!r}"
    run = PUBLISHED_RUNS[match.group(1)]
    assert (r.lr, r.epochs, r.batch_per_device, r.devices) == (
        run["lr"], run["epochs"], run["batch"], run["gpus"])
    assert r.top1 == PAPER_TOP1.get(name, run["top1"])
    assert r.optimizer == "radam"


def test_recipes_cite_distinct_runs():
    sources = [r.source for r in recipe.RECIPES.values()]
    assert len(set(sources)) == len(sources)


def test_recipe_replace_ignores_none():
    r = recipe.get_recipe("meliusnet22").replace(lr=None, epochs=3)
    assert (r.lr, r.epochs) == (0.002, 3)


@pytest.mark.parametrize("changes,message", [
    ({"lr": -0.1}, "lr must be at least 0"), ({"lr": float("nan")}, "lr must be at least 0"),
    ({"wd": -1.0}, "wd must be at least 0"), ({"epochs": 0}, "epochs must be a positive"),
    ({"batch_per_device": 0}, "batch_per_device must be a positive"),
    ({"optimizer_params": [1]}, "optimizer_params must be a dict"),
])
def test_recipe_refuses_impossible_values(changes, message):
    with pytest.raises(ValueError, match=message):
        recipe.get_recipe("meliusnet22").replace(**changes)


@pytest.mark.parametrize("available,ctx,message", [
    (0, [mx.gpu(0)], "GPU 0 requested but this machine has no GPU"),
    (1, [mx.gpu(0), mx.gpu(1)], r"GPU 1 requested but this machine has 1 GPU\(s\)"),
    (2, mx.gpu(3), "GPU 3 requested"),
])
def test_a_gpu_the_machine_lacks_is_refused(available, ctx, message, monkeypatch):
    monkeypatch.setattr(mx.context, "num_gpus", lambda: available)
    with pytest.raises(ValueError, match=message):
        recipe.check_contexts(ctx)
    with pytest.raises(ValueError, match=message):
        recipe.prepare_network(nn.Dense(2, in_units=3), ctx)


@pytest.mark.parametrize("available,ctx", [(0, [mx.cpu(0), mx.cpu(1)]), (2, [mx.gpu(0),
                                                                            mx.gpu(1)])])
def test_devices_the_machine_has_pass(available, ctx, monkeypatch):
    monkeypatch.setattr(mx.context, "num_gpus", lambda: available)
    assert recipe.check_contexts(ctx) is None


@pytest.mark.parametrize("optimizer,params,message", [
    ("sgd", {"nosuch": 1}, "unexpected keyword argument 'nosuch'"),
    ("radam", {"beta1": 2.0}, "beta1 must be in"),
    ("no_such_optimizer", {}, "Cannot find optimizer"),
])
def test_make_trainer_names_a_bad_optimizer_or_argument(optimizer, params, message):
    net = recipe.prepare_network(nn.Dense(2, in_units=3))
    chosen = recipe.get_recipe("any").replace(optimizer=optimizer, optimizer_params=params)
    with pytest.raises(ValueError, match=message):
        recipe.make_trainer(net, chosen, iters_per_epoch=1, kvstore="local")


def test_paper_initializer_is_he_gaussian_fan_in():
    net = nn.Dense(2000, in_units=500, use_bias=False)
    mx.random.seed(0)
    net.initialize(recipe.paper_initializer())
    std = net.weight.data().asnumpy().std()
    assert std == pytest.approx(np.sqrt(2 / 500), rel=0.02)


def _small_net():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, padding=1, in_channels=3), nn.BatchNorm(in_channels=4),
            QConv2D(4, 3, padding=1, in_channels=4, input_quantizer="det_sign"),
            nn.GlobalAvgPool2D(), nn.Dense(3, in_units=4))
    return net


def test_norm_and_binary_weights_get_no_weight_decay():
    net = _small_net()
    recipe.prepare_network(net, input_shape=(1, 3, 6, 6))
    zero = {name for name, p in net.collect_params().items() if p.wd_mult == 0}
    bn, binary = net[1], net[2]
    assert zero == {bn.gamma.name, bn.beta.name, binary.weight.name}


def test_trainer_with_weight_decay_leaves_bn_and_binary_weights_undecayed():
    """With wd > 0 and zero gradients, only decayed parameters move."""
    net = _small_net()
    recipe.prepare_network(net, input_shape=(1, 3, 6, 6))
    r = recipe.get_recipe("meliusnet22").replace(wd=0.1, lr=0.1)
    trainer = recipe.make_trainer(net, r, iters_per_epoch=1, epochs=1)
    trainable = {k: p for k, p in net.collect_params().items() if p.grad_req != "null"}
    before = {k: p.data().asnumpy().copy() for k, p in trainable.items()}
    with autograd.record():
        zero_loss = net(mx.nd.ones((1, 3, 6, 6))).sum() * 0
    zero_loss.backward()
    trainer.step(1)
    moved = {k for k, p in trainable.items() if not np.array_equal(p.data().asnumpy(), before[k])}
    # float weights decay; biases start at 0, where decay does nothing
    assert moved == {net[0].weight.name, net[4].weight.name}
    assert isinstance(trainer.optimizer, RAdam)


def test_prepare_network_resolves_deferred_shapes():
    net = nn.Dense(3)
    recipe.prepare_network(net, input_shape=(2, 7))
    assert net.weight.shape == (3, 7)


def _zoo_param(name):
    return pytest.param(name, marks=pytest.mark.slow) if name == "meliusnet59" else name


@pytest.mark.parametrize("name", [_zoo_param(n) for n in ZOO] or ["<no zoo>"])
def test_one_recipe_step_of_every_registered_network(name):
    if not ZOO:
        pytest.skip("the model zoo registers no networks yet")
    mx.random.seed(0)
    net = get_model(name, classes=5, input_size=16)
    recipe.prepare_network(net, input_shape=(2, 3, 16, 16))
    trainer = recipe.make_trainer(net, recipe.get_recipe(name), iters_per_epoch=1, epochs=1)
    trainable = {k: p for k, p in net.collect_params().items() if p.grad_req != "null"}
    before = {k: p.data().asnumpy().copy() for k, p in trainable.items()}
    data = mx.nd.random.normal(shape=(2, 3, 16, 16))
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(data), mx.nd.array([1, 3]))
    loss.backward()
    trainer.step(2)
    assert np.isfinite(loss.asnumpy()).all()
    unchanged = [k for k, p in trainable.items() if np.array_equal(p.data().asnumpy(), before[k])]
    assert not unchanged
