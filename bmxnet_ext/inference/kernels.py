"""The C++ kernels on numpy arrays, without MXNet's dispatch (Cython bindings).

- ``pack_bits(x)`` / ``unpack_bits(words, channels)``: float32 NCHW <-> int32 words
  ``(N, H, W, ceil(C/32))``, bit = x >= 0.
- ``pack_conv_weights(w, groups)`` / ``binary_conv2d(x, packed, ...)``: the packed weight layout
  of the binary convolution and the convolution itself.
- ``pack_dense_weights(w)`` / ``binary_dense(x, packed, ...)``: the same for fully connected.
- ``kernel_name()``: which popcount kernel this CPU runs.
- ``num_threads()`` / ``set_num_threads(n)``: how many threads the kernels (and the ``bmx_*``
  operators) use at most: ``OMP_NUM_THREADS`` unless set here, else the CPU count.

They run the same C++ as the ``bmx_*`` operators, so the converter and the ops share one
implementation of the bit layout.
"""
try:
    from ._kernels import (binary_conv2d, binary_dense, kernel_name, num_threads, pack_bits,
                           pack_conv_weights, pack_dense_weights, unpack_bits)
    from ._kernels import set_num_threads as _set_module_threads
except ImportError as err:  # pragma: no cover - only in a broken install
    raise ImportError(
        "bmxnet_ext's compiled kernels (bmxnet_ext._kernels) are missing: rebuild the package "
        "with `pip install .` (or `pip install -e .`) from its source tree") from err

from . import ops as _ops

__all__ = ["pack_bits", "unpack_bits", "pack_conv_weights", "binary_conv2d",
           "pack_dense_weights", "binary_dense", "kernel_name", "num_threads", "set_num_threads"]


def set_num_threads(n):
    """Makes the kernels use up to ``n`` threads (an int >= 1), or with ``None`` the count of
    ``OMP_NUM_THREADS`` (else the CPUs this process may run on) again; returns the previous count.

    Applies to this module's functions and to the ``bmx_*`` operators alike (the op library, when
    loaded, keeps its own pool of threads); MXNet's own operators keep following
    ``OMP_NUM_THREADS``. A layer too small to gain from threads runs on one whatever ``n`` is.
    """
    previous = _set_module_threads(n)  # checks n
    _ops._set_library_threads(0 if n is None else min(int(n), 1 << 20))
    return previous
