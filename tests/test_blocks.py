"""The shared building blocks against numpy: what each passes through, adds and reshapes."""
import numpy as np
import pytest
import mxnet as mx

from bmxnet_ext.binary.blocks import (ChannelShuffle, DenseBlock, Head, ImprovementBlock, ResNetEBlock,
                               Stem, Transition, reduced_width, resolve_stem)


def _init(block):
    mx.random.seed(0)
    block.initialize(mx.init.Xavier(magnitude=2))
    return block


def _x(shape, seed=0):
    return mx.nd.array(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def test_dense_block_concatenates_input_and_binary_unit_output():
    block = _init(DenseBlock(32, growth_rate=64))
    x = _x((2, 32, 6, 6))
    out = block(x).asnumpy()
    assert out.shape == (2, 96, 6, 6)
    np.testing.assert_array_equal(out[:, :32], x.asnumpy())
    np.testing.assert_array_equal(out[:, 32:], block.unit(x).asnumpy())
    assert (block.in_channels, block.out_channels) == (32, 96)


def test_improvement_block_adds_to_the_last_growth_rate_channels_only():
    block = _init(ImprovementBlock(96, growth_rate=64))
    x = _x((2, 96, 5, 5))
    out = block(x).asnumpy()
    assert out.shape == x.shape
    np.testing.assert_array_equal(out[:, :32], x.asnumpy()[:, :32])
    np.testing.assert_allclose(out[:, 32:], x.asnumpy()[:, 32:] + block.unit(x).asnumpy(),
                               rtol=1e-6)
    # the binary unit reads all 96 channels
    assert block.unit.conv.conv.weight.shape == (64, 96, 3, 3)


def test_improvement_block_hybridized_equals_imperative():
    block = _init(ImprovementBlock(96))
    x = _x((1, 96, 4, 4))
    block.hybridize()
    hybridized = block(x).asnumpy()
    block.hybridize(active=False)
    np.testing.assert_allclose(hybridized, block(x).asnumpy(), rtol=1e-6)


def test_improvement_block_needs_more_channels_than_it_improves():
    with pytest.raises(ValueError, match="more input channels"):
        ImprovementBlock(64, growth_rate=64)


@pytest.mark.parametrize("groups,channels", [(16, 32), (4, 12), (1, 5)])
def test_channel_shuffle_matches_numpy(groups, channels):
    x = _x((2, channels, 3, 3))
    expected = (x.asnumpy().reshape(2, groups, channels // groups, 3, 3)
                .transpose(0, 2, 1, 3, 4).reshape(2, channels, 3, 3))
    np.testing.assert_array_equal(ChannelShuffle(groups, channels)(x).asnumpy(), expected)


def test_channel_shuffle_refuses_groups_that_do_not_divide_channels():
    with pytest.raises(ValueError, match="groups=16 must divide channels=40"):
        ChannelShuffle(16, 40)


@pytest.mark.parametrize("groups,layer_types", [
    (1, ["BatchNorm", "MaxPool2D", "Activation", "Conv2D"]),
    (4, ["BatchNorm", "MaxPool2D", "Activation", "ChannelShuffle", "Conv2D"]),
])
def test_transition_layers_and_shape(groups, layer_types):
    transition = _init(Transition(320, 160, groups=groups))
    assert [type(b).__name__ for b in transition] == layer_types
    assert transition[len(transition) - 1].weight.shape == (160, 320 // groups, 1, 1)
    assert transition(_x((1, 320, 7, 7))).shape == (1, 160, 3, 3)


def test_transition_refuses_groups_that_do_not_divide_widths():
    with pytest.raises(ValueError, match="groups=3"):
        Transition(320, 160, groups=3)


@pytest.mark.parametrize("name,size,out_size", [
    ("grouped_stem", 224, 56), ("grouped_stem", 225, 57), ("imagenet", 224, 56),
    ("imagenet", 97, 25), ("thumbnail", 32, 32), ("thumbnail", 8, 8),
])
def test_stem_output_size_is_what_it_computes(name, size, out_size):
    stem = _init(Stem(name))
    assert stem.output_size(size) == out_size
    assert stem(_x((1, 3, size, size))).shape == (1, 64, out_size, out_size)


def test_grouped_stem_convolutions():
    convs = [b for b in Stem("grouped_stem") if type(b).__name__ == "Conv2D"]
    assert [c.weight.shape for c in convs] == [(32, 3, 3, 3), (32, 8, 3, 3), (64, 4, 3, 3)]


def test_unknown_stem_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown stem 'resnet'.*grouped_stem"):
        Stem("resnet")


@pytest.mark.parametrize("stem,size,expected", [
    (None, 224, "grouped_stem"), (None, 64, "thumbnail"), (None, 65, "grouped_stem"),
    ("imagenet", 32, "imagenet"),
])
def test_resolve_stem(stem, size, expected):
    assert resolve_stem(stem, size, "grouped_stem") == expected


def test_head_normalizes_pools_and_classifies():
    head = _init(Head(64, 10))
    assert head(_x((3, 64, 5, 5))).shape == (3, 10)
    assert head.output.bias.shape == (10,)


@pytest.mark.parametrize("channels,fraction,width", [
    (448, 1 / 2.7, 160), (544, 1 / 2.7, 192), (576, 1 / 2.2, 256), (960, 1 / 4, 256),
    (320, 0.5, 160), (224, 0.5, 128),
])
def test_reduced_width_rounds_to_multiples_of_32(channels, fraction, width):
    assert reduced_width(channels, fraction) == width


def test_reduced_width_refuses_zero_channels():
    with pytest.raises(ValueError, match="at least 32"):
        reduced_width(64, 0.1)


@pytest.mark.parametrize("size", [7, 8])
def test_resnet_e_block_downsamples_odd_and_even_sizes_alike(size):
    block = _init(ResNetEBlock(64, 128, strides=2))
    assert block(_x((1, 64, size, size))).shape == (1, 128, (size + 1) // 2, (size + 1) // 2)


def test_resnet_e_block_adds_the_identity_when_shapes_match():
    block = _init(ResNetEBlock(64, 64))
    x = _x((1, 64, 4, 4))
    assert block.downsample is None
    np.testing.assert_allclose(block(x).asnumpy(),
                               block.norm(block.conv(x)).asnumpy() + x.asnumpy(), rtol=1e-6)


def test_resnet_e_block_refuses_other_strides():
    with pytest.raises(ValueError, match="strides must be 1 or 2"):
        ResNetEBlock(64, 64, strides=3)
