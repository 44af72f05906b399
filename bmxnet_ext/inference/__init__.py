"""Packed inference: the ``bmx_*`` op library and its kernels, the packed (xnor) blocks,
conversion and its verification, fusion, model files and their card, deployment and prediction.
Imports :mod:`bmxnet_ext.binary` and :mod:`bmxnet_ext.utils`, never training or the apps."""
