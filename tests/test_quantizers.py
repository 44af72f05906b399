"""Quantizers: forward values, the sign convention and the surrogate gradients against numpy."""
import mxnet as mx
import numpy as np
import pytest

from bmxnet_ext.binary import quantizers
from bmxnet_ext.binary.layers import QActivation
from conftest import forward_backward

SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-38, -1e-38, 1e-45, -1e-45],
                   dtype=np.float32)


def _inputs(seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(-2.5, 2.5, size=200).astype(np.float32)
    boundaries = np.array([-1.3, 1.3, -1.0, 1.0, -0.5, 0.5], dtype=np.float32)
    return np.concatenate([x, boundaries, SPECIAL])


def numpy_sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def test_sign_convention_zero_is_plus_one_and_nan_is_minus_one():
    y = quantizers.sign(mx.nd, mx.nd.array(SPECIAL)).asnumpy()
    np.testing.assert_array_equal(y, [1, 1, -1, 1, -1, 1, -1, 1, -1])


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("clip_threshold", [0.5, 1.0, 1.3, None])
def test_det_sign_matches_numpy_pseudo_gradient(clip_threshold, hybridize):
    x = _inputs()
    y, grad = forward_backward(quantizers.DetSign(clip_threshold), x, hybridize)
    np.testing.assert_array_equal(y, numpy_sign(x))
    if clip_threshold is None:  # identity gradient for every finite value
        expected = np.isfinite(x).astype(np.float32)
    else:
        with np.errstate(invalid="ignore"):
            expected = (np.abs(x) <= np.float32(clip_threshold)).astype(np.float32)
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.parametrize("hybridize", [False, True])
def test_approx_sign_matches_numpy_pseudo_gradient(hybridize):
    x = _inputs(1)
    y, grad = forward_backward(quantizers.ApproxSign(), x, hybridize)
    np.testing.assert_array_equal(y, numpy_sign(x))
    with np.errstate(invalid="ignore"):
        inside = np.abs(x) <= 1
    expected = np.where(inside, 2 - 2 * np.abs(x), 0).astype(np.float32)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method,expected", [("det_sign", quantizers.DetSign),
                                             ("approx_sign", quantizers.ApproxSign)])
def test_get_resolves_aliases(method, expected):
    assert isinstance(quantizers.get(method), expected)


def test_get_passes_clip_threshold_to_det_sign():
    assert quantizers.get("det_sign", clip_threshold=1.3).clip_threshold == 1.3


def test_get_returns_instances_and_none_unchanged():
    q = quantizers.ApproxSign()
    assert quantizers.get(q) is q
    assert quantizers.get(None) is None


def test_get_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown quantizer 'ste'"):
        quantizers.get("ste")


def test_get_rejects_other_types():
    with pytest.raises(TypeError, match="must be a name, a Quantizer or None"):
        quantizers.get(3)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_det_sign_rejects_non_positive_threshold(bad):
    with pytest.raises(ValueError, match="clip_threshold must be a positive number"):
        quantizers.DetSign(bad)


def test_qactivation_uses_its_threshold():
    act = QActivation("det_sign", clip_threshold=0.5)
    x = np.array([-0.7, -0.4, 0.4, 0.7], dtype=np.float32)
    y, grad = forward_backward(act, x, hybridize=False)
    np.testing.assert_array_equal(y, [-1, -1, 1, 1])
    np.testing.assert_array_equal(grad, [0, 1, 1, 0])


def test_qactivation_refuses_no_quantizer():
    with pytest.raises(ValueError, match="QActivation needs a quantizer"):
        QActivation(None)
