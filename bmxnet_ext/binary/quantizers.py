"""Sign quantizers with surrogate gradients, as Gluon HybridBlocks.

The math lives in pure functions of ``F`` (``mx.nd`` or ``mx.sym``); a small HybridBlock class
wraps each with its hyper-parameters, and :func:`get` resolves a string alias to an instance.

Sign convention (shared with the C++ kernels): ``sign(x) = +1 if x >= 0 else -1``, so 0 and -0 give
+1. NaN gives -1 and receives no gradient, exactly as the packed inference kernels treat it
(bit = ``x >= 0`` is false for NaN), so training and packed graphs agree on every input.
"""
from mxnet.gluon import HybridBlock

__all__ = ["sign", "det_sign", "approx_sign", "Quantizer", "DetSign", "ApproxSign", "get",
           "QUANTIZERS"]


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


QUANTIZERS = {"det_sign": DetSign, "approx_sign": ApproxSign}


def get(identifier, clip_threshold=1.0):
    """Resolves a quantizer.

    Parameters
    ----------
    identifier : str, Quantizer or None
        A name in :data:`QUANTIZERS` (``"det_sign"``, ``"approx_sign"``), a :class:`Quantizer`
        instance (returned as is) or ``None`` (no quantization; returns ``None``).
    clip_threshold : float or None
        Passed to ``det_sign``; ``approx_sign`` has its fixed window ``|x| <= 1`` and ignores it.
    """
    if identifier is None or isinstance(identifier, Quantizer):
        return identifier
    if isinstance(identifier, str):
        if identifier not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {identifier!r}; expected one of "
                             f"{sorted(QUANTIZERS)} or None")
        if identifier == "det_sign":
            return DetSign(clip_threshold=clip_threshold)
        return QUANTIZERS[identifier]()
    raise TypeError(f"a quantizer must be a name, a Quantizer or None, got "
                    f"{type(identifier).__name__}")
