"""Import of BMXNet-v2 checkpoints into the zoo's networks, by name.

>>> from bmxnet_ext.model_zoo.bmxnet_v2 import import_bmxnet_v2
>>> net = import_bmxnet_v2("meliusnet22", "meliusnet22-0119.params")  # doctest: +SKIP

BMXNet-v2's model names map to ours one to one: ``meliusnet22/29/42/59``, ``meliusnet_a/b/c``
(BMXNet-v2-examples ``binary_models/meliusnet.py``); its ``densenet_flex`` runs with block config
6,6,6,5 / 6,8,12,6 / 6,12,14,8 and reductions 2.7,2.7,2.2 / 3.3,3.3,4 / 2.7,3.3,4 are our
``binary_densenet28/37/45``. BMXNet-v2's default stem for these models is ``imagenet``; its
published MeliusNet runs pass ``--initial-layers grouped_stem`` (our MeliusNet default), its
BinaryDenseNet runs mostly the ``imagenet`` stem (our BinaryDenseNet default).
"""
from bmxnet_ext.inference.bmxnet_v2 import CheckpointMismatch, load_bmxnet_v2
from bmxnet_ext.inference.model_store import register_pretrained

from ._registry import get_model
from .meliusnet import MeliusNet

__all__ = ["import_bmxnet_v2", "CheckpointMismatch"]


def import_bmxnet_v2(name, params_file, stem=None, classes=None, ctx=None, register=None,
                     root=None):
    """Our network ``name`` with the weights of the BMXNet-v2 checkpoint ``params_file``.

    Parameters
    ----------
    name : str
        A zoo model (``meliusnet22``, ..., ``binary_densenet45``; see the module docstring).
    params_file : str
        Written by BMXNet-v2's ``save_parameters`` (its training script) or older
        ``save_params``.
    stem : str, optional
        ``"grouped_stem"``, ``"imagenet"`` or ``"thumbnail"`` when the run used another stem
        than the model's default (BMXNet-v2's ``--initial-layers``).
    classes : int, optional
        Classes of the checkpoint's classifier when not 1000.
    ctx : Context, optional
        Where the parameters go (default CPU).
    register : str, optional
        Also register the network in the local model store under this name (e.g. ``name``), so
        that ``get_model(name, pretrained=True)`` loads it (built with the same ``stem`` and
        ``classes``).
    root : str, optional
        Model store directory for ``register``.

    Raises :class:`CheckpointMismatch` (a ValueError) naming what differs when the file is of
    another variant, stem or class count, or truncated; nothing is loaded then.
    """
    net = get_model(name, stem=stem, classes=classes)
    if not isinstance(net, MeliusNet):
        raise ValueError(f"BMXNet-v2 checkpoints are imported into MeliusNet and BinaryDenseNet "
                         f"models, not {name!r}")
    load_bmxnet_v2(net, params_file, ctx=ctx)
    if register:
        register_pretrained(net, register, root=root)
    return net
