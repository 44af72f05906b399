"""Property-based tests of convert_to_xnor: random networks of every convertible unit, random
geometry and output conventions, latent weights and inputs with ±0, NaN, ±Inf and denormals.
Every packed binary unit computes exactly what its training layer computes; the network outputs
agree, NaN and ±Inf positions included.

NaN is handled once, the same way everywhere: sign(NaN) = -1 (bit 0) with no gradient, in the
training quantizers (det_sign, approx_sign), the weight quantizer and the packed operators.
"""
import os

import mxnet as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mxnet.gluon import nn

from bmxnet_ext import model_zoo
from bmxnet_ext.inference.converter import convert_to_xnor
from bmxnet_ext.inference.packed import XnorConv2D, XnorDense
from bmxnet_ext.binary.layers import BinaryConvolution, QActivation, QConv2D, QDense
from test_fuzz_ops import SPECIALS, float_arrays
from conftest import trained_like

# BMXNET_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_*.py searches deeper.
FUZZ = settings(max_examples=int(os.environ.get("BMXNET_FUZZ_EXAMPLES", 100)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _out_size(size, kernel, stride, pad, dilate):
    extent = dilate * (kernel - 1) + 1
    return 0 if size + 2 * pad < extent else (size + 2 * pad - extent) // stride + 1


@st.composite
def binary_units(draw, in_channels, size):
    """One convertible unit on (in_channels, size, size): (block, out_channels, out_size)."""
    groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if in_channels % g == 0]))
    channels = groups * draw(st.integers(1, 12))
    kernel, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    pad, dilate = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    out = _out_size(size, kernel, stride, pad, dilate)
    assume(out >= 1)
    geometry = dict(strides=stride, padding=pad, dilation=dilate, groups=groups,
                    in_channels=in_channels, scaling=draw(st.booleans()),
                    offset=draw(st.booleans()), pad_value=draw(st.sampled_from([-1.0, 1.0])))
    if draw(st.booleans()):
        block = BinaryConvolution(channels, kernel, clip_threshold=1.3,
                                  activation=draw(st.sampled_from(["det_sign", "approx_sign"])),
                                  **geometry)
    else:
        block = QConv2D(channels, kernel, use_bias=draw(st.booleans()),
                        input_quantizer=draw(st.sampled_from(["det_sign", "approx_sign"])),
                        **geometry)
    return block, channels, out


@st.composite
def networks(draw):
    """(net, input shape): an optional float stem, 1-3 binary units with optional BatchNorm,
    an optional binary dense layer and a float classifier."""
    n, channels, size = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(3, 9))
    shape = (n, channels, size, size)
    net = nn.HybridSequential()
    if draw(st.booleans()):
        stem = draw(st.integers(1, 40))
        net.add(nn.Conv2D(stem, 3, padding=1, in_channels=channels), nn.BatchNorm())
        channels = stem
    for _ in range(draw(st.integers(1, 3))):
        unit, channels, size = draw(binary_units(channels, size))
        net.add(unit)
        if draw(st.booleans()):
            net.add(nn.BatchNorm())
    if draw(st.booleans()):
        net.add(QDense(draw(st.integers(1, 20)), in_units=channels * size * size,
                       input_quantizer=draw(st.sampled_from(["det_sign", "approx_sign"])),
                       use_bias=draw(st.booleans()), scaling=draw(st.booleans()),
                       offset=draw(st.booleans())))
    if draw(st.booleans()):
        net.add(nn.Dense(5))
    return net, shape


def _binary_layers(block):
    found = [block] if isinstance(block, (QConv2D, QDense)) and block.binary else []
    for child in block._children.values():
        found += _binary_layers(child)
    return found


def _train_like(net, shape, rng, latent_specials):
    """Initializes, gives BatchNorm non-trivial statistics and, with ``latent_specials``, puts
    ±0, NaN, ±Inf and denormals into the latent binary weights."""
    trained_like(net, shape, rng=rng)
    if latent_specials:
        for layer in _binary_layers(net):
            w = layer.weight.data().asnumpy()
            mask = rng.rand(*w.shape) < 0.2
            w[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
            layer.weight.set_data(mx.nd.array(w))
    return net


def _record_outputs(blocks):
    """(outputs list filled by forward calls, hook handles to detach)."""
    outputs = []
    handles = [block.register_forward_hook(lambda b, inputs, out: outputs.append(out.asnumpy()))
               for block in blocks]
    return outputs, handles


def _units(block, kinds):
    if isinstance(block, kinds):
        return [block]
    return [u for child in block._children.values() for u in _units(child, kinds)]


def assert_same_outputs(actual, expected):
    """NaN and ±Inf in the same places; finite values equal up to float rounding of the float
    layers after the binary ones (MXNet's BatchNorm may round an output 1 ulp differently
    depending on where its input buffer lies)."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max())) if finite.any() else 1.0
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale, equal_nan=True)


@FUZZ
@given(data=st.data(), spec=networks(), latent_specials=st.booleans(), seed=st.integers(0, 999),
       fuse=st.booleans())
def test_converted_network_equals_training_network_on_special_values(data, spec,
                                                                     latent_specials, seed,
                                                                     fuse):
    """Every binary unit's output is exactly equal (integers, or scaled by the same float);
    the network outputs agree, NaN and ±Inf positions included."""
    net, shape = spec
    _train_like(net, shape, np.random.RandomState(seed), latent_specials)
    packed = convert_to_xnor(net, input_shape=shape, fuse=fuse)
    assert len(_binary_layers(packed)) == 0
    trained_units = _units(net, (BinaryConvolution, QConv2D, QDense))
    packed_units = _units(packed, (XnorConv2D, XnorDense))
    assert len(packed_units) == len(trained_units)
    (trained_outputs, trained_hooks), (packed_outputs, packed_hooks) = (
        _record_outputs(trained_units), _record_outputs(packed_units))
    x = mx.nd.array(data.draw(float_arrays(shape)))
    expected = net(x).asnumpy()
    assert_same_outputs(packed(x).asnumpy(), expected)
    for trained, xnor in zip(trained_outputs, packed_outputs):
        np.testing.assert_array_equal(xnor, trained)
    for hook in trained_hooks + packed_hooks:
        hook.detach()
    packed.hybridize()
    assert_same_outputs(packed(x).asnumpy(), expected)


# --- the zoo, with NaN and ±Inf reaching the signs through BatchNorm --------------------------

ZOO = {
    "meliusnet_flex": dict(blocks=(1, 1, 1, 1)),
    "binary_densenet_flex": dict(blocks=(1, 1, 1, 1), reductions=(1 / 2, 1 / 2, 1 / 2)),
    "resnet_e18": {},
    "quicknet_flex": dict(blocks=(1, 1, 1, 1)),
}


def _poison_batchnorms(net, rng):
    """Sets a few channels' beta of every BatchNorm to NaN, +Inf or -Inf: those channels reach
    the following sign as NaN or ±Inf in every pixel, whatever the input."""
    for name, param in net.collect_params().items():
        if name.endswith("beta"):
            beta = param.data().asnumpy()
            picks = rng.rand(*beta.shape) < 0.1
            beta[picks] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32),
                                     size=int(picks.sum()))
            param.set_data(mx.nd.array(beta))


INPUT_SPECIALS = {
    "finite": SPECIALS[np.isfinite(SPECIALS)],    # ±0, denormals, ±max
    "nan-inf": SPECIALS,                          # NaN and ±Inf pixels as well
}


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("values", sorted(INPUT_SPECIALS))
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_network_with_nan_and_inf_activations_converts_exactly(name, values, fuse):
    """NaN/±Inf channels before binary units (BN with NaN or infinite beta) and special input
    pixels: the training quantizer and the packed ops (plain or with BatchNorm folded into
    thresholds, fused stages and fused norm-ReLU-pool) agree, NaN positions included."""
    net = model_zoo.get_model(name, classes=10, input_size=32, stem="thumbnail", **ZOO[name])
    rng = np.random.RandomState(7)
    _train_like(net, (2, 3, 32, 32), rng, latent_specials=True)
    _poison_batchnorms(net, rng)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    x[1].reshape(-1)[::97] = np.resize(INPUT_SPECIALS[values], x[1].reshape(-1)[::97].size)
    packed = convert_to_xnor(net, input_shape=(2, 3, 32, 32), fuse=fuse)
    expected = net(mx.nd.array(x)).asnumpy()
    assert_same_outputs(packed(mx.nd.array(x)).asnumpy(), expected)


# --- the quantizers: NaN -> -1 with no gradient, ±Inf -> ±1 with no gradient ------------------

@pytest.mark.parametrize("method", ["det_sign", "approx_sign"])
def test_quantizers_map_nan_to_minus_one_without_gradient(method):
    x = mx.nd.array(SPECIALS)
    x.attach_grad()
    with mx.autograd.record():
        y = QActivation(method, clip_threshold=1.3)(x)
    y.backward()
    np.testing.assert_array_equal(y.asnumpy(), np.where(SPECIALS >= 0, 1.0, -1.0))
    grad = x.grad.asnumpy()
    assert np.isfinite(grad).all()
    assert not grad[~np.isfinite(SPECIALS)].any()


def test_binary_unit_weight_gradient_is_finite_with_nan_latent_weights():
    layer = QConv2D(4, 1, in_channels=3, input_quantizer="det_sign")
    layer.initialize()
    w = layer.weight.data().asnumpy()
    w.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    layer.weight.set_data(mx.nd.array(w))
    x = mx.nd.array(np.random.RandomState(0).standard_normal((1, 3, 2, 2)).astype(np.float32))
    with mx.autograd.record():
        y = layer(x)
    y.backward()
    grad = layer.weight.grad().asnumpy().reshape(-1)
    assert np.isfinite(grad).all()
    assert not grad[:3].any()


def test_converted_units_are_the_packed_blocks():
    net = nn.HybridSequential()
    net.add(BinaryConvolution(8, in_channels=4), QDense(3, in_units=8 * 6 * 6,
                                                         input_quantizer="det_sign"))
    _train_like(net, (1, 4, 6, 6), np.random.RandomState(0), latent_specials=False)
    packed = convert_to_xnor(net, input_shape=(1, 4, 6, 6))
    assert [type(b) for b in packed.block._children.values()] == [XnorConv2D, XnorDense]
