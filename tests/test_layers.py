"""Binary layers against the float layers run on signs, hybridization and export round trips."""
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn

from bmxnet_ext.binary.layers import BinaryConvolution, QConv2D, QDense


def np_sign(a):
    return np.where(a >= 0, 1.0, -1.0).astype(np.float32)


def reference_conv(x, weight, kernel, stride, pad, dilation, groups, pad_value=-1.0):
    """Float nn.Conv2D on sign(x) padded with pad_value, weights sign(W): the ±1 dot product."""
    channels = weight.shape[0]
    xs = np_sign(x)
    xs = np.pad(xs, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=pad_value)
    conv = nn.Conv2D(channels, kernel, strides=stride, dilation=dilation, groups=groups,
                     use_bias=False, in_channels=x.shape[1])
    conv.initialize()
    conv.weight.set_data(mx.nd.array(np_sign(weight)))
    return conv(mx.nd.array(xs)).asnumpy()


CONV_CASES = [
    # in_channels, channels, kernel, stride, pad, dilation, groups, size
    (3, 8, 3, 1, 1, 1, 1, 7),
    (31, 16, 3, 2, 1, 1, 1, 9),
    (33, 12, 3, 1, 2, 2, 1, 8),
    (64, 64, 3, 1, 1, 1, 1, 6),
    (100, 20, 1, 1, 0, 1, 1, 5),
    (40, 24, 5, 2, 2, 1, 4, 11),
    (6, 4, 3, 1, 1, 2, 2, 7),
]


def _conv_case_id(case):
    return "in{}-out{}-k{}-s{}-p{}-d{}-g{}".format(*case[:7])


@pytest.fixture(params=CONV_CASES, ids=_conv_case_id)
def conv_case(request):
    return request.param


def _binary_conv(case, **kwargs):
    cin, cout, k, s, p, d, g, _ = case
    layer = QConv2D(cout, k, strides=s, padding=p, dilation=d, groups=g, in_channels=cin,
                    input_quantizer="det_sign", **kwargs)
    layer.initialize(mx.init.Normal(1.0))
    return layer


def _random_input(case, batch=2, seed=0):
    cin, size = case[0], case[7]
    return np.random.RandomState(seed).randn(batch, cin, size, size).astype(np.float32)


@pytest.mark.parametrize("offset", [True, False])
def test_qconv2d_equals_float_conv_on_signs(conv_case, offset):
    cin, cout, k, s, p, d, g, _ = conv_case
    layer = _binary_conv(conv_case, offset=offset)
    x = _random_input(conv_case)
    dot = reference_conv(x, layer.weight.data().asnumpy(), k, s, p, d, g)
    expected = (dot + cin // g * k * k) / 2 if offset else dot
    np.testing.assert_array_equal(layer(mx.nd.array(x)).asnumpy(), expected)


def test_qconv2d_plus_one_padding(conv_case):
    cin, cout, k, s, p, d, g, _ = conv_case
    layer = _binary_conv(conv_case, offset=False, pad_value=1.0)
    x = _random_input(conv_case)
    dot = reference_conv(x, layer.weight.data().asnumpy(), k, s, p, d, g, pad_value=1.0)
    np.testing.assert_array_equal(layer(mx.nd.array(x)).asnumpy(), dot)


def test_qconv2d_scaling_multiplies_by_mean_abs_weight(conv_case):
    cin, cout, k, s, p, d, g, _ = conv_case
    layer = _binary_conv(conv_case, scaling=True)
    x = _random_input(conv_case)
    weight = layer.weight.data().asnumpy()
    dot = reference_conv(x, weight, k, s, p, d, g)
    alpha = np.abs(weight).mean(axis=(1, 2, 3)).reshape(1, -1, 1, 1)
    np.testing.assert_allclose(layer(mx.nd.array(x)).asnumpy(), dot * alpha, rtol=1e-5)


def test_qconv2d_bias_is_added_after_the_offset():
    layer = QConv2D(4, 3, padding=1, in_channels=5, use_bias=True, input_quantizer="det_sign")
    layer.initialize(mx.init.Normal(1.0))
    layer.bias.set_data(mx.nd.array([1.0, -2.0, 0.5, 3.0]))
    x = np.random.RandomState(3).randn(1, 5, 4, 4).astype(np.float32)
    dot = reference_conv(x, layer.weight.data().asnumpy(), 3, 1, 1, 1, 1)
    expected = (dot + 45) / 2 + np.array([1.0, -2.0, 0.5, 3.0]).reshape(1, -1, 1, 1)
    np.testing.assert_allclose(layer(mx.nd.array(x)).asnumpy(), expected, rtol=1e-6)


def test_binary_convolution_unit_equals_reference(conv_case):
    cin, cout, k, s, p, d, g, _ = conv_case
    unit = BinaryConvolution(cout, k, strides=s, padding=p, dilation=d, groups=g,
                             in_channels=cin, clip_threshold=1.3)
    unit.initialize(mx.init.Normal(1.0))
    x = _random_input(conv_case, seed=4)
    dot = reference_conv(x, unit.conv.weight.data().asnumpy(), k, s, p, d, g)
    np.testing.assert_array_equal(unit(mx.nd.array(x)).asnumpy(), (dot + cin // g * k * k) / 2)


@pytest.mark.parametrize("offset", [True, False])
def test_qdense_equals_float_dense_on_signs(offset):
    units, in_units = 10, 37
    layer = QDense(units, in_units=in_units, input_quantizer="det_sign", offset=offset)
    layer.initialize(mx.init.Normal(1.0))
    x = np.random.RandomState(5).randn(3, in_units).astype(np.float32)
    dot = np_sign(x) @ np_sign(layer.weight.data().asnumpy()).T
    expected = (dot + in_units) / 2 if offset else dot
    np.testing.assert_array_equal(layer(mx.nd.array(x)).asnumpy(), expected)


def test_qdense_flattens_like_dense():
    layer = QDense(6, in_units=2 * 3 * 4, input_quantizer="det_sign")
    layer.initialize()
    x = np.random.RandomState(6).randn(2, 2, 3, 4).astype(np.float32)
    dot = np_sign(x.reshape(2, -1)) @ np_sign(layer.weight.data().asnumpy()).T
    np.testing.assert_array_equal(layer(mx.nd.array(x)).asnumpy(), (dot + 24) / 2)


def _copy_params(src, dst):
    for (name, p_src), (_, p_dst) in zip(sorted(src.collect_params().items()),
                                         sorted(dst.collect_params().items())):
        p_dst.set_data(p_src.data())


def test_qconv2d_without_quantizers_is_conv2d():
    q = QConv2D(8, 3, padding=1, strides=2, groups=2, in_channels=4, use_bias=True,
                weight_quantizer=None)
    f = nn.Conv2D(8, 3, padding=1, strides=2, groups=2, in_channels=4, use_bias=True)
    q.initialize()
    f.initialize()
    assert [p.split("_", 1)[1] for p in q.collect_params()] == \
           [p.split("_", 1)[1] for p in f.collect_params()]
    _copy_params(f, q)
    x = mx.nd.random.normal(shape=(2, 4, 9, 9))
    np.testing.assert_array_equal(q(x).asnumpy(), f(x).asnumpy())


def test_qdense_without_quantizers_is_dense():
    q = QDense(5, in_units=7, use_bias=True, weight_quantizer=None)
    f = nn.Dense(5, in_units=7, use_bias=True)
    q.initialize()
    f.initialize()
    _copy_params(f, q)
    x = mx.nd.random.normal(shape=(3, 7))
    np.testing.assert_array_equal(q(x).asnumpy(), f(x).asnumpy())


def test_binary_weight_gradient_is_straight_through():
    """d out / d latent W equals the float conv's weight gradient at sign(W) (identity STE)."""
    layer = QConv2D(6, 3, padding=1, in_channels=5, input_quantizer="det_sign", offset=False)
    layer.initialize(mx.init.Normal(1.0))
    x = np.random.RandomState(7).randn(2, 5, 6, 6).astype(np.float32)
    with mx.autograd.record():
        y = layer(mx.nd.array(x))
    y.backward()
    ref = nn.Conv2D(6, 3, in_channels=5, use_bias=False)
    ref.initialize()
    ref.weight.set_data(mx.nd.array(np_sign(layer.weight.data().asnumpy())))
    padded = np.pad(np_sign(x), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-1)
    with mx.autograd.record():
        y_ref = ref(mx.nd.array(padded))
    y_ref.backward()
    np.testing.assert_array_equal(layer.weight.grad().asnumpy(), ref.weight.grad().asnumpy())


def test_binary_weights_have_no_weight_decay_and_float_keep_it():
    binary = QConv2D(4, 3, in_channels=4)
    dense = QDense(4, in_units=4)
    floating = QConv2D(4, 3, in_channels=4, weight_quantizer=None)
    assert binary.weight.wd_mult == 0.0
    assert dense.weight.wd_mult == 0.0
    assert floating.weight.wd_mult == 1.0


def _blocks():
    return {
        "qconv2d": (lambda: QConv2D(8, 3, padding=1, strides=2, in_channels=33,
                                    input_quantizer="det_sign"), (2, 33, 9, 9)),
        "qconv2d_scaled": (lambda: QConv2D(9, 3, padding=1, groups=3, in_channels=33,
                                           input_quantizer="approx_sign", scaling=True),
                           (2, 33, 7, 7)),
        "qdense": (lambda: QDense(5, in_units=40, input_quantizer="det_sign"), (3, 40)),
        "binary_convolution": (lambda: BinaryConvolution(16, in_channels=20, dilation=2,
                                                         padding=2), (1, 20, 8, 8)),
    }


@pytest.fixture(params=sorted(_blocks()))
def block_and_shape(request):
    make, shape = _blocks()[request.param]
    return make, shape


def test_hybridized_equals_imperative_from_the_first_call(block_and_shape):
    make, shape = block_and_shape
    x = mx.nd.random.normal(shape=shape)
    imperative = make()
    imperative.initialize(mx.init.Normal(1.0))
    hybrid = make()
    hybrid.initialize(mx.init.Normal(1.0))
    _copy_params(imperative, hybrid)
    hybrid.hybridize()  # before any call: no warm-up forward
    np.testing.assert_array_equal(hybrid(x).asnumpy(), imperative(x).asnumpy())


def test_export_and_symbolblock_import_round_trip(block_and_shape, tmp_path):
    make, shape = block_and_shape
    block = make()
    block.initialize(mx.init.Normal(1.0))
    block.hybridize()
    x = mx.nd.random.normal(shape=shape)
    expected = block(x).asnumpy()
    prefix = os.path.join(str(tmp_path), "layer")
    block.export(prefix)
    loaded = gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"],
                                       prefix + "-0000.params")
    np.testing.assert_array_equal(loaded(x).asnumpy(), expected)


def test_binary_conv_requires_in_channels():
    with pytest.raises(ValueError, match="needs its input size"):
        QConv2D(8, 3)


def test_binary_dense_requires_in_units():
    with pytest.raises(ValueError, match="needs its input size"):
        QDense(8)


@pytest.mark.parametrize("groups,channels,in_channels", [(3, 8, 6), (2, 8, 5), (0, 8, 8)])
def test_qconv2d_rejects_groups_that_do_not_divide(groups, channels, in_channels):
    with pytest.raises(ValueError, match="groups=.* must divide"):
        QConv2D(channels, 3, groups=groups, in_channels=in_channels)


def test_qconv2d_rejects_zero_padding_value():
    with pytest.raises(ValueError, match="pad_value must be -1 or \\+1"):
        QConv2D(8, 3, in_channels=8, pad_value=0)


@pytest.mark.parametrize("kernel", [(3, 3, 3), "3", (3.0, 3)])
def test_qconv2d_rejects_bad_kernel_size(kernel):
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair of ints"):
        QConv2D(8, kernel, in_channels=8)
