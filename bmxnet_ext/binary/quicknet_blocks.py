"""Building blocks of QuickNet (Bannink et al., "Larq Compute Engine: Design, Benchmark, and
Deploy State-of-the-Art Binarized Neural Networks", MLSys 2021; larq-zoo's ``QuickNet``).

:class:`QuickNetBlock` is the binary unit: ``x + norm(relu(BinaryConv(sign(x))))``, a 3x3 binary
convolution padded with +1 whose ±1 dot product passes through ReLU and BatchNorm before it is
added to a float shortcut. :class:`QuickNetStem` and :class:`QuickNetTransition` (max pool ->
fixed blur pool -> 1x1 convolution) are full precision.

Strided float convolutions pad as TF's ``"same"`` does (:func:`same_padding`): on an even size
the extra row and column go to the bottom and right only. The padding is decided from the input
size a block is built for, so a network reproduces larq's arithmetic at its ``input_size``; it
runs at any other size too. Shared arguments (``norm_layer``, ``norm_kwargs``, ``activation``,
``clip_threshold``) are those of :mod:`bmxnet_ext.binary.blocks`.
"""
import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn

from .blocks import _convolution, _norm, run_in_plain_layout

__all__ = ["same_padding", "BlurPoolKernel", "QuickNetStem", "QUICKNET_STEMS", "stem_output_size",
           "QuickNetBlock", "QuickNetTransition"]

# The binomial filters of anti-aliased pooling (Zhang, "Making Convolutional Networks
# Shift-Invariant Again", ICML 2019), by kernel size.
_BINOMIAL = {2: (1, 1), 3: (1, 2, 1), 5: (1, 4, 6, 4, 1)}


def same_padding(size, kernel, stride):
    """``(before, after)`` padding of TF's ``"same"`` on one axis of ``size``: the output has
    ``ceil(size / stride)`` positions and an odd total padding puts its extra one after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@mx.init.register
class BlurPoolKernel(mx.init.Initializer):
    """Fills a depthwise ``(C, 1, k, k)`` weight with the normalized binomial filter
    ``outer(b, b) / sum`` (``b`` = 1 1, 1 2 1 or 1 4 6 4 1 for ``k`` = 2, 3, 5), the fixed
    kernel of anti-aliased (blur) pooling. Registered as ``"blurpoolkernel"``."""

    def _init_weight(self, name, arr):
        if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[2] != arr.shape[3] or \
                arr.shape[2] not in _BINOMIAL:
            raise ValueError(f"BlurPoolKernel fills depthwise (C, 1, k, k) weights with k in "
                             f"{sorted(_BINOMIAL)}; {name} has shape {arr.shape}")
        row = np.array(_BINOMIAL[arr.shape[2]], np.float32)
        kernel = np.outer(row, row) / np.outer(row, row).sum()
        arr[:] = np.broadcast_to(kernel, arr.shape)


class _Pad2D(HybridBlock):
    """Zero padding of ``before`` rows / columns at the top / left and ``after`` at the bottom /
    right, for convolutions padded asymmetrically."""

    def __init__(self, before, after, **kwargs):
        super().__init__(**kwargs)
        self._pad_width = (0, 0, 0, 0, before, after, before, after)

    def hybrid_forward(self, F, x):
        return F.pad(x, mode="constant", constant_value=0, pad_width=self._pad_width)

    def __repr__(self):
        return f"{type(self).__name__}(pad_width={self._pad_width[4:6]})"


def _same_conv(channels, kernel, strides, size, in_channels, groups=1, **conv_kwargs):
    """Layers of a float convolution without bias padded as TF's ``"same"`` for inputs of
    ``size``: the convolution itself where the padding is symmetric, else a :class:`_Pad2D`
    first. Returns ``(layers, output size)``."""
    before, after = same_padding(size, kernel, strides)
    conv = nn.Conv2D(channels, kernel, strides=strides, padding=before if before == after else 0,
                     groups=groups, use_bias=False, in_channels=in_channels, **conv_kwargs)
    layers = [conv] if before == after else [_Pad2D(before, after), conv]
    return layers, -(-size // strides)


def _quicknet_stem(channels, size, norm_layer, norm_kwargs):
    # larq-zoo's stem_module: 3x3/2 conv to channels/4, BN, ReLU; 3x3/2 depthwise conv, BN
    # without scale and shift; 1x1 conv to channels, BN.
    if channels % 4:
        raise ValueError(f"the quicknet stem needs a width divisible by 4, got {channels}")
    quarter = channels // 4
    first, size = _same_conv(quarter, 3, 2, size, 3)
    depthwise, size = _same_conv(quarter, 3, 2, size, quarter, groups=quarter)
    return (first + [_norm(norm_layer, norm_kwargs, quarter), nn.Activation("relu")]
            + depthwise + [norm_layer(in_channels=quarter, center=False, scale=False,
                                      **(norm_kwargs or {}))]
            + [nn.Conv2D(channels, 1, use_bias=False, in_channels=quarter),
               _norm(norm_layer, norm_kwargs, channels)])


def _thumbnail_stem(channels, size, norm_layer, norm_kwargs):
    # small images: one 3x3 conv at full resolution, then BN (the first sign must see centred
    # values: QuickNet's blocks binarize the residual stream itself)
    return [nn.Conv2D(channels, 3, padding=1, use_bias=False, in_channels=3),
            _norm(norm_layer, norm_kwargs, channels)]


def _ceil_half(size):
    return -(-size // 2)


# name -> (layers factory, spatial size after the stem as a function of the input size)
QUICKNET_STEMS = {
    "quicknet": (_quicknet_stem, lambda size: _ceil_half(_ceil_half(size))),
    "thumbnail": (_thumbnail_stem, lambda size: size),
}


def _stem(name):
    if name not in QUICKNET_STEMS:
        raise ValueError(f"unknown QuickNet stem {name!r}; expected one of "
                         f"{sorted(QUICKNET_STEMS)}")
    return QUICKNET_STEMS[name]


def stem_output_size(name, input_size):
    """Height (= width) after the QuickNet stem ``name`` for a square input of ``input_size``."""
    return _stem(name)[1](input_size)


class QuickNetStem(nn.HybridSequential):
    """Full-precision input layers, ``(N, 3, S, S)`` -> ``(N, channels, S', S')``.

    Parameters
    ----------
    name : str
        ``"quicknet"`` (larq-zoo's: 3x3/2 conv to ``channels / 4``, BN, ReLU; 3x3/2 depthwise
        conv, BN without scale and shift; 1x1 conv to ``channels``, BN; ``S' = ceil(S / 4)``) or
        ``"thumbnail"`` (3x3 conv to ``channels``, stride 1, BN; ``S' = S``; for small images).
    channels : int
        Output width (the first section's width; divisible by 4 for ``"quicknet"``).
    input_size : int
        Input height (= width) the padding is computed for (see the module docstring).
    """

    def __init__(self, name="quicknet", channels=64, input_size=224, norm_layer=nn.BatchNorm,
                 norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        layers, self._output_size = _stem(name)
        self.stem_name, self.out_channels = name, channels
        with self.name_scope():
            self.add(*layers(channels, input_size, norm_layer, norm_kwargs))

    def output_size(self, input_size):
        """Height (= width) of the stem's output for a square input of ``input_size``."""
        return self._output_size(input_size)

    def hybrid_forward(self, F, x):
        return run_in_plain_layout(F, self._children.values(), x)


class QuickNetBlock(HybridBlock):
    """QuickNet's residual block: ``x + norm(relu(BinaryConv(sign(x))))``, width unchanged.

    The binary convolution is 3x3, stride 1, padded with +1 (larq's ``pad_values=1.0``) and
    returns the ±1 dot product (``offset=False``), which the ReLU clips at 0; the norm follows.
    With ``activation="relu"`` it is the full-precision twin ``x + norm(relu(conv(relu(x))))``.

    Parameters
    ----------
    channels : int
        Width of input and output.
    clip_threshold : float
        Gradient window of ``det_sign`` (larq's ``ste_sign`` with ``clip_value=1.25``).
    """

    def __init__(self, channels, activation="det_sign", clip_threshold=1.25,
                 norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = self.out_channels = channels
        with self.name_scope():
            self.conv = _convolution(channels, 3, 1, 1, 1, channels, activation, clip_threshold,
                                     offset=False, pad_value=1.0)
            self.norm = _norm(norm_layer, norm_kwargs, channels)

    def hybrid_forward(self, F, x):
        return x + self.norm(F.relu(self.conv(x)))


class QuickNetTransition(nn.HybridSequential):
    """Full-precision downsampling: ReLU -> MaxPool 2x2 stride 1 -> blur pool (fixed 3x3/2
    depthwise binomial filter, :class:`BlurPoolKernel`, not trained) -> 1x1 conv -> norm.

    ``(N, in_channels, S, S)`` -> ``(N, out_channels, S // 2, S // 2)``; ``S >= 2``.

    Parameters
    ----------
    in_channels, out_channels : int
        Widths before and after.
    input_size : int
        Height (= width) of its input where the network is built for (decides the blur pool's
        padding, see the module docstring).
    """

    def __init__(self, in_channels, out_channels, input_size, norm_layer=nn.BatchNorm,
                 norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        if input_size < 2:
            raise ValueError(f"QuickNetTransition needs inputs of at least 2x2, got {input_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        with self.name_scope():
            blur, _ = _same_conv(in_channels, 3, 2, input_size - 1, in_channels,
                                 groups=in_channels, weight_initializer=BlurPoolKernel())
            blur[-1].weight.grad_req = "null"
            self.add(nn.Activation("relu"), nn.MaxPool2D(pool_size=2, strides=1), *blur,
                     nn.Conv2D(out_channels, 1, use_bias=False, in_channels=in_channels),
                     _norm(norm_layer, norm_kwargs, out_channels))

    def hybrid_forward(self, F, x):
        return run_in_plain_layout(F, self._children.values(), x)
