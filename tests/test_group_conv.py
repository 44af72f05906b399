"""bmx_grouped_conv2d: grouped float convolutions with few input channels per group (MeliusNet's
grouped stem) summed as MXNet's oneDNN sums them (its gemm convolution, or its direct kernel),
and GroupedConv2D, which the converter uses only where that holds on this machine."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import bmxnet_ext
from bmxnet_ext import model_zoo
from bmxnet_ext.inference import packed
from bmxnet_ext.inference.converter import convert_to_xnor
from conftest import trained_like

# (batch, in_channels, height, width, out_channels, groups, kernel, stride, pad): the MeliusNet
# stem's conv at 224 and at sizes whose last 16-pixel block is short (1 .. 8 pixels) or long,
# other group widths where the channel tail is 0 or 2, stride 2, a 5x5 window, a batch of 3.
CASES = [
    (1, 32, 112, 112, 64, 8, 3, 1, 1),
    (2, 32, 17, 17, 64, 8, 3, 1, 1),
    (1, 32, 14, 14, 64, 8, 3, 1, 1),
    (1, 32, 13, 13, 64, 8, 3, 1, 1),
    (1, 32, 7, 9, 64, 8, 3, 1, 1),
    (3, 32, 10, 12, 64, 8, 3, 1, 1),
    (1, 24, 16, 16, 36, 6, 3, 1, 1),
    (1, 32, 13, 13, 48, 8, 3, 1, 1),
    (1, 32, 20, 23, 64, 8, 3, 2, 1),
    (1, 16, 11, 11, 32, 4, 5, 1, 2),
    (1, 32, 5, 7, 64, 8, 3, 1, 1),
    (2, 32, 28, 28, 64, 8, 3, 1, 1),
]
# The direct kernel's order: MeliusNet's 4-group stem conv (8 input channels per group), two
# blocks of 8 per group, 3 input channels (the first stem conv) at stride 2 with a 7x7 window.
DIRECT_CASES = [
    (1, 32, 112, 112, 32, 4, 3, 1, 1),
    (2, 32, 15, 13, 32, 4, 3, 1, 1),
    (1, 64, 12, 12, 64, 4, 3, 1, 1),
    (1, 3, 31, 29, 32, 1, 3, 2, 1),
    (1, 3, 40, 40, 64, 1, 7, 2, 3),
    (1, 32, 14, 30, 32, 4, 3, 1, 1),
]


def _inputs(case, seed=0):
    batch, channels, height, width, out_channels, groups, kernel, _, _ = case
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    x[x < -0.7] = 0  # zeros, as after a ReLU: taps that add a signed zero
    w = rng.standard_normal((out_channels, channels // groups, kernel, kernel)).astype(np.float32)
    return mx.nd.array(x), mx.nd.array(w)


def _ours(x, w, case, order="gemm"):
    """The op's output, written into NaNs: an output the op leaves out shows."""
    _, _, height, width, out_channels, groups, kernel, stride, pad = case
    out_h = (height + 2 * pad - kernel) // stride + 1
    out_w = (width + 2 * pad - kernel) // stride + 1
    out = mx.nd.full((x.shape[0], out_channels, out_h, out_w), np.nan)
    mx.nd.bmx_grouped_conv2d(x, w, kernel=(kernel, kernel), stride=(stride, stride),
                             pad=(pad, pad), num_filter=out_channels, num_group=groups,
                             order=order, out=out)
    return out


def _mxnet(x, w, case):
    _, _, _, _, out_channels, groups, kernel, stride, pad = case
    return mx.nd.Convolution(x, w, kernel=(kernel, kernel), stride=(stride, stride),
                             pad=(pad, pad), num_filter=out_channels, num_group=groups,
                             no_bias=True)


def _bits(array):
    return array.asnumpy().view(np.int32)


def _stem_conv():
    conv = nn.Conv2D(64, 3, padding=1, groups=8, use_bias=False, in_channels=32)
    conv.initialize(mx.init.Xavier(magnitude=2))
    return conv


def _order_found(conv):
    block = packed.GroupedConv2D.from_layer(conv)
    return None if block is None else (block._attrs["order"], block._attrs["block"])


def _four_group_conv():
    conv = nn.Conv2D(32, 3, padding=1, groups=4, use_bias=False, in_channels=32)
    conv.initialize(mx.init.Xavier(magnitude=2))
    return conv


needs_gemm_order = pytest.mark.skipif(
    _order_found(_stem_conv()) != ("gemm", 8),
    reason="this machine's oneDNN sums the 8-group stem conv in another order (the converter "
           "keeps MXNet's Convolution here)")
needs_direct_order = pytest.mark.skipif(
    _order_found(_four_group_conv()) != ("direct", 8),
    reason="this machine's oneDNN sums the 4-group stem conv in another order than its AVX2 "
           "direct kernel's")


@needs_gemm_order
@pytest.mark.parametrize("case", CASES, ids=str)
def test_op_equals_mxnet_convolution_bit_for_bit(op_isa, case):
    x, w = _inputs(case)
    assert np.array_equal(_bits(_ours(x, w, case)), _bits(_mxnet(x, w, case)))


@needs_direct_order
@pytest.mark.parametrize("case", DIRECT_CASES, ids=str)
def test_direct_order_equals_mxnet_convolution_bit_for_bit(op_isa, case):
    x, w = _inputs(case)
    assert np.array_equal(_bits(_ours(x, w, case, "direct")), _bits(_mxnet(x, w, case)))


@pytest.mark.parametrize("order, case", [("gemm", case) for case in CASES]
                         + [("direct", case) for case in DIRECT_CASES], ids=str)
def test_every_isa_gives_the_scalar_paths_bits(op_isa, order, case):
    x, w = _inputs(case, seed=1)
    got = _bits(_ours(x, w, case, order))
    with bmxnet_ext.kernels.use_isa("scalar"):
        expected = _bits(_ours(x, w, case, order))
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("width, pad, chained", [(3, 1, True), (5, 0, False)])
def test_op_sums_in_the_documented_order(width, pad, chained):
    # Taps k = 0 (weight 2^25) and k = 1, 3, 5 (weight 1) of group 0 on an input of ones. One
    # chain in k order loses each 1 (2^25 + 1 rounds to 2^25); even and odd taps summed apart
    # give 2^25 + 3, which rounds to 2^25 + 4. group_conv.h: channel 0 (a full 6-channel block)
    # is one chain, except in an image's short last block of pixels (1 .. 8 of them: here 3
    # pixels with pad 0, 9 with pad 1); channel 7 (the tail of 8) always sums in pairs.
    x = np.ones((1, 32, 3, width), np.float32)
    w = np.zeros((64, 4, 3, 3), np.float32)
    for channel in (0, 7):
        w[channel].reshape(-1)[[0, 1, 3, 5]] = [2.0 ** 25, 1.0, 1.0, 1.0]
    out = mx.nd.bmx_grouped_conv2d(mx.nd.array(x), mx.nd.array(w), kernel=(3, 3),
                                   pad=(pad, pad), num_filter=64, num_group=8).asnumpy()
    pixel = (1, 1) if pad else (0, 1)
    assert out[(0, 0) + pixel] == (2.0 ** 25 if chained else 2.0 ** 25 + 4)
    assert out[(0, 7) + pixel] == 2.0 ** 25 + 4


@pytest.mark.parametrize("block, expected",
                         [(16, 2.0 ** 25), (8, 2.0 ** 25), (1, 2.0 ** 25 + 4)])
def test_direct_order_sums_over_channel_blocks_then_window(block, expected):
    # 2^25 at (channel 1, row 0, column 0), then four ones: channel 0 at (0, 1), (1, 0), (1, 1)
    # and channel 1 at (0, 1). Blocks of 8 channels sum (row, column, channel): 2^25 comes
    # second and the ones after it vanish one by one except the first; blocks of one channel sum
    # channel 0's window first: 3 + 2^25 + 1 rounds to 2^25 + 4.
    x = np.ones((1, 8, 2, 2), np.float32)
    w = np.zeros((8, 8, 2, 2), np.float32)
    w[0, 1, 0, 0] = 2.0 ** 25
    w[0, 0, 0, 1] = w[0, 0, 1, 0] = w[0, 0, 1, 1] = w[0, 1, 0, 1] = 1.0
    out = mx.nd.bmx_grouped_conv2d(mx.nd.array(x), mx.nd.array(w), kernel=(2, 2),
                                   num_filter=8, num_group=1, order="direct",
                                   block=block).asnumpy()
    assert out[0, 0, 0, 0] == expected


@pytest.mark.parametrize("attrs, message", [
    (dict(kernel=(3, 3), num_filter=64, num_group=7), "must divide"),
    (dict(kernel=(3, 3), num_filter=64, num_group=8, dilate=(2, 2)), "dilate"),
    (dict(num_filter=64, num_group=8), "kernel"),
    (dict(kernel=(9, 9), num_filter=64, num_group=8), "does not fit"),
    (dict(kernel=(3, 3), num_filter=64, num_group=8, order="winograd"), "order must be"),
])
def test_op_rejects_bad_input_with_a_message(attrs, message):
    kernel = attrs.get("kernel", (3, 3))
    x, w = mx.nd.zeros((1, 32, 5, 5)), mx.nd.zeros((64, 4) + kernel)
    with pytest.raises(mx.base.MXNetError, match=message):
        mx.nd.bmx_grouped_conv2d(x, w, **attrs).wait_to_read()


def test_only_few_channel_grouped_convolutions_apply():
    assert packed.GroupedConv2D.applies_to(_stem_conv())
    assert packed.GroupedConv2D.applies_to(_four_group_conv())
    dense = nn.Conv2D(64, 3, padding=1, use_bias=False, in_channels=3)
    wide = nn.Conv2D(32, 3, padding=1, groups=2, use_bias=False, in_channels=32)
    depthwise = nn.Conv2D(32, 3, padding=1, groups=32, use_bias=False, in_channels=32)
    pointwise = nn.Conv2D(64, 1, groups=8, use_bias=False, in_channels=32)
    biased = nn.Conv2D(64, 3, padding=1, groups=8, in_channels=32)
    dilated = nn.Conv2D(64, 3, padding=2, dilation=2, groups=8, use_bias=False, in_channels=32)
    for conv in (dense, wide, depthwise, pointwise, biased, dilated):
        assert not packed.GroupedConv2D.applies_to(conv)


def test_a_grouped_conv_that_does_not_reproduce_stays_mxnets(monkeypatch):
    real = packed.GroupedConv2D.hybrid_forward
    monkeypatch.setattr(packed.GroupedConv2D, "hybrid_forward",
                        lambda self, F, x, weight: real(self, F, x, weight) * 1.0001)
    assert packed.GroupedConv2D.from_layer(_stem_conv()) is None
    net = trained_like(model_zoo.get_model("meliusnet22", classes=10, input_size=64,
                                           stem="grouped_stem"), (1, 3, 64, 64))
    fused = convert_to_xnor(net, input_shape=(1, 3, 64, 64), fuse=True)
    assert not _blocks(fused, packed.GroupedConv2D)


@needs_gemm_order
@needs_direct_order
def test_fused_network_with_the_op_computes_the_bits_of_mxnets_convolution(tmp_path,
                                                                           monkeypatch):
    shape = (2, 3, 64, 64)
    net = trained_like(model_zoo.get_model("meliusnet22", classes=10, input_size=64,
                                           stem="grouped_stem"), shape)
    fused = convert_to_xnor(net, input_shape=shape, fuse=True)
    grouped = _blocks(fused, packed.GroupedConv2D)
    assert [block._attrs["num_group"] for block in grouped] == [4, 8]
    assert [block._attrs["order"] for block in grouped] == ["direct", "gemm"]
    with monkeypatch.context() as patch:
        patch.setattr(packed.GroupedConv2D, "from_layer", lambda conv: None)
        with_mxnets = convert_to_xnor(net, input_shape=shape, fuse=True)
    assert not _blocks(with_mxnets, packed.GroupedConv2D)
    x = mx.nd.array(np.random.RandomState(3).standard_normal(shape).astype(np.float32))
    assert np.array_equal(_bits(fused.features[0](x)), _bits(with_mxnets.features[0](x)))
    fused.hybridize(static_alloc=True, static_shape=True)
    assert np.array_equal(_bits(fused(x)), _bits(with_mxnets(x)))
    # the export names the weight as the training graph does and reloads with the operator
    fused.export(str(tmp_path / "net"))
    assert "bmx_grouped_conv2d" in (tmp_path / "net-symbol.json").read_text()
    assert grouped[0].weight.name in net.collect_params()
    reloaded = bmxnet_ext.load_xnor(str(tmp_path / "net"))
    assert np.array_equal(_bits(reloaded(x)), _bits(fused(x)))


def _blocks(block, kind):
    found = [block] if isinstance(block, kind) else []
    for child in block._children.values():
        found += _blocks(child, kind)
    return found
