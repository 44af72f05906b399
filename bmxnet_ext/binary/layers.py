"""Binary Gluon layers: QActivation, QConv2D, QDense, the BinaryConvolution unit and XNOR-Net's
ScaledBinaryConvolution.

A quantized layer with both quantizers ``None`` *is* the float layer: QConv2D subclasses
``nn.Conv2D`` and QDense subclasses ``nn.Dense``, with the same parameter names, so a float
checkpoint loads into a binary network and back.

Output convention of a binary layer (``weight_quantizer`` set): with ``K = in_channels / groups * kh
* kw`` inputs per output (``in_units`` for QDense), the ±1 dot product ``dot`` is returned as the
number of agreeing bits ``(dot + K) / 2`` (``offset=True``, the default), as ``dot``
(``offset=False``) or as ``dot * mean(|W|)`` per output channel (``scaling=True``). All three are
what the packed xnor-popcount kernels compute exactly.

Multi-bit training (BMXNet-v2's ``bits`` / ``bits_a``): ``bits=2..8`` quantizes weights with
DoReFa, ``bits_a=2..8`` activations by rounding in [0, 1] (:mod:`bmxnet_ext.binary.quantizers`).
Such layers return the plain convolution / product of the quantized values (no offset; scaling
still applies), and have no packed form: ``convert_to_xnor`` refuses them.
"""
from mxnet.gluon import HybridBlock, nn

from . import quantizers

__all__ = ["QActivation", "QConv2D", "QDense", "BinaryConvolution", "ScaledBinaryConvolution",
           "precision_of"]


def precision_of(quantizer):
    """Bits of a quantizer (1 for the signs), None for no quantizer (float)."""
    return None if quantizer is None else quantizer.precision


def _multibit(identifier, bits, default, name, alias, **get_kwargs):
    """The quantizer for ``identifier``, or with ``bits`` 2-8 the multi-bit ``alias``."""
    if bits is None or bits == 1:
        return quantizers.get(identifier, **get_kwargs)
    if identifier not in (default, None):
        raise ValueError(f"give either {name} or bits={bits}, not both ({name}={identifier!r})")
    return quantizers.get(alias, bits=bits)


def _pair(value, name):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _check_pad_value(pad_value, multibit):
    if pad_value in (-1, 1) or (pad_value == 0 and multibit):
        return
    raise ValueError(f"pad_value must be -1 or +1 (the packed kernels are exact only for ±1 "
                     f"taps; 0 only for multi-bit layers), got {pad_value!r}")


class QActivation(HybridBlock):
    """Binarizes activations: ``sign(x)`` forward with a surrogate gradient.

    Parameters
    ----------
    method : str or Quantizer
        ``"det_sign"`` (straight-through, gradient cancelled outside ``|x| <= clip_threshold``) or
        ``"approx_sign"`` (Bi-Real's ``2 - 2|x|``), see :mod:`bmxnet_ext.quantizers`.
    clip_threshold : float
        Gradient window of ``det_sign``; MeliusNet uses 1.3. Ignored by ``approx_sign``.
    bits : int
        1 (default: ``method``) or 2-8: activations rounded to ``2**bits`` levels in [0, 1] with
        a straight-through gradient (BMXNet-v2's ``QActivation(bits=bits_a)``).
    """

    def __init__(self, method="det_sign", clip_threshold=1.0, bits=1, **kwargs):
        super().__init__(**kwargs)
        if method is None:
            raise ValueError("QActivation needs a quantizer; use no block at all for float")
        with self.name_scope():
            self.quantizer = _multibit(method, bits, "det_sign", "method", "round",
                                       clip_threshold=clip_threshold)

    def hybrid_forward(self, F, x):
        return self.quantizer(x)


class _BinaryWeightsMixin:
    """Shared set-up of QConv2D and QDense: quantizers, output convention, no weight decay."""

    def _setup_quantization(self, input_quantizer, weight_quantizer, offset, scaling, fan_in,
                            bits=None, bits_a=None):
        with self.name_scope():
            self.input_quantizer = _multibit(input_quantizer, bits_a, None, "input_quantizer",
                                             "round")
            # Latent weights take the identity gradient: no cancelling window.
            self.weight_quantizer = _multibit(weight_quantizer, bits, "det_sign",
                                              "weight_quantizer", "dorefa", clip_threshold=None)
        self.binary = self.weight_quantizer is not None
        # Multi-bit values are no ±1 signs: (dot + K) / 2 would mean nothing.
        self.multibit = any((precision_of(q) or 1) > 1
                            for q in (self.input_quantizer, self.weight_quantizer))
        self.offset = bool(offset) and not self.multibit
        self.scaling = bool(scaling)
        self.fan_in = fan_in
        if self.binary:
            if fan_in <= 0 and self.offset and not self.scaling:
                raise ValueError(f"{type(self).__name__} with binary weights needs its input size "
                                 "(in_channels / in_units) to compute the offset (dot + K) / 2")
            # Latent binary weights are only signs: decay would just shrink them towards 0.
            self.weight.wd_mult = 0.0

    def _binary_output(self, F, y, weight, reduce_axes, bias, bias_shape):
        if self.scaling:
            alpha = F.mean(F.abs(weight), axis=reduce_axes)
            y = F.broadcast_mul(y, alpha.reshape(bias_shape))
        elif self.offset:
            y = (y + self.fan_in) * 0.5
        if bias is not None:
            y = F.broadcast_add(y, bias.reshape(bias_shape))
        return y


class QConv2D(_BinaryWeightsMixin, nn.Conv2D):
    """2-D convolution with binary weights (and optionally binary inputs), NCHW.

    Takes every argument of ``nn.Conv2D`` (``channels``, ``kernel_size``, ``strides``, ``padding``,
    ``dilation``, ``groups``, ``in_channels``, ``use_bias``, initializers, ``prefix``/``params``).

    Parameters
    ----------
    input_quantizer, weight_quantizer : str, Quantizer or None
        Quantizers for input and weights (see :func:`bmxnet_ext.quantizers.get`). With both None
        the layer computes exactly ``nn.Conv2D``.
    offset : bool
        Binary layers return ``(dot + K) / 2``, ``K = in_channels / groups * kh * kw``; False
        returns the ±1 dot product.
    scaling : bool
        Multiply each output channel by ``mean(|W|)`` of its latent weights (XNOR-Net); the
        offset is not applied then.
    pad_value : float
        Value of the padding of a binary layer, applied before the convolution: -1 (default,
        BMXNet-v2's choice: every tap stays ±1, so packed kernels are exact), +1, or 0 (the
        default for multi-bit inputs in [0, 1]; no packed form). Float layers pad with 0 as
        ``nn.Conv2D`` does.
    in_channels : int
        Required for binary layers (``K`` is computed here, not lazily on the first call).
    bits, bits_a : int, optional
        2-8 replaces the weight quantizer by DoReFa / the input quantizer by rounding to
        ``2**bits_a`` levels (BMXNet-v2's ``QConv2D(bits=...)``); see the module docstring.
    """

    def __init__(self, channels, kernel_size, strides=(1, 1), padding=(0, 0), dilation=(1, 1),
                 groups=1, in_channels=0, use_bias=False, input_quantizer=None,
                 weight_quantizer="det_sign", offset=True, scaling=False, pad_value=None,
                 bits=None, bits_a=None, **kwargs):
        kernel_size = _pair(kernel_size, "kernel_size")
        padding = _pair(padding, "padding")
        if groups < 1 or channels % groups or (in_channels and in_channels % groups):
            raise ValueError(f"groups={groups} must divide channels={channels} and "
                             f"in_channels={in_channels}")
        super().__init__(channels, kernel_size, strides=strides, padding=padding,
                         dilation=dilation, groups=groups, in_channels=in_channels,
                         use_bias=use_bias, **kwargs)
        fan_in = (in_channels // groups) * kernel_size[0] * kernel_size[1]
        self._setup_quantization(input_quantizer, weight_quantizer, offset, scaling, fan_in,
                                 bits, bits_a)
        if pad_value is None:
            multibit_input = (precision_of(self.input_quantizer) or 1) > 1
            pad_value = 0.0 if multibit_input else -1.0
        _check_pad_value(pad_value, self.multibit)
        self.padding = padding
        self.pad_value = float(pad_value)
        # Binary layers pad explicitly with pad_value, so the convolution itself pads nothing.
        self._binary_kwargs = dict(self._kwargs, pad=(0, 0), no_bias=True)

    def hybrid_forward(self, F, x, weight, bias=None):
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if not self.binary:
            return super().hybrid_forward(F, x, weight, bias)
        if self.padding != (0, 0):
            ph, pw = self.padding
            x = F.pad(x, mode="constant", constant_value=self.pad_value,
                      pad_width=(0, 0, 0, 0, ph, ph, pw, pw))
        y = F.Convolution(x, self.weight_quantizer(weight), name="fwd", **self._binary_kwargs)
        return self._binary_output(F, y, weight, (1, 2, 3), bias, (1, -1, 1, 1))


class QDense(_BinaryWeightsMixin, nn.Dense):
    """Fully connected layer with binary weights (and optionally binary inputs).

    Takes every argument of ``nn.Dense`` (``units``, ``use_bias``, ``flatten``, ``in_units``,
    initializers); ``input_quantizer``, ``weight_quantizer``, ``offset``, ``scaling``, ``bits`` and
    ``bits_a`` are those of :class:`QConv2D`, with ``K = in_units``, which binary layers require.
    """

    def __init__(self, units, in_units=0, use_bias=False, input_quantizer=None,
                 weight_quantizer="det_sign", offset=True, scaling=False, bits=None,
                 bits_a=None, **kwargs):
        super().__init__(units, use_bias=use_bias, in_units=in_units, **kwargs)
        self._setup_quantization(input_quantizer, weight_quantizer, offset, scaling, in_units,
                                 bits, bits_a)

    def hybrid_forward(self, F, x, weight, bias=None):
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if not self.binary:
            return super().hybrid_forward(F, x, weight, bias)
        y = F.FullyConnected(x, self.weight_quantizer(weight), no_bias=True,
                             num_hidden=self._units, flatten=self._flatten, name="fwd")
        return self._binary_output(F, y, weight, (1,), bias, (1, -1))


class BinaryConvolution(HybridBlock):
    """The binary unit of MeliusNet: ``QConv2D(sign(x))`` with -1 padding and no bias.

    Parameters
    ----------
    channels, kernel_size, strides, padding, dilation, groups, in_channels
        As for :class:`QConv2D`; MeliusNet uses 64 filters, 3x3, stride 1, padding 1.
    activation : str
        Activation quantizer of :class:`QActivation` (``"det_sign"`` or ``"approx_sign"``).
    clip_threshold : float
        Gradient window of ``det_sign`` (MeliusNet: 1.3).
    offset, scaling
        As for :class:`QConv2D`.
    pad_value : float, optional
        As for :class:`QConv2D`; default -1, or 0 with multi-bit activations (``bits_a > 1``).
    bits, bits_a : int
        1 (binary, the default) or 2-8: DoReFa weights / activations rounded in [0, 1], as
        BMXNet-v2's ``bits`` and ``bits_a`` (training only; no packed form).
    """

    def __init__(self, channels, kernel_size=3, strides=1, padding=1, dilation=1, groups=1,
                 in_channels=0, activation="det_sign", clip_threshold=1.0, offset=True,
                 scaling=False, pad_value=None, bits=1, bits_a=1, **kwargs):
        super().__init__(**kwargs)
        multibit_input = bits_a not in (None, 1)
        if pad_value is None:
            pad_value = 0.0 if multibit_input else -1.0
        with self.name_scope():
            self.activation = QActivation(activation, clip_threshold=clip_threshold, bits=bits_a)
            self.conv = QConv2D(channels, kernel_size, strides=strides, padding=padding,
                                dilation=dilation, groups=groups, in_channels=in_channels,
                                use_bias=False, weight_quantizer="det_sign", offset=offset,
                                scaling=scaling, bits=bits)
        self.multibit = self.conv.multibit or multibit_input
        _check_pad_value(pad_value, self.multibit)
        # The activation is the conv's input quantizer here: its precision decides offset and
        # padding, which the conv alone cannot see.
        self.conv.pad_value = float(pad_value)
        if self.multibit:
            self.conv.offset = False

    def hybrid_forward(self, F, x):
        return self.conv(self.activation(x))


class ScaledBinaryConvolution(HybridBlock):
    """XNOR-Net's binary convolution with scaled input (Rastegari et al., 2016; BMXNet-v2's
    ``ScaledBinaryConv``): ``y = (sign(x) * sign(W)) . alpha . K``.

    ``alpha_o = mean|W_o|`` per output channel (``QConv2D(scaling=True)``) and ``K`` the
    average, over each output position's ``kernel_size`` window (zero padding counted), of the
    channel mean ``mean_c |x|``: one scale per output pixel, shape ``(N, 1, H', W')``. ``K`` is
    treated as a constant in the backward pass; the gradient reaches ``x`` through the sign.
    Training only: ``convert_to_xnor`` refuses it (the packed kernels compute no ``K``).

    Parameters
    ----------
    channels, kernel_size, strides, padding, in_channels
        As for :class:`QConv2D` (``in_channels`` required).
    activation, clip_threshold
        As for :class:`BinaryConvolution`.
    """

    def __init__(self, channels, kernel_size=3, strides=1, padding=1, in_channels=0,
                 activation="det_sign", clip_threshold=1.0, **kwargs):
        super().__init__(**kwargs)
        if not in_channels:
            raise ValueError("ScaledBinaryConvolution needs in_channels")
        self.multibit = False
        self._window = dict(kernel=_pair(kernel_size, "kernel_size"),
                            stride=_pair(strides, "strides"), pad=_pair(padding, "padding"))
        with self.name_scope():
            self.activation = QActivation(activation, clip_threshold=clip_threshold)
            self.conv = QConv2D(channels, kernel_size, strides=strides, padding=padding,
                                in_channels=in_channels, use_bias=False,
                                weight_quantizer="det_sign", scaling=True)

    def hybrid_forward(self, F, x):
        magnitude = F.BlockGrad(F.mean(F.abs(x), axis=1, keepdims=True))
        k = F.Pooling(magnitude, pool_type="avg", count_include_pad=True, **self._window)
        return F.broadcast_mul(self.conv(self.activation(x)), k)
