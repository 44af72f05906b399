"""The C++ kernels on numpy arrays, without MXNet's dispatch (Cython bindings).

- ``pack_bits(x)`` / ``unpack_bits(words, channels)``: float32 NCHW <-> int32 words
  ``(N, H, W, ceil(C/32))``, bit = x >= 0.
- ``pack_conv_weights(w, groups)`` / ``binary_conv2d(x, packed, ...)``: the packed weight layout
  of the binary convolution and the convolution itself.
- ``pack_dense_weights(w)`` / ``binary_dense(x, packed, ...)``: the same for fully connected.
- ``kernel_name()``: which popcount kernel this CPU runs.
- ``ISAS``, ``supported_isas()``, ``active_isa()``, ``set_isa(name)``, ``use_isa(name)``: the
  instruction-set path of every kernel in the process (these bindings and the ``bmx_*``
  operators), chosen at start-up from the CPU and the environment variable ``BMXNET_ISA``.
- ``num_threads()`` / ``set_num_threads(n)``: how many threads the kernels (and the ``bmx_*``
  operators) use at most: ``OMP_NUM_THREADS`` unless set here, else the CPU count.

They run the same C++ as the ``bmx_*`` operators, so the converter and the ops share one
implementation of the bit layout.
"""
import contextlib

try:
    from . import _kernels
    from ._kernels import (ISAS, binary_conv2d, binary_dense, kernel_name, num_threads,
                           pack_bits, pack_conv_weights, pack_dense_weights, supported_isas,
                           unpack_bits)
except ImportError as err:  # pragma: no cover - only in a broken install
    raise ImportError(
        "bmxnet_ext's compiled kernels (bmxnet_ext._kernels) are missing: rebuild the package "
        "with `pip install .` (or `pip install -e .`) from its source tree") from err
from . import ops

__all__ = ["pack_bits", "unpack_bits", "pack_conv_weights", "binary_conv2d",
           "pack_dense_weights", "binary_dense", "kernel_name", "ISAS", "supported_isas",
           "active_isa", "set_isa", "use_isa", "num_threads", "set_num_threads"]


def active_isa():
    """The instruction-set path the kernels run on: ``"scalar"``, ``"avx2"`` or ``"avx512"``."""
    return _kernels.active_isa_name()


def set_isa(name):
    """Makes every kernel of this process, the ``bmx_*`` operators included, use the path
    ``name`` (one of ``ISAS``) from the next call on; returns the previous path.

    A path this CPU lacks falls back to the best one below it, with one warning on stderr
    (``supported_isas()`` lists what the CPU runs). All paths compute the same results; this is
    for measuring them and for testing. Networks already running finish on their path.
    """
    if name not in ISAS:
        raise ValueError(f"isa must be one of {', '.join(ISAS)}; got {name!r}")
    previous = _kernels.set_isa(name)
    library = ops.native()
    if library is not None:
        library.bmx_set_isa(name.encode())
    return previous


@contextlib.contextmanager
def use_isa(name):
    """``with use_isa("avx2"): ...`` runs the block on that path, then restores the previous."""
    previous = set_isa(name)
    try:
        yield active_isa()
    finally:
        set_isa(previous)


def set_num_threads(n):
    """Makes the kernels use up to ``n`` threads (an int >= 1), or with ``None`` the count of
    ``OMP_NUM_THREADS`` (else the CPUs this process may run on) again; returns the previous count.

    Applies to this module's functions and to the ``bmx_*`` operators alike (the op library, when
    loaded, keeps its own pool of threads); MXNet's own operators keep following
    ``OMP_NUM_THREADS``. A layer too small to gain from threads runs on one whatever ``n`` is.
    """
    previous = _kernels.set_num_threads(n)  # checks n
    library = ops.native()
    if library is not None:
        library.bmx_set_num_threads(0 if n is None else min(int(n), 1 << 20))
    return previous
