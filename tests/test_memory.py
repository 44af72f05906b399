"""Memory of packed inference: many forward calls of a converted network do not grow the process
(resident set and malloc'd heap, measured after a warm-up), and the op library allocates nothing
at all in a steady-state call of a network hybridized with static_alloc (every instruction-set
path, fused and unfused): the operators' states keep what they derive, their scratch memory comes
from MXNet's resource pool (``res.alloc_cpu``), their outputs from MXNet's storage pool.

The default suite runs 1 000 calls of a small converted MeliusNet; ``pytest -m slow`` adds
10 000 calls of a converted MeliusNet22.
"""
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from bmxnet_ext import convert_to_xnor, load_xnor, model_zoo
from bmxnet_ext.inference import _kernels as K
from bmxnet_ext.inference import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ("meliusnet_flex", dict(classes=10, input_size=32, blocks=(1, 1, 1, 1)))
MELIUSNET22 = ("meliusnet22", dict(classes=10, input_size=32))
WARM_UP = 100


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]


def _heap_bytes():
    """Bytes malloc has handed out and not got back (glibc mallinfo2: in use + mmapped)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _packed(model, shape=(1, 3, 32, 32)):
    name, kwargs = model
    net = model_zoo.get_model(name, **kwargs)
    net.initialize(mx.init.Xavier(magnitude=2))
    packed = convert_to_xnor(net, input_shape=shape)
    packed.hybridize()
    return packed


def _reloaded(model, tmp_path):
    packed = _packed(model)
    packed(mx.nd.zeros((1, 3, 32, 32)))
    packed.export(str(tmp_path / "packed"))
    return load_xnor(str(tmp_path / "packed"))


def _growth(net, inputs, calls):
    """(heap, RSS) growth in bytes over ``calls`` forward calls cycling through ``inputs``,
    after a warm-up; every output is waited for."""
    for i in range(WARM_UP):
        net(inputs[i % len(inputs)]).wait_to_read()
    mx.nd.waitall()
    gc.collect()
    heap, rss = _heap_bytes(), _rss_bytes()
    for i in range(calls):
        net(inputs[i % len(inputs)]).wait_to_read()
    mx.nd.waitall()
    gc.collect()
    return _heap_bytes() - heap, _rss_bytes() - rss


def _inputs(*batches):
    rng = np.random.RandomState(0)
    return [mx.nd.array(rng.standard_normal((n, 3, 32, 32)).astype(np.float32)) for n in batches]


def _after_a_failure(net):
    """``net`` after a failing operator call, once the library has let go of its message (a
    second later). MXNet 1.9.1 copies, and leaks, every message in an extension's error list on
    every later operator call, so an error list left full would grow every call."""
    try:
        mx.nd.bmx_binary_conv2d(mx.nd.zeros((1, 5, 8, 8)), mx.nd.zeros((4, 3, 3, 1), dtype="int32"),
                                kernel=(3, 3), num_filter=4, in_channels=8).wait_to_read()
    except mx.base.MXNetError as err:
        assert "input 'data' has 5 channels" in str(err), str(err)
    else:
        raise AssertionError("the bad call did not fail")
    time.sleep(1.2)
    return net


VARIANTS = {
    "converted": lambda tmp_path: (_packed(SMALL), _inputs(1)),
    "after-a-failure": lambda tmp_path: (_after_a_failure(_packed(SMALL)), _inputs(1)),
    "load_xnor": lambda tmp_path: (_reloaded(SMALL, tmp_path), _inputs(1)),
    "alternating-batch": lambda tmp_path: (_packed(SMALL), _inputs(1, 3)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_1000_forward_calls_do_not_grow_memory(variant, tmp_path):
    net, inputs = VARIANTS[variant](tmp_path)
    heap, rss = _growth(net, inputs, 1000)
    # A leak of 256 bytes per call would pass the heap bound only just; a leaked scratch or
    # output buffer (kilobytes per call) fails both.
    assert heap < 256 * 1024, f"heap grew by {heap} bytes over 1000 calls"
    assert rss < 4 * 2 ** 20, f"resident set grew by {rss} bytes over 1000 calls"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["converted", "load_xnor"])
def test_10000_forward_calls_of_meliusnet22_do_not_grow_memory(variant, tmp_path):
    net = _packed(MELIUSNET22) if variant == "converted" else _reloaded(MELIUSNET22, tmp_path)
    heap, rss = _growth(net, _inputs(1), 10000)
    assert heap < 1024 * 1024, f"heap grew by {heap} bytes over 10 000 calls"
    assert rss < 8 * 2 ** 20, f"resident set grew by {rss} bytes over 10 000 calls"


# --- allocations made by the op library itself ------------------------------------------------

_COUNT_SCRIPT = r"""
import ctypes, json, os, sys
import mxnet as mx
import numpy as np
from bmxnet_ext import convert_to_xnor, model_zoo
from bmxnet_ext.inference import ops

def library_range(path):
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == path:
                ranges += [int(v, 16) for v in fields[0].split("-")]
    return min(ranges), max(ranges)

net = model_zoo.get_model("meliusnet_flex", classes=10, input_size=32, blocks=(1, 1, 1, 1))
net.initialize(mx.init.Xavier(magnitude=2))
packed = convert_to_xnor(net, input_shape=(1, 3, 32, 32), fuse=sys.argv[1] == "fused")
# MXNet keeps one state per operator node only with static_alloc (else one per call).
packed.hybridize(static_alloc=True, static_shape=True)
lib = ctypes.CDLL(ops.LIBRARY_PATH)
lib.bmx_kernel_name.restype = ctypes.c_char_p
counter = ctypes.CDLL(None)
lo, hi = library_range(os.path.realpath(ops.LIBRARY_PATH))
results = {"kernel": lib.bmx_kernel_name().decode()}
for batch in (1, 8):
    x = mx.nd.array(np.random.RandomState(0).standard_normal((batch, 3, 32, 32)))
    for _ in range(5):
        packed(x).wait_to_read()
    calls = 20
    out = (ctypes.c_size_t * 3)()
    counter.alloc_counter_start(ctypes.c_size_t(lo), ctypes.c_size_t(hi))
    for _ in range(calls):
        packed(x).wait_to_read()
    counter.alloc_counter_stop(out)
    results[batch] = dict(count=out[0], bytes=out[1], largest=out[2])
print(json.dumps(results))
"""


def _compiler():
    return shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def alloc_counter(tmp_path_factory):
    """The LD_PRELOAD shim of tools/alloc_counter.c, compiled for this test module."""
    shim = str(tmp_path_factory.mktemp("alloc_counter") / "liballoc_counter.so")
    subprocess.run([_compiler(), "-O2", "-shared", "-fPIC", "-o", shim,
                    os.path.join(ROOT, "tools", "alloc_counter.c")], check=True)
    return shim


def _counted_run(shim, isa, form, tmp_path):
    env = dict(os.environ, LD_PRELOAD=shim, BMXNET_ISA=isa)
    result = subprocess.run([sys.executable, "-c", _COUNT_SCRIPT, form], capture_output=True,
                            text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_compiler() is None, reason="needs a C compiler for the allocation counter")
@pytest.mark.parametrize("form", ["unfused", "fused"])
@pytest.mark.parametrize("isa", K.ISAS)
def test_op_library_allocates_nothing_per_steady_state_call(alloc_counter, isa, form, tmp_path):
    """Heap allocations while the op library is on the stack, over 20 forward calls of a
    converted network after 5 warm-up calls, at batch 1 and 8: none. Each operator node's state
    keeps what it derives (prepared weights, offsets, thread buffers, the call's tensor lists),
    the packed input comes from MXNet's pool, the outputs from MXNet's storage."""
    if isa not in K.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    per_call = _counted_run(alloc_counter, isa, form, tmp_path)
    assert per_call["kernel"].startswith(isa), per_call
    assert per_call["1"] == per_call["8"] == dict(count=0, bytes=0, largest=0), per_call


@pytest.mark.skipif(_compiler() is None, reason="needs a C compiler for the allocation counter")
def test_allocation_counter_sees_the_op_library_allocate(alloc_counter, tmp_path):
    """The counter is live: the same script with a state per call (hybridized without
    static_alloc) counts the states' allocations."""
    script = _COUNT_SCRIPT.replace("static_alloc=True, static_shape=True", "")
    env = dict(os.environ, LD_PRELOAD=alloc_counter)
    result = subprocess.run([sys.executable, "-c", script, "unfused"], capture_output=True,
                            text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    per_call = json.loads(result.stdout.strip().splitlines()[-1])
    assert per_call["1"]["count"] > 0, per_call


def test_op_library_path_is_the_loaded_one():
    """The allocation counter attributes by the mapped path of ops.LIBRARY_PATH."""
    with open("/proc/self/maps") as f:
        assert os.path.realpath(ops.LIBRARY_PATH) in f.read()
