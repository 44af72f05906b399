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
import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import HybridBlock

from . import kernels, ops
from .layers import BinaryConvolution, QActivation, QConv2D, QDense

__all__ = ["XnorConv2D", "XnorDense", "ConversionError", "convert_to_xnor", "load_xnor"]

# Node names of the packed operators carry this hint: MXNet names the failing node when it cannot
# find an operator, so loading an exported packed model without `import bmxnet_ext` says what to do.
_OP_NODE_NAME = "fwd__load_with_import_bmxnet_ext"


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
    ``scale`` (float32, only for scaled layers) and ``bias`` (only if the layer had one).
    """

    def __init__(self, channels, in_channels, kernel_size, strides, padding, dilation, groups,
                 offset, scaling, pad_value, use_bias, **kwargs):
        super().__init__(**kwargs)
        self._attrs = {"kernel": kernel_size, "stride": strides, "pad": padding,
                       "dilate": dilation, "num_filter": channels, "num_group": groups,
                       "in_channels": in_channels, "offset": offset, "scaling": scaling,
                       "pad_value": int(pad_value)}
        packed_shape = (channels,) + tuple(kernel_size) + (_words(in_channels // groups),)
        with self.name_scope():
            self.packed_weight = self.params.get("packed_weight", shape=packed_shape,
                                                 dtype="int32", grad_req="null",
                                                 init=mx.init.Zero())
            self.scale = (self.params.get("scale", shape=(channels,), grad_req="null",
                                          init=mx.init.One()) if scaling else None)
            self.bias = (self.params.get("bias", shape=(channels,), grad_req="null",
                                         init=mx.init.Zero()) if use_bias else None)

    @classmethod
    def from_layer(cls, conv):
        """Packs the weights of a trained binary ``QConv2D`` (its input binarized by it or by a
        preceding sign) into a new, initialized ``XnorConv2D``."""
        kw = conv._kwargs
        block = cls(conv._channels, conv._in_channels, tuple(kw["kernel"]), tuple(kw["stride"]),
                    tuple(conv.padding), tuple(kw["dilate"]), kw["num_group"],
                    pad_value=conv.pad_value, use_bias=conv.bias is not None, prefix=conv.prefix,
                    **_output_attrs(conv))
        block.initialize()
        latent = conv.weight.data().asnumpy()
        block.packed_weight.set_data(mx.nd.array(
            kernels.pack_conv_weights(latent, kw["num_group"]), dtype="int32"))
        if block.scale is not None:
            # the training graph's own reduction, so that the scale matches it to the last bit
            block.scale.set_data(mx.nd.mean(mx.nd.abs(conv.weight.data()), axis=(1, 2, 3)))
        if block.bias is not None:
            block.bias.set_data(conv.bias.data())
        return block

    def hybrid_forward(self, F, x, packed_weight, scale=None, bias=None):
        inputs = [x, packed_weight] + ([scale] if scale is not None else [])
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


def convert_to_xnor(net, input_shape=None, verify=True, seed=0):
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

    Returns
    -------
    HybridBlock
        The converted network (hybridizable and exportable; reload exports with
        :func:`load_xnor`).

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
    if _replace_children(converted) == 0:
        raise ConversionError(f"{net.name} has no binary unit to convert")
    if verify:
        _verify(net, converted, shape, seed)
    return converted


def _verify(net, converted, shape, seed):
    probe = mx.nd.array(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))
    expected = net(probe).asnumpy()
    actual = converted(probe).asnumpy()
    scale = max(1.0, float(np.abs(expected).max()))
    if expected.shape != actual.shape or not np.allclose(actual, expected, rtol=1e-4,
                                                         atol=1e-4 * scale):
        raise ConversionError(
            "the converted network does not reproduce the original on a probe input (max "
            f"difference {float(np.abs(actual - expected).max()):.3g}); please report this")


def _packed_ops_in(symbol_file):
    with open(symbol_file) as f:
        graph = json.load(f)
    return sorted({node["op"] for node in graph.get("nodes", []) if node["op"].startswith("bmx_")})


def load_xnor(prefix, epoch=0, ctx=mx.cpu()):
    """Loads a packed network written by ``export`` of a converted network.

    ``prefix`` is the path given to ``export``; it reads ``{prefix}-symbol.json`` and
    ``{prefix}-{epoch:04d}.params``. Equivalent to ``gluon.SymbolBlock.imports`` once the
    ``bmx_*`` operators are loaded, with clear errors for missing files and operators.
    """
    symbol_file = f"{prefix}-symbol.json"
    params_file = f"{prefix}-{epoch:04d}.params"
    for path in (symbol_file, params_file):
        if not os.path.exists(path):
            raise FileNotFoundError(f"load_xnor: {path} does not exist (expected the files "
                                    f"written by export('{prefix}'))")
    ops.require()
    missing = [op for op in _packed_ops_in(symbol_file) if not hasattr(mx.sym, op)]
    if missing:
        raise ops.OpsLibraryError(
            f"{symbol_file} uses operators {missing} that this build of bmxnet_ext does not "
            "provide; rebuild bmxnet_ext from a version that has them (pip install .)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return gluon.SymbolBlock.imports(symbol_file, ["data"], params_file, ctx=ctx)
