"""BinaryDenseNet (Bethge, Yang, Bornstein, Meinel: "Back to Simplicity: How to Train Accurate
BNNs from Scratch?", arXiv:1906.08637, 2019; and "BinaryDenseNet: Developing an Architecture for
Binary Neural Networks", ICCV Workshops 2019): MeliusNet's skeleton with DenseBlocks only.

The published networks use the 7x7 ``imagenet`` stem, which is the default here; transition
widths follow ``round(c * reduction / 32) * 32``. Entry points take the arguments of
:mod:`model_zoo.meliusnet`'s entry points (``pretrained``, ``root``, ``ctx``, ``classes``,
``stem``, ``input_size``, ``activation``, ``clip_threshold``, ``norm_layer``, ``norm_kwargs``).
"""
from bmxnet_ext.inference.model_store import load_pretrained

from ._registry import no_pretrained_weights, register_model
from .meliusnet import MeliusNet

__all__ = ["BinaryDenseNet"]

# name: (blocks per stage, transition out/in fractions)
_SPECS = {
    "binary_densenet28": ((6, 6, 6, 5), (1 / 2.7, 1 / 2.7, 1 / 2.2)),
    "binary_densenet37": ((6, 8, 12, 6), (1 / 3.3, 1 / 3.3, 1 / 4)),
    "binary_densenet45": ((6, 12, 14, 8), (1 / 2.7, 1 / 3.3, 1 / 4)),
}


class BinaryDenseNet(MeliusNet):
    """A :class:`MeliusNet` without ImprovementBlocks, its transitions given by ``reductions``.

    Takes every argument of :class:`MeliusNet` except ``improvement_blocks`` and
    ``transition_widths``; the default stem is ``"imagenet"``.
    """

    default_stem = "imagenet"

    def __init__(self, blocks, reductions, **kwargs):
        super().__init__(blocks, reductions=reductions, improvement_blocks=False, **kwargs)


def _binary_densenet(name, pretrained=False, root=None, ctx=None, **kwargs):
    blocks, reductions = _SPECS[name]
    net = BinaryDenseNet(blocks, reductions, **kwargs)
    if pretrained:
        load_pretrained(net, name, root=root, ctx=ctx)
    return net


@register_model
def binary_densenet28(pretrained=False, **kwargs):
    """BinaryDenseNet28 (blocks 6, 6, 6, 5): ImageNet top-1 60.7% (Bethge et al., 2019)."""
    return _binary_densenet("binary_densenet28", pretrained, **kwargs)


@register_model
def binary_densenet37(pretrained=False, **kwargs):
    """BinaryDenseNet37 (blocks 6, 8, 12, 6): ImageNet top-1 62.5% (Bethge et al., 2019)."""
    return _binary_densenet("binary_densenet37", pretrained, **kwargs)


@register_model
def binary_densenet45(pretrained=False, **kwargs):
    """BinaryDenseNet45 (blocks 6, 12, 14, 8): ImageNet top-1 63.7% (as reported in the
    MeliusNet paper, Bethge et al., 2020)."""
    return _binary_densenet("binary_densenet45", pretrained, **kwargs)


@register_model
def binary_densenet_flex(blocks=(2, 2, 2, 2), reductions=None, reduction_rule="fraction",
                         pretrained=False, **kwargs):
    """A BinaryDenseNet of any depth, for research and small data; no published ImageNet result.

    ``blocks`` per stage and transition ``reductions`` are free. ``reduction_rule`` as for
    :func:`model_zoo.meliusnet.meliusnet_flex`: ``"fraction"`` (default, 1/2 each) or
    ``"bmxnet_v2"`` (divisors as BMXNet-v2's ``densenet_flex --reduction``, default 2 each).
    Other arguments: :class:`BinaryDenseNet` (Bethge et al., 2019).
    """
    if pretrained:
        raise no_pretrained_weights("binary_densenet_flex")
    if reductions is None:
        reductions = (2, 2, 2) if reduction_rule == "bmxnet_v2" else (1 / 2, 1 / 2, 1 / 2)
    return BinaryDenseNet(blocks, reductions, reduction_rule=reduction_rule, **kwargs)
