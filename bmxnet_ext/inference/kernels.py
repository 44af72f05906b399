"""The C++ kernels on numpy arrays, without MXNet's dispatch (Cython bindings).

- ``pack_bits(x)`` / ``unpack_bits(words, channels)``: float32 NCHW <-> int32 words
  ``(N, H, W, ceil(C/32))``, bit = x >= 0.
- ``pack_conv_weights(w, groups)`` / ``binary_conv2d(x, packed, ...)``: the packed weight layout
  of the binary convolution and the convolution itself.
- ``pack_dense_weights(w)`` / ``binary_dense(x, packed, ...)``: the same for fully connected.
- ``kernel_name()``: which popcount kernel this CPU runs.

They run the same C++ as the ``bmx_*`` operators, so the converter and the ops share one
implementation of the bit layout.
"""
try:
    from ._kernels import (binary_conv2d, binary_dense, kernel_name, pack_bits,
                           pack_conv_weights, pack_dense_weights, unpack_bits)
except ImportError as err:  # pragma: no cover - only in a broken install
    raise ImportError(
        "bmxnet_ext's compiled kernels (bmxnet_ext._kernels) are missing: rebuild the package "
        "with `pip install .` (or `pip install -e .`) from its source tree") from err

__all__ = ["pack_bits", "unpack_bits", "pack_conv_weights", "binary_conv2d",
           "pack_dense_weights", "binary_dense", "kernel_name"]
