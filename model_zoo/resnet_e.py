"""ResNetE (Bethge, Yang, Bornstein, Meinel: "Back to Simplicity: How to Train Accurate BNNs from
Scratch?", arXiv:1906.08637, 2019), the Bi-Real-style binary ResNet (Liu et al.: "Bi-Real Net",
ECCV 2018) that the MeliusNet paper compares against.

Each of ResNet's 3x3 convolutions is one :class:`bmxnet_ext.binary.blocks.ResNetEBlock` with its own
shortcut, so a ResNet basic block becomes two units. Stem: the ``imagenet`` one by default,
followed by a norm layer so that the first sign sees centred values rather than ReLU outputs
(which would all binarize to +1). Entry points take ``pretrained``, ``root``, ``ctx`` and the
arguments of :class:`ResNetE` other than ``blocks``.
"""
from mxnet.gluon import HybridBlock, nn

from bmxnet_ext.binary.blocks import Head, ResNetEBlock, Stem, check_input_size, resolve_stem
from bmxnet_ext.inference.model_store import load_pretrained

from ._registry import register_model

__all__ = ["ResNetE"]

# name: binary 3x3 convolutions (= shortcut units) per stage, twice ResNet's basic blocks.
_SPECS = {
    "resnet_e18": (4, 4, 4, 4),
    "resnet_e34": (6, 8, 12, 6),
}
_WIDTHS = (64, 128, 256, 512)


class ResNetE(HybridBlock):
    """Stem -> norm -> stages of ResNetEBlocks (the first of stages 2.. strides 2) -> head.

    Input ``(N, 3, S, S)``, output ``(N, classes)`` logits.

    Parameters
    ----------
    blocks : sequence of int
        ResNetEBlocks (binary convolutions) per stage.
    widths : sequence of int
        Channels of each stage (ResNet's 64, 128, 256, 512).
    classes, stem, input_size, activation, clip_threshold, norm_layer, norm_kwargs
        As for :class:`model_zoo.meliusnet.MeliusNet`; the default stem is ``"imagenet"``.

    Attributes
    ----------
    stage_channels : tuple of (int, int)
        Input and output width of each stage.
    transitions : tuple
        Empty: ResNetE downsamples inside its stages.
    """

    default_stem = "imagenet"

    def __init__(self, blocks, widths=_WIDTHS, classes=1000, stem=None, input_size=224,
                 activation="det_sign", clip_threshold=1.3, norm_layer=nn.BatchNorm,
                 norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        blocks, widths = tuple(blocks), tuple(widths)
        if not blocks or not all(isinstance(n, int) and n > 0 for n in blocks):
            raise ValueError(f"blocks must be a non-empty sequence of positive ints, got {blocks}")
        if len(widths) != len(blocks):
            raise ValueError(f"{len(blocks)} stages need {len(blocks)} widths, got {widths}")
        self.stem_name = resolve_stem(stem, input_size, self.default_stem)
        self.input_size = input_size
        self.blocks, self.classes, self.transitions = blocks, classes, ()
        norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        unit = dict(activation=activation, clip_threshold=clip_threshold, **norm)
        stage_channels = []
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            self.features.add(Stem(self.stem_name, prefix="stem_", **norm),
                              norm_layer(in_channels=Stem.out_channels, **(norm_kwargs or {})))
            channels = Stem.out_channels
            for i, (num_blocks, width) in enumerate(zip(blocks, widths)):
                stage = nn.HybridSequential(prefix=f"stage{i + 1}_")
                with stage.name_scope():
                    for j in range(num_blocks):
                        strides = 2 if i > 0 and j == 0 else 1
                        stage.add(ResNetEBlock(channels if j == 0 else width, width, strides,
                                               **unit))
                self.features.add(stage)
                stage_channels.append((channels, width))
                channels = width
            self.head = Head(channels, classes, prefix="head_", **norm)
        self.stage_channels = tuple(stage_channels)
        stem_block = self.features[0]
        check_input_size(input_size, self.stem_name,
                         lambda size: _feature_size(stem_block.output_size(size), len(blocks)),
                         type(self).__name__)

    def hybrid_forward(self, F, x):
        return self.head(self.features(x))


def _feature_size(size, stages):
    """Height after the stages; 0 where a downsampling shortcut's 2x2 pool no longer fits."""
    for _ in range(stages - 1):
        if size < 2:
            return 0
        size = (size + 1) // 2  # ceil: the 3x3/2 convolution with padding 1
    return size


def _resnet_e(name, pretrained=False, root=None, ctx=None, **kwargs):
    net = ResNetE(_SPECS[name], **kwargs)
    if pretrained:
        load_pretrained(net, name, root=root, ctx=ctx)
    return net


@register_model
def resnet_e18(pretrained=False, **kwargs):
    """ResNetE18 (16 binary convolutions, each with a shortcut): ImageNet top-1 58.1%
    (Bethge et al., 2019)."""
    return _resnet_e("resnet_e18", pretrained, **kwargs)


@register_model
def resnet_e34(pretrained=False, **kwargs):
    """ResNetE34 (32 binary convolutions, each with a shortcut; Bethge et al., 2019). We know of
    no published ImageNet top-1 for it; Bi-Real Net 34, the same structure trained with Bi-Real's
    recipe, reports 62.2% (Liu et al., 2018)."""
    return _resnet_e("resnet_e34", pretrained, **kwargs)
