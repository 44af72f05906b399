"""The bmx_* operators keep state per graph node (lib_api's createOpState): a bound symbol or a
block hybridized with static_alloc=True calls one state again and again. Its outputs equal the
references on the kernel case matrix, on every instruction-set path and in the fused forms, on
the first call and on the calls that reuse what the state derived; a state follows weights and
thresholds written in place between calls, and validates them again.
"""
import mxnet as mx
import numpy as np
import pytest

import binary_reference as ref
from conftest import conv_inputs, op_library
from bmxnet_ext.inference import _kernels as K

CALLS = 3  # the first call derives, the others reuse


def _bound(symbol, arrays):
    """An executor of `symbol` with `arrays` (name -> numpy) bound: one op state per node."""
    args = {name: mx.nd.array(value, dtype=value.dtype) for name, value in arrays.items()}
    return symbol.bind(mx.cpu(), args), args


def _outputs(executor, calls=CALLS):
    return [executor.forward()[0].asnumpy() for _ in range(calls)]


def _conv_symbol(case, thresholds=False, scaling=False):
    inputs = [mx.sym.var("data"), mx.sym.var("weight", dtype="int32")]
    inputs += [mx.sym.var("scale")] if scaling else []
    inputs += [mx.sym.var("sign"), mx.sym.var("bias")] if thresholds else []
    return mx.sym.bmx_binary_conv2d(
        *inputs, kernel=(case["k"], case["k"]), num_filter=case["c_out"], in_channels=case["c"],
        stride=case["stride"], pad=case["pad"], dilate=case["dilate"], num_group=case["groups"],
        thresholds=thresholds, scaling=scaling)


def _thresholds(channels, seed):
    rng = np.random.RandomState(seed)
    sign = rng.choice([-1.0, 1.0, 0.0], channels, p=[0.45, 0.45, 0.1]).astype(np.float32)
    return sign, rng.uniform(-0.5, 0.5, channels).astype(np.float32)


def _binarized(x, sign, bias):
    with np.errstate(invalid="ignore"):
        return np.where(sign[None, :, None, None] * x >= bias[None, :, None, None],
                        1.0, -1.0).astype(np.float32)


@pytest.mark.parametrize("case", ref.CONV_CASES)
def test_conv_state_equals_reference(op_isa, case):
    x, w, geometry = conv_inputs(case)
    executor, _ = _bound(_conv_symbol(case), dict(
        data=x, weight=K.pack_conv_weights(w, case["groups"])))
    expected = ref.conv2d(x, w, **geometry)
    for got in _outputs(executor):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", [ref.CONV_CASES[0], ref.CONV_CASES[-5], ref.CONV_CASES[-4],
                                  ref.CONV_CASES[-2]])
def test_thresholded_conv_state_equals_conv_of_thresholded_input(op_isa, case):
    x, w, geometry = conv_inputs(case)
    sign, bias = _thresholds(case["c"], 2)
    executor, _ = _bound(_conv_symbol(case, thresholds=True), dict(
        data=x, weight=K.pack_conv_weights(w, case["groups"]), sign=sign, bias=bias))
    expected = ref.conv2d(_binarized(x, sign, bias), w, **geometry)
    for got in _outputs(executor):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", ref.DENSE_CASES)
def test_dense_state_equals_reference(op_isa, case):
    x = ref.random_floats((case["n"], case["k"]), 6)
    w = ref.random_floats((case["units"], case["k"]), 7)
    symbol = mx.sym.bmx_binary_dense(mx.sym.var("data"), mx.sym.var("weight", dtype="int32"),
                                     num_hidden=case["units"], in_units=case["k"])
    executor, _ = _bound(symbol, dict(data=x, weight=K.pack_dense_weights(w)))
    for got in _outputs(executor):
        np.testing.assert_array_equal(got, ref.dense(x, w))


STAGES = {
    "dense-improvement": dict(units="didi", c0=40, growth=24, k=3),
    "improvement-first": dict(units="id", c0=70, growth=32, k=1),
    "meliusnet-width": dict(units="di", c0=128, growth=64, k=3),
}


def _stage_reference(x, weights, thresholds, units, growth, k):
    """The stage composed of thresholded convolutions on the float reference."""
    y = x.astype(np.float32)
    for kind, w, (sign, bias) in zip(units, weights, thresholds):
        out = ref.conv2d(_binarized(y, sign, bias), w, pad=(k - 1) // 2)
        if kind == "d":
            y = np.concatenate([y, out], axis=1)
        else:
            y = np.concatenate([y[:, :-growth], y[:, -growth:] + out], axis=1)
    return y


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_state_equals_reference(op_isa, name):
    units, c0, growth, k = (STAGES[name][key] for key in ("units", "c0", "growth", "k"))
    x = ref.random_floats((2, c0, 9, 11), 3)
    arrays, weights, thresholds, inputs, channels = dict(data=x), [], [], [mx.sym.var("data")], c0
    for i, kind in enumerate(units):
        weights.append(ref.random_floats((growth, channels, k, k), 10 + i))
        thresholds.append(_thresholds(channels, 20 + i))
        arrays.update({f"w{i}": K.pack_conv_weights(weights[-1]), f"s{i}": thresholds[-1][0],
                       f"b{i}": thresholds[-1][1]})
        inputs += [mx.sym.var(f"w{i}", dtype="int32"), mx.sym.var(f"s{i}"), mx.sym.var(f"b{i}")]
        channels += growth if kind == "d" else 0
    symbol = mx.sym.bmx_binary_stage(*inputs, in_channels=c0, growth=growth, units=units,
                                     kernel=(k, k))
    executor, _ = _bound(symbol, arrays)
    expected = _stage_reference(x, weights, thresholds, units, growth, k)
    for got in _outputs(executor):
        np.testing.assert_array_equal(got, expected)


def test_norm_relu_pool_state_equals_mxnet_operators():
    rng = np.random.RandomState(5)
    x = rng.standard_normal((2, 16, 14, 14)).astype(np.float32)
    stats = dict(gamma=rng.rand(16), beta=rng.randn(16), moving_mean=rng.randn(16),
                 moving_var=rng.rand(16) + 0.1)
    stats = {name: value.astype(np.float32) for name, value in stats.items()}
    names = ["gamma", "beta", "moving_mean", "moving_var"]
    symbol = mx.sym.bmx_norm_relu_pool(mx.sym.var("data"), *map(mx.sym.var, names),
                                       kernel=(3, 3), stride=(2, 2), pad=(1, 1), eps=1e-3)
    executor, _ = _bound(symbol, dict(data=x, **stats))
    nd = {name: mx.nd.array(value) for name, value in stats.items()}
    normed = mx.nd.BatchNorm(mx.nd.array(x), nd["gamma"], nd["beta"], nd["moving_mean"],
                             nd["moving_var"], eps=1e-3, fix_gamma=False)
    expected = mx.nd.Pooling(mx.nd.relu(normed), kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                             pool_type="max").asnumpy()
    for got in _outputs(executor):
        np.testing.assert_array_equal(got, expected)


def test_conv_state_follows_weights_and_thresholds_written_in_place(op_isa):
    case = ref.CONV_CASES[-4].values[0]
    x, w, geometry = conv_inputs(case)
    sign, bias = _thresholds(case["c"], 2)
    executor, args = _bound(_conv_symbol(case, thresholds=True), dict(
        data=x, weight=K.pack_conv_weights(w, case["groups"]), sign=sign, bias=bias))
    _outputs(executor)
    w2 = ref.random_floats(w.shape, 40)
    sign2, bias2 = _thresholds(case["c"], 41)
    args["weight"][:] = mx.nd.array(K.pack_conv_weights(w2, case["groups"]), dtype="int32")
    args["sign"][:] = mx.nd.array(sign2)
    args["bias"][:] = mx.nd.array(bias2)
    for got in _outputs(executor):
        np.testing.assert_array_equal(
            got, ref.conv2d(_binarized(x, sign2, bias2), w2, **geometry))


def test_state_validates_weights_written_in_place_again(op_isa):
    case = ref.CONV_CASES[0].values[0]  # 33 channels: the tail word has 31 bits unused
    x, w, geometry = conv_inputs(case)
    packed = K.pack_conv_weights(w)
    executor, args = _bound(_conv_symbol(case), dict(data=x, weight=packed))
    _outputs(executor)
    spoiled = packed.copy()
    spoiled[..., -1] |= np.int32(1 << 7)
    args["weight"][:] = mx.nd.array(spoiled, dtype="int32")
    with pytest.raises(mx.base.MXNetError, match="has bits set past in_channels"):
        executor.forward()[0].asnumpy()
    args["weight"][:] = mx.nd.array(packed, dtype="int32")
    for got in _outputs(executor):
        np.testing.assert_array_equal(got, ref.conv2d(x, w, **geometry))


def test_set_isa_of_the_op_library_rejects_unknown_names():
    lib = op_library()
    active = lib.bmx_kernel_name()
    assert lib.bmx_set_isa(b"sse4") is None
    assert lib.bmx_kernel_name() == active
