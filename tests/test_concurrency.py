"""Concurrent inference: one packed model serves several Python threads with the outputs of serial
inference, and the ops compute the same bits whatever OMP_NUM_THREADS says."""
import copy
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import bmxnet_ext
from bmxnet_ext import model_zoo
from bmxnet_ext.apps.demo import build_demo_network
from thread_helpers import run_in_threads
from conftest import trained_like

SHAPE = (2, 3, 32, 32)
THREADS = 4
CALLS_PER_THREAD = 5
ROUNDS = 5


@pytest.fixture(scope="module")
def packed_meliusnet(tmp_path_factory):
    net = trained_like(model_zoo.get_model("meliusnet22", classes=10, input_size=32), SHAPE)
    packed = bmxnet_ext.convert_to_xnor(net, input_shape=SHAPE)
    prefix = str(tmp_path_factory.mktemp("packed") / "m22")
    packed.hybridize()
    packed(mx.nd.zeros(SHAPE))
    packed.export(prefix)
    return packed, prefix


def _prepared(kind, packed, prefix):
    if kind == "reloaded":
        return bmxnet_ext.load_xnor(prefix)
    if kind == "static_alloc":
        packed.hybridize(static_alloc=True, static_shape=True)
    elif kind == "hybridized":
        packed.hybridize()
    else:
        packed.hybridize(active=False)
    return packed


def _assert_concurrent_outputs_are_serial(nets, inputs):
    """Thread i calls nets[i] on inputs[i] CALLS_PER_THREAD times, all threads at once, ROUNDS
    times; every output must equal the serial one bit for bit."""
    serial = [net(x).asnumpy() for net, x in zip(nets, inputs)]
    for _ in range(ROUNDS):
        results = run_in_threads(lambda i: [nets[i](inputs[i]).asnumpy()
                                            for _ in range(CALLS_PER_THREAD)], len(nets))
        for i, outputs in enumerate(results):
            assert len(outputs) == CALLS_PER_THREAD
            for output in outputs:
                np.testing.assert_array_equal(output, serial[i])


def _inputs():
    return [mx.nd.array(np.random.RandomState(i).standard_normal(SHAPE).astype(np.float32))
            for i in range(THREADS)]


@pytest.mark.parametrize("kind", ["imperative", "hybridized", "static_alloc", "reloaded"])
def test_four_threads_get_the_outputs_of_serial_inference(kind, packed_meliusnet):
    net = _prepared(kind, *packed_meliusnet)
    inputs = _inputs()
    _assert_concurrent_outputs_are_serial([net] * THREADS, inputs)


def test_threads_with_their_own_imperative_networks_get_serial_outputs(packed_meliusnet):
    # MXNet 1.9.1 deadlocks on concurrent imperative pushes even across different networks: the
    # push lock is shared by all converted and reloaded networks.
    nets = [bmxnet_ext.load_xnor(packed_meliusnet[1]) for _ in range(THREADS)]
    for net in nets:
        net.hybridize(active=False)
    inputs = _inputs()
    _assert_concurrent_outputs_are_serial(nets, inputs)


def test_a_copy_of_a_converted_network_is_guarded_for_itself():
    net = build_demo_network(binary=True, classes=4)
    net.initialize(mx.init.Xavier(magnitude=2))
    shape = (1, 3, 16, 16)
    converted = bmxnet_ext.convert_to_xnor(net, input_shape=shape)
    twin = copy.deepcopy(converted)
    assert isinstance(twin, bmxnet_ext.ThreadSafeBlock) and twin.block is not converted.block
    x = mx.nd.array(np.random.RandomState(0).standard_normal(shape).astype(np.float32))
    np.testing.assert_array_equal(twin(x).asnumpy(), converted(x).asnumpy())


@pytest.mark.parametrize("guard", ["wrapper", "context-manager"])
def test_users_guard_their_own_float_network(guard):
    # Gluon float networks deadlock MXNet 1.9.1 when threads share them; guarded, they do not.
    net = build_demo_network(binary=False, classes=4)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.hybridize()
    inputs = [mx.nd.array(np.random.RandomState(i).standard_normal((1 + i % 2, 3, 16, 16))
                          .astype(np.float32)) for i in range(THREADS)]
    if guard == "wrapper":
        _assert_concurrent_outputs_are_serial([bmxnet_ext.ThreadSafeBlock(net)] * THREADS,
                                              inputs)
        return

    def call(x):
        with bmxnet_ext.push_lock():
            y = net(x)
        return y  # waiting for the values happens outside the lock
    serial = [call(x).asnumpy() for x in inputs]
    for _ in range(ROUNDS):
        results = run_in_threads(lambda i: call(inputs[i]).asnumpy(), THREADS)
        for i, output in enumerate(results):
            np.testing.assert_array_equal(output, serial[i])


def test_the_push_lock_is_reentrant_and_released_after_an_error():
    outer = bmxnet_ext.ThreadSafeBlock(bmxnet_ext.ThreadSafeBlock(mx.gluon.nn.Dense(2, in_units=3)))
    outer.initialize()
    assert outer(mx.nd.ones((1, 3))).shape == (1, 2)  # a guarded network calling a guarded one
    with pytest.raises(mx.base.MXNetError):
        outer(mx.nd.ones((1, 4)))
    assert run_in_threads(lambda i: outer(mx.nd.ones((1, 3))).shape, 2) == [(1, 2), (1, 2)]


def test_the_wrapper_exports_the_graph_and_names_of_the_network(tmp_path):
    net = build_demo_network(binary=False, classes=4)
    net.initialize(mx.init.Xavier(magnitude=2))
    wrapped = bmxnet_ext.ThreadSafeBlock(net)
    wrapped.hybridize()
    x = mx.nd.array(np.random.RandomState(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    expected = wrapped(x).asnumpy()
    wrapped.export(str(tmp_path / "w"))
    assert sorted(mx.nd.load(str(tmp_path / "w-0000.params"))) == sorted(
        f"arg:{name}" if not name.endswith(("running_mean", "running_var")) else f"aux:{name}"
        for name in net.collect_params())
    reloaded = mx.gluon.SymbolBlock.imports(str(tmp_path / "w-symbol.json"), ["data"],
                                            str(tmp_path / "w-0000.params"))
    np.testing.assert_allclose(reloaded(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)
    assert wrapped.classes == net.classes  # attribute reads pass through


_THREADS_SCRIPT = """
import sys
import numpy as np, mxnet as mx
import bmxnet_ext
from bmxnet_ext.inference import _kernels as K
rng = np.random.RandomState(0)
x = mx.nd.array(rng.standard_normal((3, 96, 30, 30)).astype(np.float32))
w = mx.nd.array(K.pack_conv_weights(rng.standard_normal((70, 96, 3, 3)).astype(np.float32)),
                dtype="int32")
dense_x = mx.nd.array(rng.standard_normal((300, 1000)).astype(np.float32))
dense_w = mx.nd.array(K.pack_dense_weights(rng.standard_normal((90, 1000)).astype(np.float32)),
                      dtype="int32")
conv = mx.nd.bmx_binary_conv2d(x, w, kernel=(3, 3), pad=(1, 1), num_filter=70, in_channels=96)
dense = mx.nd.bmx_binary_dense(dense_x, dense_w, num_hidden=90, in_units=1000)
np.savez(sys.argv[1], conv=conv.asnumpy(), dense=dense.asnumpy())
"""


@pytest.fixture(scope="module")
def outputs_by_thread_count(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("omp")
    outputs = {}
    for threads in (1, 2, 3):
        path = str(tmp / f"t{threads}.npz")
        result = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, path], capture_output=True,
                                text=True, timeout=300,
                                env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[threads] = np.load(path)
    return outputs


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("op", ["conv", "dense"])
def test_ops_compute_the_same_bits_on_any_number_of_threads(threads, op, outputs_by_thread_count):
    np.testing.assert_array_equal(outputs_by_thread_count[threads][op],
                                  outputs_by_thread_count[1][op])
