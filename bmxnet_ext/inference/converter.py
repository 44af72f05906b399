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

from ..binary.layers import BinaryConvolution, QActivation, QConv2D, QDense
from ..utils.blocktree import replace_child
from . import ops
from .fusion import fuse_binary_units
from .model_card import (ModelFileError, check_params_checksum, read_model_card,
                         read_params_file)
from .packed import XnorConv2D, XnorDense

__all__ = ["XnorConv2D", "XnorDense", "ConversionError", "convert_to_xnor", "load_xnor"]

# MXNet 1.9.1 deadlocks when several Python threads push operators at once: threads calling one
# hybridized block (even a float one with no bmx_* operator), or each its own non-hybridized
# network, end up waiting in WaitForVar for an operator the engine never runs. Networks returned
# here push a call's operators under this lock; the engine still computes calls concurrently, and
# waiting for the outputs (asnumpy, wait_to_read) happens outside it. Reentrant: a guarded
# network may call another.
_PUSH_LOCK = threading.RLock()


class ConversionError(ValueError):
    """A network (or one of its layers) cannot be converted to an exactly equal packed form."""


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
        replace_child(block, key, new)
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
