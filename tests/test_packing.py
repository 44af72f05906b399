"""Bit packing (op and Cython) against a numpy reference; op errors; loading the op library."""
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bmxnet_ext
from bmxnet_ext.inference import ops
from bmxnet_ext.inference.kernels import pack_bits, unpack_bits
from conftest import numpy_pack


SHAPES = [(1, 1, 1, 1), (2, 31, 3, 5), (1, 32, 4, 4), (3, 33, 2, 7), (2, 64, 1, 1),
          (1, 100, 5, 3), (1, 1856, 2, 2)]
# MXNet 1.x arrays cannot have a zero dimension (0 means "unknown"); numpy ones can.
EMPTY_SHAPES = [(4, 7, 0, 3), (0, 5, 2, 2)]


def _random(shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sign_pack_op_equals_numpy(shape):
    x = _random(shape)
    np.testing.assert_array_equal(ops.sign_pack(mx.nd.array(x)).asnumpy(), numpy_pack(x))


@pytest.mark.parametrize("shape", SHAPES + EMPTY_SHAPES, ids=str)
def test_cython_pack_equals_numpy_and_unpack_inverts(shape):
    x = _random(shape, 1)
    packed = pack_bits(x)
    np.testing.assert_array_equal(packed, numpy_pack(x))
    np.testing.assert_array_equal(unpack_bits(packed, shape[1]),
                                  np.where(x >= 0, 1.0, -1.0).astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 130), h=st.integers(1, 6), w=st.integers(1, 6),
       seed=st.integers(0, 2 ** 31 - 1))
def test_op_and_cython_agree_on_random_shapes(n, c, h, w, seed):
    x = _random((n, c, h, w), seed)
    expected = numpy_pack(x)
    np.testing.assert_array_equal(pack_bits(x), expected)
    np.testing.assert_array_equal(mx.nd.bmx_sign_pack(mx.nd.array(x)).asnumpy(), expected)


def test_tail_bits_are_zero():
    packed = pack_bits(np.ones((1, 33, 1, 1), dtype=np.float32)).view(np.uint32)
    assert packed[0, 0, 0, 0] == 0xFFFFFFFF
    assert packed[0, 0, 0, 1] == 1


def test_cpp_sign_convention_zero_is_plus_one_and_nan_is_minus_one():
    x = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45],
                 dtype=np.float32).reshape(1, 7, 1, 1)
    expected = np.array([1, 1, -1, 1, -1, 1, -1], dtype=np.float32).reshape(1, 7, 1, 1)
    np.testing.assert_array_equal(unpack_bits(pack_bits(x), 7), expected)
    op_packed = mx.nd.bmx_sign_pack(mx.nd.array(x)).asnumpy()
    np.testing.assert_array_equal(unpack_bits(op_packed, 7), expected)


def test_training_quantizer_and_cpp_agree_on_special_values():
    x = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 2.0, -2.0],
                 dtype=np.float32).reshape(1, 9, 1, 1)
    trained = bmxnet_ext.QActivation()(mx.nd.array(x)).asnumpy()
    np.testing.assert_array_equal(unpack_bits(pack_bits(x), 9), trained)


def test_sign_pack_works_in_a_hybridized_block():
    class Packer(mx.gluon.HybridBlock):
        def hybrid_forward(self, F, x):
            return F.bmx_sign_pack(x)

    block = Packer()
    block.hybridize()
    x = _random((2, 40, 3, 3), 2)
    np.testing.assert_array_equal(block(mx.nd.array(x)).asnumpy(), numpy_pack(x))


@pytest.mark.parametrize("shape,dtype,message", [
    ((2, 3), "float32", "must have rank 4 (N, C, H, W), got shape (2, 3)"),
    ((2, 3, 4, 4, 1), "float32", "must have rank 4"),
    ((2, 3, 4, 4), "int32", "input 'data' must be float32, got int32"),
    ((2, 3, 4, 4), "float64", "input 'data' must be float32, got float64"),
])
def test_sign_pack_op_rejects_bad_input(shape, dtype, message):
    with pytest.raises(mx.base.MXNetError) as info:
        mx.nd.bmx_sign_pack(mx.nd.zeros(shape, dtype=dtype)).wait_to_read()
    assert message in str(info.value)


def test_sign_pack_op_rejects_unknown_attribute():
    with pytest.raises(mx.base.MXNetError) as info:
        mx.nd.bmx_sign_pack(mx.nd.zeros((1, 2, 2, 2)), channels=3).wait_to_read()
    assert "unknown attribute 'channels'" in str(info.value)


@pytest.mark.parametrize("x,error,message", [
    (np.zeros((2, 3, 4, 4), dtype=np.float64), TypeError, "x must be float32"),
    (np.zeros((2, 3), dtype=np.float32), ValueError, "must have rank 4"),
    (np.zeros((2, 0, 1, 1), dtype=np.float32), ValueError, "at least one channel"),
])
def test_cython_pack_rejects_bad_input(x, error, message):
    with pytest.raises(error, match=message):
        pack_bits(x)


@pytest.mark.parametrize("packed,channels", [
    (np.zeros((1, 1, 1, 2), dtype=np.int32), 70),
    (np.zeros((1, 1, 1, 1), dtype=np.int32), 0),
    (np.zeros((1, 1, 1, 1), dtype=np.uint8), 8),
])
def test_cython_unpack_rejects_inconsistent_input(packed, channels):
    with pytest.raises(ValueError):
        unpack_bits(packed, channels)


def test_library_is_loaded_on_import():
    assert ops.available()
    ops.require()


@pytest.fixture
def fresh_loader_state(monkeypatch):
    monkeypatch.setattr(ops, "_state", {"loaded": False, "error": None})


def test_missing_library_is_reported_with_rebuild_advice(fresh_loader_state, tmp_path):
    assert ops.load_library(str(tmp_path / "libbmxnet_ops.so")) is False
    assert not ops.available()
    with pytest.raises(ops.OpsLibraryError, match="does not exist. Rebuild it .*pip install"):
        ops.require()
    with pytest.raises(ops.OpsLibraryError):
        ops.sign_pack(mx.nd.zeros((1, 1, 1, 1)))


def test_broken_library_is_reported_not_crashed(tmp_path):
    """A file that is no loadable library: the import survives and says how to rebuild."""
    broken = tmp_path / "libbmxnet_ops.so"
    broken.write_bytes(b"\x7fELF this is not a shared object")
    code = ("import bmxnet_ext.inference.ops as o; "
            f"print(o.load_library({str(broken)!r})); o.require()")
    # A fresh interpreter whose first load_library() is the broken file.
    script = ("import sys, bmxnet_ext.inference.ops as o; o._state.update(loaded=False, error=None); "
              + code.split("; ", 1)[1])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "False" in result.stdout
    assert "could not load" in result.stderr and "pip install" in result.stderr
