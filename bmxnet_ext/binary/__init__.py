"""The binary layers: quantizers, quantized layers, the building blocks of the zoo's networks and
their accounting (``summary``). Imports only :mod:`bmxnet_ext.utils`."""
