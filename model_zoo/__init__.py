"""The bmxnet_ext model zoo: MeliusNet, BinaryDenseNet, ResNetE and QuickNet, built from
:mod:`bmxnet_ext.binary.blocks` and reached by name through a registry.

>>> from bmxnet_ext.model_zoo import get_model, list_models
>>> list_models("meliusnet*")[:2]
['meliusnet22', 'meliusnet29']
>>> net = get_model("meliusnet22", classes=10)
"""
from ._registry import get_model, list_models, register_model
from . import binary_densenet, meliusnet, quicknet, resnet_e  # noqa: F401  (registers the models)

__all__ = ["get_model", "list_models", "register_model"]
