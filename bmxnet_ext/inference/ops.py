"""Loading of the C++ operator library (``libbmxnet_ops.so``) and thin wrappers of its ops.

``import bmxnet_ext`` loads the library once, by absolute path, with ``mx.library.load``; after
that the ``bmx_*`` operators are available as ``mx.nd.bmx_*``, ``mx.sym.bmx_*`` and ``F.bmx_*``.
A missing or incompatible library does not break the import (training needs no custom op): the
reason is kept, :func:`available` says False, and every use of an op raises
:class:`OpsLibraryError` explaining how to rebuild.

The environment variable ``BMXNET_OPS_LIBRARY`` names another build of the library to load
instead of the installed one (the sanitizer job loads an AddressSanitizer build this way).
"""
import ctypes
import os
import threading

import mxnet as mx

__all__ = ["LIBRARY_PATH", "OpsLibraryError", "load_library", "available", "require",
           "sign_pack", "native"]

INSTALLED_LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libbmxnet_ops.so")
LIBRARY_PATH = os.environ.get("BMXNET_OPS_LIBRARY") or INSTALLED_LIBRARY
_REBUILD = ("Rebuild it from the bmxnet_ext source tree with `pip install .` (or "
            "`pip install -e .`) in the environment whose MXNet 1.9.1 you use.")

_lock = threading.Lock()
_state = {"loaded": False, "error": None, "handle": None}


def _advice(path):
    named = os.environ.get("BMXNET_OPS_LIBRARY")
    if named and os.path.abspath(named) == os.path.abspath(path):
        return ("It was named by the environment variable BMXNET_OPS_LIBRARY: point it at a "
                "built libbmxnet_ops.so, or unset it to use the installed one.")
    return _REBUILD


class OpsLibraryError(RuntimeError):
    """The bmx_* operator library is missing or could not be loaded into this MXNet."""


def load_library(path=LIBRARY_PATH):
    """Loads the op library once (later calls return the first result). True when loaded."""
    with _lock:
        if _state["loaded"] or _state["error"] is not None:
            return _state["loaded"]
        if not os.path.isfile(path):
            problem = "is a directory" if os.path.isdir(path) else "does not exist"
            _state["error"] = f"the op library {path} {problem}. {_advice(path)}"
            return False
        try:
            mx.library.load(os.path.abspath(path), verbose=False)
        except mx.base.MXNetError as err:
            reason = " ".join(str(err).split())  # one line: MXNet's message has several
            _state["error"] = (f"MXNet {mx.__version__} could not load {path}: {reason}. "
                               f"{_advice(path)}")
            return False
        _state["loaded"] = True
        # The same handle MXNet holds (dlopen returns the loaded library): for its C entries.
        lib = ctypes.CDLL(os.path.abspath(path))
        lib.bmx_set_isa.restype = ctypes.c_char_p
        lib.bmx_set_isa.argtypes = [ctypes.c_char_p]
        lib.bmx_kernel_name.restype = ctypes.c_char_p
        lib.bmx_set_num_threads.argtypes = [ctypes.c_int]
        _state["handle"] = lib
        return True


def available():
    """True when the ``bmx_*`` operators are registered in this process."""
    return _state["loaded"]


def require():
    """Raises :class:`OpsLibraryError` with the load failure and how to fix it, unless loaded."""
    if not _state["loaded"]:
        reason = _state["error"] or "it was never loaded (import bmxnet_ext loads it)"
        raise OpsLibraryError(f"bmx_* operators are unavailable: {reason}")


def sign_pack(data):
    """Packs float32 NCHW ``data`` into int32 bit words ``(N, H, W, ceil(C/32))``, bit = x >= 0.

    The op behind it is ``mx.nd.bmx_sign_pack``; see ``src/kernels/bitpack.h`` for the layout.
    """
    require()
    return mx.nd.bmx_sign_pack(data)


def native():
    """The loaded op library as a ``ctypes.CDLL`` (its plain C entry points: ``bmx_set_isa``,
    ``bmx_kernel_name``, ``bmx_set_num_threads``), or None when it is not loaded."""
    return _state["handle"]
