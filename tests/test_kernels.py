"""The binary conv/dense kernels through their Cython bindings, against a float reference on signs.

Every output is an integer (or an integer times a float32 scale), so kernels and reference must
agree exactly, channel tails, -1 padding, groups that straddle words and the sign of 0/NaN
included.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import binary_reference as ref
from bmxnet_ext.inference import _kernels as K
from conftest import conv_inputs


def _scale(units, seed=2):
    return np.random.RandomState(seed).rand(units).astype(np.float32) + 0.01


@pytest.mark.parametrize("case", ref.CONV_CASES)
def test_conv_equals_float_reference_on_signs(case):
    x, w, geometry = conv_inputs(case)
    packed = K.pack_conv_weights(w, case["groups"])
    np.testing.assert_array_equal(K.binary_conv2d(x, packed, **geometry),
                                  ref.conv2d(x, w, **geometry))


@pytest.mark.parametrize("mode", ref.OUTPUT_MODES)
@pytest.mark.parametrize("case", [ref.CONV_CASES[0], ref.CONV_CASES[-4], ref.CONV_CASES[-2]])
def test_conv_output_modes(case, mode):
    x, w, geometry = conv_inputs(case, seed=3)
    scale = _scale(case["c_out"]) if mode["scale"] else None
    got = K.binary_conv2d(x, K.pack_conv_weights(w, case["groups"]), offset=mode["offset"],
                          scale=scale, **geometry)
    np.testing.assert_array_equal(got, ref.conv2d(x, w, offset=mode["offset"], scale=scale,
                                                  **geometry))


@pytest.mark.parametrize("case", [ref.CONV_CASES[0], ref.CONV_CASES[-4]])
def test_conv_pads_with_plus_one_on_request(case):
    x, w, geometry = conv_inputs(case, seed=4)
    got = K.binary_conv2d(x, K.pack_conv_weights(w, case["groups"]), pad_value=1, **geometry)
    np.testing.assert_array_equal(got, ref.conv2d(x, w, pad_value=1, **geometry))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), group_in=st.integers(1, 70), groups=st.sampled_from([1, 2, 3]),
       group_out=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 4), stride=st.integers(1, 3), pad=st.integers(0, 2),
       dilate=st.integers(1, 2), seed=st.integers(0, 2 ** 31 - 1))
def test_conv_random_geometry(n, group_in, groups, group_out, h, w, k, stride, pad, dilate, seed):
    if min(h, w) + 2 * pad < dilate * (k - 1) + 1:
        return  # the kernel does not fit; rejection is tested below
    x = ref.random_floats((n, group_in * groups, h, w), seed % 1000)
    weights = ref.random_floats((group_out * groups, group_in, k, k), seed % 1000 + 1)
    geometry = dict(stride=stride, pad=pad, dilate=dilate, groups=groups)
    np.testing.assert_array_equal(
        K.binary_conv2d(x, K.pack_conv_weights(weights, groups), **geometry),
        ref.conv2d(x, weights, **geometry))


def test_conv_weight_layout_is_channels_per_tap():
    """(C_out, kh, kw, words): channel c of the group at bit c % 32 of word c // 32, tails 0."""
    w = ref.random_floats((3, 40, 2, 3), 5)
    packed = K.pack_conv_weights(w).view(np.uint32)
    assert packed.shape == (3, 2, 3, 2)
    bits = np.zeros((3, 2, 3, 64), dtype=bool)
    bits[..., :40] = (w >= 0).transpose(0, 2, 3, 1)
    unpacked = (packed[..., :, None] >> np.arange(32, dtype=np.uint32)) & 1
    np.testing.assert_array_equal(unpacked.reshape(3, 2, 3, 64), bits)


@pytest.mark.parametrize("case", ref.DENSE_CASES)
def test_dense_equals_float_reference_on_signs(case):
    x = ref.random_floats((case["n"], case["k"]), 6)
    w = ref.random_floats((case["units"], case["k"]), 7)
    np.testing.assert_array_equal(K.binary_dense(x, K.pack_dense_weights(w)), ref.dense(x, w))


@pytest.mark.parametrize("mode", ref.OUTPUT_MODES)
def test_dense_output_modes(mode):
    x = ref.random_floats((5, 77), 8)
    w = ref.random_floats((9, 77), 9)
    scale = _scale(9) if mode["scale"] else None
    got = K.binary_dense(x, K.pack_dense_weights(w), offset=mode["offset"], scale=scale)
    np.testing.assert_array_equal(got, ref.dense(x, w, offset=mode["offset"], scale=scale))


def test_dense_flattens_its_input_like_nn_dense():
    x = ref.random_floats((2, 3, 5, 7), 10)
    w = ref.random_floats((4, 105), 11)
    np.testing.assert_array_equal(K.binary_dense(x, K.pack_dense_weights(w), in_units=105),
                                  ref.dense(x, w))


SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45], dtype=np.float32)
SPECIAL_SIGNS = np.array([1, 1, -1, 1, -1, 1, -1], dtype=np.float32)


def test_conv_sign_of_zero_is_plus_one_and_nan_minus_one():
    x = SPECIAL.reshape(1, 1, 1, 7)
    # One +1 weight, offset=False: the output is the sign of each input value.
    weights = K.pack_conv_weights(np.ones((1, 1, 1, 1), dtype=np.float32))
    np.testing.assert_array_equal(K.binary_conv2d(x, weights, offset=False).ravel(),
                                  SPECIAL_SIGNS)


def test_dense_sign_of_zero_is_plus_one_and_nan_minus_one():
    x = SPECIAL.reshape(7, 1)
    weights = K.pack_dense_weights(np.ones((1, 1), dtype=np.float32))
    np.testing.assert_array_equal(K.binary_dense(x, weights, offset=False).ravel(),
                                  SPECIAL_SIGNS)


def test_weights_sign_of_zero_is_plus_one_and_nan_minus_one():
    w = SPECIAL.reshape(7, 1)
    x = np.ones((1, 1), dtype=np.float32)
    np.testing.assert_array_equal(K.binary_dense(x, K.pack_dense_weights(w), offset=False)
                                  .ravel(), SPECIAL_SIGNS)


def test_empty_batch_gives_empty_output():
    w = K.pack_conv_weights(np.ones((2, 3, 3, 3), dtype=np.float32))
    assert K.binary_conv2d(np.zeros((0, 3, 5, 5), np.float32), w, pad=1).shape == (0, 2, 5, 5)
    assert K.binary_dense(np.zeros((0, 3), np.float32),
                          K.pack_dense_weights(np.ones((2, 3), np.float32))).shape == (0, 2)


def test_kernel_name_names_the_inner_loop():
    assert K.kernel_name() in ("avx512-vpopcntdq", "avx2-vpshufb", "scalar-popcnt",
                               "scalar-portable")


def _error_id(value):
    return value.replace("\\", "") if isinstance(value, str) else ""


_X = np.zeros((1, 32, 5, 5), dtype=np.float32)
_W = K.pack_conv_weights(np.ones((4, 32, 3, 3), dtype=np.float32))


@pytest.mark.parametrize("call,error,message", [
    (lambda: K.pack_conv_weights(np.ones((4, 3, 3, 3))), TypeError, "w must be float32"),
    (lambda: K.pack_conv_weights(np.ones((4, 3, 3), np.float32)), ValueError, "rank 4"),
    (lambda: K.pack_conv_weights(np.ones((4, 3, 3, 3), np.float32), groups=3), ValueError,
     "groups=3 must be >= 1 and divide C_out=4"),
    (lambda: K.pack_conv_weights(np.ones((0, 3, 3, 3), np.float32)), ValueError, "empty"),
    (lambda: K.binary_conv2d(_X.astype(np.float64), _W), TypeError, "x must be float32"),
    (lambda: K.binary_conv2d(_X[0], _W), ValueError, r"x must have rank 4 \(N, C, H, W\)"),
    (lambda: K.binary_conv2d(_X, _W.astype(np.int64)), TypeError, "weights must be int32"),
    (lambda: K.binary_conv2d(_X, _W[0]), ValueError, "weights must have rank 4"),
    (lambda: K.binary_conv2d(_X[:, :0], _W), ValueError, "at least one channel"),
    (lambda: K.binary_conv2d(np.zeros((1, 64, 5, 5), np.float32), _W), ValueError,
     "2 words per tap"),
    (lambda: K.binary_conv2d(np.zeros((1, 30, 5, 5), np.float32), _W), ValueError,
     "bits set past 30 channels"),
    (lambda: K.binary_conv2d(_X, _W, groups=3), ValueError, "groups=3 must be >= 1 and divide"),
    (lambda: K.binary_conv2d(_X, _W, groups=0), ValueError, "groups=0"),
    (lambda: K.binary_conv2d(_X, _W, stride=0), ValueError, "stride must be an int >= 1"),
    (lambda: K.binary_conv2d(_X, _W, stride=(1, 2, 3)), ValueError, "stride"),
    (lambda: K.binary_conv2d(_X, _W, pad=-1), ValueError, "pad must be an int >= 0"),
    (lambda: K.binary_conv2d(_X, _W, dilate=(1, 0)), ValueError, "dilate must be"),
    (lambda: K.binary_conv2d(_X, _W, dilate=3), ValueError, "does not fit the padded input"),
    (lambda: K.binary_conv2d(_X, K.pack_conv_weights(np.ones((4, 32, 6, 6), np.float32)),
                             stride=2), ValueError, "does not fit the padded input"),
    (lambda: K.binary_conv2d(_X, _W, pad_value=0), ValueError, r"pad_value must be -1 or \+1"),
    (lambda: K.binary_conv2d(_X, _W, scale=np.ones(3, np.float32)), ValueError,
     r"scale must have shape \(4,\)"),
    (lambda: K.binary_conv2d(_X, _W, scale=np.ones(4, np.int32)), TypeError,
     "scale must be a float array"),
    (lambda: K.pack_dense_weights(np.ones((4, 3), np.float64)), TypeError, "w must be float32"),
    (lambda: K.pack_dense_weights(np.ones(4, np.float32)), ValueError, "rank 2"),
    (lambda: K.binary_dense(np.ones(3, np.float32), np.zeros((2, 1), np.int32)), ValueError,
     "x must have rank >= 2"),
    (lambda: K.binary_dense(np.ones((2, 3), np.float32), np.zeros((2, 2), np.int32)),
     ValueError, "1 words"),
    (lambda: K.binary_dense(np.ones((2, 3), np.float32), np.ones((2, 1), np.int32) * 8),
     ValueError, "bits set past 3 inputs"),
    (lambda: K.binary_dense(np.ones((2, 3), np.float32), np.zeros((2, 1), np.int32),
                            in_units=4), ValueError, "in_units=4"),
    (lambda: K.binary_dense(np.ones((2, 3), np.float32), np.zeros((2, 1), np.uint32)),
     TypeError, "weights must be int32"),
], ids=_error_id)
def test_bad_arguments_are_rejected_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
