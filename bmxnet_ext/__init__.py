"""bmxnet_ext: binary neural networks (MeliusNet and peers) for stock MXNet 1.9.1 / Gluon.

Importing the package loads the ``bmx_*`` operator library into MXNet (see
:mod:`bmxnet_ext.inference.ops`) and registers the ``radam`` optimizer.

The package is arranged by concern; imports flow one way, from the top of this list down:

- ``bmxnet_ext.apps``: the ``bmxnet-ext`` command line and the demo (may use the model zoo);
- ``bmxnet_ext.training`` and ``bmxnet_ext.inference``: training, and packed inference (neither
  imports the other);
- ``bmxnet_ext.binary``: quantizers, layers, blocks, accounting;
- ``bmxnet_ext.utils``: files, checksums, ImageNet conventions, block-tree walks.

The names users need most are importable from ``bmxnet_ext`` itself.
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

__version__ = "0.1.0"

from .binary import layers, quantizers  # noqa: E402
from .binary.layers import BinaryConvolution, QActivation, QConv2D, QDense  # noqa: E402
from .binary.summary import summary  # noqa: E402
from .inference import kernels, ops  # noqa: E402
from .inference.ops import OpsLibraryError  # noqa: E402
from .training import optim  # noqa: E402,F401  (registers the 'radam' optimizer)

ops.load_library()

from .inference.converter import ConversionError, convert_to_xnor, load_xnor  # noqa: E402
from .inference.deploy import export  # noqa: E402
from .inference.model_card import ModelFileError  # noqa: E402
from .inference.predictor import Predictor  # noqa: E402
from .inference.threads import ThreadSafeBlock, push_lock  # noqa: E402

__all__ = ["layers", "quantizers", "kernels", "ops", "QActivation", "QConv2D", "QDense",
           "BinaryConvolution", "OpsLibraryError", "ConversionError", "ModelFileError",
           "convert_to_xnor", "load_xnor", "export", "Predictor", "ThreadSafeBlock",
           "push_lock", "summary"]
