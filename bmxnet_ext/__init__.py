"""bmxnet_ext: binary neural networks (MeliusNet and peers) for stock MXNet 1.9.1 / Gluon.

Importing the package loads the ``bmx_*`` operator library into MXNet (see :mod:`bmxnet_ext.ops`).
"""
try:
    import mxnet as _mx
except ImportError as _err:
    raise ImportError(
        "bmxnet_ext needs MXNet 1.9.1. CPU: pip install 'bmxnet_ext[cpu]' (or mxnet==1.9.1); "
        "GPU: pip install mxnet-cu112==1.9.1 (the wheel matching your CUDA).") from _err
if not _mx.__version__.startswith("1.9."):
    raise ImportError(f"bmxnet_ext needs MXNet 1.9.x, found {_mx.__version__}; "
                      "pip install mxnet==1.9.1 (or the mxnet-cuXXX==1.9.1 wheel for your CUDA)")

from . import layers, ops, optim, quantizers  # noqa: E402  (optim registers 'radam')
from .layers import BinaryConvolution, QActivation, QConv2D, QDense  # noqa: E402
from .ops import OpsLibraryError  # noqa: E402

ops.load_library()

from .converter import ConversionError, convert_to_xnor, load_xnor  # noqa: E402
from .summary import summary  # noqa: E402

__version__ = "0.1.0"
__all__ = ["layers", "ops", "quantizers", "QActivation", "QConv2D", "QDense",
           "BinaryConvolution", "OpsLibraryError", "ConversionError", "convert_to_xnor",
           "load_xnor", "summary"]
