"""bmx_binary_conv2d and bmx_binary_dense through MXNet (mx.nd / mx.sym / Gluon), against the float
reference on signs and against the training layers; bad input fails with a message, never a crash.
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import mxnet as mx
import numpy as np
import pytest

import binary_reference as ref
import bmxnet_ext
from bmxnet_ext.inference import _kernels as K
from conftest import conv_inputs


def _scale(units, seed=2):
    return np.random.RandomState(seed).rand(units).astype(np.float32) + 0.01


def conv_op(x, packed, case, offset=True, scale=None, pad_value=-1):
    inputs = [mx.nd.array(x), mx.nd.array(packed, dtype="int32")]
    if scale is not None:
        inputs.append(mx.nd.array(scale))
    return mx.nd.bmx_binary_conv2d(
        *inputs, kernel=(case["k"], case["k"]), num_filter=case["c_out"], in_channels=case["c"],
        stride=case["stride"], pad=case["pad"], dilate=case["dilate"], num_group=case["groups"],
        offset=offset, scaling=scale is not None, pad_value=pad_value).asnumpy()


def dense_op(x, packed, in_units, offset=True, scale=None, flatten=True):
    inputs = [mx.nd.array(x), mx.nd.array(packed, dtype="int32")]
    if scale is not None:
        inputs.append(mx.nd.array(scale))
    return mx.nd.bmx_binary_dense(*inputs, num_hidden=packed.shape[0], in_units=in_units,
                                  offset=offset, scaling=scale is not None,
                                  flatten=flatten).asnumpy()


@pytest.mark.parametrize("case", ref.CONV_CASES)
def test_conv_op_equals_float_reference_on_signs(case):
    x, w, geometry = conv_inputs(case)
    got = conv_op(x, K.pack_conv_weights(w, case["groups"]), case)
    np.testing.assert_array_equal(got, ref.conv2d(x, w, **geometry))


@pytest.mark.parametrize("mode", ref.OUTPUT_MODES)
@pytest.mark.parametrize("case", [ref.CONV_CASES[0], ref.CONV_CASES[-4]])
def test_conv_op_output_modes(case, mode):
    x, w, geometry = conv_inputs(case, seed=3)
    scale = _scale(case["c_out"]) if mode["scale"] else None
    got = conv_op(x, K.pack_conv_weights(w, case["groups"]), case, offset=mode["offset"],
                  scale=scale)
    np.testing.assert_array_equal(got, ref.conv2d(x, w, offset=mode["offset"], scale=scale,
                                                  **geometry))


def test_conv_op_pads_with_plus_one_on_request():
    case = ref.CONV_CASES[-4].values[0]
    x, w, geometry = conv_inputs(case, seed=4)
    got = conv_op(x, K.pack_conv_weights(w, case["groups"]), case, pad_value=1)
    np.testing.assert_array_equal(got, ref.conv2d(x, w, pad_value=1, **geometry))


@pytest.mark.parametrize("case", ref.DENSE_CASES)
def test_dense_op_equals_float_reference_on_signs(case):
    x = ref.random_floats((case["n"], case["k"]), 6)
    w = ref.random_floats((case["units"], case["k"]), 7)
    np.testing.assert_array_equal(dense_op(x, K.pack_dense_weights(w), case["k"]),
                                  ref.dense(x, w))


@pytest.mark.parametrize("mode", ref.OUTPUT_MODES)
def test_dense_op_output_modes(mode):
    x = ref.random_floats((2, 3, 4, 5), 8)  # flattened to (2, 60) like FullyConnected
    w = ref.random_floats((9, 60), 9)
    scale = _scale(9) if mode["scale"] else None
    got = dense_op(x, K.pack_dense_weights(w), 60, offset=mode["offset"], scale=scale)
    np.testing.assert_array_equal(got, ref.dense(x, w, offset=mode["offset"], scale=scale))


def test_dense_op_without_flatten_applies_to_the_last_axis():
    x = ref.random_floats((2, 3, 37), 10)
    w = ref.random_floats((5, 37), 11)
    got = dense_op(x, K.pack_dense_weights(w), 37, flatten=False)
    assert got.shape == (2, 3, 5)
    np.testing.assert_array_equal(got.reshape(6, 5), ref.dense(x.reshape(6, 37), w))


def test_ops_sign_of_zero_is_plus_one_and_nan_minus_one():
    x = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45], dtype=np.float32)
    signs = np.array([1, 1, -1, 1, -1, 1, -1], dtype=np.float32)
    conv = mx.nd.bmx_binary_conv2d(mx.nd.array(x.reshape(1, 1, 1, 7)),
                                   mx.nd.ones((1, 1, 1, 1), dtype="int32"), kernel=1,
                                   num_filter=1, in_channels=1, offset=False)
    np.testing.assert_array_equal(conv.asnumpy().ravel(), signs)
    dense = mx.nd.bmx_binary_dense(mx.nd.array(x.reshape(7, 1)),
                                   mx.nd.ones((1, 1), dtype="int32"), num_hidden=1, in_units=1,
                                   offset=False)
    np.testing.assert_array_equal(dense.asnumpy().ravel(), signs)


# --- the ops compute what the training layers compute --------------------------------------------

@pytest.mark.parametrize("mode", ref.OUTPUT_MODES)
def test_conv_op_equals_training_layer(mode):
    layer = bmxnet_ext.QConv2D(12, 3, strides=2, padding=1, groups=2, in_channels=66,
                               input_quantizer="det_sign", offset=mode["offset"],
                               scaling=mode["scale"])
    layer.initialize(mx.init.Normal(1.0))
    x = mx.nd.array(ref.random_floats((3, 66, 9, 7), 12))
    w = layer.weight.data()
    inputs = [x, mx.nd.array(K.pack_conv_weights(w.asnumpy(), 2), dtype="int32")]
    if mode["scale"]:
        inputs.append(mx.nd.mean(mx.nd.abs(w), axis=(1, 2, 3)))
    got = mx.nd.bmx_binary_conv2d(*inputs, kernel=3, stride=2, pad=1, num_filter=12,
                                  in_channels=66, num_group=2, offset=mode["offset"],
                                  scaling=mode["scale"])
    np.testing.assert_array_equal(got.asnumpy(), layer(x).asnumpy())


@pytest.mark.parametrize("mode", ref.OUTPUT_MODES)
def test_dense_op_equals_training_layer(mode):
    layer = bmxnet_ext.QDense(7, in_units=90, input_quantizer="det_sign",
                              offset=mode["offset"], scaling=mode["scale"])
    layer.initialize(mx.init.Normal(1.0))
    x = mx.nd.array(ref.random_floats((4, 90), 13))
    w = layer.weight.data()
    inputs = [x, mx.nd.array(K.pack_dense_weights(w.asnumpy()), dtype="int32")]
    if mode["scale"]:
        inputs.append(mx.nd.mean(mx.nd.abs(w), axis=1))
    got = mx.nd.bmx_binary_dense(*inputs, num_hidden=7, in_units=90, offset=mode["offset"],
                                 scaling=mode["scale"])
    np.testing.assert_array_equal(got.asnumpy(), layer(x).asnumpy())


# --- symbolic use -------------------------------------------------------------------------------

def test_symbol_infers_packed_weight_and_scale_shapes_and_dtypes():
    # Unknown dimensions (0) are filled in from the attributes. (Rank-unknown variables are
    # avoided: MXNet 1.9.1 overruns its shape buffer for them before calling any library op.)
    weight = mx.sym.var("weight", shape=(0, 0, 0, 0))
    scale = mx.sym.var("scale", shape=(0,))
    y = mx.sym.bmx_binary_conv2d(mx.sym.var("data"), weight, scale,
                                 kernel=(3, 5), num_filter=8, in_channels=100, num_group=2,
                                 pad=(1, 2), stride=2, scaling=True)
    args, outs, _ = y.infer_shape(data=(2, 100, 9, 11))
    assert args == [(2, 100, 9, 11), (8, 3, 5, 2), (8,)]
    assert outs == [(2, 8, 5, 6)]
    arg_types, out_types, _ = y.infer_type(data="float32")
    assert arg_types == [np.float32, np.int32, np.float32] and out_types == [np.float32]
    z = mx.sym.bmx_binary_dense(mx.sym.var("x"), mx.sym.var("w", shape=(4, 0)), num_hidden=4,
                                in_units=60)
    assert z.infer_shape(x=(3, 3, 4, 5)) == ([(3, 3, 4, 5), (4, 2)], [(3, 4)], [])


def test_bound_symbol_computes_the_reference():
    case = ref.CONV_CASES[0].values[0]
    x, w, geometry = conv_inputs(case, seed=14)
    y = mx.sym.bmx_binary_conv2d(mx.sym.var("data"), mx.sym.var("weight", dtype="int32"),
                                 kernel=3, pad=1, num_filter=case["c_out"],
                                 in_channels=case["c"])
    executor = y.bind(mx.cpu(), {"data": mx.nd.array(x),
                                 "weight": mx.nd.array(K.pack_conv_weights(w), dtype="int32")})
    np.testing.assert_array_equal(executor.forward()[0].asnumpy(), ref.conv2d(x, w, **geometry))


class _PackedConv(mx.gluon.HybridBlock):
    def __init__(self, packed, in_channels, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.weight = self.params.get_constant("weight", mx.nd.array(packed, dtype="int32"))

    def hybrid_forward(self, F, x, weight):
        return F.bmx_binary_conv2d(x, weight, kernel=3, pad=1, num_filter=self.weight.shape[0],
                                   in_channels=self.in_channels)


def test_hybridized_block_equals_imperative_and_reference():
    x = ref.random_floats((2, 40, 6, 5), 15)
    w = ref.random_floats((5, 40, 3, 3), 16)
    block = _PackedConv(K.pack_conv_weights(w), 40)
    block.initialize()
    imperative = block(mx.nd.array(x)).asnumpy()
    block.hybridize()
    np.testing.assert_array_equal(block(mx.nd.array(x)).asnumpy(), imperative)
    np.testing.assert_array_equal(imperative, ref.conv2d(x, w, pad=1))


def test_gradient_of_the_inference_ops_is_zero():
    x = mx.nd.array(ref.random_floats((1, 8, 4, 4), 17))
    x.attach_grad()
    with mx.autograd.record():
        y = mx.nd.bmx_binary_conv2d(x, mx.nd.zeros((3, 1, 1, 1), dtype="int32"), kernel=1,
                                    num_filter=3, in_channels=8)
    y.backward()
    assert not x.grad.asnumpy().any()


# --- bad input: an MXNetError with a message, never a crash -------------------------------------

_PRELUDE = """
import mxnet as mx
import bmxnet_ext
nd = mx.nd

def _call(op, defaults, inputs, attrs):
    defaults.update(attrs)
    op(*inputs, **{k: v for k, v in defaults.items() if v is not None}).wait_to_read()

def conv(data=None, weight=None, scale=None, **attrs):
    data = nd.zeros((1, 32, 5, 5)) if data is None else data
    weight = nd.zeros((8, 3, 3, 1), dtype="int32") if weight is None else weight
    inputs = [data, weight] + ([scale] if scale is not None else [])
    _call(nd.bmx_binary_conv2d, dict(kernel=(3, 3), num_filter=8, in_channels=32, pad=(1, 1)),
          inputs, attrs)

def dense(data=None, weight=None, scale=None, **attrs):
    data = nd.zeros((2, 40)) if data is None else data
    weight = nd.zeros((4, 2), dtype="int32") if weight is None else weight
    inputs = [data, weight] + ([scale] if scale is not None else [])
    _call(nd.bmx_binary_dense, dict(num_hidden=4, in_units=40), inputs, attrs)

conv_sym = mx.sym.bmx_binary_conv2d(mx.sym.var("data"),
                                    mx.sym.var("weight", shape=(8, 3, 3, 1)), kernel=(3, 3),
                                    num_filter=8, in_channels=32, pad=(1, 1))
"""

BAD_INPUT = {
    # conv: dtypes and ranks
    "conv-data-float64": ("conv(data=nd.zeros((1, 32, 5, 5), dtype='float64'))",
                          "input 'data' must be float32, got float64"),
    "conv-weight-float32": ("conv(weight=nd.zeros((8, 3, 3, 1)))",
                            "input 'weight' must be int32, got float32"),
    "conv-data-rank3": ("conv(data=nd.zeros((32, 5, 5)))",
                        "input 'data' must have rank 4 (N, C, H, W), got shape (32, 5, 5)"),
    # conv: channels, weights and groups
    "conv-channels-vs-weights": ("conv(data=nd.zeros((1, 16, 5, 5)))",
                                 "input 'data' has 16 channels but in_channels=32"),
    "conv-weight-shape": ("conv(weight=nd.zeros((8, 3, 3, 2), dtype='int32'))",
                          "input 'weight' must have shape (8, 3, 3, 1) = (num_filter, kernel_h, "
                          "kernel_w, ceil(in_channels / num_group / 32))"),
    "conv-weight-tail-bits": ("conv(data=nd.zeros((1, 30, 5, 5)), in_channels=30, "
                              "weight=nd.ones((8, 3, 3, 1), dtype='int32') * -1)",
                              "input 'weight' has bits set past in_channels / num_group = 30"),
    "conv-groups-not-dividing": ("conv(num_group=3)",
                                 "num_group=3 must divide in_channels=32 and num_filter=8"),
    "conv-scale-missing": ("conv(scaling=True)", "expects 3 inputs, but got 2"),
    "conv-scale-shape": ("conv(scale=nd.ones((7,)), scaling=True)",
                         "input 'scale' must have shape (8,)"),
    # conv: empty or unknown batch
    "conv-empty-batch": ("with mx.util.np_shape(True): conv(data=nd.zeros((0, 32, 5, 5)))",
                         "must have a known, non-empty batch dimension, got shape (0, 32, 5, 5)"),
    "conv-unknown-batch": ("conv_sym.infer_shape(data=(0, 32, 5, 5))",
                           "non-empty batch dimension, got shape (?, 32, 5, 5)"),
    # conv: negative and absurd attributes
    "conv-negative-stride": ("conv(stride=(-1, 1))",
                             "attribute stride='(-1, 1)' must be one integer or a pair"),
    "conv-negative-pad": ("conv(pad=-2)", "attribute pad='-2' must be one integer or a pair"),
    "conv-zero-dilate": ("conv(dilate=(1, 0))", "attribute dilate='(1, 0)'"),
    "conv-absurd-kernel": ("conv(kernel=(100000, 3))", "each in [1, 4096]"),
    "conv-zero-filters": ("conv(num_filter=0)",
                          "attribute num_filter='0' must be an integer in [1, 1048576]"),
    "conv-negative-groups": ("conv(num_group=-4)", "attribute num_group='-4'"),
    "conv-kernel-larger-than-input": (
        "conv(kernel=(9, 9), weight=nd.zeros((8, 9, 9, 1), dtype='int32'))",
        "does not fit the padded input (7, 7)"),
    "conv-kernel-one-larger-strided": (
        "conv(kernel=(6, 6), pad=0, stride=2, weight=nd.zeros((8, 6, 6, 1), dtype='int32'))",
        "does not fit the padded input (5, 5)"),
    "conv-absurd-input": ("conv_sym.infer_shape(data=(100000, 32, 60000, 60000))",
                          "is too large"),
    "conv-missing-in-channels": ("conv(in_channels=None)",
                                 "attribute in_channels is required"),
    "conv-pad-value-zero": ("conv(pad_value=0)", "attribute pad_value='0' must be -1 or 1"),
    "conv-unknown-attribute": ("conv(layout='NHWC')", "unknown attribute 'layout'"),
    # dense
    "dense-data-float64": ("dense(data=nd.zeros((2, 40), dtype='float64'))",
                           "input 'data' must be float32, got float64"),
    "dense-weight-int64": ("dense(weight=nd.zeros((4, 2), dtype='int64'))",
                           "input 'weight' must be int32, got int64"),
    "dense-data-rank1": ("dense(data=nd.zeros((40,)))", "input 'data' must have rank >= 2"),
    "dense-units-vs-weights": ("dense(data=nd.zeros((2, 41)))",
                               "has 41 features per row (flatten=True) but in_units=40"),
    "dense-weight-shape": ("dense(weight=nd.zeros((4, 1), dtype='int32'))",
                           "input 'weight' must have shape (4, 2) = (num_hidden, "
                           "ceil(in_units / 32))"),
    "dense-empty-batch": ("with mx.util.np_shape(True): dense(data=nd.zeros((0, 40)))",
                          "without empty dimensions (batch included), got shape (0, 40)"),
    "dense-negative-units": ("dense(num_hidden=-1)", "attribute num_hidden='-1'"),
    "dense-absurd-in-units": ("dense(in_units=10**12)", "attribute in_units='1000000000000'"),
    "dense-absurd-input": ("mx.sym.bmx_binary_dense(mx.sym.var('data'), "
                           "mx.sym.var('w', shape=(1, 1)), num_hidden=1, in_units=1)"
                           ".infer_shape(data=(2**30, 1))", "is too large"),
}


def _run_isolated(code):
    script = _PRELUDE + "\n" + code + "\nprint('NO ERROR RAISED')\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def isolated_runs(request):
    """Starts every selected bad-input case in its own interpreter, all at once (each ~3 s of
    MXNet start-up; a crash kills only its own interpreter)."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", "") == _BAD_INPUT_TEST]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        yield {name: pool.submit(_run_isolated, BAD_INPUT[name][0]) for name in selected}


_BAD_INPUT_TEST = "test_bad_input_raises_mxnet_error_with_message"


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_raises_mxnet_error_with_message(name, isolated_runs):
    result = isolated_runs[name].result()
    assert result.returncode == 1, (
        f"expected an MXNetError, got exit status {result.returncode} (negative: killed by a "
        f"signal, i.e. a crash)\nstdout: {result.stdout}\nstderr: {result.stderr[-3000:]}")
    # MXNet 1.9.1 keeps earlier extension errors in later messages: check inclusion only.
    assert "MXNetError" in result.stderr or "RuntimeError" in result.stderr, result.stderr
    assert BAD_INPUT[name][1] in result.stderr, result.stderr[-3000:]
