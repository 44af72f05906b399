"""Multi-bit quantizers (BMXNet-v2's bits / bits_a) and XNOR-Net's scaled binary convolution:
forward values and pseudo-gradients against numpy formulas; convert_to_xnor refuses them."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

from bmxnet_ext import ConversionError, convert_to_xnor
from bmxnet_ext.binary import quantizers
from bmxnet_ext.binary.layers import (BinaryConvolution, QActivation, QConv2D, QDense,
                                      ScaledBinaryConvolution)
from conftest import forward_backward

BITS = [2, 3, 4, 8]


def numpy_round_activation(x, bits):
    levels = np.float32(2 ** bits - 1)
    clipped = np.clip(np.nan_to_num(x, nan=0.0), 0, 1).astype(np.float32)
    return (np.floor(clipped * levels + np.float32(0.5)) / levels).astype(np.float32)


def numpy_dorefa(w, bits):
    t = np.tanh(w.astype(np.float64))
    m = np.abs(t).max()
    u = t / (2 * m) + 0.5
    levels = 2 ** bits - 1
    return 2 * np.floor(u * levels + 0.5) / levels - 1, (1 - t ** 2) / m


def _activations(seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(-0.5, 1.5, 300).astype(np.float32)
    return np.concatenate([x, np.array([0, 1, -1e-3, 1.001, np.nan, np.inf, -np.inf],
                                       dtype=np.float32)])


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_round_activation_forward_and_straight_through_gradient(bits, hybridize):
    x = _activations(bits)
    y, grad = forward_backward(quantizers.RoundActivation(bits), x, hybridize)
    np.testing.assert_allclose(y, numpy_round_activation(x, bits), rtol=0, atol=1e-6)
    assert len(np.unique(y)) <= 2 ** bits
    np.testing.assert_array_equal(grad, ((x >= 0) & (x <= 1)).astype(np.float32))


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_dorefa_weights_forward_and_gradient(bits, hybridize):
    w = np.random.RandomState(bits).normal(0, 0.7, (16, 4, 3, 3)).astype(np.float32)
    y, grad = forward_backward(quantizers.DoReFaWeights(bits), w, hybridize)
    expected, expected_grad = numpy_dorefa(w, bits)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)
    assert y.min() >= -1 and y.max() <= 1 and len(np.unique(y)) <= 2 ** bits
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,cls", [("round", quantizers.RoundActivation),
                                      ("dorefa", quantizers.DoReFaWeights)])
def test_aliases_resolve_with_bits(name, cls):
    q = quantizers.get(name, bits=4)
    assert isinstance(q, cls) and q.precision == 4


@pytest.mark.parametrize("make,words", [
    (lambda: quantizers.RoundActivation(1), "from 2 to 8"),
    (lambda: quantizers.DoReFaWeights(9), "from 2 to 8"),
    (lambda: quantizers.DoReFaWeights(2.0), "from 2 to 8"),
    (lambda: quantizers.RoundActivation(True), "from 2 to 8"),
    (lambda: quantizers.get("dorefa"), "needs bits"),
    (lambda: QConv2D(8, 3, in_channels=4, weight_quantizer="approx_sign", bits=2),
     "either weight_quantizer or bits"),
    (lambda: QActivation("approx_sign", bits=2), "either method or bits"),
], ids=["act-1", "w-9", "w-float", "act-bool", "alias-no-bits", "conv-both", "act-both"])
def test_bad_bits_are_refused(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def _quantized_reference_conv(x, w, bits, bits_a, padding):
    """nn.Conv2D (zero padding) over numpy-quantized inputs and weights."""
    xq = numpy_round_activation(x, bits_a) if bits_a > 1 else np.where(x >= 0, 1, -1)
    wq = numpy_dorefa(w, bits)[0] if bits > 1 else np.where(w >= 0, 1, -1)
    conv = nn.Conv2D(w.shape[0], w.shape[2], padding=padding, use_bias=False,
                     in_channels=w.shape[1])
    conv.initialize()
    conv.weight.set_data(mx.nd.array(wq))
    return conv(mx.nd.array(xq.astype(np.float32))).asnumpy()


@pytest.mark.parametrize("bits,bits_a", [(2, 2), (4, 2), (8, 8), (2, 4)])
def test_multibit_binary_convolution_is_the_conv_of_quantized_values(bits, bits_a):
    rng = np.random.RandomState(bits * 10 + bits_a)
    x = rng.uniform(-0.3, 1.3, (2, 4, 6, 6)).astype(np.float32)
    layer = BinaryConvolution(8, in_channels=4, bits=bits, bits_a=bits_a)
    layer.initialize()
    w = layer.conv.weight.data().asnumpy()
    got = layer(mx.nd.array(x)).asnumpy()
    np.testing.assert_allclose(got, _quantized_reference_conv(x, w, bits, bits_a, 1),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("hybridize", [False, True])
def test_qdense_with_bits_and_bits_a(hybridize):
    rng = np.random.RandomState(3)
    x = rng.uniform(-0.3, 1.3, (3, 10)).astype(np.float32)
    layer = QDense(5, in_units=10, bits=3, bits_a=2)
    layer.initialize()
    if hybridize:
        layer.hybridize()
    w = layer.weight.data().asnumpy()
    expected = numpy_round_activation(x, 2) @ numpy_dorefa(w, 3)[0].T
    np.testing.assert_allclose(layer(mx.nd.array(x)).asnumpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("strides,padding", [(1, 1), (2, 1), (1, 0)])
def test_scaled_binary_convolution_against_numpy(strides, padding, hybridize):
    rng = np.random.RandomState(strides + 3 * padding)
    x = rng.uniform(-2, 2, (2, 4, 7, 7)).astype(np.float32)
    layer = ScaledBinaryConvolution(6, 3, strides=strides, padding=padding, in_channels=4,
                                    clip_threshold=1.3)
    layer.initialize()
    w = layer.conv.weight.data().asnumpy()
    head = rng.uniform(-1, 1, layer(mx.nd.array(x)).shape).astype(np.float32)
    y, grad = forward_backward(layer, x, hybridize, head)

    # numpy: sign(x) padded with -1, conv with sign(W) * alpha, times K (average of mean|x|).
    s = np.pad(np.where(x >= 0, 1.0, -1.0), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2),
               constant_values=-1.0)
    a = np.pad(np.abs(x).mean(axis=1), ((0, 0), (padding,) * 2, (padding,) * 2))
    wb = np.where(w >= 0, 1.0, -1.0) * np.abs(w).mean(axis=(1, 2, 3))[:, None, None, None]
    out_size = (s.shape[-1] - 3) // strides + 1
    expected = np.zeros(y.shape)
    grad_s = np.zeros(s.shape)
    for i in range(out_size):
        for j in range(out_size):
            rows, cols = slice(i * strides, i * strides + 3), slice(j * strides, j * strides + 3)
            k = a[:, rows, cols].mean(axis=(1, 2))  # (N,)
            dot = np.einsum("nchw,ochw->no", s[:, :, rows, cols], wb)
            expected[:, :, i, j] = dot * k[:, None]
            grad_s[:, :, rows, cols] += np.einsum("no,ochw->nchw", head[:, :, i, j] * k[:, None],
                                                  wb)
    inner = grad_s[:, :, padding:padding + 7, padding:padding + 7]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, inner * (np.abs(x) <= 1.3), rtol=1e-4, atol=1e-5)


def _net(layer):
    net = nn.HybridSequential()
    net.add(layer)
    net.initialize()
    return net


@pytest.mark.parametrize("make,words", [
    (lambda: BinaryConvolution(8, in_channels=4, bits=2), "2-bit"),
    (lambda: BinaryConvolution(8, in_channels=4, bits_a=4), "4-bit"),
    (lambda: QConv2D(8, 3, padding=1, in_channels=4, input_quantizer="det_sign", bits=8),
     "8-bit"),
    (lambda: QConv2D(8, 3, padding=1, in_channels=4, bits_a=2), "2-bit"),
    (lambda: ScaledBinaryConvolution(8, in_channels=4), "ScaledBinaryConvolution"),
], ids=["weights-2", "activations-4", "qconv-weights-8", "qconv-input-2", "scaled"])
def test_convert_to_xnor_refuses_multibit_and_scaled_input(make, words):
    net = _net(make())
    with pytest.raises(ConversionError, match=words):
        convert_to_xnor(net, input_shape=(1, 4, 6, 6))


def test_one_bit_binary_convolution_is_unchanged_by_the_new_arguments():
    layer = BinaryConvolution(8, in_channels=4)
    assert layer.conv.pad_value == -1.0 and layer.conv.offset and not layer.multibit
    assert layer.activation.quantizer.precision == 1


@pytest.mark.parametrize("name", ["meliusnet_flex", "binary_densenet_flex"])
def test_a_zoo_network_trains_with_2_bit_activations(name):
    from bmxnet_ext.model_zoo import get_model
    from bmxnet_ext.training.recipe import get_recipe, make_trainer, prepare_network

    net = get_model(name, blocks=(1, 1), reductions=(0.5,), bits_a=2, input_size=16, classes=3)
    acts = [block for block in _blocks(net) if isinstance(block, BinaryConvolution)]
    assert acts and all(b.activation.quantizer.precision == 2 and b.multibit for b in acts)
    prepare_network(net, input_shape=(2, 3, 16, 16))
    trainer = make_trainer(net, get_recipe(name), iters_per_epoch=1, epochs=1)
    x, y = mx.nd.random.uniform(shape=(2, 3, 16, 16)), mx.nd.array([0, 2])
    with mx.autograd.record():
        loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)
    loss.backward()
    trainer.step(2)
    assert np.isfinite(loss.asnumpy()).all()
    with pytest.raises(ConversionError, match="2-bit"):
        convert_to_xnor(net, input_shape=(1, 3, 16, 16))


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)
