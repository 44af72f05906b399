"""The C++ kernels on numpy arrays, without MXNet's dispatch (Cython bindings).

``pack_bits(x)`` packs float32 NCHW into int32 words ``(N, H, W, ceil(C/32))`` (bit = x >= 0),
``unpack_bits(words, channels)`` turns them back into ±1 NCHW. They run the same C++ as the
``bmx_*`` operators, so the converter and the ops share one implementation of the bit layout.
"""
try:
    from ._kernels import pack_bits, unpack_bits
except ImportError as err:  # pragma: no cover - only in a broken install
    raise ImportError(
        "bmxnet_ext's compiled kernels (bmxnet_ext._kernels) are missing: rebuild the package "
        "with `pip install .` (or `pip install -e .`) from its source tree") from err

__all__ = ["pack_bits", "unpack_bits"]
