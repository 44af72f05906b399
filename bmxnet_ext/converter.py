"""Conversion of a trained binary network into its packed xnor inference form, and reloading it.

:func:`convert_to_xnor` replaces every binary unit whose input is binarized (a
:class:`~bmxnet_ext.layers.BinaryConvolution`, or a ``QConv2D`` / ``QDense`` with an input
quantizer) by a block that stores its weights as packed bits and calls the C++ ``bmx_*`` operator;
everything else is left as it was. The result is checked against the original network on a probe
input before it is returned: a converted network never computes something else.
"""
import copy
import json
import os
import threading
import types
import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import HybridBlock

from . import kernels, ops
from .layers import BinaryConvolution, QActivation, QConv2D, QDense
from .model_card import (ModelFileError, check_params_checksum, read_model_card,
                         read_params_file)

__all__ = ["XnorConv2D", "XnorDense", "ConversionError", "convert_to_xnor", "load_xnor"]

# Node names of the packed operators carry this hint: MXNet names the failing node when it cannot
# find an operator, so loading an exported packed model without `import bmxnet_ext` says what to do.
_OP_NODE_NAME = "fwd__load_with_import_bmxnet_ext"

# MXNet 1.9.1 deadlocks when several Python threads push operators at once: threads calling one
# hybridized block (even a float one with no bmx_* operator), or each its own non-hybridized
# network, end up waiting in WaitForVar for an operator the engine never runs. Networks returned
# here push a call's operators under this lock; the engine still computes calls concurrently, and
# waiting for the outputs (asnumpy, wait_to_read) happens outside it. Reentrant: a guarded
# network may call another.
_PUSH_LOCK = threading.RLock()


class ConversionError(ValueError):
    """A network (or one of its layers) cannot be converted to an exactly equal packed form."""


def _words(bits):
    return -(-bits // 32)


def _output_attrs(layer):
    """The output convention of a trained binary layer, as operator attributes."""
    return {"offset": layer.offset and not layer.scaling, "scaling": layer.scaling}


class XnorConv2D(HybridBlock):
    """Packed inference form of a binary convolution: ``sign`` of the float input, then
    xnor-popcount against packed weights, in one C++ operator (``bmx_binary_conv2d``).

    Built by :func:`convert_to_xnor` from a trained layer with :meth:`from_layer`; computes exactly
    what the training layer computes (±1 padding, ``(dot + K) / 2`` / ``dot`` / ``dot * scale``).
    Parameters: ``packed_weight`` (int32 bit words, layout of ``src/kernels/binary_conv.h``),
    ``scale`` (float32, only for scaled layers), ``bias`` (only if the layer had one) and
    ``threshold_sign`` / ``threshold_bias`` (float32, only with ``thresholds``: a BatchNorm before
    the sign folded in, bit = ``threshold_sign * x >= threshold_bias``, see
    :mod:`bmxnet_ext.fusion`).
    """

    def __init__(self, channels, in_channels, kernel_size, strides, padding, dilation, groups,
                 offset, scaling, pad_value, use_bias, thresholds=False, **kwargs):
        super().__init__(**kwargs)
        self._attrs = {"kernel": kernel_size, "stride": strides, "pad": padding,
                       "dilate": dilation, "num_filter": channels, "num_group": groups,
                       "in_channels": in_channels, "offset": offset, "scaling": scaling,
                       "pad_value": int(pad_value)}
        if thresholds:
            self._attrs["thresholds"] = True
        packed_shape = (channels,) + tuple(kernel_size) + (_words(in_channels // groups),)
        with self.name_scope():
            self.packed_weight = self.params.get("packed_weight", shape=packed_shape,
                                                 dtype="int32", grad_req="null",
                                                 init=mx.init.Zero())
            self.scale = (self.params.get("scale", shape=(channels,), grad_req="null",
                                          init=mx.init.One()) if scaling else None)
            self.bias = (self.params.get("bias", shape=(channels,), grad_req="null",
                                         init=mx.init.Zero()) if use_bias else None)
            self.threshold_sign, self.threshold_bias = (
                (self.params.get(f"threshold_{part}", shape=(in_channels,), grad_req="null",
                                 init=mx.init.Zero()) for part in ("sign", "bias"))
                if thresholds else (None, None))

    @classmethod
    def from_layer(cls, conv, thresholds=None):
        """Packs the weights of a trained binary ``QConv2D`` (its input binarized by it or by a
        preceding sign) into a new, initialized ``XnorConv2D``; ``thresholds``, a pair of
        float32 arrays ``(sign, bias)`` per input channel, replaces that sign by
        ``sign * x >= bias``."""
        kw = conv._kwargs
        block = cls(conv._channels, conv._in_channels, tuple(kw["kernel"]), tuple(kw["stride"]),
                    tuple(conv.padding), tuple(kw["dilate"]), kw["num_group"],
                    pad_value=conv.pad_value, use_bias=conv.bias is not None, prefix=conv.prefix,
                    thresholds=thresholds is not None, **_output_attrs(conv))
        block.initialize()
        latent = conv.weight.data().asnumpy()
        block.packed_weight.set_data(mx.nd.array(
            kernels.pack_conv_weights(latent, kw["num_group"]), dtype="int32"))
        if block.scale is not None:
            # the training graph's own reduction, so that the scale matches it to the last bit
            block.scale.set_data(mx.nd.mean(mx.nd.abs(conv.weight.data()), axis=(1, 2, 3)))
        if block.bias is not None:
            block.bias.set_data(conv.bias.data())
        if thresholds is not None:
            block.threshold_sign.set_data(mx.nd.array(thresholds[0]))
            block.threshold_bias.set_data(mx.nd.array(thresholds[1]))
        return block

    def hybrid_forward(self, F, x, packed_weight, scale=None, bias=None, threshold_sign=None,
                       threshold_bias=None):
        inputs = [x, packed_weight] + ([scale] if scale is not None else [])
        if threshold_sign is not None:
            inputs += [threshold_sign, threshold_bias]
        y = F.bmx_binary_conv2d(*inputs, name=_OP_NODE_NAME, **self._attrs)
        if bias is not None:
            y = F.broadcast_add(y, bias.reshape((1, -1, 1, 1)))
        return y


class XnorDense(HybridBlock):
    """Packed inference form of a binary fully connected layer (``bmx_binary_dense``); see
    :class:`XnorConv2D`. Flattens its input like ``nn.Dense`` (or, with ``flatten=False``,
    applies to the last axis)."""

    def __init__(self, units, in_units, offset, scaling, use_bias, flatten=True, **kwargs):
        super().__init__(**kwargs)
        self._attrs = {"num_hidden": units, "in_units": in_units, "offset": offset,
                       "scaling": scaling, "flatten": flatten}
        with self.name_scope():
            self.packed_weight = self.params.get(
                "packed_weight", shape=(units, _words(in_units)), dtype="int32",
                grad_req="null", init=mx.init.Zero())
            self.scale = (self.params.get("scale", shape=(units,), grad_req="null",
                                          init=mx.init.One()) if scaling else None)
            self.bias = (self.params.get("bias", shape=(units,), grad_req="null",
                                         init=mx.init.Zero()) if use_bias else None)

    @classmethod
    def from_layer(cls, dense):
        """Packs the weights of a trained binary ``QDense`` with an input quantizer."""
        block = cls(dense._units, dense._in_units, use_bias=dense.bias is not None,
                    flatten=dense._flatten, prefix=dense.prefix, **_output_attrs(dense))
        block.initialize()
        latent = dense.weight.data().asnumpy()
        block.packed_weight.set_data(mx.nd.array(kernels.pack_dense_weights(latent),
                                                 dtype="int32"))
        if block.scale is not None:
            block.scale.set_data(mx.nd.mean(mx.nd.abs(dense.weight.data()), axis=1))
        if block.bias is not None:
            block.bias.set_data(dense.bias.data())
        return block

    def hybrid_forward(self, F, x, packed_weight, scale=None, bias=None):
        inputs = [x, packed_weight] + ([scale] if scale is not None else [])
        y = F.bmx_binary_dense(*inputs, name=_OP_NODE_NAME, **self._attrs)
        if bias is not None:
            y = F.broadcast_add(y, bias)
        return y


def _packed_replacement(block):
    """The packed block replacing ``block``, None if ``block`` is no binary unit, or raises."""
    if isinstance(block, BinaryConvolution):
        return XnorConv2D.from_layer(block.conv)
    if isinstance(block, (QConv2D, QDense)) and block.binary:
        if block.input_quantizer is None:
            raise ConversionError(
                f"{block.name}: binary weights on a float input cannot be computed by "
                "xnor-popcount; binarize its input (input_quantizer=..., or use "
                "BinaryConvolution) so that the layer has a packed form")
        return (XnorConv2D if isinstance(block, QConv2D) else XnorDense).from_layer(block)
    if isinstance(block, (QConv2D, QDense)) and block.input_quantizer is not None:
        raise ConversionError(f"{block.name}: binary input with float weights has no packed "
                              "form; give it a weight quantizer or keep the network float")
    if isinstance(block, QActivation):
        raise ConversionError(
            f"{block.name}: a QActivation outside a BinaryConvolution cannot be converted "
            "(the packed operators binarize their own input); build the network from "
            "BinaryConvolution units")
    return None


def _replace_children(block):
    replaced = 0
    for key, child in list(block._children.items()):
        new = _packed_replacement(child)
        if new is None:
            replaced += _replace_children(child)
            continue
        block._children[key] = new
        for attr, value in list(vars(block).items()):
            if value is child:
                object.__setattr__(block, attr, new)
        replaced += 1
    return replaced


def _clear_cached_ops(block):
    block._clear_cached_op()
    for child in block._children.values():
        _clear_cached_ops(child)


def _probe_shape(net, input_shape):
    shape = input_shape or getattr(net, "input_shape", None)
    if shape is None:
        raise ValueError("convert_to_xnor needs input_shape=(N, C, H, W) to verify the "
                         "converted network (this network does not declare one)")
    return tuple(shape)


def convert_to_xnor(net, input_shape=None, verify=True, seed=0, fuse=False):
    """Returns a packed copy of ``net`` whose binary units compute by xnor-popcount in C++.

    Parameters
    ----------
    net : HybridBlock
        A trained network built from :class:`~bmxnet_ext.layers.BinaryConvolution` units (or
        ``QConv2D`` / ``QDense`` with input quantizers). It is not modified.
    input_shape : tuple, optional
        Shape of a probe input ``(N, C, H, W)``; defaults to ``net.input_shape`` when the network
        declares one (zoo networks do).
    verify : bool
        Run ``net`` and the converted network on a random probe and raise
        :class:`ConversionError` unless their outputs agree. Keep it on.
    fuse : bool
        Also fold each binary unit's BatchNorm into its binarization and run runs of dense /
        improvement blocks as one operator (:mod:`bmxnet_ext.fusion`): the fast form for
        deployment. Without it every binary convolution stays its own ``XnorConv2D``.

    Returns
    -------
    HybridBlock
        The converted network (hybridizable and exportable; reload exports with
        :func:`load_xnor`). Several threads may call it at once: calls push their operators one
        at a time (MXNet 1.9.1 deadlocks on concurrent pushes) and compute concurrently.

    Raises
    ------
    ConversionError
        For a layer without an exactly equal packed form, a network without binary units, or a
        converted network that does not reproduce the original.
    """
    ops.require()
    shape = _probe_shape(net, input_shape) if verify else None
    _clear_cached_ops(net)
    converted = copy.deepcopy(net)
    _clear_cached_ops(converted)
    if _packed_replacement(converted) is not None:
        raise ConversionError("convert_to_xnor takes a network; convert its parent instead of "
                              "a single binary unit")
    fused = 0
    if fuse:
        from .fusion import fuse_binary_units  # fusion builds on this module's blocks
        fused = fuse_binary_units(converted)
    if fused + _replace_children(converted) == 0:
        raise ConversionError(f"{net.name} has no binary unit to convert")
    if verify:
        _verify(net, converted, shape, seed)
    _serialize_pushes(converted)
    return converted


def _forward_under_push_lock(block, *args):
    with _PUSH_LOCK:
        return type(block).forward(block, *args)


def _serialize_pushes(block):
    """Lets several threads call ``block``: each call pushes its operators under _PUSH_LOCK.
    A bound method in the instance, so a (deep) copy of the block is guarded too."""
    object.__setattr__(block, "forward", types.MethodType(_forward_under_push_lock, block))


def _verify(net, converted, shape, seed):
    probe = mx.nd.array(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))
    expected = net(probe).asnumpy()
    actual = converted(probe).asnumpy()
    if expected.shape != actual.shape:
        raise ConversionError(
            f"the converted network returns shape {actual.shape} instead of {expected.shape} "
            "on a probe input; please report this")
    # NaN and ±Inf must sit in the same places (a network with NaN parameters converts to one
    # computing the same NaNs); the tolerance scales with the finite outputs only, or one
    # infinite output would make every difference look small.
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    close = np.isclose(actual, expected, rtol=1e-4, atol=1e-4 * scale, equal_nan=True)
    if not close.all():
        first = tuple(int(i) for i in np.argwhere(~close)[0])
        raise ConversionError(
            f"the converted network does not reproduce the original on a probe input: "
            f"{int((~close).sum())} of {close.size} outputs differ (e.g. at {first}: "
            f"{actual[first]!r} instead of {expected[first]!r}); please report this")


def _read_symbol_json(symbol_file):
    try:
        with open(symbol_file) as f:
            graph = json.load(f)
        nodes = graph["nodes"]
        return sorted({node["op"] for node in nodes if node["op"].startswith("bmx_")})
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{symbol_file} is not a readable MXNet symbol file: it is "
                             f"truncated or damaged ({err}). Export the network again") from err


def _first_line(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # MXNet puts the operator's own message last (after "Extension Traceback:" lines)
    return lines[-1] if lines else type(err).__name__


def _check_params_fit(symbol, params, params_file, symbol_file, card):
    """Names of ``params`` (arg:/aux: keys) against what ``symbol`` needs; with a model card
    (which gives the input shape), their shapes too."""
    needed = {f"arg:{n}" for n in symbol.list_arguments() if n != "data"}
    needed |= {f"aux:{n}" for n in symbol.list_auxiliary_states()}
    missing, extra = sorted(needed - set(params)), sorted(set(params) - needed)
    if missing or extra:
        raise ModelFileError(
            f"{params_file} does not belong to the network in {symbol_file}: missing "
            f"{missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected "
            f"{extra[:3]}{' ...' if len(extra) > 3 else ''}. Use the params file exported "
            "together with this symbol file")
    if not card:
        return
    shapes = {key.split(":", 1)[1]: value.shape for key, value in params.items()}
    size = card["input_size"]
    try:
        symbol.infer_shape(data=(1, len(card["mean"]), size, size), **shapes)
    except mx.base.MXNetError as err:
        raise ModelFileError(
            f"the parameters in {params_file} do not fit the network in {symbol_file} "
            f"({_first_line(err)}); they were exported from a network built with other "
            "arguments. Use the params file exported together with this symbol file") from err


def load_xnor(prefix, epoch=0, ctx=mx.cpu()):
    """Loads a packed network written by ``export`` of a converted network.

    ``prefix`` is the path given to ``export``; it reads ``{prefix}-symbol.json`` and
    ``{prefix}-{epoch:04d}.params``. Equivalent to ``gluon.SymbolBlock.imports`` once the
    ``bmx_*`` operators are loaded, with errors that say what is wrong and what to do:
    FileNotFoundError for missing files, :class:`~bmxnet_ext.ops.OpsLibraryError` when the
    operators are missing, :class:`~bmxnet_ext.model_card.ModelFileError` (a ValueError) for a
    damaged or truncated file, a params file of another network, a symbol file written for
    another version of the operators, or a params file that does not match the SHA-256 its
    model card (``{prefix}-model.json``, if any) recorded.

    Several threads may call the returned block at once, as with :func:`convert_to_xnor`.
    """
    symbol_file = f"{prefix}-symbol.json"
    params_file = f"{prefix}-{epoch:04d}.params"
    for suffix in ("-symbol.json", "-model.json", f"-{epoch:04d}.params"):
        if str(prefix).endswith(suffix):
            raise FileNotFoundError(f"load_xnor takes the export prefix, not a file name: "
                                    f"load_xnor({str(prefix)[:-len(suffix)]!r})")
    for path in (symbol_file, params_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_xnor: {path} does not exist (expected the files "
                                    f"written by export('{prefix}'))")
    ops.require()
    missing = [op for op in _read_symbol_json(symbol_file) if not hasattr(mx.sym, op)]
    if missing:
        raise ops.OpsLibraryError(
            f"{symbol_file} uses operators {missing} that this build of bmxnet_ext does not "
            "provide; rebuild bmxnet_ext from a version that has them (pip install .)")
    card = read_model_card(prefix)
    check_params_checksum(prefix, params_file)
    try:
        symbol = mx.sym.load(symbol_file)
    except mx.base.MXNetError as err:
        raise ModelFileError(
            f"{symbol_file} does not fit the bmx_* operators of this bmxnet_ext "
            f"({_first_line(err)}): it was written by another version (or edited). Convert and "
            "export the trained network again with this version, or install the version that "
            "wrote it") from err
    params = read_params_file(params_file)
    _check_params_fit(symbol, params, params_file, symbol_file, card)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        block = gluon.SymbolBlock(symbol, mx.sym.var("data"))
        block.collect_params().load_dict(params, ctx=ctx, cast_dtype=True, dtype_source="saved")
    _serialize_pushes(block)
    return block
