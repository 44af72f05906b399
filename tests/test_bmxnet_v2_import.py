"""Import of BMXNet-v2 checkpoints: round trips and refusals.

The checkpoints are written here by a stand-in of BMXNet-v2's model (hpi-xnor/BMXNet-v2-examples
``binary_models/basenet_dense.py``, ``meliusnet.py``, ``common_layers.py``): the same Gluon
container structure, so ``save_parameters`` produces BMXNet-v2's own names (``features.*``,
``layerK.P.*``, ``...qconv.weight``, ``finalize.0.*``, ``output.*``) including the duplicated
``current_stage``, and ``collect_params().save(strip_prefix=...)`` its old prefixed names. No
forward pass is needed from it: its parameters are copied from one of our networks as it is
built, so the imported network must compute exactly what that network computes.
"""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn
from mxnet.gluon.contrib.nn import Identity

from bmxnet_ext.binary.blocks import ImprovementBlock, Transition
from bmxnet_ext.inference.bmxnet_v2 import CheckpointMismatch, load_bmxnet_v2
from bmxnet_ext.model_zoo import get_model
from bmxnet_ext.model_zoo.bmxnet_v2 import import_bmxnet_v2
from conftest import trained_like


class _ActivatedConv(nn.HybridBlock):
    # BMXNet-v2's activated_conv: a parameter-free activation and the binary conv `qconv`.
    def __init__(self, channels, in_channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.qconv = nn.Conv2D(channels, 3, padding=1, use_bias=False,
                                   in_channels=in_channels)


class _V2Improvement(nn.HybridBlock):
    def __init__(self, channels, in_channels, **kwargs):
        super().__init__(**kwargs)
        self.body = nn.HybridSequential(prefix="")
        self.body.add(nn.BatchNorm(in_channels=in_channels),
                      _ActivatedConv(channels, in_channels))


class _V2Net(nn.HybridBlock):
    """BMXNet-v2's BaseNetDense container layout, built from one of our networks' structure;
    ``pairs`` lists (their param, our param) as each layer is made."""

    def __init__(self, ours, **kwargs):
        super().__init__(**kwargs)
        self.pairs = []
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            stem, stage_index, layer_index = None, 0, 0
            for child in ours.features._children.values():
                if stem is None:
                    stem = child
                    self._stem(child)
                elif isinstance(child, Transition):
                    layer_index += 1
                    self._layer(layer_index).add(self._transition(child))
                else:
                    stage_index += 1
                    self.current_stage = nn.HybridSequential(prefix=f"stage{stage_index}_")
                    with self.current_stage.name_scope():
                        for block in child._children.values():
                            self.current_stage.add(self._block(block))
                    self._layer(layer_index).add(self.current_stage)
            self.finalize = nn.HybridSequential(prefix="")
            self.finalize.add(self._bn(ours.head.norm), nn.Activation("relu"))
            self.output = nn.Dense(ours.head.output._units, in_units=ours.head.output._in_units)
            self._pair(self.output, ours.head.output)

    def _layer(self, index):
        name = f"layer{index}"
        if not hasattr(self, name):
            setattr(self, name, nn.HybridSequential(prefix=""))
        return getattr(self, name)

    def _pair(self, theirs, ours):
        self.pairs += list(zip(theirs.collect_params().values(), ours.collect_params().values()))

    def _bn(self, ours):
        bn = nn.BatchNorm(in_channels=ours.gamma.shape[0])
        self._pair(bn, ours)
        return bn

    def _conv(self, ours):
        conv = nn.Conv2D(ours._channels, ours._kwargs["kernel"], groups=ours._kwargs["num_group"],
                         use_bias=False, in_channels=ours._in_channels)
        self._pair(conv, ours)
        return conv

    def _stem(self, ours):
        layers = [layer for layer in ours._children.values()
                  if isinstance(layer, (nn.Conv2D, nn.BatchNorm))]
        if ours.stem_name == "grouped_stem":
            stem = nn.HybridSequential(prefix="stem_")
            with stem.name_scope():
                for layer in layers[:5]:
                    stem.add(self._conv(layer) if isinstance(layer, nn.Conv2D)
                             else self._bn(layer))
                    if isinstance(layer, nn.BatchNorm):
                        stem.add(nn.Activation("relu"))
            self.features.add(stem, self._bn(layers[5]))
        else:
            for layer in layers:
                self.features.add(self._conv(layer) if isinstance(layer, nn.Conv2D)
                                  else self._bn(layer))

    def _transition(self, ours):
        transition = nn.HybridSequential(prefix="")
        with transition.name_scope():
            for layer in ours._children.values():
                if isinstance(layer, nn.BatchNorm):
                    transition.add(self._bn(layer))
                elif isinstance(layer, nn.Conv2D):
                    transition.add(self._conv(layer))
                else:
                    transition.add(nn.Activation("relu"))  # parameter-free stand-in
        return transition

    def _unit(self, unit):
        conv = unit.conv.conv
        act = _ActivatedConv(conv._channels, conv._in_channels)
        self._pair(act, conv)
        return act

    def _block(self, ours):
        if isinstance(ours, ImprovementBlock):
            block = _V2Improvement(ours.unit.conv.conv._channels, ours.in_channels, prefix="")
            bn, act = block.body._children.values()
            self._pair(bn, ours.unit.norm)
            self._pair(act, ours.unit.conv.conv)
            return block
        dense = nn.HybridSequential(prefix="")  # HybridConcurrent(axis=1) in BMXNet-v2
        new_features = nn.HybridSequential(prefix="")
        new_features.add(self._bn(ours.unit.norm), self._unit(ours.unit))
        dense.add(Identity(), new_features)
        return dense


def _write_checkpoint(ours, path, layout="save_parameters"):
    v2 = _V2Net(ours)
    v2.initialize()
    for theirs, mine in v2.pairs:
        assert theirs.shape == mine.shape, (theirs.name, mine.name)
        theirs.set_data(mine.data())
    if layout == "save_parameters":
        v2.save_parameters(path)
    elif layout == "deduplicated":
        v2.save_parameters(path, deduplicate=True)
    else:  # BMXNet-v2's older save_params: prefixed names, each parameter once
        v2.collect_params().save(path, strip_prefix=v2.prefix)
    return path


def _ours(name, **kwargs):
    net = get_model(name, **kwargs)
    return trained_like(net, (1, 3, 32, 32), seed=3)


CASES = [("meliusnet22", {}), ("meliusnet_c", {"classes": 10}),
         ("binary_densenet28", {"stem": "thumbnail", "classes": 10})]


@pytest.mark.parametrize("layout", ["save_parameters", "deduplicated", "save_params"])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_import_round_trip_gives_the_same_outputs(tmp_path, name, kwargs, layout):
    ours = _ours(name, **kwargs)
    path = _write_checkpoint(ours, str(tmp_path / "v2.params"), layout)
    imported = import_bmxnet_v2(name, path, **kwargs)
    for (key, a), b in zip(ours.collect_params().items(), imported.collect_params().values()):
        np.testing.assert_array_equal(a.data().asnumpy(), b.data().asnumpy(), err_msg=key)
    x = mx.nd.random.uniform(-1, 1, (2, 3, 32, 32))
    np.testing.assert_array_equal(imported(x).asnumpy(), ours(x).asnumpy())


def test_the_written_checkpoint_has_bmxnet_v2_names(tmp_path):
    path = _write_checkpoint(_ours("meliusnet22"), str(tmp_path / "v2.params"))
    names = list(mx.nd.load(path))
    for expected in ["features.0.0.weight", "features.1.gamma", "layer0.0.0.1.0.gamma",
                     "layer0.0.1.body.1.qconv.weight", "layer1.0.3.weight",
                     "layer3.1.7.body.1.qconv.weight", "current_stage.7.body.1.qconv.weight",
                     "finalize.0.running_var", "output.weight", "output.bias"]:
        assert expected in names
    assert len([n for n in names if n.startswith("current_stage.")]) == 4 * 2 * 5


def test_import_registers_in_the_store(tmp_path):
    ours = _ours("binary_densenet28", stem="thumbnail", classes=10)
    path = _write_checkpoint(ours, str(tmp_path / "v2.params"))
    import_bmxnet_v2("binary_densenet28", path, stem="thumbnail", classes=10,
                     register="binary_densenet28", root=str(tmp_path / "store"))
    again = get_model("binary_densenet28", stem="thumbnail", classes=10, pretrained=True,
                      root=str(tmp_path / "store"))
    x = mx.nd.random.uniform(-1, 1, (1, 3, 32, 32))
    np.testing.assert_array_equal(again(x).asnumpy(), ours(x).asnumpy())


@pytest.fixture(scope="module")
def melius22_file(tmp_path_factory):
    return _write_checkpoint(_ours("meliusnet22"),
                             str(tmp_path_factory.mktemp("v2") / "meliusnet22.params"))


@pytest.mark.parametrize("name,kwargs,words", [
    ("meliusnet29", {}, "binary convolutions per stage"),
    ("binary_densenet28", {}, "binary convolutions per stage"),
    ("meliusnet22", {"stem": "imagenet"}, "stem: checkpoint grouped_stem, network imagenet"),
    ("meliusnet22", {"classes": 10}, "classes: checkpoint 1000, network 10"),
    ("meliusnet_a", {}, "transition widths"),
])
def test_another_configuration_is_refused_naming_the_difference(melius22_file, name, kwargs,
                                                                words):
    with pytest.raises(CheckpointMismatch, match=words):
        import_bmxnet_v2(name, melius22_file, **kwargs)


def _rewrite(path, out, edit):
    arrays = mx.nd.load(path)
    edit(arrays)
    mx.nd.save(out, arrays)
    return out


@pytest.mark.parametrize("edit,words", [
    (lambda a: a.pop("layer2.1.3.body.0.beta"), "stage3 holds 39 parameters"),
    (lambda a: a.__setitem__("current_stage.0.1.1.qconv.weight",
                             a["current_stage.0.1.1.qconv.weight"] + 1), "must be identical"),
    (lambda a: a.__setitem__("layer0.1.weight", mx.nd.zeros((1,))), "unexpected parameter"),
    (lambda a: a.__setitem__("output.weight", mx.nd.zeros((1000, 64))), "does not fit"),
], ids=["missing", "copies-differ", "unknown-name", "wrong-shape"])
def test_a_damaged_checkpoint_is_refused(tmp_path, melius22_file, edit, words):
    path = _rewrite(melius22_file, str(tmp_path / "bad.params"), edit)
    with pytest.raises(CheckpointMismatch, match=words):
        import_bmxnet_v2("meliusnet22", path)


def test_a_truncated_file_is_refused_and_nothing_is_loaded(tmp_path, melius22_file):
    data = open(melius22_file, "rb").read()
    path = tmp_path / "truncated.params"
    path.write_bytes(data[: len(data) // 2])
    net = _ours("meliusnet22")
    before = {k: p.data().asnumpy() for k, p in net.collect_params().items()}
    with pytest.raises(CheckpointMismatch, match="truncated"):
        load_bmxnet_v2(net, str(path))
    for key, param in net.collect_params().items():
        np.testing.assert_array_equal(param.data().asnumpy(), before[key])


def test_a_late_mismatch_leaves_the_network_untouched(melius22_file):
    net = _ours("meliusnet22", classes=10)
    before = {k: p.data().asnumpy() for k, p in net.collect_params().items()}
    with pytest.raises(CheckpointMismatch):
        load_bmxnet_v2(net, melius22_file)
    for key, param in net.collect_params().items():
        np.testing.assert_array_equal(param.data().asnumpy(), before[key])


def test_other_model_families_are_refused(melius22_file):
    with pytest.raises(ValueError, match="MeliusNet and BinaryDenseNet"):
        import_bmxnet_v2("resnet_e18", melius22_file)


def test_cli_exports_the_imported_network(tmp_path, capsys):
    from bmxnet_ext.apps.cli import main
    from bmxnet_ext.inference.model_card import load_exported_parameters, read_model_card

    ours = _ours("binary_densenet28", stem="thumbnail", classes=10)
    path = _write_checkpoint(ours, str(tmp_path / "v2.params"))
    prefix = str(tmp_path / "export" / "bdn28")
    assert main(["import-bmxnet-v2", "binary_densenet28", path, "--stem", "thumbnail",
                 "--classes", "10", "--out", prefix]) == 0
    assert "bmxnet-ext convert" in capsys.readouterr().out
    card = read_model_card(prefix)
    assert card["model"] == "binary_densenet28" and card["trained"] is True
    assert card["source_checkpoint"] == os.path.abspath(path)
    rebuilt = get_model(card["model"], **card["model_kwargs"])
    load_exported_parameters(rebuilt, prefix + "-0000.params")
    x = mx.nd.random.uniform(-1, 1, (1, 3, 32, 32))
    np.testing.assert_array_equal(rebuilt(x).asnumpy(), ours(x).asnumpy())


def test_cli_registers_and_refuses_with_one_line(tmp_path, monkeypatch, capsys, melius22_file):
    from bmxnet_ext.apps.cli import main

    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    assert main(["import-bmxnet-v2", "meliusnet22", melius22_file, "--register"]) == 0
    assert (tmp_path / "models" / "meliusnet22.params").is_file()
    assert main(["import-bmxnet-v2", "meliusnet22", melius22_file, "--classes", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "classes: checkpoint 1000, network 10" in err
