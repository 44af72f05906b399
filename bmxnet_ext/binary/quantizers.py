"""Sign quantizers with surrogate gradients, as Gluon HybridBlocks.

The math lives in pure functions of ``F`` (``mx.nd`` or ``mx.sym``); a small HybridBlock class
wraps each with its hyper-parameters, and :func:`get` resolves a string alias to an instance.

Besides the 1-bit signs, the multi-bit quantizers BMXNet-v2 offers for training (its ``bits`` /
``bits_a``): :class:`DoReFaWeights` (weights, 2-8 bits) and :class:`RoundActivation`
(activations, 2-8 bits). They have no packed inference form: ``convert_to_xnor`` refuses them.

Sign convention (shared with the C++ kernels): ``sign(x) = +1 if x >= 0 else -1``, so 0 and -0 give
+1. NaN gives -1 and receives no gradient, exactly as the packed inference kernels treat it
(bit = ``x >= 0`` is false for NaN), so training and packed graphs agree on every input.
"""
from mxnet.gluon import HybridBlock

__all__ = ["sign", "det_sign", "approx_sign", "round_activation", "dorefa_weights", "Quantizer",
           "DetSign", "ApproxSign", "RoundActivation", "DoReFaWeights", "get", "QUANTIZERS"]


def sign(F, x):
    """``+1`` where ``x >= 0`` (0 included), ``-1`` elsewhere (NaN included). No gradient."""
    return (x >= 0) * 2 - 1


# Stand-in for "no clipping": finite, far beyond any activation or latent weight.
_NO_CLIP = 1e30


def _finite_or_zero(F, x):
    # NaN -> 0 with no gradient, so no NaN reaches a surrogate's value or its backward pass.
    return F.where(x == x, x, F.zeros_like(x))


def _with_surrogate_gradient(F, forward, surrogate):
    # forward + (s - stop_gradient(s)) has exactly the value of `forward` (s - s == 0 for any
    # finite s) and the gradient of `s`. Surrogates are built from finite inputs only.
    return forward + (surrogate - F.BlockGrad(surrogate))


def det_sign(F, x, clip_threshold=1.0):
    """Forward :func:`sign`; backward straight-through, cancelled where ``|x| > clip_threshold``.

    ``clip_threshold=None`` passes the gradient everywhere (the identity gradient used for
    latent binary weights); ±inf and NaN get no gradient.
    """
    limit = _NO_CLIP if clip_threshold is None else clip_threshold
    surrogate = F.clip(_finite_or_zero(F, x), -limit, limit)
    return _with_surrogate_gradient(F, sign(F, x), surrogate)


def approx_sign(F, x):
    """Forward :func:`sign`; backward ``2 - 2|x|`` inside ``|x| <= 1``, 0 outside (Bi-Real Net).

    The surrogate ``2c - c|c|`` with ``c = clip(x, -1, 1)`` has exactly that derivative.
    """
    c = F.clip(_finite_or_zero(F, x), -1.0, 1.0)
    return _with_surrogate_gradient(F, sign(F, x), 2 * c - c * F.abs(c))


def _quantize_unit(F, u, bits):
    # u in [0, 1] -> nearest of the 2**bits levels k / (2**bits - 1), ties away from 0 (F.round).
    levels = 2 ** bits - 1
    return F.round(u * levels) / levels


def round_activation(F, x, bits):
    """``round(clip(x, 0, 1) * (2**bits - 1)) / (2**bits - 1)``: ``2**bits`` levels in [0, 1].

    Backward: straight-through inside ``0 <= x <= 1``, 0 outside (DoReFa-Net's activation
    quantizer, BMXNet-v2's ``bits_a > 1``). NaN maps to 0 with no gradient.
    """
    clipped = F.clip(_finite_or_zero(F, x), 0.0, 1.0)
    return _with_surrogate_gradient(F, _quantize_unit(F, clipped, bits), clipped)


def dorefa_weights(F, w, bits):
    """DoReFa-Net's weight quantizer: ``2 * q(u) - 1`` with ``u = tanh(w) / (2 max|tanh w|) +
    0.5`` and ``q`` the rounding of :func:`round_activation`, so values lie in [-1, 1] on
    ``2**bits`` levels.

    Backward: straight-through over the rounding, ``d/dw (2u - 1) = (1 - tanh(w)**2) / M`` with
    ``M = max|tanh w|`` over the whole tensor, treated as a constant (no gradient flows through
    the maximum; it is floored at 1e-12 so an all-zero tensor does not divide by zero).
    """
    t = F.tanh(_finite_or_zero(F, w))
    scale = F.BlockGrad(F.maximum(F.max(F.abs(t)), 1e-12))
    u = F.broadcast_div(t, 2 * scale) + 0.5
    return _with_surrogate_gradient(F, 2 * _quantize_unit(F, u, bits) - 1, 2 * u - 1)


class Quantizer(HybridBlock):
    """Base of the quantizers: a parameter-free HybridBlock mapping a tensor to ``precision`` bits.

    Subclasses implement the forward value and surrogate gradient in ``hybrid_forward`` through a
    pure function of ``F``.
    """

    precision = 1

    def __init__(self, **kwargs):
        super().__init__(**kwargs)


class DetSign(Quantizer):
    """Deterministic sign with a straight-through estimator (Courbariaux et al.; BMXNet-v2).

    Parameters
    ----------
    clip_threshold : float or None
        The gradient passes where ``|x| <= clip_threshold`` and is 0 elsewhere (gradient
        cancelling). MeliusNet trains with 1.3. ``None`` lets the gradient pass everywhere.
    """

    def __init__(self, clip_threshold=1.0, **kwargs):
        super().__init__(**kwargs)
        if clip_threshold is not None and not clip_threshold > 0:
            raise ValueError(f"clip_threshold must be a positive number or None, "
                             f"got {clip_threshold!r}")
        self.clip_threshold = clip_threshold

    def hybrid_forward(self, F, x):
        return det_sign(F, x, self.clip_threshold)

    def __repr__(self):
        return f"{type(self).__name__}(clip_threshold={self.clip_threshold})"


class ApproxSign(Quantizer):
    """Sign with the piecewise-polynomial gradient ``2 - 2|x|`` of Bi-Real Net (Liu et al., 2018)."""

    def hybrid_forward(self, F, x):
        return approx_sign(F, x)

    def __repr__(self):
        return f"{type(self).__name__}()"


def _check_bits(bits, name):
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"{name} must be an integer from 2 to 8 (1 bit is det_sign / "
                         f"approx_sign), got {bits!r}")
    return bits


class _LevelsQuantizer(Quantizer):
    """A quantizer onto ``2**bits`` levels; ``bits`` is 2 to 8 (its ``precision``)."""

    def __init__(self, bits, **kwargs):
        super().__init__(**kwargs)
        self.precision = _check_bits(bits, "bits")

    def __repr__(self):
        return f"{type(self).__name__}(bits={self.precision})"


class RoundActivation(_LevelsQuantizer):
    """Activations on ``2**bits`` levels in [0, 1], straight-through inside [0, 1]
    (:func:`round_activation`; DoReFa-Net, Zhou et al. 2016; BMXNet-v2's ``bits_a``)."""

    def hybrid_forward(self, F, x):
        return round_activation(F, x, self.precision)


class DoReFaWeights(_LevelsQuantizer):
    """Weights on ``2**bits`` levels in [-1, 1] (:func:`dorefa_weights`; DoReFa-Net, Zhou et al.
    2016; BMXNet-v2's ``bits``)."""

    def hybrid_forward(self, F, w):
        return dorefa_weights(F, w, self.precision)


QUANTIZERS = {"det_sign": DetSign, "approx_sign": ApproxSign, "round": RoundActivation,
              "dorefa": DoReFaWeights}


def get(identifier, clip_threshold=1.0, bits=None):
    """Resolves a quantizer.

    Parameters
    ----------
    identifier : str, Quantizer or None
        A name in :data:`QUANTIZERS` (``"det_sign"``, ``"approx_sign"``, ``"round"``,
        ``"dorefa"``), a :class:`Quantizer` instance (returned as is) or ``None`` (no
        quantization; returns ``None``).
    clip_threshold : float or None
        Passed to ``det_sign``; ``approx_sign`` has its fixed window ``|x| <= 1`` and ignores it.
    bits : int, optional
        Required by the multi-bit ``"round"`` (activations) and ``"dorefa"`` (weights): 2 to 8.
    """
    if identifier is None or isinstance(identifier, Quantizer):
        return identifier
    if isinstance(identifier, str):
        if identifier not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {identifier!r}; expected one of "
                             f"{sorted(QUANTIZERS)} or None")
        if identifier == "det_sign":
            return DetSign(clip_threshold=clip_threshold)
        if identifier in ("round", "dorefa"):
            if bits is None:
                raise ValueError(f"quantizer {identifier!r} needs bits (2 to 8)")
            return QUANTIZERS[identifier](bits)
        return QUANTIZERS[identifier]()
    raise TypeError(f"a quantizer must be a name, a Quantizer or None, got "
                    f"{type(identifier).__name__}")
