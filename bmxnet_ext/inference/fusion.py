"""Fused packed forms for :func:`~bmxnet_ext.convert_to_xnor` (``fuse=True``).

Two rewrites remove the float work between binary convolutions, where a packed network otherwise
spends most of its time:

- **BatchNorm folded into the binarization.** ``sign(BN(x))`` of a channel is a step function of
  ``x``: BatchNorm in inference is monotone in ``x`` (every rounded operation is), so there is a
  float ``t`` with ``BN(x) >= 0`` exactly when ``x >= t`` (or ``x <= t`` for a negative scale). We
  find ``t`` by bisection over the float32 numbers, evaluating the network's own BatchNorm block,
  and store the bit rule ``sign * x >= bias`` per channel (``sign`` is +1, -1, or 0 for a
  constant channel). The result reproduces MXNet's BatchNorm on a plain NCHW input bit for bit;
  folding is checked on probe values (specials, the threshold's neighbours, random values) and
  a channel that does not fold exactly keeps its BatchNorm.
- **Stages in one operator.** A run of :class:`~bmxnet_ext.binary.blocks.DenseBlock` /
  :class:`~bmxnet_ext.binary.blocks.ImprovementBlock` (MeliusNet, BinaryDenseNet) becomes one
  ``bmx_binary_stage`` operator (:class:`XnorBinaryStage`): each unit's thresholds, packing and
  convolution run in the stage's output buffer, its outputs written where the concat or the add
  would put them. A :class:`~bmxnet_ext.binary.blocks.BinaryUnit` elsewhere becomes one
  ``bmx_binary_conv2d`` with thresholds.
- **QuickNet's residual block in one operator** (:class:`XnorResidualUnit`):
  ``x + BatchNorm(ReLU(binary_conv(x)))`` as a ``bmx_binary_conv2d`` whose output write applies
  the ReLU and the BatchNorm (the rounding of :class:`NormReluPool`) and adds ``x``; checked
  bit for bit on a probe before it replaces the block.
- **BatchNorm -> ReLU -> max pooling in one pass** (:class:`NormReluPool`, the stem's tail and
  the transitions' head; BatchNorm -> ReLU alone, as in the stem, is the same operator with a
  1x1 window): the same float values as MXNet's operators on a plain NCHW input, checked on a
  probe before it replaces them.
- **Grouped float convolutions with few input channels per group** (:class:`GroupedConv2D`,
  MeliusNet's grouped stem): one ``bmx_grouped_conv2d`` that sums as this machine's oneDNN does,
  used only where it equals MXNet's Convolution bit for bit on probes.
"""
import warnings
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from ..binary.blocks import BinaryUnit, DenseBlock, ImprovementBlock
from ..binary.layers import BinaryConvolution
from ..binary.quicknet_blocks import QuickNetBlock
from ..utils.blocktree import replace_child
from . import kernels
from .packed import (GroupedConv2D, NormReluPool, XnorBinaryStage, XnorConv2D,
                     XnorResidualUnit)

__all__ = ["fold_batchnorm", "fuse_binary_units"]

# Ordered keys of the float32 numbers (key order = value order, -0 just below +0).
_SIGN_BIT = 0x80000000
_ALL_BITS = 0xFFFFFFFF


def _keys(values):
    bits = np.asarray(values, np.float32).view(np.uint32).astype(np.int64)
    return np.where(bits & _SIGN_BIT, ~bits & _ALL_BITS, bits | _SIGN_BIT)


def _floats(keys):
    keys = np.asarray(keys, np.int64)
    bits = np.where(keys & _SIGN_BIT, keys ^ _SIGN_BIT, ~keys & _ALL_BITS)
    return bits.astype(np.uint32).view(np.float32)


_KEY_NEG_INF, _KEY_POS_INF = (int(k) for k in _keys([-np.inf, np.inf]))
_FLOAT_MAX = np.finfo(np.float32).max


_PROBES_PER_CALL = 255  # a search narrows each channel's interval 256-fold per BatchNorm call


def _positive(norm, values):
    """sign(norm(x)) == +1 for values (C, M): the block's own BatchNorm operator (what its
    hybrid_forward calls) on a plain NCHW input."""
    params = [p.data() for p in (norm.gamma, norm.beta, norm.running_mean, norm.running_var)]
    x = mx.nd.array(values[None, :, None, :], dtype="float32")
    out = mx.nd.BatchNorm(x, *params, **norm._kwargs).asnumpy()[0, :, 0, :]
    with np.errstate(invalid="ignore"):
        return out >= 0


def _probe_values(sign, bias, channels, seed=0):
    """Values where a wrong threshold would show: specials, the thresholds' float neighbours and
    random values on the scale of the thresholds."""
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, _FLOAT_MAX, -_FLOAT_MAX, 1e-45,
                         -1e-45, 1e-38, -1e-38, 1.0, -1.0], np.float32)
    t = np.where(sign == 0, 0.0, bias * np.where(sign == 0, 1, sign)).astype(np.float32)
    t = np.where(np.isfinite(t), t, 0.0).astype(np.float32)
    neighbours = _floats(_keys(t)[:, None] + np.arange(-3, 4)[None, :])
    rng = np.random.RandomState(seed)
    scale = np.maximum(np.abs(t), 1.0)[:, None]
    random = (t[:, None] + rng.standard_normal((channels, 24)) * scale).astype(np.float32)
    return np.concatenate([np.broadcast_to(specials, (channels, specials.size)), neighbours,
                           random], axis=1).astype(np.float32)


def fold_batchnorm(norm, channels):
    """Per-channel bit rules ``sign * x >= bias`` equal to ``BN(x) >= 0`` of ``norm``.

    Parameters
    ----------
    norm : mxnet.gluon.nn.BatchNorm
        An initialized BatchNorm over axis 1 (its running statistics are what inference uses).
    channels : int
        Its number of channels.

    Returns
    -------
    (sign, bias, exact) : float32 (C,), float32 (C,), bool (C,)
        ``exact[c]`` is False where channel ``c`` could not be folded exactly (then ``sign``,
        ``bias`` are meaningless there).
    """
    at = lambda value: np.full((channels, 1), value, np.float32)  # noqa: E731
    low = _positive(norm, at(-np.inf))[:, 0]
    high = _positive(norm, at(np.inf))[:, 0]
    increasing, decreasing = ~low & high, low & ~high
    # Search over the keys, 255 probes per channel and call: `up` (+1 for increasing channels,
    # -1 for decreasing ones) is 0 at lo and 1 at hi; the interval shrinks to adjacent keys: hi
    # is then the smallest value giving +1 (increasing), lo the largest (decreasing).
    lo = np.full(channels, _KEY_NEG_INF, np.int64)
    hi = np.full(channels, _KEY_POS_INF, np.int64)
    steps = np.arange(1, _PROBES_PER_CALL + 1, dtype=np.int64)[None, :]
    while np.any(hi - lo > 1):
        span = (hi - lo)[:, None]
        keys = np.clip(lo[:, None] + (span * steps + _PROBES_PER_CALL) // (_PROBES_PER_CALL + 1),
                       lo[:, None] + 1, np.maximum(hi[:, None] - 1, lo[:, None] + 1))
        positive = _positive(norm, _floats(keys))
        up = np.where(increasing[:, None], positive, ~positive)
        first_up = np.where(up.any(axis=1), keys[np.arange(channels), up.argmax(axis=1)], hi)
        last_down = np.where((~up).any(axis=1),
                             keys[np.arange(channels), up.shape[1] - 1 - (~up)[:, ::-1].argmax(axis=1)],
                             lo)
        hi, lo = np.minimum(hi, first_up), np.maximum(lo, last_down)
    sign = np.where(increasing, 1.0, np.where(decreasing, -1.0, 0.0)).astype(np.float32)
    bias = np.where(increasing, _floats(hi), -_floats(lo)).astype(np.float32)
    # Neither direction: a constant channel (zero scale: every finite x gives beta, infinities
    # give NaN), folded as 0 * x >= bias.
    finite_low = _positive(norm, at(-_FLOAT_MAX))[:, 0]
    finite_high = _positive(norm, at(_FLOAT_MAX))[:, 0]
    constant = ~low & ~high & (finite_low == finite_high)
    bias = np.where(constant, np.where(finite_high, 0.0, 1.0), bias).astype(np.float32)
    exact = increasing | decreasing | constant
    probe = _probe_values(sign, bias, channels)
    with np.errstate(invalid="ignore"):
        folded = sign[:, None] * probe >= bias[:, None]
    exact &= np.all(folded == _positive(norm, probe), axis=1)
    return sign, bias, exact


def _foldable_norm(norm, channels):
    """(sign, bias) of a BatchNorm that folds exactly, else None (with a warning)."""
    if (not isinstance(norm, nn.BatchNorm) or norm._kwargs.get("axis", 1) != 1
            or norm.fuse_relu):
        return None
    sign, bias, exact = fold_batchnorm(norm, channels)
    if not exact.all():
        warnings.warn(f"{norm.name}: {int((~exact).sum())} channel(s) do not fold into exact "
                      "thresholds; the unit keeps its BatchNorm", stacklevel=3)
        return None
    return sign, bias


def _stage_geometry(conv):
    """(growth, kernel, dilate, pad_value, offset) of a binary conv a stage can run, else None."""
    if not isinstance(conv, BinaryConvolution):
        return None
    layer = conv.conv
    kw = layer._kwargs
    kernel, dilate = tuple(kw["kernel"]), tuple(kw["dilate"])
    same = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilate))
    if (tuple(kw["stride"]) != (1, 1) or kw["num_group"] != 1 or layer.scaling
            or layer.bias is not None or tuple(layer.padding) != same
            or any(d * (k - 1) % 2 for k, d in zip(kernel, dilate))):
        return None
    return layer._channels, kernel, dilate, layer.pad_value, layer.offset


def _stage_from_blocks(blocks, prefix):
    """The :class:`XnorBinaryStage` of ``blocks`` (DenseBlock / ImprovementBlock), or None if one
    of them has no exact fused form (a stride, groups, scaling, a bias, another norm layer...)."""
    geometries = {_stage_geometry(b.unit.conv) for b in blocks}
    if len(geometries) != 1 or None in geometries:
        return None
    growth, kernel, dilate, pad_value, offset = geometries.pop()
    folds, channels = [], blocks[0].in_channels
    for block in blocks:
        fold = _foldable_norm(block.unit.norm, channels)
        if fold is None:
            return None
        folds.append(fold)
        channels += growth if isinstance(block, DenseBlock) else 0
    units = "".join("d" if isinstance(b, DenseBlock) else "i" for b in blocks)
    stage = XnorBinaryStage(blocks[0].in_channels, units, growth, kernel, dilate, pad_value, offset,
                prefix=prefix)
    stage.initialize()
    for i, (block, (sign, bias)) in enumerate(zip(blocks, folds)):
        layer = block.unit.conv.conv
        packed = kernels.pack_conv_weights(layer.weight.data().asnumpy())
        getattr(stage, f"unit{i}_packed_weight").set_data(mx.nd.array(packed, dtype="int32"))
        getattr(stage, f"unit{i}_threshold_sign").set_data(mx.nd.array(sign))
        getattr(stage, f"unit{i}_threshold_bias").set_data(mx.nd.array(bias))
    return stage


def _stageable(block):
    return (isinstance(block, (DenseBlock, ImprovementBlock))
            and isinstance(block.unit, BinaryUnit))


def _fused_unit(unit):
    """A BinaryUnit as one bmx_binary_conv2d with thresholds, or None."""
    if not isinstance(unit.conv, BinaryConvolution):
        return None
    fold = _foldable_norm(unit.norm, unit.conv.conv._in_channels)
    return None if fold is None else XnorConv2D.from_layer(unit.conv.conv, thresholds=fold)


def _fused_residual(block):
    """A QuickNet residual block as one bmx_binary_conv2d with its epilogue, or None."""
    conv = block.conv
    if not isinstance(conv, BinaryConvolution):
        return None
    return XnorResidualUnit.from_layers(XnorConv2D.from_layer(conv.conv), block.norm)


def _norm_relu_pool_at(children, i):
    """(NormReluPool, layers it replaces) for the longest run starting at children[i] that fuses
    (three layers, then two), or (None, 0)."""
    for width in (3, 2):
        block = NormReluPool.from_layers(children[i:i + width])
        if block is not None:
            return block, width
    return None, 0


def _replace_runs(sequential):
    """Replaces runs of dense / improvement blocks of a HybridSequential by stages,
    BatchNorm, ReLU and max pooling (or BatchNorm and ReLU) next to each other by a
    NormReluPool, and grouped convolutions with few channels per group by GroupedConv2D."""
    children = list(sequential._children.values())
    merged, fused, i = [], 0, 0
    while i < len(children):
        grouped = GroupedConv2D.from_layer(children[i])
        if grouped is not None:
            merged.append(grouped)
            i += 1
            continue
        norm_pool, width = _norm_relu_pool_at(children, i)
        if norm_pool is not None:
            merged.append(norm_pool)
            i += width
            continue
        j = i
        while j < len(children) and _stageable(children[j]):
            j += 1
        stage = (_stage_from_blocks(children[i:j], f"{children[i].prefix}xnorstage_")
                 if j > i else None)
        if stage is None:
            merged.append(children[i])
            i += 1
            continue
        merged.append(stage)
        fused += j - i
        i = j
    sequential._children = OrderedDict((str(k), child) for k, child in enumerate(merged))
    return fused


def fuse_binary_units(block):
    """Rewrites ``block`` in place (a network not yet converted): dense / improvement runs become
    :class:`XnorBinaryStage`, other BinaryUnits a thresholded :class:`XnorConv2D`. Returns the
    number of binary units fused."""
    fused = 0
    if isinstance(block, nn.HybridSequential):
        fused += _replace_runs(block)
    for key, child in list(block._children.items()):
        new = None
        if _stageable(child):
            new = _stage_from_blocks([child], f"{child.prefix}xnorstage_")
        elif isinstance(child, BinaryUnit):
            new = _fused_unit(child)
        elif isinstance(child, QuickNetBlock):
            new = _fused_residual(child)
        if new is None:
            fused += fuse_binary_units(child)
            continue
        replace_child(block, key, new)
        fused += 1
    return fused
