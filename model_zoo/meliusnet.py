"""MeliusNet (Bethge, Bartz, Yang, Meinel: "MeliusNet: Can Binary Neural Networks Achieve
MobileNet-level Accuracy?", arXiv:2001.05936, 2020).

Every entry point takes ``pretrained=False`` (True loads the weights registered under the model's
name from the local store, see :mod:`bmxnet_ext.inference.model_store`; with ``root`` for the store
directory and ``ctx`` for the device) and the arguments of :class:`MeliusNet` other than the spec:
``classes``, ``stem``, ``input_size``, ``activation``, ``clip_threshold``, ``bits``, ``bits_a``,
``norm_layer``, ``norm_kwargs``.
"""
from mxnet.gluon import HybridBlock, nn

from bmxnet_ext.binary.blocks import (DenseBlock, Head, ImprovementBlock, Stem, Transition,
                               check_input_size, resolve_stem, transition_width)
from bmxnet_ext.inference.model_store import load_pretrained

from ._registry import no_pretrained_weights, register_model

__all__ = ["MeliusNet"]

# name: (blocks per stage, transition output widths, transition conv groups), DESIGN.md's table.
_SPECS = {
    "meliusnet22": ((4, 5, 4, 4), (160, 224, 256), 1),
    "meliusnet29": ((4, 6, 8, 6), (128, 192, 256), 1),
    "meliusnet42": ((5, 8, 14, 10), (160, 256, 416), 1),
    "meliusnet59": ((6, 12, 24, 12), (192, 320, 544), 1),
    "meliusnet_a": ((4, 5, 5, 6), (160, 256, 288), 4),
    "meliusnet_b": ((4, 6, 8, 6), (160, 224, 320), 2),
    "meliusnet_c": ((3, 5, 10, 6), (128, 192, 288), 4),
}


class MeliusNet(HybridBlock):
    """Stem -> stages of (DenseBlock, ImprovementBlock) pairs with transitions between -> head.

    Input ``(N, 3, S, S)``, output ``(N, classes)`` logits.

    Parameters
    ----------
    blocks : sequence of int
        Blocks per stage (a block is a DenseBlock, followed by an ImprovementBlock when
        ``improvement_blocks``).
    transition_widths : sequence of int, optional
        Output width of each of the ``len(blocks) - 1`` transitions.
    reductions : sequence of float, optional
        Instead of ``transition_widths``: the reduction of each transition, turned into a
        multiple of 32 by ``reduction_rule``.
    reduction_rule : str
        ``"fraction"`` (default): reductions are out/in fractions, width ``round(c * f / 32) *
        32``; ``"bmxnet_v2"``: reductions are divisors as BMXNet-v2's ``--reduction``, width
        ``round((c // d) / 32) * 32`` (see :func:`bmxnet_ext.binary.blocks.transition_width`).
    transition_groups : int
        Groups of the transitions' 1x1 convolutions; > 1 adds a 16-group channel shuffle.
    improvement_blocks : bool
        False builds a BinaryDenseNet (DenseBlocks only).
    classes : int
        Outputs of the classifier (ImageNet: 1000).
    stem : str or None
        ``"grouped_stem"``, ``"imagenet"`` or ``"thumbnail"``
        (:class:`bmxnet_ext.binary.blocks.Stem`);
        None picks the thumbnail stem for ``input_size <= 64`` and ``default_stem`` otherwise.
    input_size : int
        Height (= width) of the inputs the network is built for; it picks the stem and is checked
        to survive the downsampling. Any size that does works at run time.
    growth_rate : int
        Channels each DenseBlock adds (64).
    activation, clip_threshold, norm_layer, norm_kwargs, bits, bits_a
        See :mod:`bmxnet_ext.binary.blocks` (``bits_a=2`` trains with 2-bit activations).

    Attributes
    ----------
    stage_channels : tuple of (int, int)
        Input and output width of each stage.
    transitions : tuple of (int, int)
        Input and output width of each transition.
    """

    default_stem = "grouped_stem"

    def __init__(self, blocks, transition_widths=None, reductions=None, transition_groups=1,
                 improvement_blocks=True, classes=1000, stem=None, input_size=224,
                 growth_rate=64, activation="det_sign", clip_threshold=1.3,
                 norm_layer=nn.BatchNorm, norm_kwargs=None, reduction_rule="fraction",
                 bits=1, bits_a=1, **kwargs):
        super().__init__(**kwargs)
        blocks = tuple(blocks)
        if not blocks or not all(isinstance(n, int) and n > 0 for n in blocks):
            raise ValueError(f"blocks must be a non-empty sequence of positive ints, got {blocks}")
        if (transition_widths is None) == (reductions is None):
            raise ValueError("give exactly one of transition_widths and reductions")
        transition_spec = tuple(reductions if transition_widths is None else transition_widths)
        if len(transition_spec) != len(blocks) - 1:
            raise ValueError(f"{len(blocks)} stages need {len(blocks) - 1} transition widths or "
                             f"reductions, got {len(transition_spec)}")
        self.stem_name = resolve_stem(stem, input_size, self.default_stem)
        self.input_size = input_size
        self.blocks, self.transition_groups, self.classes = blocks, transition_groups, classes
        unit = dict(activation=activation, clip_threshold=clip_threshold, bits=bits, bits_a=bits_a,
                    norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        stage_channels, transitions = [], []
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            stem_block = Stem(self.stem_name, prefix="stem_", **norm)
            self.features.add(stem_block)
            channels = Stem.out_channels
            for i, num_blocks in enumerate(blocks):
                stage = nn.HybridSequential(prefix=f"stage{i + 1}_")
                stage_in = channels
                with stage.name_scope():
                    for _ in range(num_blocks):
                        stage.add(DenseBlock(channels, growth_rate, **unit))
                        channels += growth_rate
                        if improvement_blocks:
                            stage.add(ImprovementBlock(channels, growth_rate, **unit))
                self.features.add(stage)
                stage_channels.append((stage_in, channels))
                if i == len(blocks) - 1:
                    break
                width = transition_spec[i]
                if transition_widths is None:
                    width = transition_width(channels, width, reduction_rule)
                self.features.add(Transition(channels, width, groups=transition_groups,
                                             prefix=f"transition{i + 1}_", **norm))
                transitions.append((channels, width))
                channels = width
            self.head = Head(channels, classes, prefix="head_", **norm)
        halvings = 2 ** len(transitions)
        check_input_size(input_size, self.stem_name,
                         lambda size: stem_block.output_size(size) // halvings,
                         f"{type(self).__name__} with {len(transitions)} transitions")
        self.stage_channels, self.transitions = tuple(stage_channels), tuple(transitions)

    def hybrid_forward(self, F, x):
        return self.head(self.features(x))


def _meliusnet(name, pretrained=False, root=None, ctx=None, **kwargs):
    blocks, widths, groups = _SPECS[name]
    net = MeliusNet(blocks, transition_widths=widths, transition_groups=groups, **kwargs)
    if pretrained:
        load_pretrained(net, name, root=root, ctx=ctx)
    return net


@register_model
def meliusnet22(pretrained=False, **kwargs):
    """MeliusNet22 (blocks 4, 5, 4, 4): ImageNet top-1 63.6% (Bethge et al., 2020)."""
    return _meliusnet("meliusnet22", pretrained, **kwargs)


@register_model
def meliusnet29(pretrained=False, **kwargs):
    """MeliusNet29 (blocks 4, 6, 8, 6): ImageNet top-1 65.8% (Bethge et al., 2020)."""
    return _meliusnet("meliusnet29", pretrained, **kwargs)


@register_model
def meliusnet42(pretrained=False, **kwargs):
    """MeliusNet42 (blocks 5, 8, 14, 10): ImageNet top-1 69.2% (Bethge et al., 2020)."""
    return _meliusnet("meliusnet42", pretrained, **kwargs)


@register_model
def meliusnet59(pretrained=False, **kwargs):
    """MeliusNet59 (blocks 6, 12, 24, 12): ImageNet top-1 71.0% (Bethge et al., 2020)."""
    return _meliusnet("meliusnet59", pretrained, **kwargs)


@register_model
def meliusnet_a(pretrained=False, **kwargs):
    """MeliusNetA (blocks 4, 5, 5, 6; 4-group transitions): ImageNet top-1 63.4%
    (Bethge et al., 2020)."""
    return _meliusnet("meliusnet_a", pretrained, **kwargs)


@register_model
def meliusnet_b(pretrained=False, **kwargs):
    """MeliusNetB (blocks 4, 6, 8, 6; 2-group transitions): ImageNet top-1 65.7%
    (Bethge et al., 2020)."""
    return _meliusnet("meliusnet_b", pretrained, **kwargs)


@register_model
def meliusnet_c(pretrained=False, **kwargs):
    """MeliusNetC (blocks 3, 5, 10, 6; 4-group transitions): ImageNet top-1 64.1%
    (Bethge et al., 2020)."""
    return _meliusnet("meliusnet_c", pretrained, **kwargs)


@register_model
def meliusnet_flex(blocks=(2, 2, 2, 2), reductions=None, transition_groups=1,
                   reduction_rule="fraction", pretrained=False, **kwargs):
    """A MeliusNet of any depth, for research and small data; no published ImageNet result.

    ``blocks`` per stage and transition ``reductions`` are free; the defaults make a small
    network. ``reduction_rule="fraction"`` (default) reads reductions as out/in fractions
    (default 1/2 each); ``"bmxnet_v2"`` as BMXNet-v2's ``--reduction`` divisors (default 2
    each), with its widths ``round((c // d) / 32) * 32``, so that a BMXNet-v2 flex run (e.g.
    ``--block-config 6,12,24,12 --reduction 2.5,3,3.5``) is rebuilt exactly. Other arguments:
    :class:`MeliusNet` (Bethge et al., 2020).
    """
    if pretrained:
        raise no_pretrained_weights("meliusnet_flex")
    if reductions is None:
        reductions = (2, 2, 2) if reduction_rule == "bmxnet_v2" else (1 / 2, 1 / 2, 1 / 2)
    return MeliusNet(blocks, reductions=reductions, transition_groups=transition_groups,
                     reduction_rule=reduction_rule, **kwargs)
