"""The kernels' thread pool (src/kernels/parallel.h): every op computes the same bits on 1, 2 and
3 threads, on MeliusNet22's small late layers (7x7, 14x14) as on large ones, and the layers the
test picks are really split (the pool counts its jobs); the count follows OMP_NUM_THREADS and
``bmxnet_ext.kernels.set_num_threads``; threads calling the kernels at once, operators the engine
runs at once, and a child forked after the pool started all compute correct results.
"""
import contextlib
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import binary_reference as ref
from bmxnet_ext import kernels
from bmxnet_ext.inference import _kernels as K
from conftest import op_library
from thread_helpers import run_in_threads


@contextlib.contextmanager
def threads(n):
    """The kernels and the op library on up to ``n`` threads; the environment's count after."""
    kernels.set_num_threads(n)
    try:
        yield
    finally:
        kernels.set_num_threads(None)


def _split(compute):
    """``(output, pool jobs)`` of ``compute()``: its output as numpy, and how many jobs the op
    library's and this module's pools ran on more than one thread meanwhile."""
    lib = op_library()
    before = lib.bmx_pool_jobs() + K._pool_jobs()
    out = compute()
    return out, lib.bmx_pool_jobs() + K._pool_jobs() - before


def _on_threads(compute, n):
    with threads(n):
        return _split(compute)


# MeliusNet22 at 224x224, batch 1: the first unit of stage 4 (7x7) and of stage 3 (14x14), a unit
# of stage 1 (56x56), and a strided grouped layer of two images.
CONV_LAYERS = {
    "7x7": dict(n=1, c=256, h=7, w=7, c_out=64, k=3, stride=1, pad=1, groups=1),
    "14x14": dict(n=1, c=224, h=14, w=14, c_out=64, k=3, stride=1, pad=1, groups=1),
    "56x56": dict(n=1, c=64, h=56, w=56, c_out=64, k=3, stride=1, pad=1, groups=1),
    "strided-grouped": dict(n=2, c=96, h=29, w=27, c_out=48, k=3, stride=2, pad=1, groups=2),
}


def _conv_case(name, seed=0):
    case = CONV_LAYERS[name]
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"])).astype(np.float32)
    w = rng.standard_normal((case["c_out"], case["c"] // case["groups"], case["k"],
                             case["k"])).astype(np.float32)
    return case, x, w


def _conv_op(name):
    case, x, w = _conv_case(name)
    packed = mx.nd.array(K.pack_conv_weights(w, case["groups"]), dtype="int32")
    data = mx.nd.array(x)
    k, s, p = case["k"], case["stride"], case["pad"]
    return lambda: mx.nd.bmx_binary_conv2d(
        data, packed, kernel=(k, k), stride=(s, s), pad=(p, p), num_filter=case["c_out"],
        in_channels=case["c"], num_group=case["groups"]).asnumpy()


def _conv_bindings(name):
    case, x, w = _conv_case(name)
    packed = K.pack_conv_weights(w, case["groups"])
    return lambda: K.binary_conv2d(x, packed, stride=case["stride"], pad=case["pad"],
                                   groups=case["groups"])


def _stage_op(name):
    """A dense and an improvement unit on the map of CONV_LAYERS[name]."""
    case, x, _ = _conv_case(name)
    rng = np.random.RandomState(1)
    c0, growth, k = case["c"], case["c_out"], case["k"]
    inputs, channels = [mx.nd.array(x)], c0
    for kind in "di":
        w = rng.standard_normal((growth, channels, k, k)).astype(np.float32)
        sign = rng.choice([-1.0, 1.0, 0.0], channels, p=[0.45, 0.45, 0.1]).astype(np.float32)
        bias = rng.uniform(-0.5, 0.5, channels).astype(np.float32)
        inputs += [mx.nd.array(K.pack_conv_weights(w), dtype="int32"), mx.nd.array(sign),
                   mx.nd.array(bias)]
        channels += growth if kind == "d" else 0
    return lambda: mx.nd.bmx_binary_stage(*inputs, in_channels=c0, growth=growth, units="di",
                                          kernel=(k, k)).asnumpy()


def _dense_op():
    rng = np.random.RandomState(2)
    x = mx.nd.array(rng.standard_normal((300, 1000)).astype(np.float32))
    w = mx.nd.array(K.pack_dense_weights(rng.standard_normal((90, 1000)).astype(np.float32)),
                    dtype="int32")
    return lambda: mx.nd.bmx_binary_dense(x, w, num_hidden=90, in_units=1000).asnumpy()


def _dense_bindings():
    rng = np.random.RandomState(2)
    x = rng.standard_normal((300, 1000)).astype(np.float32)
    w = K.pack_dense_weights(rng.standard_normal((90, 1000)).astype(np.float32))
    return lambda: K.binary_dense(x, w)


# BatchNorm -> ReLU -> max pooling of MeliusNet22's stem (112x112, 3x3/2, pad 1) and transitions
# (2x2/2), and a map of three planes (split into bands of rows).
NORM_POOLS = {
    "stem": dict(shape=(1, 64, 112, 112), kernel=3, stride=2, pad=1),
    "transition-56": dict(shape=(1, 96, 56, 56), kernel=2, stride=2, pad=0),
    "transition-14": dict(shape=(1, 480, 14, 14), kernel=2, stride=2, pad=0),
    "three-planes": dict(shape=(1, 3, 112, 110), kernel=3, stride=2, pad=1),
}


def _norm_pool_inputs(name):
    spec = NORM_POOLS[name]
    rng = np.random.RandomState(3)
    shape, c = spec["shape"], spec["shape"][1]
    x = mx.nd.array((rng.standard_normal(shape) * 3).astype(np.float32))
    params = [mx.nd.array(v.astype(np.float32)) for v in (
        rng.uniform(-2, 2, c), rng.uniform(-1, 1, c), rng.uniform(-1, 1, c),
        rng.uniform(0.1, 2, c))]
    pool = {key: (spec[key],) * 2 for key in ("kernel", "stride", "pad")}
    return x, params, pool


def _norm_pool_op(name):
    x, params, pool = _norm_pool_inputs(name)
    return lambda: mx.nd.bmx_norm_relu_pool(x, *params, eps=1e-3, **pool).asnumpy()


def _norm_pool_reference(name):
    x, params, pool = _norm_pool_inputs(name)
    normed = mx.nd.BatchNorm(x, *params, eps=1e-3, fix_gamma=False)
    return mx.nd.Pooling(mx.nd.relu(normed), pool_type="max", **pool).asnumpy()


COMPUTATIONS = {
    **{f"conv-op-{name}": (lambda name=name: _conv_op(name)) for name in CONV_LAYERS},
    **{f"conv-bindings-{name}": (lambda name=name: _conv_bindings(name)) for name in CONV_LAYERS},
    **{f"stage-op-{name}": (lambda name=name: _stage_op(name)) for name in ("7x7", "14x14")},
    **{f"norm-relu-pool-op-{name}": (lambda name=name: _norm_pool_op(name))
       for name in NORM_POOLS},
    "dense-op": _dense_op,
    "dense-bindings": _dense_bindings,
}


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name", list(COMPUTATIONS))
def test_more_threads_compute_the_same_bits(name, n):
    compute = COMPUTATIONS[name]()
    serial, serial_jobs = _on_threads(compute, 1)
    parallel, parallel_jobs = _on_threads(compute, n)
    assert serial_jobs == 0
    assert parallel_jobs > 0, f"{name} was not split over {n} threads"
    np.testing.assert_array_equal(parallel, serial)


@pytest.mark.parametrize("name", list(CONV_LAYERS))
def test_split_convolution_equals_the_float_reference(name):
    case, x, w = _conv_case(name)
    with threads(2):
        got = _conv_bindings(name)()
    np.testing.assert_array_equal(got, ref.conv2d(x, w, stride=case["stride"], pad=case["pad"],
                                                  groups=case["groups"]))


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("name", list(NORM_POOLS))
def test_norm_relu_pool_equals_mxnet_on_every_path_and_thread_count(op_isa, name, n):
    with threads(n):
        got = _norm_pool_op(name)()
    np.testing.assert_array_equal(got, _norm_pool_reference(name))


# --- the thread count --------------------------------------------------------------------------

_COUNT_SCRIPT = """
import json
import bmxnet_ext
from bmxnet_ext import kernels
from conftest import op_library
print(json.dumps([kernels.num_threads(), op_library().bmx_num_threads()]))
"""


def _counts_in_subprocess(omp_num_threads):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.abspath(__file__))] + sys.path))
    env.pop("OMP_NUM_THREADS", None)
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    result = subprocess.run([sys.executable, "-c", _COUNT_SCRIPT], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# (MXNet itself aborts on a value that is not one integer, such as libgomp's "4,2".)
@pytest.mark.parametrize("value,expected", [
    ("1", 1), ("3", 3), (" 2", 2),
    (None, len(os.sched_getaffinity(0))), ("0", len(os.sched_getaffinity(0))),
])
def test_thread_count_follows_omp_num_threads(value, expected):
    assert _counts_in_subprocess(value) == [expected, expected]


def test_set_num_threads_sets_both_pools_and_returns_the_previous_count():
    lib = op_library()
    default = kernels.num_threads()
    try:
        assert kernels.set_num_threads(5) == default
        assert kernels.num_threads() == lib.bmx_num_threads() == 5
        assert kernels.set_num_threads(1) == 5
        assert kernels.num_threads() == lib.bmx_num_threads() == 1
        assert kernels.set_num_threads(10 ** 9) == 1
        assert kernels.num_threads() == lib.bmx_num_threads() == 256
    finally:
        kernels.set_num_threads(None)
    assert kernels.num_threads() == lib.bmx_num_threads() == default


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_set_num_threads_rejects_what_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match="n must be an int >= 1 or None"):
        kernels.set_num_threads(bad)


# --- concurrency and fork -----------------------------------------------------------------------

def test_threads_calling_the_kernels_at_once_get_serial_results():
    # The bindings release the GIL: four threads share one pool, which runs one job at a time
    # and lets the others run alone.
    inputs = [_conv_case("14x14", seed=i) for i in range(4)]
    calls = [(x, K.pack_conv_weights(w)) for _, x, w in inputs]
    with threads(2):
        expected = [K.binary_conv2d(x, w, pad=1) for x, w in calls]
        results = run_in_threads(lambda i: [K.binary_conv2d(*calls[i], pad=1) for _ in range(20)],
                                 len(calls))
    for got, want in zip(results, expected):
        for out in got:
            np.testing.assert_array_equal(out, want)


_ENGINE_SCRIPT = """
import json, sys
import mxnet as mx, numpy as np
import bmxnet_ext
from bmxnet_ext.inference import _kernels as K
rng = np.random.RandomState(0)
w = mx.nd.array(K.pack_conv_weights(rng.standard_normal((64, 224, 3, 3)).astype(np.float32)),
                dtype="int32")
xs = [mx.nd.array(rng.standard_normal((1, 224, 14, 14)).astype(np.float32)) for _ in range(24)]
conv = lambda x: mx.nd.bmx_binary_conv2d(x, w, kernel=(3, 3), pad=(1, 1), num_filter=64,
                                         in_channels=224)
serial = [conv(x).asnumpy() for x in xs]
for _ in range(5):
    pushed = [conv(x) for x in xs]  # independent: the engine's workers run them at once
    assert all(np.array_equal(y.asnumpy(), s) for y, s in zip(pushed, serial))
print("ok")
"""


def test_operators_the_engine_runs_at_once_compute_serial_results():
    env = dict(os.environ, MXNET_CPU_WORKER_NTHREADS="3", OMP_NUM_THREADS="2")
    result = subprocess.run([sys.executable, "-c", _ENGINE_SCRIPT], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"


_FORK_SCRIPT = """
import json, multiprocessing, os
import mxnet as mx, numpy as np
import bmxnet_ext
from bmxnet_ext import kernels
from bmxnet_ext.inference import _kernels as K
kernels.set_num_threads(2)
rng = np.random.RandomState(0)
x = rng.standard_normal((1, 224, 14, 14)).astype(np.float32)
w = K.pack_conv_weights(rng.standard_normal((64, 224, 3, 3)).astype(np.float32))
op = lambda: mx.nd.bmx_binary_conv2d(mx.nd.array(x), mx.nd.array(w, dtype="int32"),
                                     kernel=(3, 3), pad=(1, 1), num_filter=64,
                                     in_channels=224).asnumpy()
jobs = K._pool_jobs()
expected = K.binary_conv2d(x, w, pad=1)   # the pools start their workers
expected_op = op()
assert K._pool_jobs() > jobs

def child(queue):
    before = len(os.listdir("/proc/self/task"))
    got = K.binary_conv2d(x, w, pad=1)
    started = len(os.listdir("/proc/self/task")) - before
    queue.put([bool(np.array_equal(got, expected)), bool(np.array_equal(op(), expected_op)),
               started])

context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
print(json.dumps(queue.get(timeout=120)))
process.join(60)
"""


def test_a_child_forked_after_the_pool_started_computes_on_a_pool_of_its_own():
    result = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    bindings_equal, op_equal, started = json.loads(result.stdout.strip().splitlines()[-1])
    assert bindings_equal and op_equal
    assert started == 1, "the child did not start a worker of its own"
