"""convert_to_xnor: packed networks equal their training networks; export/reload; refusals."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn

from bmxnet_ext import model_zoo
from bmxnet_ext.inference.packed import XnorConv2D, XnorDense
from bmxnet_ext.inference.converter import (ConversionError, convert_to_xnor,
                                  load_xnor)
from bmxnet_ext.apps.demo import build_demo_network
from bmxnet_ext.binary.layers import BinaryConvolution, QActivation, QConv2D, QDense
from conftest import trained_like

SMALL_INPUT = (2, 3, 32, 32)


def _zoo_model(name):
    net = model_zoo.get_model(name, classes=10, stem="thumbnail", input_size=32)
    return trained_like(net, SMALL_INPUT)


def _binary_units(block, kinds):
    found = []

    def visit(b):
        if isinstance(b, kinds):
            found.append(b)
            return
        for child in b._children.values():
            visit(child)

    visit(block)
    return found


def _record_outputs(blocks):
    outputs = []
    for block in blocks:
        block.register_forward_hook(lambda b, inputs, out: outputs.append(out.asnumpy()))
    return outputs


class _MixedNet(gluon.HybridBlock):
    """Every convertible kind of unit: BinaryConvolution, QConv2D and QDense with input
    quantizers, scaling, offset off, a bias, grouped and strided convolutions."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = nn.Conv2D(40, 3, padding=1, in_channels=3)
            self.bn1 = nn.BatchNorm(in_channels=40)
            self.unit = BinaryConvolution(24, in_channels=40, groups=4, strides=2,
                                          clip_threshold=1.3)
            self.bn2 = nn.BatchNorm(in_channels=24)
            self.scaled = QConv2D(33, 3, padding=2, dilation=2, in_channels=24,
                                  input_quantizer="det_sign", scaling=True)
            self.bn3 = nn.BatchNorm(in_channels=33)
            self.dot = QConv2D(16, 1, in_channels=33, input_quantizer="approx_sign",
                               offset=False, use_bias=True)
            self.dense = QDense(20, in_units=16 * 16 * 16, input_quantizer="det_sign",
                                use_bias=True)
            self.out = nn.Dense(10, in_units=20)

    def hybrid_forward(self, F, x):
        x = self.bn1(self.stem(x))
        x = self.bn2(self.unit(x))
        x = self.bn3(self.scaled(x))
        return self.out(self.dense(self.dot(x)))


def _networks():
    nets = {"mixed_units": lambda: trained_like(_MixedNet(), SMALL_INPUT),
            "demo_network": lambda: trained_like(build_demo_network(True), (2, 3, 16, 16))}
    for name in model_zoo.list_models():
        nets[name] = (lambda n: lambda: _zoo_model(n))(name)
    return nets


NETWORKS = _networks()
INPUT_SHAPES = {"demo_network": (2, 3, 16, 16)}


@pytest.fixture(params=sorted(NETWORKS))
def network(request):
    return request.param, NETWORKS[request.param](), INPUT_SHAPES.get(request.param, SMALL_INPUT)


def test_converted_network_equals_training_network(network):
    name, net, shape = network
    x = mx.nd.array(np.random.RandomState(1).standard_normal(shape).astype(np.float32))
    originals = _binary_units(net, (BinaryConvolution, QConv2D, QDense))
    originals = [b for b in originals if not isinstance(b, (QConv2D, QDense)) or b.binary]
    original_outputs = _record_outputs(originals)
    expected = net(x).asnumpy()

    packed = convert_to_xnor(net, input_shape=shape)
    replacements = _binary_units(packed, (XnorConv2D, XnorDense))
    assert len(replacements) == len(originals) > 0
    packed_outputs = _record_outputs(replacements)
    actual = packed(x).asnumpy()

    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)
    for trained, xnor in zip(original_outputs, packed_outputs):
        np.testing.assert_array_equal(xnor, trained)  # exactly equal integers (or scaled)


def test_hybridized_export_reloads_in_a_fresh_process(network, tmp_path):
    name, net, shape = network
    packed = convert_to_xnor(net, input_shape=shape)
    packed.hybridize()
    x = np.random.RandomState(2).standard_normal(shape).astype(np.float32)
    expected = packed(mx.nd.array(x)).asnumpy()
    prefix = str(tmp_path / name)
    packed.export(prefix)
    np.save(str(tmp_path / "x.npy"), x)
    script = ("import sys, numpy as np, mxnet as mx, bmxnet_ext; "
              "from bmxnet_ext.inference.converter import load_xnor; "
              f"net = load_xnor({prefix!r}); "
              f"y = net(mx.nd.array(np.load({str(tmp_path / 'x.npy')!r}))).asnumpy(); "
              f"np.save({str(tmp_path / 'y.npy')!r}, y)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(np.load(str(tmp_path / "y.npy")), expected)


def _snapshot(net):
    return {name: [d.asnumpy() for d in param.list_data()]
            for name, param in net.collect_params().items()}


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("state", ["imperative", "hybridized-unrun", "hybridized-run"])
def test_the_callers_network_is_left_untouched(state, fuse):
    net = _zoo_model("meliusnet_flex")
    x = mx.nd.random.normal(shape=SMALL_INPUT)
    if state != "imperative":
        net.hybridize()
    if state == "hybridized-run":
        net(x)
    cached = (net._cached_op, net._cached_graph)
    before, params = net(x).asnumpy() if state != "hybridized-unrun" else None, _snapshot(net)
    convert_to_xnor(net, input_shape=SMALL_INPUT, fuse=fuse)
    assert (net._cached_op, net._cached_graph) == cached  # no graph built, none cleared
    after = _snapshot(net)
    assert after.keys() == params.keys()
    for name in params:
        for a, b in zip(after[name], params[name]):
            np.testing.assert_array_equal(a, b)
    assert isinstance(net.features, nn.HybridSequential)
    if before is not None:
        np.testing.assert_array_equal(net(x).asnumpy(), before)


def _mixed_net_on(contexts):
    net = _MixedNet()
    net.initialize(mx.init.Xavier(magnitude=2), ctx=contexts)
    return net


@pytest.mark.parametrize("kvstore", ["device", "local", None])
def test_a_network_trained_on_two_devices_converts(kvstore):
    contexts = [mx.cpu(0), mx.cpu(1)]
    net = _mixed_net_on(contexts)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1},
                            kvstore=kvstore)
    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.standard_normal((4,) + SMALL_INPUT[1:]).astype(np.float32))
    label = mx.nd.array(rng.randint(0, 3, 4).astype(np.float32))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    with mx.autograd.record():
        losses = [loss_fn(net(x), y) for x, y in zip(gluon.utils.split_and_load(data, contexts),
                                                      gluon.utils.split_and_load(label, contexts))]
    mx.autograd.backward(losses)
    trainer.step(4)  # the parameters now belong to a Trainer with a KVStore (or none)
    packed = convert_to_xnor(net, input_shape=SMALL_INPUT)
    # BatchNorm statistics differ per device; like export, the conversion takes their mean
    averaged = _mixed_net_on(mx.cpu())
    for mine, theirs in zip(averaged.collect_params().values(), net.collect_params().values()):
        mine.set_data(sum(d.as_in_context(mx.cpu()) for d in theirs.list_data()) / 2)
    x = mx.nd.random.normal(shape=SMALL_INPUT)
    np.testing.assert_allclose(packed(x).asnumpy(), averaged(x).asnumpy(), rtol=1e-4, atol=1e-4)
    assert {c for p in packed.collect_params().values() for c in p.list_ctx()} == {mx.cpu()}


def test_deferred_parameters_are_refused_until_a_forward_pass():
    net = nn.HybridSequential()
    net.add(BinaryConvolution(8, in_channels=3), nn.Dense(3))  # Dense: in_units unknown
    net.initialize()
    with pytest.raises(ConversionError, match="has no shape yet .*run the network once"):
        convert_to_xnor(net, input_shape=SMALL_INPUT, verify=False)
    net(mx.nd.zeros(SMALL_INPUT))
    x = mx.nd.random.normal(shape=SMALL_INPUT)
    np.testing.assert_allclose(convert_to_xnor(net, input_shape=SMALL_INPUT, verify=False)(x)
                               .asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-5)


def test_an_uninitialized_network_is_refused():
    with pytest.raises(ConversionError, match="is not initialized"):
        convert_to_xnor(_MixedNet(), input_shape=SMALL_INPUT)


def test_symbolblock_imports_works_after_import_bmxnet_ext(tmp_path):
    net = convert_to_xnor(trained_like(_MixedNet(), SMALL_INPUT), input_shape=SMALL_INPUT)
    net.hybridize()
    x = mx.nd.random.normal(shape=SMALL_INPUT)
    expected = net(x).asnumpy()
    net.export(str(tmp_path / "m"))
    loaded = gluon.SymbolBlock.imports(str(tmp_path / "m-symbol.json"), ["data"],
                                       str(tmp_path / "m-0000.params"))
    np.testing.assert_array_equal(loaded(x).asnumpy(), expected)


def test_loading_without_the_ops_says_to_import_bmxnet_ext(tmp_path):
    net = convert_to_xnor(trained_like(_MixedNet(), SMALL_INPUT), input_shape=SMALL_INPUT)
    net.hybridize()
    net(mx.nd.random.normal(shape=SMALL_INPUT))
    net.export(str(tmp_path / "m"))
    script = ("import mxnet as mx; mx.gluon.SymbolBlock.imports("
              f"{str(tmp_path / 'm-symbol.json')!r}, ['data'], "
              f"{str(tmp_path / 'm-0000.params')!r})")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=str(tmp_path))
    assert result.returncode != 0
    assert "load_with_import_bmxnet_ext" in result.stderr


def test_load_xnor_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="m-symbol.json does not exist"):
        load_xnor(str(tmp_path / "m"))


def test_float_input_to_binary_weights_is_refused():
    net = nn.HybridSequential()
    net.add(QConv2D(8, 3, in_channels=3))
    net.initialize()
    with pytest.raises(ConversionError, match="binary weights on a float input"):
        convert_to_xnor(net, input_shape=(1, 3, 8, 8))


def test_binary_input_with_float_weights_is_refused():
    net = nn.HybridSequential()
    net.add(QConv2D(8, 3, in_channels=3, input_quantizer="det_sign", weight_quantizer=None))
    net.initialize()
    with pytest.raises(ConversionError, match="binary input with float weights"):
        convert_to_xnor(net, input_shape=(1, 3, 8, 8))


def test_standalone_activation_is_refused():
    net = nn.HybridSequential()
    net.add(QActivation(), nn.Conv2D(4, 3, in_channels=3))
    net.initialize()
    with pytest.raises(ConversionError, match="QActivation outside a BinaryConvolution"):
        convert_to_xnor(net, input_shape=(1, 3, 8, 8))


def test_float_network_is_refused():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, in_channels=3))
    net.initialize()
    with pytest.raises(ConversionError, match="has no binary unit"):
        convert_to_xnor(net, input_shape=(1, 3, 8, 8))


def test_probe_shape_is_required_when_the_network_declares_none():
    with pytest.raises(ValueError, match="needs input_shape"):
        convert_to_xnor(trained_like(_MixedNet(), SMALL_INPUT))


def test_flatten_false_dense_applies_to_the_last_axis():
    net = nn.HybridSequential()
    net.add(QDense(4, in_units=6, flatten=False, use_bias=True, input_quantizer="det_sign"))
    trained_like(net, (2, 3, 6))
    x = mx.nd.random.normal(shape=(2, 3, 6))
    packed = convert_to_xnor(net, input_shape=(2, 3, 6))
    np.testing.assert_array_equal(packed(x).asnumpy(), net(x).asnumpy())


def test_packed_meliusnet22_params_file_is_at_most_4_2_mib(tmp_path):
    net = trained_like(model_zoo.get_model("meliusnet22"), (1, 3, 224, 224))
    packed = convert_to_xnor(net, input_shape=(1, 3, 224, 224))
    packed.hybridize()
    packed(mx.nd.zeros((1, 3, 224, 224)))
    packed.export(str(tmp_path / "m22"))
    size = os.path.getsize(str(tmp_path / "m22-0000.params"))
    assert size <= 4.2 * 2 ** 20, f"packed MeliusNet22 params file is {size / 2**20:.2f} MiB"
