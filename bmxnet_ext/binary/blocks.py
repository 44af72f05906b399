"""Building blocks of MeliusNet and its peers, defined once and imported by every zoo network.

Binary blocks (Bethge et al., "MeliusNet: Can Binary Neural Networks Achieve MobileNet-level
Accuracy?", 2020): :class:`BinaryUnit` (BN -> sign -> binary conv), :class:`DenseBlock`,
:class:`ImprovementBlock` and :class:`ResNetEBlock` (Bi-Real style shortcut per binary conv).
Full-precision blocks: :class:`Stem`, :class:`Transition` (with :class:`ChannelShuffle` for the
grouped variants) and :class:`Head`.

Every block takes its input channel count and builds all parameters with known shapes in
``__init__``, so imperative and hybridized runs agree from the first call. Shared arguments:

norm_layer : type
    Normalization block, called as ``norm_layer(in_channels=c, **norm_kwargs)``
    (default ``nn.BatchNorm``).
norm_kwargs : dict or None
    Extra arguments of ``norm_layer``.
activation : str
    Activation quantizer of the binary convolutions: ``"det_sign"`` or ``"approx_sign"``.
    ``"relu"`` builds the full-precision twin of the network: every binary convolution becomes
    ReLU -> float convolution (zero padding), everything else is unchanged.
clip_threshold : float
    Gradient window of ``det_sign``; MeliusNet trains with 1.3.
bits, bits_a : int
    1 (binary, default) or 2-8: DoReFa weights / activations rounded in [0, 1] in every binary
    convolution (BMXNet-v2's ``--bits`` / ``--bits-a``; training only, no packed form).
"""
import numbers

from mxnet.gluon import HybridBlock, nn

from .layers import BinaryConvolution

__all__ = ["BinaryUnit", "DenseBlock", "ImprovementBlock", "ChannelShuffle", "Transition",
           "Stem", "STEMS", "Head", "ResNetEBlock", "reduced_width", "resolve_stem",
           "check_input_size", "THUMBNAIL_MAX_INPUT", "FLOAT_ACTIVATION", "REDUCTION_RULES",
           "transition_width", "run_in_plain_layout"]

# The activation that turns binary units into their full-precision twins.
FLOAT_ACTIVATION = "relu"

# A stem name of None resolves to the thumbnail stem for inputs up to this size (CIFAR's 32,
# Tiny ImageNet's 64); larger inputs get the network's ImageNet stem.
THUMBNAIL_MAX_INPUT = 64


def _norm(norm_layer, norm_kwargs, channels):
    return norm_layer(in_channels=channels, **(norm_kwargs or {}))


def reduced_width(channels, fraction):
    """Width of a transition: ``round(channels * fraction / 32) * 32`` (DESIGN.md; Python's round).

    Raises ValueError when the result would be 0 channels.
    """
    width = int(round(channels * fraction / 32)) * 32
    if width < 32:
        raise ValueError(f"reduction {fraction!r} of {channels} channels rounds to {width} "
                         "channels; a transition needs at least 32")
    return width


def _reduced_width_bmxnet_v2(channels, divisor):
    # BMXNet-v2's rule: floor(channels // divisor) first, then round to 32 (Python's round).
    if not divisor > 0:
        raise ValueError(f"a BMXNet-v2 reduction is a positive divisor, got {divisor!r}")
    width = int(round((channels // divisor) / 32)) * 32
    if width < 32:
        raise ValueError(f"reduction divisor {divisor!r} of {channels} channels rounds to "
                         f"{width} channels; a transition needs at least 32")
    return width


# How a transition's ``reduction`` becomes its width.
REDUCTION_RULES = {"fraction": reduced_width, "bmxnet_v2": _reduced_width_bmxnet_v2}


def transition_width(channels, reduction, rule="fraction"):
    """Width of a transition from ``channels`` by ``rule``:

    ``"fraction"`` (ours, :func:`reduced_width`): ``reduction`` is the out/in fraction and the
    width ``round(channels * reduction / 32) * 32``.
    ``"bmxnet_v2"`` (BMXNet-v2's ``--reduction``): ``reduction`` is a divisor and the width
    ``round((channels // reduction) / 32) * 32``; the floor comes first, so e.g. 736 channels
    at 2.7 give 256 here and 288 with ``"fraction"`` at 1 / 2.7.
    """
    if rule not in REDUCTION_RULES:
        raise ValueError(f"unknown reduction rule {rule!r}; expected one of "
                         f"{sorted(REDUCTION_RULES)}")
    return REDUCTION_RULES[rule](channels, reduction)


def _convolution(channels, kernel_size, strides, padding, dilation, in_channels, activation,
                 clip_threshold, bits=1, bits_a=1, offset=True, pad_value=None):
    """A BinaryConvolution, or with ``activation="relu"`` its full-precision twin ReLU -> conv
    (zero padding; ``offset`` and ``pad_value`` concern the binary form only)."""
    if activation != FLOAT_ACTIVATION:
        return BinaryConvolution(channels, kernel_size, strides=strides, padding=padding,
                                 dilation=dilation, in_channels=in_channels,
                                 activation=activation, clip_threshold=clip_threshold,
                                 offset=offset, pad_value=pad_value, bits=bits, bits_a=bits_a)
    twin = nn.HybridSequential(prefix="")
    twin.add(nn.Activation("relu"),
             nn.Conv2D(channels, kernel_size, strides=strides, padding=padding,
                       dilation=dilation, use_bias=False, in_channels=in_channels))
    return twin


class BinaryUnit(HybridBlock):
    """``BinaryConvolution(sign(norm(x)))``: the binary unit of MeliusNet and BinaryDenseNet.

    Input ``(N, in_channels, H, W)``, output ``(N, channels, H', W')``; 3x3, stride 1, padding 1
    (with -1 values) and no bias by default. With ``activation="relu"`` it is the
    full-precision unit ``conv(relu(norm(x)))``. Other arguments: see the module docstring.
    """

    def __init__(self, in_channels, channels, kernel_size=3, strides=1, padding=1, dilation=1,
                 activation="det_sign", clip_threshold=1.3, norm_layer=nn.BatchNorm,
                 norm_kwargs=None, bits=1, bits_a=1, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.norm = _norm(norm_layer, norm_kwargs, in_channels)
            self.conv = _convolution(channels, kernel_size, strides, padding, dilation,
                                     in_channels, activation, clip_threshold, bits, bits_a)

    def hybrid_forward(self, F, x):
        return self.conv(self.norm(x))


class DenseBlock(HybridBlock):
    """``concat([x, BinaryUnit(x)])``: grows ``in_channels`` to ``in_channels + growth_rate``.

    Parameters
    ----------
    in_channels : int
        Channels of the input.
    growth_rate : int
        Filters of the binary convolution (MeliusNet: 64).
    dilation : int
        Dilation of the 3x3 binary convolution (padding follows it).
    """

    def __init__(self, in_channels, growth_rate=64, dilation=1, **unit_kwargs):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels + growth_rate
        with self.name_scope():
            self.unit = BinaryUnit(in_channels, growth_rate, padding=dilation, dilation=dilation,
                                   **unit_kwargs)

    def hybrid_forward(self, F, x):
        return F.concat(x, self.unit(x), dim=1)


class ImprovementBlock(HybridBlock):
    """Adds ``BinaryUnit(x)`` to the last ``growth_rate`` channels of ``x`` only.

    The first ``in_channels - growth_rate`` channels pass through unchanged, so the block maps
    ``(N, c + 64, H, W)`` to the same shape and improves the features the preceding
    :class:`DenseBlock` added. Arguments as for :class:`DenseBlock`.
    """

    def __init__(self, in_channels, growth_rate=64, dilation=1, **unit_kwargs):
        super().__init__()
        if in_channels <= growth_rate:
            raise ValueError(f"an ImprovementBlock needs more input channels ({in_channels}) "
                             f"than it improves (growth_rate={growth_rate})")
        self.in_channels = self.out_channels = in_channels
        self._kept = in_channels - growth_rate
        with self.name_scope():
            self.unit = BinaryUnit(in_channels, growth_rate, padding=dilation, dilation=dilation,
                                   **unit_kwargs)

    def hybrid_forward(self, F, x):
        kept = F.slice_axis(x, axis=1, begin=0, end=self._kept)
        improved = F.slice_axis(x, axis=1, begin=self._kept, end=None) + self.unit(x)
        return F.concat(kept, improved, dim=1)


class ChannelShuffle(HybridBlock):
    """ShuffleNet's channel shuffle: ``(N, g*k, H, W)`` -> channel ``j*g + i`` = input ``i*k + j``.

    Parameters
    ----------
    groups : int
        Number of groups ``g`` (MeliusNet A/B/C: 16).
    channels : int
        Input channels, checked here to be a multiple of ``groups``.
    """

    def __init__(self, groups, channels, **kwargs):
        super().__init__(**kwargs)
        if groups < 1 or channels % groups:
            raise ValueError(f"ChannelShuffle: groups={groups} must divide channels={channels}")
        self.groups = groups

    def hybrid_forward(self, F, x):
        x = F.reshape(x, shape=(0, -4, self.groups, -1, -2))  # (N, g, k, H, W)
        x = F.swapaxes(x, 1, 2)
        return F.reshape(x, shape=(0, -3, -2))

    def __repr__(self):
        return f"{type(self).__name__}(groups={self.groups})"


class Transition(nn.HybridSequential):
    """Full-precision downsampling: norm -> MaxPool 2x2/2 -> ReLU -> [shuffle] -> 1x1 conv.

    Parameters
    ----------
    in_channels, out_channels : int
        Widths before and after (``out_channels`` from the spec table or :func:`reduced_width`).
    groups : int
        Groups of the 1x1 convolution (no bias). With ``groups > 1`` a :class:`ChannelShuffle`
        of ``shuffle_groups`` groups precedes it (MeliusNet A, C: 4 groups; B: 2).
    """

    def __init__(self, in_channels, out_channels, groups=1, shuffle_groups=16,
                 norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"Transition: groups={groups} must divide in_channels="
                             f"{in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        with self.name_scope():
            self.add(_norm(norm_layer, norm_kwargs, in_channels),
                     nn.MaxPool2D(pool_size=2, strides=2),
                     nn.Activation("relu"))
            if groups > 1:
                self.add(ChannelShuffle(shuffle_groups, in_channels))
            self.add(nn.Conv2D(out_channels, kernel_size=1, groups=groups, use_bias=False,
                               in_channels=in_channels))


def _conv_norm_relu(channels, kernel_size, strides, padding, groups, in_channels, norm_layer,
                    norm_kwargs):
    return [nn.Conv2D(channels, kernel_size, strides=strides, padding=padding, groups=groups,
                      use_bias=False, in_channels=in_channels),
            _norm(norm_layer, norm_kwargs, channels),
            nn.Activation("relu")]


def _grouped_stem(norm_layer, norm_kwargs):
    # MeliusNet's stem: three 3x3 convs, the last two grouped, instead of one 7x7 conv.
    return (_conv_norm_relu(32, 3, 2, 1, 1, 3, norm_layer, norm_kwargs)
            + _conv_norm_relu(32, 3, 1, 1, 4, 32, norm_layer, norm_kwargs)
            + _conv_norm_relu(64, 3, 1, 1, 8, 32, norm_layer, norm_kwargs)
            + [nn.MaxPool2D(pool_size=3, strides=2, padding=1)])


def _imagenet_stem(norm_layer, norm_kwargs):
    return (_conv_norm_relu(64, 7, 2, 3, 1, 3, norm_layer, norm_kwargs)
            + [nn.MaxPool2D(pool_size=3, strides=2, padding=1)])


def _thumbnail_stem(norm_layer, norm_kwargs):
    return [nn.Conv2D(64, 3, strides=1, padding=1, use_bias=False, in_channels=3)]


# name -> (layers factory, spatial size after the stem as a function of the input size)
STEMS = {
    "grouped_stem": (_grouped_stem, lambda size: (((size + 1) // 2) + 1) // 2),
    "imagenet": (_imagenet_stem, lambda size: (((size + 1) // 2) + 1) // 2),
    "thumbnail": (_thumbnail_stem, lambda size: size),
}


class Stem(nn.HybridSequential):
    """Full-precision input layers, ``(N, 3, S, S)`` -> ``(N, 64, S', S')``.

    Parameters
    ----------
    name : str
        ``"grouped_stem"`` (MeliusNet's: 3x3/2 conv 32, BN, ReLU; 3x3 conv 32 in 4 groups, BN,
        ReLU; 3x3 conv 64 in 8 groups, BN, ReLU; MaxPool 3x3/2), ``"imagenet"`` (7x7/2 conv 64,
        BN, ReLU, MaxPool 3x3/2) or ``"thumbnail"`` (one 3x3 conv 64, stride 1, for 32x32
        inputs). ``S' = S / 4`` for the first two and ``S`` for the thumbnail stem.
    """

    out_channels = 64

    def __init__(self, name="grouped_stem", norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        if name not in STEMS:
            raise ValueError(f"unknown stem {name!r}; expected one of {sorted(STEMS)}")
        self.stem_name = name
        layers, self._output_size = STEMS[name]
        with self.name_scope():
            self.add(*layers(norm_layer, norm_kwargs))

    def output_size(self, input_size):
        """Height (= width) of the stem's output for a square input of ``input_size``."""
        return self._output_size(input_size)

    def hybrid_forward(self, F, x):
        return run_in_plain_layout(F, self._children.values(), x)


def run_in_plain_layout(F, layers, x):
    """Runs ``layers`` in sequence, reordering the output of each grouped convolution with few
    input channels per group to plain NCHW.

    MXNet 1.9.1's oneDNN gives a grouped convolution with 4 input channels per group an output
    memory format on which BatchNorm and pooling run ~25x slower (the grouped stem at 224x224:
    77 ms instead of 4 ms on one core). A no-op reshape reorders it; the values are untouched.
    """
    for layer in layers:
        x = layer(x)
        if (isinstance(layer, nn.Conv2D) and layer._kwargs["num_group"] > 1
                and layer._in_channels // layer._kwargs["num_group"] < 8):
            x = F.reshape(x, shape=(0, 0, 0, 0))
    return x


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def resolve_stem(stem, input_size, default):
    """The stem name to build: ``stem`` if given, else ``"thumbnail"`` for inputs up to
    :data:`THUMBNAIL_MAX_INPUT` pixels and ``default`` for larger ones. Raises ValueError
    unless ``input_size`` is a positive integer."""
    _positive_int(input_size, "input_size")
    if stem is not None:
        return stem
    return "thumbnail" if input_size <= THUMBNAIL_MAX_INPUT else default


def check_input_size(input_size, stem, feature_size, network):
    """Raises ValueError when the feature map of ``network`` vanishes for ``input_size``.

    ``feature_size(size)`` is the height of the last feature map (< 1 when it vanishes); the
    message names the smallest input size that works.
    """
    if feature_size(input_size) >= 1:
        return
    smallest = next((size for size in range(1, 4097) if feature_size(size) >= 1), None)
    hint = f"the smallest input it takes is {smallest}" if smallest else "use a larger input"
    if stem != "thumbnail":
        hint += " (or stem='thumbnail' for small images)"
    raise ValueError(f"input_size={input_size} is too small for {network} with the {stem} stem "
                     f"(the feature map vanishes): {hint}")


class Head(HybridBlock):
    """Full-precision classifier: norm -> ReLU -> global average pool -> Dense(classes) with bias.

    ``(N, in_channels, H, W)`` -> ``(N, classes)``; the classifier is ``self.output``.
    ``norm_layer=None`` leaves the norm out (QuickNet's head: ReLU -> pool -> Dense).
    """

    def __init__(self, in_channels, classes, norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        _positive_int(classes, "classes")
        super().__init__(**kwargs)
        with self.name_scope():
            self.norm = None if norm_layer is None else _norm(norm_layer, norm_kwargs,
                                                              in_channels)
            self.pool = nn.GlobalAvgPool2D()
            self.output = nn.Dense(classes, in_units=in_channels)

    def hybrid_forward(self, F, x):
        if self.norm is not None:
            x = self.norm(x)
        return self.output(self.pool(F.relu(x)))


class ResNetEBlock(HybridBlock):
    """One binary 3x3 convolution with its own shortcut (ResNetE / Bi-Real Net).

    ``y = norm(BinaryConvolution(x)) + shortcut(x)``: the sign is applied inside the binary
    convolution, the norm follows it (Bi-Real order) so the residual stream adds like-scaled
    terms. When the block changes the width or strides, the shortcut is full precision:
    AvgPool 2x2/2 (``ceil_mode`` so odd sizes match the strided conv) -> 1x1 conv (no bias) ->
    norm, as in Bi-Real Net and ResNetE; otherwise the identity.

    Parameters
    ----------
    in_channels, channels : int
        Widths before and after.
    strides : int
        1, or 2 for the first block of a downsampling stage.
    """

    def __init__(self, in_channels, channels, strides=1, activation="det_sign",
                 clip_threshold=1.3, norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"ResNetEBlock: strides must be 1 or 2, got {strides!r}")
        self.in_channels, self.out_channels = in_channels, channels
        with self.name_scope():
            self.conv = _convolution(channels, 3, strides, 1, 1, in_channels, activation,
                                     clip_threshold)
            self.norm = _norm(norm_layer, norm_kwargs, channels)
            self.downsample = None
            if strides != 1 or in_channels != channels:
                self.downsample = nn.HybridSequential()
                if strides != 1:
                    self.downsample.add(nn.AvgPool2D(pool_size=2, strides=2, ceil_mode=True))
                self.downsample.add(nn.Conv2D(channels, 1, use_bias=False,
                                              in_channels=in_channels),
                                    _norm(norm_layer, norm_kwargs, channels))

    def hybrid_forward(self, F, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.norm(self.conv(x)) + shortcut
