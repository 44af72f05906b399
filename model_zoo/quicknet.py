"""QuickNet (larq-zoo's ``QuickNetSmall``, ``QuickNet``, ``QuickNetLarge``, v1.0; Bannink et al.,
"Larq Compute Engine: Design, Benchmark, and Deploy State-of-the-Art Binarized Neural Networks",
MLSys 2021), a binary network designed for fast inference.

Stem -> sections of :class:`~bmxnet_ext.binary.quicknet_blocks.QuickNetBlock` (binary 3x3
convolution padded with +1 -> ReLU -> BatchNorm, added to a float shortcut), a
:class:`~bmxnet_ext.binary.quicknet_blocks.QuickNetTransition` wherever the width changes ->
ReLU -> global average pool -> Dense. Quantizers as published: ``det_sign`` with gradient window
1.25 on the inputs (larq's ``ste_sign(clip_value=1.25)``); the weights' ``ste_sign`` with the
same window under ``weight_clip(1.25)`` passes the gradient everywhere the latent weights can
be, as our identity-gradient weight sign does (the clipping itself belongs to training, see
:mod:`bmxnet_ext.training.recipe`). BatchNorm: momentum 0.9, epsilon 1e-5 after binary and
transition convolutions; Keras' defaults (momentum 0.99, epsilon 1e-3) in the stem, as larq-zoo
builds it. Strided float convolutions pad as TF's ``"same"`` for the ``input_size`` the network
is built for (see :mod:`bmxnet_ext.binary.quicknet_blocks`). The softmax of larq's head is left
to the loss, as in every zoo network.

Parameter counts equal larq-zoo's published ones when counted as larq's summary and our
:func:`bmxnet_ext.summary` count: each BatchNorm as two values per channel (the scale and shift it
folds to; larq counts moving mean and variance, we count gamma and beta), the fixed blur-pool
kernels included. At 224x224: QuickNetSmall 12,655,688 (4.00 MiB), QuickNet 13,234,088 (4.17
MiB), QuickNetLarge 23,342,248 (5.40 MiB).

Entry points take ``pretrained``, ``root``, ``ctx`` and the arguments of :class:`QuickNet` other
than ``blocks`` and ``widths``.
"""
from mxnet.gluon import HybridBlock, nn

from bmxnet_ext.binary.blocks import Head, check_input_size, resolve_stem
from bmxnet_ext.binary.quicknet_blocks import (QuickNetBlock, QuickNetStem, QuickNetTransition,
                                               stem_output_size)
from bmxnet_ext.inference.model_store import load_pretrained

from ._registry import no_pretrained_weights, register_model

__all__ = ["QuickNet"]

# name: (blocks per section, section widths), larq-zoo's section_blocks / section_filters.
_SPECS = {
    "quicknet_small": ((4, 4, 4, 4), (32, 64, 256, 512)),
    "quicknet": ((4, 4, 4, 4), (64, 128, 256, 512)),
    "quicknet_large": ((6, 8, 12, 6), (64, 128, 256, 512)),
}

# Keras' BatchNormalization defaults, which larq-zoo's stem keeps.
_KERAS_NORM_KWARGS = {"momentum": 0.99, "epsilon": 1e-3}


def _after_transition(size):
    # MaxPool 2x2 stride 1 (size - 1), then the blur pool's stride 2 with "same" padding
    return size // 2 if size >= 2 else 0


class QuickNet(HybridBlock):
    """Stem -> sections of QuickNetBlocks, a transition before a section that changes the width
    -> ReLU -> global average pool -> Dense(classes).

    Input ``(N, 3, S, S)``, output ``(N, classes)`` logits.

    Parameters
    ----------
    blocks : sequence of int
        QuickNetBlocks (binary convolutions) per section.
    widths : sequence of int
        Channels of each section; the stem outputs the first. A section whose width differs from
        the previous one starts with a :class:`QuickNetTransition` (which halves the size), as
        larq-zoo decides it.
    classes : int
        Outputs of the classifier (ImageNet: 1000).
    stem : str or None
        ``"quicknet"`` or ``"thumbnail"``
        (:class:`~bmxnet_ext.binary.quicknet_blocks.QuickNetStem`); None picks the thumbnail
        stem for ``input_size <= 64``.
    input_size : int
        Height (= width) of the inputs the network is built for: it picks the stem, decides the
        TF-"same" padding of the strided float convolutions and is checked to survive the
        downsampling.
    activation : str
        ``"det_sign"`` (default), ``"approx_sign"`` or ``"relu"`` (the full-precision twin).
    clip_threshold : float
        Gradient window of ``det_sign`` on the binary convolutions' inputs (1.25).
    norm_layer, norm_kwargs
        Normalization block and its arguments; ``norm_kwargs`` (when given) replaces the
        published per-layer momentum and epsilon everywhere.

    Attributes
    ----------
    stage_channels : tuple of (int, int)
        Input and output width of each section.
    transitions : tuple of (int, int)
        Input and output width of each transition.
    """

    default_stem = "quicknet"

    def __init__(self, blocks, widths, classes=1000, stem=None, input_size=224,
                 activation="det_sign", clip_threshold=1.25, norm_layer=nn.BatchNorm,
                 norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        blocks, widths = tuple(blocks), tuple(widths)
        if not blocks or not all(isinstance(n, int) and n > 0 for n in blocks):
            raise ValueError(f"blocks must be a non-empty sequence of positive ints, got {blocks}")
        if len(widths) != len(blocks) or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ValueError(f"{len(blocks)} sections need {len(blocks)} positive int widths, "
                             f"got {widths}")
        self.stem_name = resolve_stem(stem, input_size, self.default_stem)
        self.input_size = input_size
        self.blocks, self.widths, self.classes = blocks, widths, classes
        changes = sum(a != b for a, b in zip(widths, widths[1:]))

        def feature_size(size):
            size = stem_output_size(self.stem_name, size)
            for _ in range(changes):
                size = _after_transition(size)
            return size

        check_input_size(input_size, self.stem_name, feature_size,
                         f"{type(self).__name__} with {changes} transitions")
        norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        stem_norm = dict(norm_layer=norm_layer, norm_kwargs=(
            norm_kwargs if norm_kwargs is not None
            else _KERAS_NORM_KWARGS if norm_layer is nn.BatchNorm else None))
        unit = dict(activation=activation, clip_threshold=clip_threshold, **norm)
        stage_channels, transitions = [], []
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            self.features.add(QuickNetStem(self.stem_name, widths[0], input_size,
                                           prefix="stem_", **stem_norm))
            channels, size = widths[0], stem_output_size(self.stem_name, input_size)
            for i, (num_blocks, width) in enumerate(zip(blocks, widths)):
                if width != channels:
                    self.features.add(QuickNetTransition(
                        channels, width, size, prefix=f"transition{len(transitions) + 1}_",
                        **norm))
                    transitions.append((channels, width))
                    channels, size = width, _after_transition(size)
                stage = nn.HybridSequential(prefix=f"stage{i + 1}_")
                with stage.name_scope():
                    for _ in range(num_blocks):
                        stage.add(QuickNetBlock(width, **unit))
                self.features.add(stage)
                stage_channels.append((width, width))
            self.head = Head(channels, classes, norm_layer=None, prefix="head_")
        self.stage_channels, self.transitions = tuple(stage_channels), tuple(transitions)

    def hybrid_forward(self, F, x):
        return self.head(self.features(x))


def _quicknet(name, pretrained=False, root=None, ctx=None, **kwargs):
    blocks, widths = _SPECS[name]
    net = QuickNet(blocks, widths, **kwargs)
    if pretrained:
        load_pretrained(net, name, root=root, ctx=ctx)
    return net


@register_model
def quicknet_small(pretrained=False, **kwargs):
    """QuickNetSmall (blocks 4, 4, 4, 4; widths 32, 64, 256, 512): ImageNet top-1 59.4%
    (larq-zoo)."""
    return _quicknet("quicknet_small", pretrained, **kwargs)


@register_model
def quicknet(pretrained=False, **kwargs):
    """QuickNet (blocks 4, 4, 4, 4; widths 64, 128, 256, 512): ImageNet top-1 63.3% (larq-zoo)."""
    return _quicknet("quicknet", pretrained, **kwargs)


@register_model
def quicknet_large(pretrained=False, **kwargs):
    """QuickNetLarge (blocks 6, 8, 12, 6; widths 64, 128, 256, 512): ImageNet top-1 66.9%
    (larq-zoo)."""
    return _quicknet("quicknet_large", pretrained, **kwargs)


@register_model
def quicknet_flex(blocks=(2, 2, 2, 2), widths=(32, 64, 128, 256), pretrained=False, **kwargs):
    """A QuickNet of any depth and widths, for research and small data; no published result.

    ``blocks`` per section and section ``widths`` are free (larq-zoo's ``section_blocks`` and
    ``section_filters``); the defaults make a small network. Other arguments: :class:`QuickNet`.
    """
    if pretrained:
        raise no_pretrained_weights("quicknet_flex")
    return QuickNet(blocks, widths, **kwargs)
