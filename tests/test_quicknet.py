"""QuickNet: larq-zoo's published sizes, the structure of every variant, its blocks against
references, summary, and conversion with the QuickNet stem (the zoo-wide tests use thumbnails)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import binary_reference as ref
from bmxnet_ext.apps.cli import main
from bmxnet_ext.binary.layers import BinaryConvolution
from bmxnet_ext.binary.quantizers import DetSign
from bmxnet_ext.binary.quicknet_blocks import (BlurPoolKernel, QuickNetBlock, QuickNetStem,
                                               QuickNetTransition, same_padding)
from bmxnet_ext.binary.summary import summary
from bmxnet_ext.inference.converter import convert_to_xnor
from bmxnet_ext.inference.packed import XnorConv2D, XnorResidualUnit
from bmxnet_ext.model_zoo import get_model
from conftest import trained_like

# larq-zoo's published parameter counts and memory ("ImageNet Metrics" tables in the docstrings
# of QuickNetSmall, QuickNet and QuickNetLarge, larq/zoo larq_zoo/sota/quicknet.py, v1.0
# weights). larq's summary (larq/models.py) counts every weight of a layer, but a BatchNorm only
# twice per channel (beta and gamma are dropped next to moving mean and variance): the fixed
# blur-pool kernels count, and so does the moving mean and variance of the stem's BatchNorm
# without scale and shift. Memory: 1 bit per binary weight, 32 per other, in MiB.
PUBLISHED = {
    "quicknet_small": (12_655_688, 4.00),
    "quicknet": (13_234_088, 4.17),
    "quicknet_large": (23_342_248, 5.40),
}
# larq-zoo's section_blocks and section_filters per factory.
SECTIONS = {
    "quicknet_small": ((4, 4, 4, 4), (32, 64, 256, 512)),
    "quicknet": ((4, 4, 4, 4), (64, 128, 256, 512)),
    "quicknet_large": ((6, 8, 12, 6), (64, 128, 256, 512)),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_summary_gives_larq_zoos_published_parameters_and_memory(name):
    params, mib = PUBLISHED[name]
    totals = summary(get_model(name), (1, 3, 224, 224), print_table=False)
    assert totals["params"] == params
    assert round(totals["size_mib"], 2) == mib


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameters_counted_as_larq_counts_them(name):
    """Every parameter, each BatchNorm's four vectors counted as two (what it folds to)."""
    params = get_model(name).collect_params()
    counted = sum(int(np.prod(p.shape)) for key, p in params.items()
                  if not key.endswith(("running_mean", "running_var")))
    assert counted == PUBLISHED[name][0]


def _spec_counts(blocks, widths, size=224, classes=1000):
    """Counts of a QuickNet with its own stem, worked out from larq-zoo's definition."""
    c, quarter = widths[0], widths[0] // 4
    s1 = -(-size // 2)
    s = -(-s1 // 2)
    # stem: 3x3/2 conv 3 -> c/4, BN; 3x3/2 depthwise, BN; 1x1 conv c/4 -> c, BN
    counts = dict(float=27 * quarter + 2 * quarter + 9 * quarter + 2 * quarter
                  + quarter * c + 2 * c, binary=0, bops=0,
                  flops=s1 * s1 * 27 * quarter + s * s * (9 * quarter + quarter * c))
    for n, width in zip(blocks, widths):
        if width != c:
            # transition: 2x2/1 max pool, 3x3/2 blur pool (depthwise), 1x1 conv, BN
            s //= 2
            counts["float"] += 9 * c + c * width + 2 * width
            counts["flops"] += s * s * (9 * c + c * width)
            c = width
        counts["binary"] += n * 9 * c * c
        counts["bops"] += n * 9 * c * c * s * s
        counts["float"] += n * 2 * c
    counts["float"] += c * classes + classes
    counts["fc"] = c * classes
    return counts


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_summary_totals_equal_a_count_from_the_spec(name):
    expected = _spec_counts(*SECTIONS[name])
    totals = summary(get_model(name), (1, 3, 224, 224), print_table=False)
    assert (totals["binary_params"], totals["float_params"]) == (expected["binary"],
                                                                 expected["float"])
    assert (totals["bops"], totals["flops"], totals["fc_flops"]) == (
        expected["bops"], expected["flops"], expected["fc"])
    assert totals["ops"] == pytest.approx(expected["bops"] / 64 + expected["flops"])


def test_cli_summary_of_quicknet(capsys):
    assert main(["summary", "quicknet", "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals["params"] == PUBLISHED["quicknet"][0]
    assert totals["bops"] == _spec_counts(*SECTIONS["quicknet"])["bops"]


# --- structure ----------------------------------------------------------------------------------

def _norm_settings(norm):
    kw = norm._kwargs
    return kw["momentum"], kw["eps"], kw["fix_gamma"]


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_sections_transitions_and_layers_follow_larq_zoo(name):
    blocks, widths = SECTIONS[name]
    net = get_model(name)
    assert (net.blocks, net.widths, net.stem_name, net.input_size) == (blocks, widths,
                                                                       "quicknet", 224)
    assert net.stage_channels == tuple((w, w) for w in widths)
    assert net.transitions == tuple(zip(widths, widths[1:]))
    features = list(net.features)
    expected_types = [QuickNetStem, nn.HybridSequential]
    for _ in widths[1:]:
        expected_types += [QuickNetTransition, nn.HybridSequential]
    assert [type(b) for b in features] == expected_types
    stages = features[1::2]
    for stage, n, width in zip(stages, blocks, widths):
        assert [type(b) for b in stage] == [QuickNetBlock] * n
        assert all(b.in_channels == b.out_channels == width for b in stage)
    assert net.head.norm is None and net.head.output.weight.shape == (1000, widths[-1])


def test_stem_layers_and_norm_settings():
    stem = get_model("quicknet").features[0]
    convs = [b for b in stem if isinstance(b, nn.Conv2D)]
    assert [c.weight.shape for c in convs] == [(16, 3, 3, 3), (16, 1, 3, 3), (64, 16, 1, 1)]
    assert [c._kwargs["stride"] for c in convs] == [(2, 2), (2, 2), (1, 1)]
    norms = [b for b in stem if isinstance(b, nn.BatchNorm)]
    # Keras' defaults in larq-zoo's stem; the middle one without scale and shift
    assert [_norm_settings(n) for n in norms] == [(0.99, 1e-3, False), (0.99, 1e-3, True),
                                                  (0.99, 1e-3, False)]
    assert norms[1].beta.grad_req == "null" and norms[1].gamma.grad_req == "null"


def test_binary_units_are_larqs_quant_conv2d():
    block = get_model("quicknet").features[1][0]
    unit = block.conv
    assert isinstance(unit, BinaryConvolution)
    assert isinstance(unit.activation.quantizer, DetSign)
    assert unit.activation.quantizer.clip_threshold == 1.25
    layer = unit.conv
    assert (layer.pad_value, layer.offset, layer.padding) == (1.0, False, (1, 1))
    assert layer.weight.shape == (64, 64, 3, 3) and layer.bias is None
    assert _norm_settings(block.norm) == (0.9, 1e-5, False)


def test_transition_blur_pool_is_fixed_and_binomial():
    transition = get_model("quicknet").features[2]
    transition.initialize(mx.init.Xavier())
    blur = [b for b in transition if isinstance(b, nn.Conv2D)][0]
    assert blur.weight.grad_req == "null" and blur._kwargs["num_group"] == 64
    kernel = np.outer([1, 2, 1], [1, 2, 1]) / 16
    np.testing.assert_array_equal(blur.weight.data().asnumpy(),
                                  np.broadcast_to(kernel, (64, 1, 3, 3)).astype(np.float32))
    assert _norm_settings(transition[len(transition) - 1]) == (0.9, 1e-5, False)


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (224, 3, 2, (0, 1)), (112, 3, 2, (0, 1)), (55, 3, 2, (1, 1)), (1, 3, 2, (1, 1)),
    (7, 3, 1, (1, 1)), (8, 2, 2, (0, 0)), (9, 1, 2, (0, 0)),
])
def test_same_padding_is_tfs(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("size,pad", [(10, (0, 1)), (11, (1, 1))])
def test_strided_stem_conv_pads_as_tf_same(size, pad):
    stem = QuickNetStem("quicknet", 8, input_size=size)
    stem.initialize(mx.init.Xavier())
    conv = [b for b in stem if isinstance(b, nn.Conv2D)][0]
    x = np.random.RandomState(0).standard_normal((1, 3, size, size)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), pad, pad))
    expected = mx.nd.Convolution(mx.nd.array(padded), conv.weight.data(), kernel=(3, 3),
                                 stride=(2, 2), num_filter=2, no_bias=True).asnumpy()
    layers = list(stem)[:list(stem).index(conv) + 1]
    out = mx.nd.array(x)
    for layer in layers:
        out = layer(out)
    assert out.shape[-1] == -(-size // 2)
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_block_equals_its_reference(hybridize):
    """x + BN(relu(dot of signs, +1 padding)), BN in inference mode."""
    block = trained_like(QuickNetBlock(8), (2, 8, 5, 6), negative_scales=True)
    if hybridize:
        block.hybridize()
    x = ref.random_floats((2, 8, 5, 6), 3)
    x = np.where(np.isnan(x), 0.5, x).astype(np.float32)
    dot = ref.conv2d(x, block.conv.conv.weight.data().asnumpy(), pad=1, offset=False,
                     pad_value=1)
    norm = block.norm
    gamma, beta, mean, var = (p.data().asnumpy()[None, :, None, None] for p in (
        norm.gamma, norm.beta, norm.running_mean, norm.running_var))
    expected = x + gamma * (np.maximum(dot, 0) - mean) / np.sqrt(var + 1e-5) + beta
    np.testing.assert_allclose(block(mx.nd.array(x)).asnumpy(), expected, rtol=1e-5, atol=1e-5)


# --- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"blocks": (2, 2), "widths": (32,)}, "2 sections need 2 positive int widths"),
    ({"blocks": (2, 0)}, "positive ints"),
    ({"widths": (30, 64, 128, 256), "stem": "quicknet", "input_size": 224}, "divisible by 4"),
    ({"stem": "grouped_stem"}, "unknown QuickNet stem"),
    ({"input_size": 28, "stem": "quicknet"}, "smallest input it takes is 29"),
    ({"input_size": 7, "stem": "thumbnail"}, "smallest input it takes is 8"),
])
def test_flex_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_model("quicknet_flex", **kwargs)


@pytest.mark.parametrize("stem,size", [("quicknet", 29), ("thumbnail", 8)])
def test_the_smallest_input_runs(stem, size):
    net = get_model("quicknet_flex", stem=stem, input_size=size, classes=3)
    net.initialize()
    assert net(mx.nd.zeros((1, 3, size, size))).shape == (1, 3)


def test_blur_pool_kernel_refuses_other_shapes():
    with pytest.raises(ValueError, match="depthwise"):
        BlurPoolKernel()._init_weight("w", mx.nd.zeros((4, 2, 3, 3)))


def test_equal_widths_need_no_transition():
    net = get_model("quicknet_flex", blocks=(1, 1, 1), widths=(32, 32, 64), input_size=32)
    assert net.transitions == ((32, 64),)


# --- conversion with the QuickNet stem -----------------------------------------------------------

SHAPE = (2, 3, 40, 40)


@pytest.fixture(scope="module")
def converted():
    net = trained_like(get_model("quicknet_flex", blocks=(1, 2, 1, 1), classes=10,
                                 stem="quicknet", input_size=40), SHAPE, negative_scales=True)
    return net, convert_to_xnor(net, input_shape=SHAPE), convert_to_xnor(net, input_shape=SHAPE,
                                                                         fuse=True)


def _blocks(block, kind):
    found = [block] if isinstance(block, kind) else []
    for child in block._children.values():
        found += _blocks(child, kind)
    return found


def test_packed_quicknet_equals_the_training_network(converted):
    net, packed, _ = converted
    x = mx.nd.array(np.random.RandomState(1).standard_normal(SHAPE).astype(np.float32))
    np.testing.assert_allclose(packed(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-4)
    units = _blocks(packed, XnorConv2D)
    assert len(units) == 5
    assert all((u._attrs["pad_value"], u._attrs["offset"]) == (1, False) for u in units)


def test_fusion_runs_each_residual_block_as_one_operator(converted):
    """``x + BN(relu(conv(x)))`` becomes one bmx_binary_conv2d with its epilogue
    (XnorResidualUnit): the fused network equals the packed one bit for bit, and every fused unit
    returns exactly what the packed block it replaced returns, on inputs with zeros, -0 and NaN."""
    _, packed, fused = converted
    units = _blocks(fused, XnorResidualUnit)
    assert len(units) == 5 and not _blocks(fused, XnorConv2D)
    x = mx.nd.array(np.random.RandomState(2).standard_normal(SHAPE).astype(np.float32))
    np.testing.assert_array_equal(fused(x).asnumpy(), packed(x).asnumpy())
    blocks = _blocks(packed, QuickNetBlock)
    assert len(blocks) == len(units)
    for i, (unit, block) in enumerate(zip(units, blocks)):
        x = mx.nd.array(ref.random_floats((2, unit._attrs["in_channels"], 7, 9), i))
        np.testing.assert_array_equal(unit(x).asnumpy(), block(x).asnumpy())
    # the fused form keeps the BatchNorm's parameter names (an export reads the same)
    names = set(fused.collect_params())
    assert all(name in names for block in blocks for name in block.norm.collect_params())


def test_a_residual_unit_that_does_not_reproduce_keeps_the_block(monkeypatch):
    real = XnorResidualUnit.hybrid_forward
    monkeypatch.setattr(XnorResidualUnit, "hybrid_forward",
                        lambda self, F, x, **params: real(self, F, x, **params) + 1e-3)
    net = trained_like(get_model("quicknet_flex", blocks=(1, 1, 1, 1), classes=10,
                                 stem="quicknet", input_size=40), SHAPE)
    with pytest.warns(UserWarning, match="residual addition in one operator does not reproduce"):
        fused = convert_to_xnor(net, input_shape=SHAPE, fuse=True)
    assert not _blocks(fused, XnorResidualUnit)
    assert len(_blocks(fused, XnorConv2D)) == 4


def test_cli_converts_untrained_quicknet_small_and_predicts(tmp_path, capsys):
    import cv2

    out = tmp_path / "packed"
    assert main(["convert", "quicknet_small", "--out", str(out), "--classes", "10",
                 "--input-size", "72"]) == 0
    assert "verified" in capsys.readouterr().out
    prefix = out / "quicknet_small"
    graph = json.loads((tmp_path / "packed" / "quicknet_small-symbol.json").read_text())
    convs = [n for n in graph["nodes"] if n["op"] == "bmx_binary_conv2d"]
    assert len(convs) == 16 and {n["attrs"]["pad_value"] for n in convs} == {"1"}
    card = json.loads((tmp_path / "packed" / "quicknet_small-model.json").read_text())
    assert (card["model"], card["input_size"]) == ("quicknet_small", 72)
    image = str(tmp_path / "image.png")
    cv2.imwrite(image, (np.random.RandomState(3).rand(80, 90, 3) * 255).astype(np.uint8))
    assert main(["predict", str(prefix), image, "--topk", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ")
