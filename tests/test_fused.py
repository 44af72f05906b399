"""Fused packed forms (convert_to_xnor(fuse=True), bmxnet_ext.inference.fusion): BatchNorm folded into
thresholds decides every sign as the BatchNorm does; fused networks equal the unfused packed
networks bit for bit, also after export and reload; the fused operators equal their unfused
compositions and reject bad input with a message."""
import re
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import binary_reference as ref
import bmxnet_ext
from bmxnet_ext.inference import _kernels as K
from bmxnet_ext import model_zoo
from bmxnet_ext.inference import fusion, packed
from bmxnet_ext.binary.blocks import BinaryUnit, DenseBlock, ImprovementBlock
from bmxnet_ext.inference.converter import convert_to_xnor
from bmxnet_ext.inference.packed import XnorConv2D
from conftest import conv_inputs, trained_like

SHAPE = (2, 3, 32, 32)


# --- folding a BatchNorm into thresholds ----------------------------------------------------------

def _norm(channels, gamma, beta, mean, var, **kwargs):
    norm = nn.BatchNorm(in_channels=channels, **kwargs)
    norm.initialize()
    for param, value in zip((norm.gamma, norm.beta, norm.running_mean, norm.running_var),
                            (gamma, beta, mean, var)):
        param.set_data(mx.nd.array(np.broadcast_to(np.float32(value), (channels,))))
    return norm


_RNG = np.random.RandomState(4)
NORMS = {
    "random": lambda: _norm(40, _RNG.uniform(-2, 2, 40), _RNG.uniform(-1, 1, 40),
                            _RNG.uniform(-1, 1, 40), _RNG.uniform(0.1, 3, 40)),
    "negative-scale": lambda: _norm(8, -0.7, 0.3, 0.1, 0.9),
    "zero-scale-positive-shift": lambda: _norm(4, 0.0, 0.25, 0.5, 1.0),
    "zero-scale-negative-shift": lambda: _norm(4, 0.0, -0.25, 0.5, 1.0),
    "zero-scale-zero-shift": lambda: _norm(4, 0.0, 0.0, 0.0, 1.0),
    "tiny-variance": lambda: _norm(4, 1.0, 1e-3, 3.0, 1e-12),
    "huge-statistics": lambda: _norm(4, 1e-30, 1e30, -1e35, 1e30),
    "fixed-gamma": lambda: _norm(6, -3.0, 0.2, 0.7, 2.0, scale=False),
    "large-epsilon": lambda: _norm(6, 1.0, 0.5, 0.2, 0.3, epsilon=0.5),
}


def _probe(channels, seed):
    rng = np.random.RandomState(seed)
    values = [rng.standard_normal((channels, 2000)) * 3,
              rng.standard_normal((channels, 200)) * 1e-3,
              np.broadcast_to(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45,
                                        3e38, -3e38]), (channels, 9))]
    return np.concatenate(values, axis=1).astype(np.float32)


@pytest.mark.parametrize("name", list(NORMS))
def test_folded_thresholds_decide_every_sign_as_the_batchnorm(name):
    norm = NORMS[name]()
    channels = norm.gamma.shape[0]
    sign, bias, exact = fusion.fold_batchnorm(norm, channels)
    assert exact.all()
    assert set(np.unique(sign)) <= {-1.0, 0.0, 1.0}
    x = _probe(channels, 5)
    # values right at each threshold and their float neighbours
    neighbours = fusion._floats(fusion._keys(np.where(np.isfinite(bias), bias * np.where(
        sign == 0, 1, sign), 0))[:, None] + np.arange(-4, 5)[None, :])
    x = np.concatenate([x, neighbours], axis=1).astype(np.float32)
    expected = norm(mx.nd.array(x[None, :, None, :])).asnumpy()[0, :, 0, :] >= 0
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(sign[:, None] * x >= bias[:, None], expected)


# --- fused networks equal unfused ones ------------------------------------------------------------

@pytest.fixture(scope="module", params=model_zoo.list_models())
def zoo_pair(request):
    net = trained_like(model_zoo.get_model(request.param, classes=10, stem="thumbnail",
                                            input_size=32), SHAPE, negative_scales=True)
    return (request.param, convert_to_xnor(net, input_shape=SHAPE),
            convert_to_xnor(net, input_shape=SHAPE, fuse=True))


def _blocks(block, kind):
    found = [block] if isinstance(block, kind) else []
    for child in block._children.values():
        found += _blocks(child, kind)
    return found


def _stage_pairs(unfused, fused):
    """(XnorBinaryStage, the unfused blocks it replaced) throughout two converted networks."""
    pairs, original = [], list(unfused._children.values())
    for child in fused._children.values():
        if isinstance(child, packed.XnorBinaryStage):
            pairs.append((child, original[:len(child._units)]))
            original = original[len(child._units):]
        else:
            pairs += _stage_pairs(original[0], child)
            original = original[1:]
    return pairs


def test_fused_stages_equal_the_blocks_they_replace_bit_for_bit(zoo_pair):
    """Every stage, on the same input (zeros, -0 and NaN included), returns exactly what its
    dense / improvement blocks (packed, with their BatchNorms) return."""
    name, unfused, fused = zoo_pair
    pairs = _stage_pairs(unfused, fused)
    if not _blocks(unfused, (DenseBlock, ImprovementBlock)):
        assert not pairs
        return
    assert pairs
    for i, (stage, blocks) in enumerate(pairs):
        x = mx.nd.array(ref.random_floats((2, stage._attrs["in_channels"], 7, 9), i))
        expected = x
        for block in blocks:
            expected = block(expected)
        np.testing.assert_array_equal(stage(x).asnumpy(), expected.asnumpy())
    assert not _blocks(fused, (DenseBlock, ImprovementBlock, BinaryUnit))


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_fused_zoo_network_computes_what_the_unfused_one_does(zoo_pair, hybridize):
    """Logits agree to float rounding: MXNet's BatchNorm rounds differently (FMA or not)
    depending on the memory layout its input arrives in, which the fusion changes for the
    transitions after a stage; the binary parts are compared exactly above."""
    name, unfused, fused = zoo_pair
    if hybridize:
        unfused.hybridize()
        fused.hybridize()
    x = mx.nd.array(np.random.RandomState(1).standard_normal(SHAPE).astype(np.float32))
    expected = unfused(x).asnumpy()
    np.testing.assert_allclose(fused(x).asnumpy(), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


def test_fused_meliusnet22_has_one_operator_per_stage_and_transition():
    net = trained_like(model_zoo.get_model("meliusnet22", classes=10, input_size=64,
                                           stem="grouped_stem"), (1, 3, 64, 64),
                       negative_scales=True)
    fused = convert_to_xnor(net, input_shape=(1, 3, 64, 64), fuse=True)
    stages = _blocks(fused, packed.XnorBinaryStage)
    assert [stage._units for stage in stages] == ["di" * 4, "di" * 5, "di" * 4, "di" * 4]
    assert [stage.out_channels for stage in stages] == [320, 480, 480, 512]
    # the stem's two BatchNorm -> ReLU pairs (1x1 windows), its tail and the three transitions'
    # heads; the head's BatchNorm stays
    norm_pools = _blocks(fused, packed.NormReluPool)
    assert ([block._attrs["kernel"] for block in norm_pools]
            == [(1, 1)] * 2 + [(3, 3)] + [(2, 2)] * 3)
    assert len(_blocks(fused, nn.BatchNorm)) == 1
    x = mx.nd.array(np.random.RandomState(6).standard_normal((1, 3, 64, 64)).astype(np.float32))
    expected = convert_to_xnor(net, input_shape=(1, 3, 64, 64))(x).asnumpy()
    np.testing.assert_allclose(fused(x).asnumpy(), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    params = fused.collect_params()
    assert all(name in params for name in net.collect_params()
               if "transition" in name and "batchnorm" in name)


def test_fused_export_reloads_in_a_fresh_process(tmp_path):
    net = trained_like(model_zoo.get_model("meliusnet22", classes=10, input_size=32), SHAPE,
                       negative_scales=True)
    fused = convert_to_xnor(net, input_shape=SHAPE, fuse=True)
    fused.hybridize()
    x = np.random.RandomState(2).standard_normal(SHAPE).astype(np.float32)
    expected = fused(mx.nd.array(x)).asnumpy()
    prefix = str(tmp_path / "fused")
    fused.export(prefix)
    np.save(str(tmp_path / "x.npy"), x)
    script = ("import numpy as np, mxnet as mx, bmxnet_ext; "
              f"net = bmxnet_ext.load_xnor({prefix!r}); "
              f"y = net(mx.nd.array(np.load({str(tmp_path / 'x.npy')!r}))).asnumpy(); "
              f"np.save({str(tmp_path / 'y.npy')!r}, y)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(np.load(str(tmp_path / "y.npy")), expected)


class _Units(nn.HybridBlock):
    """BinaryUnits outside dense / improvement blocks, one of them strided and grouped."""

    def __init__(self, norm_layer=nn.BatchNorm, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = nn.Conv2D(48, 3, padding=1, in_channels=3)
            self.first = BinaryUnit(48, 32, norm_layer=norm_layer)
            self.second = BinaryUnit(32, 16, strides=2, norm_layer=norm_layer)
            self.head = nn.Dense(10, in_units=16 * 16 * 16)

    def hybrid_forward(self, F, x):
        return self.head(self.second(self.first(self.stem(x))))


def test_binary_units_become_thresholded_convolutions():
    net = trained_like(_Units(), SHAPE, negative_scales=True)
    fused = convert_to_xnor(net, input_shape=SHAPE, fuse=True)
    convs = _blocks(fused, XnorConv2D)
    assert len(convs) == 2 and all(c._attrs.get("thresholds") for c in convs)
    assert not _blocks(fused, nn.BatchNorm)
    x = mx.nd.array(np.random.RandomState(3).standard_normal(SHAPE).astype(np.float32))
    np.testing.assert_array_equal(fused(x).asnumpy(),
                                  convert_to_xnor(net, input_shape=SHAPE)(x).asnumpy())


def test_units_whose_norm_does_not_fold_stay_unfused():
    net = trained_like(_Units(norm_layer=nn.InstanceNorm), SHAPE, negative_scales=True)
    fused = convert_to_xnor(net, input_shape=SHAPE, fuse=True)
    assert len(_blocks(fused, nn.InstanceNorm)) == 2
    assert not any(c._attrs.get("thresholds") for c in _blocks(fused, XnorConv2D))


def test_a_fold_that_does_not_verify_keeps_the_batchnorm(monkeypatch):
    real = fusion.fold_batchnorm

    def one_channel_off(norm, channels):
        sign, bias, exact = real(norm, channels)
        exact[0] = False
        return sign, bias, exact

    monkeypatch.setattr(fusion, "fold_batchnorm", one_channel_off)
    net = trained_like(_Units(), SHAPE, negative_scales=True)
    with pytest.warns(UserWarning, match="do not fold into exact thresholds"):
        fused = convert_to_xnor(net, input_shape=SHAPE, fuse=True)
    assert len(_blocks(fused, nn.BatchNorm)) == 2


def test_a_norm_relu_pool_that_does_not_reproduce_keeps_the_operators(monkeypatch):
    real = packed.NormReluPool.hybrid_forward
    monkeypatch.setattr(packed.NormReluPool, "hybrid_forward",
                        lambda self, F, x, **params: real(self, F, x, **params) + 1e-3)
    net = trained_like(model_zoo.get_model("meliusnet22", classes=10, input_size=32), SHAPE,
                       negative_scales=True)
    with pytest.warns(UserWarning, match="does not reproduce MXNet's operators"):
        fused = convert_to_xnor(net, input_shape=SHAPE, fuse=True)
    assert not _blocks(fused, packed.NormReluPool)
    assert len(_blocks(fused, nn.MaxPool2D)) == 3


# --- the fused operators against their compositions ----------------------------------------------

def _thresholds(channels, seed):
    rng = np.random.RandomState(seed)
    sign = rng.choice([-1.0, 1.0, 0.0], channels, p=[0.45, 0.45, 0.1]).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, channels).astype(np.float32)
    return sign, bias


def _binarized(x, sign, bias):
    """The ±1 values the thresholds give, as floats the plain op binarizes to the same bits."""
    with np.errstate(invalid="ignore"):
        return np.where(sign[None, :, None, None] * x >= bias[None, :, None, None],
                        1.0, -1.0).astype(np.float32)


@pytest.mark.parametrize("case", [ref.CONV_CASES[0], ref.CONV_CASES[-5], ref.CONV_CASES[-4],
                                  ref.CONV_CASES[-2]])
def test_conv_op_with_thresholds_equals_conv_of_thresholded_input(case):
    x = ref.random_floats((case["n"], case["c"], case["h"], case["w"]), 0)
    w = ref.random_floats((case["c_out"], case["c"] // case["groups"], case["k"], case["k"]), 1)
    sign, bias = _thresholds(case["c"], 2)
    attrs = dict(kernel=(case["k"], case["k"]), num_filter=case["c_out"], in_channels=case["c"],
                 stride=case["stride"], pad=case["pad"], dilate=case["dilate"],
                 num_group=case["groups"])
    packed = mx.nd.array(K.pack_conv_weights(w, case["groups"]), dtype="int32")
    got = mx.nd.bmx_binary_conv2d(mx.nd.array(x), packed, mx.nd.array(sign), mx.nd.array(bias),
                                  thresholds=True, **attrs).asnumpy()
    geometry = dict(stride=case["stride"], pad=case["pad"], dilate=case["dilate"],
                    groups=case["groups"])
    np.testing.assert_array_equal(got, ref.conv2d(_binarized(x, sign, bias), w, **geometry))


STAGES = {
    "dense-improvement": dict(units="didi", c0=40, growth=24, k=3, dilate=1),
    "dense-only": dict(units="ddd", c0=33, growth=16, k=3, dilate=1),
    "improvement-first": dict(units="id", c0=70, growth=32, k=1, dilate=1),
    "dilated-plus-one-pad": dict(units="di", c0=64, growth=64, k=3, dilate=2, pad_value=1),
    "no-offset": dict(units="dd", c0=20, growth=8, k=5, dilate=1, offset=False),
    # ~1 MB of stage buffer per image: the kernel runs the batch in chunks of 2 and 1 images
    "images-in-chunks": dict(units="di", c0=96, growth=32, k=3, dilate=1, shape=(3, 48, 40)),
}


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_op_equals_its_composition(name):
    spec = dict(STAGES[name])
    units, c0, growth, k, dilate = (spec.pop(key) for key in ("units", "c0", "growth", "k",
                                                              "dilate"))
    n, h, w = spec.pop("shape", (2, 9, 11))
    x = mx.nd.array(ref.random_floats((n, c0, h, w), 3))
    pad = dilate * (k - 1) // 2
    inputs, y, channels = [x], x, c0
    for i, kind in enumerate(units):
        w = ref.random_floats((growth, channels, k, k), 10 + i)
        packed = mx.nd.array(K.pack_conv_weights(w), dtype="int32")
        sign, bias = (mx.nd.array(a) for a in _thresholds(channels, 20 + i))
        inputs += [packed, sign, bias]
        out = mx.nd.bmx_binary_conv2d(y, packed, sign, bias, thresholds=True, kernel=(k, k),
                                      pad=(pad, pad), dilate=(dilate, dilate),
                                      num_filter=growth, in_channels=channels, **spec)
        if kind == "d":
            y = mx.nd.concat(y, out, dim=1)
            channels += growth
        else:
            y = mx.nd.concat(y[:, :channels - growth], y[:, channels - growth:] + out, dim=1)
    got = mx.nd.bmx_binary_stage(*inputs, in_channels=c0, growth=growth, units=units,
                                 kernel=(k, k), dilate=(dilate, dilate), **spec)
    np.testing.assert_array_equal(got.asnumpy(), y.asnumpy())


def _stage_inputs(c0=32, growth=8, units="di", weight_words=None, sign_value=1.0,
                  data_channels=None):
    inputs, channels = [mx.nd.zeros((1, data_channels or c0, 5, 5))], c0
    for kind in units:
        words = weight_words or -(-channels // 32)
        inputs += [mx.nd.zeros((growth, 3, 3, words), dtype="int32"),
                   mx.nd.full((channels,), sign_value), mx.nd.zeros((channels,))]
        channels += growth if kind == "d" else 0
    return inputs


BAD_STAGES = {
    "unknown-unit": (dict(units="dx"), "units='dx' must be 1 to 1024 letters"),
    "no-units": (dict(units=""), "units='' must be 1 to 1024 letters"),
    "improvement-too-wide": (dict(units="i", growth=64),
                             "improves the last growth=64 channels but its input has only 32"),
    "even-kernel": (dict(kernel=(2, 2)), "has no same padding"),
    "unknown-attribute": (dict(stride=2), "unknown attribute 'stride'"),
    "channels": (dict(data_channels=16), "has 16 channels but in_channels=32"),
    "weight-shape": (dict(weight_words=2), "input 'unit 0 weight' must have shape (8, 3, 3, 1)"),
    "threshold-sign": (dict(sign_value=0.5), "'unit 0 threshold_sign' must hold only +1, -1 or 0"),
}


@pytest.mark.parametrize("name", list(BAD_STAGES))
def test_stage_op_rejects_bad_input_with_a_message(name):
    attrs, message = BAD_STAGES[name]
    attrs = dict(dict(in_channels=32, growth=8, units="di", kernel=(3, 3)), **attrs)
    inputs = _stage_inputs(growth=attrs["growth"], units=attrs["units"] or "d",
                           weight_words=attrs.pop("weight_words", None),
                           sign_value=attrs.pop("sign_value", 1.0),
                           data_channels=attrs.pop("data_channels", None))
    with pytest.raises(mx.base.MXNetError, match=re.escape(message)):
        mx.nd.bmx_binary_stage(*inputs, **attrs).wait_to_read()


NORM_POOLS = {
    "transition": dict(shape=(2, 40, 12, 10), kernel=2, stride=2, pad=0),
    "stem-tail": dict(shape=(1, 16, 15, 17), kernel=3, stride=2, pad=1),
    "fixed-gamma": dict(shape=(1, 8, 9, 9), kernel=3, stride=1, pad=1, fix_gamma=True),
    "epsilon": dict(shape=(3, 5, 8, 6), kernel=(2, 3), stride=(2, 1), pad=(1, 0), eps=0.25),
    "norm-relu": dict(shape=(2, 24, 17, 9), kernel=1, stride=1, pad=0),  # the stem's pairs
    "relu-pool": dict(shape=(2, 16, 14, 14), kernel=2, stride=1, pad=0, norm=False),  # QuickNet
    "relu-pool-padded": dict(shape=(1, 7, 9, 12), kernel=3, stride=2, pad=1, norm=False),
}


@pytest.mark.parametrize("name", list(NORM_POOLS))
def test_norm_relu_pool_op_equals_mxnet_operators(name):
    spec = dict(NORM_POOLS[name])
    shape = spec.pop("shape")
    pool = {key: spec.pop(key) for key in ("kernel", "stride", "pad")}
    pool = {key: (v, v) if isinstance(v, int) else v for key, v in pool.items()}
    rng = np.random.RandomState(7)
    x = mx.nd.array(np.concatenate([rng.standard_normal(shape) * 3, np.zeros(shape)], axis=3)
                    .astype(np.float32))
    c = shape[1]
    params = [mx.nd.array(v.astype(np.float32)) for v in (
        rng.uniform(-2, 2, c), rng.uniform(-1, 1, c), rng.uniform(-1, 1, c),
        rng.uniform(0.1, 2, c))]
    norm = dict(eps=spec.get("eps", 1e-3), fix_gamma=spec.get("fix_gamma", False))
    if not spec.get("norm", True):
        expected = mx.nd.Pooling(mx.nd.relu(x), pool_type="max", **pool)
        got = mx.nd.bmx_norm_relu_pool(x, norm=False, **pool)
        np.testing.assert_array_equal(got.asnumpy(), expected.asnumpy())
        return
    expected = mx.nd.Pooling(mx.nd.relu(mx.nd.BatchNorm(x, *params, **norm)), pool_type="max",
                             **pool)
    got = mx.nd.bmx_norm_relu_pool(x, *params, **norm, **pool)
    np.testing.assert_array_equal(got.asnumpy(), expected.asnumpy())


@pytest.mark.parametrize("attrs,message", [
    (dict(kernel=(2, 2), pad=(2, 0)), "pad (2, 0) must be smaller than the kernel (2, 2)"),
    (dict(kernel=(9, 9)), "the pooling window (9, 9) with pad (0, 0) does not fit"),
    (dict(kernel=(2, 2), eps="-1"), "attribute eps='-1' must be a finite number >= 0"),
    (dict(stride=(2, 2)), "attribute kernel is required"),
    (dict(kernel=(2, 2), pool_type="avg"), "unknown attribute 'pool_type'"),
])
def test_norm_relu_pool_op_rejects_bad_input(attrs, message):
    inputs = [mx.nd.zeros((1, 4, 6, 6))] + [mx.nd.ones((4,)) for _ in range(4)]
    with pytest.raises(mx.base.MXNetError, match=re.escape(message)):
        mx.nd.bmx_norm_relu_pool(*inputs, **attrs).wait_to_read()


@pytest.mark.parametrize("sign,bias_shape,message", [
    (np.full(32, 2.0, np.float32), (32,), "'threshold_sign' must hold only"),
    (np.ones(16, np.float32), (16,), r"input 'threshold_sign' must have shape \(32,\)"),
])
def test_conv_op_rejects_bad_thresholds(sign, bias_shape, message):
    with pytest.raises(mx.base.MXNetError, match=message):
        mx.nd.bmx_binary_conv2d(mx.nd.zeros((1, 32, 5, 5)),
                                mx.nd.zeros((8, 3, 3, 1), dtype="int32"), mx.nd.array(sign),
                                mx.nd.zeros(bias_shape), kernel=(3, 3), num_filter=8,
                                in_channels=32, pad=(1, 1), thresholds=True).wait_to_read()


# --- the binary convolution's epilogue: ReLU, BatchNorm, residual addition ------------------------

def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _epilogue_case(case, seed=0):
    """(data, packed weight, conv attributes, BatchNorm parameters) for a CONV_CASES case."""
    x, w, geometry = conv_inputs(case, seed)
    attrs = dict(kernel=(case["k"], case["k"]), num_filter=case["c_out"], in_channels=case["c"],
                 stride=_pair(case["stride"]), pad=_pair(case["pad"]),
                 dilate=_pair(case["dilate"]), num_group=case["groups"])
    rng = np.random.RandomState(seed + 2)
    c = case["c_out"]
    norm = [mx.nd.array(v.astype(np.float32)) for v in (
        rng.uniform(-2, 2, c), rng.uniform(-1, 1, c), rng.uniform(-3, 3, c),
        rng.uniform(0.1, 4, c))]
    return (mx.nd.array(x), mx.nd.array(K.pack_conv_weights(w, case["groups"]), dtype="int32"),
            attrs, norm)


EPILOGUES = {
    "relu-norm": dict(post_relu=True, post_norm=True),
    "norm": dict(post_norm=True, eps=0.25),
    "relu": dict(post_relu=True),
    "relu-norm-fixed-gamma": dict(post_relu=True, post_norm=True, fix_gamma=True),
}


def _composed(x, weight, attrs, norm, epilogue):
    y = mx.nd.bmx_binary_conv2d(x, weight, **attrs)
    if epilogue.get("post_relu"):
        y = mx.nd.relu(y)
    if epilogue.get("post_norm"):
        y = mx.nd.BatchNorm(y, *norm, eps=epilogue.get("eps", 1e-5),
                            fix_gamma=epilogue.get("fix_gamma", False))
    return y


@pytest.mark.parametrize("isa", K.ISAS)
@pytest.mark.parametrize("case", ref.CONV_CASES)
def test_conv_epilogue_equals_relu_and_batchnorm_after_the_op(isa, case):
    """post_relu / post_norm give exactly MXNet's relu and BatchNorm applied to the op's output,
    on every path and convolution case (zeros, -0 and NaN in the input)."""
    if isa not in K.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    x, weight, attrs, norm = _epilogue_case(case)
    attrs = dict(attrs, offset=False, pad_value=1)
    with bmxnet_ext.kernels.use_isa(isa):
        for epilogue in EPILOGUES.values():
            inputs = [x, weight] + (norm if epilogue.get("post_norm") else [])
            got = mx.nd.bmx_binary_conv2d(*inputs, **attrs, **epilogue)
            expected = _composed(x, weight, attrs, norm, epilogue)
            np.testing.assert_array_equal(got.asnumpy(), expected.asnumpy())


RESIDUAL_CASES = [
    pytest.param(dict(ref.BASE_CONV, c_out=33), id="base"),
    pytest.param(dict(ref.BASE_CONV, n=3, c=64, h=15, w=15, c_out=64), id="64x15x15-batch3"),
    pytest.param(dict(ref.BASE_CONV, c=100, c_out=100, groups=4, h=5, w=11), id="grouped"),
    pytest.param(dict(ref.BASE_CONV, c=70, c_out=70, h=9, w=9, k=5, pad=2), id="70-channels"),
]


@pytest.mark.parametrize("isa", K.ISAS)
@pytest.mark.parametrize("case", RESIDUAL_CASES)
@pytest.mark.parametrize("mode", [dict(offset=False), dict(offset=True)], ids=["dot", "offset"])
def test_conv_residual_adds_the_input_after_the_epilogue(isa, case, mode):
    if isa not in K.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    x, weight, attrs, norm = _epilogue_case(case, seed=3)
    attrs = dict(attrs, pad_value=1, **mode)
    with bmxnet_ext.kernels.use_isa(isa):
        for epilogue in [{}] + list(EPILOGUES.values()):
            inputs = [x, weight] + (norm if epilogue.get("post_norm") else [])
            got = mx.nd.bmx_binary_conv2d(*inputs, residual=True, **attrs, **epilogue)
            expected = x + _composed(x, weight, attrs, norm, epilogue)
            np.testing.assert_array_equal(got.asnumpy(), expected.asnumpy())


@pytest.mark.parametrize("change,message", [
    (dict(num_filter=8), "residual=True adds the input to the output, but the output shape"),
    (dict(stride=(2, 2)), "residual=True adds the input to the output, but the output shape"),
    (dict(eps="nan"), "attribute eps='nan' must be a finite number >= 0"),
])
def test_conv_epilogue_refuses_bad_attributes(change, message):
    case = dict(ref.BASE_CONV, c_out=33)
    x, _, attrs, norm = _epilogue_case(case)
    attrs = dict(attrs, **change)
    weight = mx.nd.zeros((attrs["num_filter"], 3, 3, 2), dtype="int32")
    norm = [mx.nd.ones(attrs["num_filter"])] * 4
    with pytest.raises(mx.base.MXNetError, match=re.escape(message)):
        mx.nd.bmx_binary_conv2d(x, weight, *norm, residual=True, post_norm=True,
                                **attrs).wait_to_read()
