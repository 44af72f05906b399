"""Property-based tests of the bmx_* operators through mx.nd: random shapes, strides, dilations,
groups, channel counts, batch sizes and values (±0, NaN, ±Inf, denormals, huge and tiny
magnitudes). Every case equals the float reference on signs (tests/binary_reference.py) or raises
the documented MXNetError.

The weights are packed here by an independent numpy implementation of the bit layout, so a
packing bug in the C++ cannot cancel out.
"""
import os

import mxnet as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import binary_reference as ref
import bmxnet_ext  # noqa: F401  (loads the operators)
from conftest import numpy_pack

# BMXNET_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_*.py searches deeper.
FUZZ = settings(max_examples=int(os.environ.get("BMXNET_FUZZ_EXAMPLES", 200)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FLOAT32 = np.finfo(np.float32)
# Values at the edges of the sign rule: x >= 0 -> +1, everything else (NaN included) -> -1.
SPECIALS = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf,
                     1e-45, -1e-45,                      # smallest denormals
                     FLOAT32.tiny / 2, -FLOAT32.tiny / 2,  # denormals
                     FLOAT32.tiny, -FLOAT32.tiny,        # smallest normals
                     FLOAT32.max, -FLOAT32.max, 1.0, -1.0], dtype=np.float32)


@st.composite
def float_arrays(draw, shape):
    """Float32 arrays of ``shape``: normal values at a drawn magnitude, with a drawn fraction of
    them replaced by SPECIALS."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    magnitude = draw(st.sampled_from([1.0, 1e-40, 1e-3, 1e30]))
    special_fraction = draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    rng = np.random.RandomState(seed)
    x = (rng.standard_normal(shape) * magnitude).astype(np.float32)
    mask = rng.rand(*shape) < special_fraction
    x[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
    return x


def _out_size(size, kernel, pad, dilate, stride):
    extent = dilate * (kernel - 1) + 1
    padded = size + 2 * pad
    return 0 if padded < extent else (padded - extent) // stride + 1


# --- bmx_sign_pack --------------------------------------------------------------------------------

@FUZZ
@given(data=st.data(), n=st.integers(1, 4), c=st.integers(1, 130), h=st.integers(1, 7),
       w=st.integers(1, 7))
def test_sign_pack_equals_numpy(data, n, c, h, w):
    x = data.draw(float_arrays((n, c, h, w)))
    np.testing.assert_array_equal(mx.nd.bmx_sign_pack(mx.nd.array(x)).asnumpy(), numpy_pack(x))


# --- bmx_binary_conv2d ----------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 4))
    case = dict(
        n=draw(st.integers(1, 3)), groups=groups,
        c=groups * draw(st.integers(1, 70)), c_out=groups * draw(st.integers(1, 6)),
        h=draw(st.integers(1, 10)), w=draw(st.integers(1, 10)),
        kernel=(draw(st.integers(1, 5)), draw(st.integers(1, 5))),
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        pad=(draw(st.integers(0, 3)), draw(st.integers(0, 3))),
        dilate=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        pad_value=draw(st.sampled_from([-1, 1])),
        mode=draw(st.sampled_from(["offset", "dot", "scaled"])))
    case["out"] = tuple(_out_size(case[size], case["kernel"][i], case["pad"][i],
                                  case["dilate"][i], case["stride"][i])
                        for i, size in enumerate(("h", "w")))
    return case


def _conv(x, packed, case, scale=None):
    inputs = [mx.nd.array(x), mx.nd.array(packed, dtype="int32")]
    if scale is not None:
        inputs.append(mx.nd.array(scale))
    return mx.nd.bmx_binary_conv2d(
        *inputs, kernel=case["kernel"], stride=case["stride"], pad=case["pad"],
        dilate=case["dilate"], num_filter=case["c_out"], in_channels=case["c"],
        num_group=case["groups"], offset=case["mode"] == "offset", scaling=scale is not None,
        pad_value=case["pad_value"]).asnumpy()


@FUZZ
@given(data=st.data(), case=conv_cases())
def test_binary_conv2d_equals_reference_or_says_the_kernel_does_not_fit(data, case):
    x = data.draw(float_arrays((case["n"], case["c"], case["h"], case["w"])))
    w = data.draw(float_arrays((case["c_out"], case["c"] // case["groups"]) + case["kernel"]))
    scale = (data.draw(float_arrays((case["c_out"],))) if case["mode"] == "scaled" else None)
    if min(case["out"]) < 1:
        with pytest.raises(mx.base.MXNetError, match="does not fit the padded input"):
            _conv(x, numpy_pack(w), case, scale)
        return
    with np.errstate(over="ignore", invalid="ignore"):  # dot * huge or NaN scales
        expected = ref.conv2d(x, w, stride=case["stride"], pad=case["pad"],
                              dilate=case["dilate"], groups=case["groups"],
                              offset=case["mode"] == "offset", scale=scale,
                              pad_value=case["pad_value"])
    np.testing.assert_array_equal(_conv(x, numpy_pack(w), case, scale), expected)


# --- bmx_binary_dense -----------------------------------------------------------------------------

@FUZZ
@given(data=st.data(), rows=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       in_units=st.integers(1, 300), units=st.integers(1, 70), flatten=st.booleans(),
       mode=st.sampled_from(["offset", "dot", "scaled"]))
def test_binary_dense_equals_reference(data, rows, in_units, units, flatten, mode):
    # flatten=True: (rows[0], *rest) flattened to in_units features; False: the last axis.
    if flatten:
        feature_shape = data.draw(st.sampled_from([(in_units,), (1, in_units), (in_units, 1)]))
        shape = (rows[0],) + feature_shape
    else:
        shape = tuple(rows) + (in_units,)
    x = data.draw(float_arrays(shape))
    w = data.draw(float_arrays((units, in_units)))
    scale = data.draw(float_arrays((units,))) if mode == "scaled" else None
    inputs = [mx.nd.array(x), mx.nd.array(numpy_pack(w.reshape(units, in_units, 1, 1))
                                          .reshape(units, -1), dtype="int32")]
    if scale is not None:
        inputs.append(mx.nd.array(scale))
    got = mx.nd.bmx_binary_dense(*inputs, num_hidden=units, in_units=in_units,
                                 offset=mode == "offset", scaling=scale is not None,
                                 flatten=flatten).asnumpy()
    with np.errstate(over="ignore", invalid="ignore"):
        expected = ref.dense(x.reshape(-1, in_units), w, offset=mode == "offset", scale=scale)
    out_shape = ((shape[0],) if flatten else shape[:-1]) + (units,)
    np.testing.assert_array_equal(got, expected.reshape(out_shape))


# --- documented errors ----------------------------------------------------------------------------

BAD_DTYPES = ["float16", "float64", "uint8", "int8", "int32", "int64"]


@FUZZ
@given(dtype=st.sampled_from(BAD_DTYPES), c=st.integers(1, 40))
def test_data_of_another_dtype_is_refused(dtype, c):
    with pytest.raises(mx.base.MXNetError, match=f"input 'data' must be float32, got {dtype}"):
        mx.nd.bmx_binary_conv2d(mx.nd.zeros((1, c, 3, 3), dtype=dtype),
                                mx.nd.zeros((2, 1, 1, -(-c // 32)), dtype="int32"), kernel=1,
                                num_filter=2, in_channels=c).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match=f"input 'data' must be float32, got {dtype}"):
        mx.nd.bmx_sign_pack(mx.nd.zeros((1, c, 2, 2), dtype=dtype)).wait_to_read()


@FUZZ
@given(declared=st.integers(1, 100), actual=st.integers(1, 100))
def test_channel_count_must_match_the_packed_weights(declared, actual):
    assume(declared != actual)
    words = -(-declared // 32)
    with pytest.raises(mx.base.MXNetError,
                       match=f"has {actual} channels but in_channels={declared}"):
        mx.nd.bmx_binary_conv2d(mx.nd.zeros((1, actual, 3, 3)),
                                mx.nd.zeros((4, 1, 1, words), dtype="int32"), kernel=1,
                                num_filter=4, in_channels=declared).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match=f"but in_units={declared}"):
        mx.nd.bmx_binary_dense(mx.nd.zeros((2, actual)),
                               mx.nd.zeros((4, words), dtype="int32"), num_hidden=4,
                               in_units=declared).wait_to_read()


@FUZZ
@given(in_channels=st.integers(1, 200), num_filter=st.integers(1, 64),
       num_group=st.integers(1, 64))
def test_groups_must_divide_channels_and_filters(in_channels, num_filter, num_group):
    assume(in_channels % num_group or num_filter % num_group)
    with pytest.raises(mx.base.MXNetError, match=f"num_group={num_group} must divide"):
        mx.nd.bmx_binary_conv2d(mx.nd.zeros((1, in_channels, 3, 3)),
                                mx.nd.zeros((num_filter, 1, 1, 1), dtype="int32"), kernel=1,
                                num_filter=num_filter, in_channels=in_channels,
                                num_group=num_group).wait_to_read()


# Attribute text as a user (or a symbol file of another version) might write it: numbers, signs,
# brackets, garbage. The parser must accept it or fail with a message, never crash.
ATTRIBUTE_TEXT = st.one_of(
    st.integers(-10 ** 12, 10 ** 12).map(str),
    st.tuples(st.integers(-5, 5000), st.integers(-5, 5000)).map(str),
    st.lists(st.integers(-3, 9), max_size=4).map(str),
    st.text(alphabet="0123456789-+()[], .eExTrueFalsn", max_size=12),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            max_size=8))


@FUZZ
@given(key=st.sampled_from(["kernel", "stride", "pad", "dilate", "num_filter", "in_channels",
                            "num_group", "offset", "scaling", "pad_value"]),
       text=ATTRIBUTE_TEXT)
def test_conv_attribute_text_is_parsed_or_refused_with_a_message(key, text):
    attrs = dict(kernel=(1, 1), num_filter=2, in_channels=8)
    attrs[key] = text
    try:
        y = mx.sym.bmx_binary_conv2d(mx.sym.var("data"),
                                     mx.sym.var("weight", shape=(0, 0, 0, 0)), **attrs)
        y.infer_shape(data=(1, 8, 6, 6))
    except mx.base.MXNetError as err:
        # ours name the op and attribute; MXNet's own (scaling=True without a scale input:
        # "Not enough argument to call operator bmx_binary_conv2d") name the op
        assert "bmx_binary_conv2d" in str(err)


@FUZZ
@given(n=st.integers(1, 2 ** 31), c=st.integers(1, 2 ** 20), h=st.integers(1, 2 ** 31),
       w=st.integers(1, 2 ** 31), pad=st.integers(0, 4096), stride=st.integers(1, 4096))
def test_absurd_shapes_are_inferred_exactly_or_refused_as_too_large(n, c, h, w, pad, stride):
    y = mx.sym.bmx_binary_conv2d(mx.sym.var("data"), mx.sym.var("weight", shape=(0, 0, 0, 0)),
                                 kernel=3, pad=pad, stride=stride, num_filter=4, in_channels=c)
    out_h, out_w = _out_size(h, 3, pad, 1, stride), _out_size(w, 3, pad, 1, stride)
    try:
        _, (out,), _ = y.infer_shape(data=(n, c, h, w))
    except Exception as err:  # MXNet's own size check raises a bare Exception
        message = str(err)
        assert ("is too large" in message or "does not fit" in message
                or "larger than 2^31 elements" in message), message[-500:]
        return
    assert out == (n, 4, out_h, out_w)
