"""Run-time instruction-set dispatch: every path (AVX-512 VPOPCNTDQ, AVX2, scalar) computes the
same integers as the scalar path, bit for bit, on the kernel case matrix; BMXNET_ISA picks the path
of a whole process (op library included) and falls back with a warning where the CPU lacks it; the
library's baseline code uses no SIMD instruction a plain x86-64 CPU lacks.
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import binary_reference as ref
import bmxnet_ext
from bmxnet_ext.inference import _kernels as K
from conftest import conv_inputs

KERNEL_NAMES = {"avx512": "avx512-vpopcntdq", "avx2": "avx2-vpshufb",
                "scalar": ("scalar-popcnt", "scalar-portable")}


@pytest.fixture(params=K.ISAS)
def isa(request):
    """Makes the Cython kernels use one path for the test, then restores the previous one."""
    if request.param not in K.supported_isas():
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    previous = K.set_isa(request.param)
    yield request.param
    K.set_isa(previous)


def _on_scalar(fn):
    previous = K.set_isa("scalar")
    try:
        return fn()
    finally:
        K.set_isa(previous)


def _packed_conv_inputs(case, seed=0):
    x, w, geometry = conv_inputs(case, seed)
    return x, K.pack_conv_weights(w, case["groups"]), w, geometry


def test_set_isa_selects_the_named_kernels(isa):
    assert K.active_isa_name() == isa
    assert K.kernel_name() in np.atleast_1d(KERNEL_NAMES[isa])


@pytest.mark.parametrize("case", ref.CONV_CASES)
def test_conv_path_equals_scalar_path_bit_for_bit(isa, case):
    x, packed, w, geometry = _packed_conv_inputs(case)
    got = K.binary_conv2d(x, packed, **geometry)
    np.testing.assert_array_equal(got, _on_scalar(lambda: K.binary_conv2d(x, packed, **geometry)))
    np.testing.assert_array_equal(got, ref.conv2d(x, w, **geometry))


@pytest.mark.parametrize("mode", ref.OUTPUT_MODES)
@pytest.mark.parametrize("pad_value", [-1, 1])
def test_conv_path_output_modes_and_padding(isa, mode, pad_value):
    case = ref.CONV_CASES[-4].values[0]  # grouped, strided, two images
    x, packed, w, geometry = _packed_conv_inputs(case, seed=3)
    scale = (np.random.RandomState(2).rand(case["c_out"]).astype(np.float32) + 0.01
             if mode["scale"] else None)
    kwargs = dict(offset=mode["offset"], scale=scale, pad_value=pad_value, **geometry)
    got = K.binary_conv2d(x, packed, **kwargs)
    np.testing.assert_array_equal(got, _on_scalar(lambda: K.binary_conv2d(x, packed, **kwargs)))
    np.testing.assert_array_equal(got, ref.conv2d(x, w, **kwargs))


@pytest.mark.parametrize("case", ref.DENSE_CASES)
def test_dense_path_equals_scalar_path_bit_for_bit(isa, case):
    x = ref.random_floats((case["n"], case["k"]), 6)
    w = ref.random_floats((case["units"], case["k"]), 7)
    packed = K.pack_dense_weights(w)
    got = K.binary_dense(x, packed)
    np.testing.assert_array_equal(got, _on_scalar(lambda: K.binary_dense(x, packed)))
    np.testing.assert_array_equal(got, ref.dense(x, w))


@pytest.mark.parametrize("shape", [(1, 320, 56, 56), (2, 480, 7, 7), (1, 96, 14, 30)],
                         ids=lambda s: "x".join(map(str, s)))
def test_meliusnet_sized_layers_equal_scalar_path(isa, shape):
    """Layers large enough for the full register tiles, the 64-channel blocks and long rows."""
    x = ref.random_floats(shape, 8)
    packed = K.pack_conv_weights(ref.random_floats((64, shape[1], 3, 3), 9))
    got = K.binary_conv2d(x, packed, pad=1)
    np.testing.assert_array_equal(got, _on_scalar(lambda: K.binary_conv2d(x, packed, pad=1)))


@settings(max_examples=25, deadline=None)
@given(isa_name=st.sampled_from(K.supported_isas()), n=st.integers(1, 2),
       group_in=st.integers(1, 70), groups=st.sampled_from([1, 2]), c_out=st.integers(1, 20),
       h=st.integers(1, 12), w=st.integers(1, 40), k=st.integers(1, 3), stride=st.integers(1, 3),
       pad=st.integers(0, 2), dilate=st.integers(1, 2), seed=st.integers(0, 999))
def test_random_geometry_equals_scalar_path(isa_name, n, group_in, groups, c_out, h, w, k,
                                            stride, pad, dilate, seed):
    if min(h, w) + 2 * pad < dilate * (k - 1) + 1:
        return  # the kernel does not fit (rejection is tested in test_kernels.py)
    x = ref.random_floats((n, group_in * groups, h, w), seed)
    packed = K.pack_conv_weights(ref.random_floats((c_out * groups, group_in, k, k), seed + 1),
                                 groups)
    geometry = dict(stride=stride, pad=pad, dilate=dilate, groups=groups)
    expected = _on_scalar(lambda: K.binary_conv2d(x, packed, **geometry))
    previous = K.set_isa(isa_name)
    try:
        np.testing.assert_array_equal(K.binary_conv2d(x, packed, **geometry), expected)
    finally:
        K.set_isa(previous)


@pytest.mark.parametrize("name", ["sse", "AVX2", "", None, 2])
def test_set_isa_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="isa must be one of"):
        K.set_isa(name)
    with pytest.raises(ValueError, match="isa must be one of"):
        bmxnet_ext.kernels.set_isa(name)


@pytest.mark.parametrize("name", K.ISAS)
def test_public_isa_control_moves_the_ops_and_the_bindings_together(name):
    """bmxnet_ext.kernels.use_isa switches the bmx_* operators (their own copy of the kernels) and
    the numpy bindings alike, the op's output follows on the new path, and the block restores
    the path that was active before it."""
    if name not in K.supported_isas():
        pytest.skip(f"this CPU cannot run the {name} kernels")
    library = bmxnet_ext.ops.native()
    before = bmxnet_ext.kernels.active_isa()
    rng = np.random.RandomState(0)
    x = rng.standard_normal((2, 100, 9, 11)).astype(np.float32)
    packed = K.pack_conv_weights(rng.standard_normal((70, 50, 3, 3)).astype(np.float32), 2)
    geometry = dict(stride=(1, 1), pad=(1, 1), dilate=(1, 1), groups=2)
    expected = _on_scalar(lambda: K.binary_conv2d(x, packed, **geometry))
    with bmxnet_ext.kernels.use_isa(name) as active:
        assert active == name == K.active_isa_name()
        assert library.bmx_kernel_name().decode() in np.atleast_1d(KERNEL_NAMES[name])
        got = mx.nd.bmx_binary_conv2d(mx.nd.array(x), mx.nd.array(packed, dtype="int32"),
                                      kernel=(3, 3), num_filter=70, in_channels=100, pad=(1, 1),
                                      num_group=2)
        np.testing.assert_array_equal(got.asnumpy(), expected)
    assert bmxnet_ext.kernels.active_isa() == before
    assert library.bmx_kernel_name().decode() == K.kernel_name()


# --- BMXNET_ISA for a whole process, the op library included -------------------------------------

_OP_SCRIPT = """
import ctypes, sys
import numpy as np, mxnet as mx
import bmxnet_ext
from bmxnet_ext.inference import _kernels as K
lib = ctypes.CDLL(bmxnet_ext.inference.ops.LIBRARY_PATH)
lib.bmx_kernel_name.restype = ctypes.c_char_p
rng = np.random.RandomState(0)
x = rng.standard_normal((2, 100, 9, 11)).astype(np.float32)
packed = K.pack_conv_weights(rng.standard_normal((70, 50, 3, 3)).astype(np.float32), 2)
attrs = dict(kernel=(3, 3), num_filter=70, in_channels=100, pad=(1, 1), num_group=2)
y = mx.nd.bmx_binary_conv2d(mx.nd.array(x), mx.nd.array(packed, dtype="int32"), **attrs)
np.save(sys.argv[1], y.asnumpy())
print(lib.bmx_kernel_name().decode(), K.kernel_name())
"""


def _run_op_script(tmp_path, name, env):
    out = str(tmp_path / f"{name}.npy")
    result = subprocess.run([sys.executable, "-c", _OP_SCRIPT, out], capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, **env))
    assert result.returncode == 0, result.stderr[-3000:]
    return result, np.load(out)


ENV_CASES = {
    "avx512": ({"BMXNET_ISA": "avx512"}, "avx512-vpopcntdq", None),
    "avx2": ({"BMXNET_ISA": "avx2"}, "avx2-vpshufb", None),
    "scalar": ({"BMXNET_ISA": "scalar"}, "scalar-popcnt", None),
    "avx512-missing": ({"BMXNET_ISA": "avx512", "BMXNET_CPU_LACKS": "avx512"}, "avx2-vpshufb",
                       "requests the avx512 kernels, which this CPU cannot run; using avx2"),
    "simd-missing": ({"BMXNET_ISA": "avx512", "BMXNET_CPU_LACKS": "avx2,avx512"},
                     "scalar-popcnt",
                     "requests the avx512 kernels, which this CPU cannot run; using scalar"),
    "unknown": ({"BMXNET_ISA": "sse4"}, None, "ignoring BMXNET_ISA='sse4'"),
}


@pytest.fixture(scope="module")
def env_runs(tmp_path_factory):
    """Each environment's process, started all at once (MXNet takes seconds to import)."""
    tmp = tmp_path_factory.mktemp("isa_env")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(_run_op_script, tmp, name, env)
                   for name, (env, _, _) in ENV_CASES.items()}
        futures["default"] = pool.submit(_run_op_script, tmp, "default", {"BMXNET_ISA": ""})
        yield {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(ENV_CASES))
def test_environment_variable_picks_the_path_of_the_op_library(name, env_runs):
    env, kernel, warning = ENV_CASES[name]
    if kernel is not None and not kernel.startswith("scalar") and "BMXNET_CPU_LACKS" not in env:
        if env["BMXNET_ISA"] not in K.supported_isas():
            pytest.skip(f"this CPU cannot run the {env['BMXNET_ISA']} kernels")
    result, y = env_runs[name]
    op_kernel, cython_kernel = result.stdout.split()[-2:]
    assert op_kernel == cython_kernel
    if kernel is not None:
        assert op_kernel == kernel
    if warning is None:
        assert "bmxnet_ext:" not in result.stderr
    else:
        assert warning in result.stderr
    np.testing.assert_array_equal(y, env_runs["default"][1])


# --- the machine code: SIMD only where the dispatch guards it --------------------------------------

_SIMD_FUNCTION = re.compile(r"(avx2_isa|avx512_isa)::")
_WIDE_OPERAND = re.compile(r"%[yz]mm|%k[0-7]|%xmm(1[6-9]|2[0-9]|3[01])")


def _is_vex_or_evex(instruction):
    """objdump's "address:\tmnemonic operands  # comment": AVX/AVX-512 mnemonics start with v."""
    fields = instruction.split("\t")
    if len(fields) < 2 or not fields[1].strip():
        return False
    mnemonic, _, operands = fields[1].partition(" ")
    operands = operands.split("#")[0].split("<")[0]
    return mnemonic.startswith("v") or bool(_WIDE_OPERAND.search(operands))


def _unguarded_simd(library):
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", library],
                             capture_output=True, text=True, check=True).stdout
    offenders, function = set(), None
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
        elif function and not _SIMD_FUNCTION.search(function) and _is_vex_or_evex(line):
            offenders.add(function)
    return offenders


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
@pytest.mark.parametrize("library", [bmxnet_ext.inference.ops.LIBRARY_PATH, K.__file__],
                         ids=["op-library", "cython-bindings"])
def test_simd_instructions_appear_only_in_dispatched_functions(library):
    """AVX/AVX-512 code outside the avx2/avx512 namespaces (e.g. a std:: template instantiated in
    a SIMD region and picked by the linker for baseline code) would crash a CPU without them."""
    assert _unguarded_simd(library) == set()


def test_op_library_reports_the_same_kernel_as_the_bindings():
    lib = ctypes.CDLL(bmxnet_ext.inference.ops.LIBRARY_PATH)
    lib.bmx_kernel_name.restype = ctypes.c_char_p
    assert lib.bmx_kernel_name().decode() in [name for names in KERNEL_NAMES.values()
                                              for name in np.atleast_1d(names)]
