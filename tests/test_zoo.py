"""Every registered network: builds, right shapes, gradients everywhere, imperative == hybridized,
export -> import round trip; and the structure of every variant against DESIGN.md's table."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

from bmxnet_ext.binary.blocks import ChannelShuffle, DenseBlock, ImprovementBlock, ResNetEBlock
from bmxnet_ext.binary.layers import BinaryConvolution
from bmxnet_ext.model_zoo import get_model, list_models

MODELS = list_models()


def _build(name, **kwargs):
    mx.random.seed(0)
    net = get_model(name, **kwargs)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    return net


def _images(shape, seed=0):
    return mx.nd.array(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def test_the_zoo_holds_the_whole_family():
    assert MODELS == sorted([
        "binary_densenet28", "binary_densenet37", "binary_densenet45", "binary_densenet_flex",
        "meliusnet22", "meliusnet29", "meliusnet42", "meliusnet59", "meliusnet_a",
        "meliusnet_b", "meliusnet_c", "meliusnet_flex", "quicknet", "quicknet_flex",
        "quicknet_large", "quicknet_small", "resnet_e18", "resnet_e34"])


@pytest.mark.parametrize("name", MODELS)
def test_imagenet_input_gives_finite_logits_per_class(name):
    net = _build(name)
    out = net(_images((1, 3, 224, 224))).asnumpy()
    assert out.shape == (1, 1000)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_small_input_selects_the_thumbnail_stem(name):
    net = _build(name, classes=10, input_size=32)
    assert net.stem_name == "thumbnail"
    out = net(_images((2, 3, 32, 32))).asnumpy()
    assert out.shape == (2, 10)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_trainable_parameter_receives_a_gradient(name):
    net = _build(name, classes=10, input_size=32)
    images, labels = _images((4, 3, 32, 32)), mx.nd.array([0, 1, 2, 3])
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(images), labels)
    loss.backward()
    trainable = [p for p in net.collect_params().values() if p.grad_req != "null"]
    assert trainable
    without_gradient = [p.name for p in trainable if not np.any(p.grad().asnumpy())]
    assert without_gradient == []


@pytest.mark.parametrize("name", MODELS)
def test_hybridized_first_call_equals_imperative(name):
    net = _build(name, classes=10, input_size=32)
    images = _images((2, 3, 32, 32))
    net.hybridize()
    hybridized = net(images).asnumpy()
    net.hybridize(active=False)
    imperative = net(images).asnumpy()
    np.testing.assert_allclose(hybridized, imperative, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_export_and_import_give_the_same_outputs(name, tmp_path):
    net = _build(name, classes=10, input_size=32)
    net.hybridize()
    images = _images((2, 3, 32, 32))
    expected = net(images).asnumpy()
    prefix = str(tmp_path / name)
    net.export(prefix)
    loaded = gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"],
                                       f"{prefix}-0000.params")
    np.testing.assert_allclose(loaded(images).asnumpy(), expected, rtol=1e-5, atol=1e-5)


# DESIGN.md's table, written out: blocks per stage, transitions (in, out), transition groups.
# The binary DenseNets' widths are round(c * reduction / 32) * 32 worked out by hand.
DENSE_FAMILY = {
    "meliusnet22": ((4, 5, 4, 4), ((320, 160), (480, 224), (480, 256)), 1),
    "meliusnet29": ((4, 6, 8, 6), ((320, 128), (512, 192), (704, 256)), 1),
    "meliusnet42": ((5, 8, 14, 10), ((384, 160), (672, 256), (1152, 416)), 1),
    "meliusnet59": ((6, 12, 24, 12), ((448, 192), (960, 320), (1856, 544)), 1),
    "meliusnet_a": ((4, 5, 5, 6), ((320, 160), (480, 256), (576, 288)), 4),
    "meliusnet_b": ((4, 6, 8, 6), ((320, 160), (544, 224), (736, 320)), 2),
    "meliusnet_c": ((3, 5, 10, 6), ((256, 128), (448, 192), (832, 288)), 4),
    # 448/2.7 -> 160, 544/2.7 -> 192, 576/2.2 -> 256
    "binary_densenet28": ((6, 6, 6, 5), ((448, 160), (544, 192), (576, 256)), 1),
    # 448/3.3 -> 128, 640/3.3 -> 192, 960/4 -> 256
    "binary_densenet37": ((6, 8, 12, 6), ((448, 128), (640, 192), (960, 256)), 1),
    # 448/2.7 -> 160, 928/3.3 -> 288, 1184/4 -> 288
    "binary_densenet45": ((6, 12, 14, 8), ((448, 160), (928, 288), (1184, 288)), 1),
}
RESNET_E = {
    "resnet_e18": (4, 4, 4, 4),
    "resnet_e34": (6, 8, 12, 6),
}
# larq-zoo's section_blocks and section_filters (larq_zoo/sota/quicknet.py); the structure
# itself is tested in test_quicknet.py.
QUICKNET = {
    "quicknet_small": ((4, 4, 4, 4), (32, 64, 256, 512)),
    "quicknet": ((4, 4, 4, 4), (64, 128, 256, 512)),
    "quicknet_large": ((6, 8, 12, 6), (64, 128, 256, 512)),
}


@pytest.mark.parametrize("name", [n for n in MODELS if not n.endswith("_flex")])
def test_every_fixed_variant_has_a_structure_entry_here(name):
    assert name in DENSE_FAMILY or name in RESNET_E or name in QUICKNET


@pytest.mark.parametrize("name", sorted(QUICKNET))
def test_quicknet_sections(name):
    net = get_model(name)
    assert (net.blocks, net.widths) == QUICKNET[name]


def _expected_stages(blocks, transitions):
    ins = [64] + [out for _, out in transitions]
    return tuple((c, c + 64 * n) for c, n in zip(ins, blocks))


@pytest.mark.parametrize("name", sorted(DENSE_FAMILY))
def test_dense_family_widths_follow_design_table(name):
    blocks, transitions, groups = DENSE_FAMILY[name]
    net = get_model(name)
    stages = _expected_stages(blocks, transitions)
    assert net.blocks == blocks
    assert net.transitions == transitions
    assert net.stage_channels == stages
    # the layers themselves, not only the attributes
    improvement = name.startswith("meliusnet")
    for i, (n, (c_in, c_out)) in enumerate(zip(blocks, stages)):
        stage = net.features[1 + 2 * i]
        expected_types = [DenseBlock, ImprovementBlock] * n if improvement else [DenseBlock] * n
        assert [type(b) for b in stage] == expected_types
        assert stage[0].in_channels == c_in and stage[len(stage) - 1].out_channels == c_out
    for i, (c_in, c_out) in enumerate(transitions):
        transition = net.features[2 + 2 * i]
        conv = transition[len(transition) - 1]
        assert conv.weight.shape == (c_out, c_in // groups, 1, 1)
        shuffles = [b for b in transition if isinstance(b, ChannelShuffle)]
        assert [s.groups for s in shuffles] == ([16] if groups > 1 else [])
    assert net.head.output.weight.shape == (1000, stages[-1][1])


@pytest.mark.parametrize("name", sorted(RESNET_E))
def test_resnet_e_stages(name):
    net = get_model(name)
    widths = (64, 128, 256, 512)
    assert net.stage_channels == tuple(zip((64,) + widths[:-1], widths))
    for i, n in enumerate(RESNET_E[name]):
        stage = net.features[2 + i]
        assert [type(b) for b in stage] == [ResNetEBlock] * n
        # only the first block of a stage that changes width has a (float) downsample shortcut
        assert [b.downsample is not None for b in stage] == [i > 0] + [False] * (n - 1)


@pytest.mark.parametrize("name,factory_kwargs,transitions", [
    ("meliusnet_flex", {}, ((192, 96), (224, 128), (256, 128))),
    ("meliusnet_flex", {"blocks": (1, 1), "reductions": (0.5,)}, ((128, 64),)),
    ("binary_densenet_flex", {"blocks": (3, 2, 1), "reductions": (1 / 3, 1 / 2)},
     ((256, 96), (224, 128))),
])
def test_flex_transition_widths_use_the_rounding_rule(name, factory_kwargs, transitions):
    assert get_model(name, **factory_kwargs).transitions == transitions


@pytest.mark.parametrize("kwargs,message", [
    ({"blocks": ()}, "non-empty"),
    ({"blocks": (2, 0)}, "positive"),
    ({"blocks": (2, 2), "reductions": (0.5, 0.5)}, "2 stages need 1"),
    ({"reductions": (0.5, 0.01, 0.5)}, "at least 32"),
    ({"input_size": 16, "stem": "grouped_stem"}, "too small"),
])
def test_flex_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_model("meliusnet_flex", **kwargs)


def test_meliusnet_wants_exactly_one_transition_spec():
    from bmxnet_ext.model_zoo.meliusnet import MeliusNet
    with pytest.raises(ValueError, match="exactly one"):
        MeliusNet((1, 1), transition_widths=(64,), reductions=(0.5,))
    with pytest.raises(ValueError, match="exactly one"):
        MeliusNet((1, 1))


@pytest.mark.parametrize("kwargs,message", [
    ({"blocks": (2, 0, 2, 2)}, "positive"),
    ({"widths": (64, 128)}, "4 stages need 4 widths"),
])
def test_resnet_e_refuses_bad_arguments(kwargs, message):
    from bmxnet_ext.model_zoo.resnet_e import ResNetE
    with pytest.raises(ValueError, match=message):
        ResNetE(**{"blocks": (2, 2, 2, 2), **kwargs})


def _activation_quantizers(net):
    units = []
    net.apply(lambda b: units.append(b) if isinstance(b, BinaryConvolution) else None)
    return [unit.activation.quantizer for unit in units]


@pytest.mark.parametrize("name", ["meliusnet22", "binary_densenet28", "resnet_e18"])
@pytest.mark.parametrize("kwargs,expected", [
    ({}, ("DetSign", 1.3)),
    ({"clip_threshold": 0.7}, ("DetSign", 0.7)),
    ({"activation": "approx_sign"}, ("ApproxSign", None)),
])
def test_activation_and_clip_threshold_reach_every_binary_unit(name, kwargs, expected):
    quantizers = _activation_quantizers(get_model(name, **kwargs))
    assert quantizers
    assert {(type(q).__name__, getattr(q, "clip_threshold", None)) for q in quantizers} == {
        expected}


@pytest.mark.parametrize("name", list_models())
def test_float_twin_has_the_same_parameters_and_no_binary_layer(name):
    from bmxnet_ext import summary
    binary = summary(get_model(name, classes=10, input_size=32), (1, 3, 32, 32),
                     print_table=False)
    twin = summary(get_model(name, classes=10, input_size=32, activation="relu"),
                   (1, 3, 32, 32), print_table=False)
    assert twin["bops"] == 0 and twin["binary_params"] == 0
    assert twin["params"] == binary["params"]
    assert twin["flops"] == binary["flops"] + binary["bops"]
