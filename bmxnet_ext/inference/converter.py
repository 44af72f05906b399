"""Conversion of a trained binary network into its packed xnor inference form, and reloading it.

:func:`convert_to_xnor` replaces every binary unit whose input is binarized (a
:class:`~bmxnet_ext.binary.layers.BinaryConvolution`, or a ``QConv2D`` / ``QDense`` with an input
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

from ..binary.layers import (BinaryConvolution, QActivation, QConv2D, QDense,
                             ScaledBinaryConvolution)
from ..utils.blocktree import iter_blocks, replace_child
from . import ops
from .fusion import fuse_binary_units
from .model_card import (ModelFileError, card_path, check_params_checksum, read_model_card,
                         read_params_file)
from .packed import XnorConv2D, XnorDense
from .threads import ThreadSafeBlock

__all__ = ["ConversionError", "convert_to_xnor", "load_xnor"]


class ConversionError(ValueError):
    """A network (or one of its layers) cannot be converted to an exactly equal packed form."""


def _check_one_bit(net):
    """Refuses what the 1-bit packed kernels cannot compute: multi-bit quantizers, XNOR-Net's
    input scaling and zero padding."""
    for block in iter_blocks(net):
        if isinstance(block, ScaledBinaryConvolution):
            raise ConversionError(
                f"{block.name}: ScaledBinaryConvolution (XNOR-Net input scaling) has no packed "
                "form; packed inference is 1-bit xnor-popcount without input scaling")
        quantizer = getattr(block, "quantizer", None) if isinstance(block, QActivation) else None
        bits = max([getattr(q, "precision", 1) for q in (
            quantizer, getattr(block, "input_quantizer", None),
            getattr(block, "weight_quantizer", None)) if q is not None] or [1])
        if bits > 1:
            raise ConversionError(
                f"{block.name}: a {bits}-bit quantizer ({type(block).__name__}) has no packed "
                "form; packed inference is 1-bit only. Train with bits=1 and bits_a=1 to "
                "convert, or deploy this network as a float export (packed=False)")
        if isinstance(block, QConv2D) and block.binary and block.pad_value == 0:
            raise ConversionError(f"{block.name}: zero padding has no exact packed form "
                                  "(pad_value must be -1 or +1)")


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


def _check_initialized(net):
    """Refuses a network whose parameters hold no values yet: a copy made now would draw its
    own random values and differ from the network the caller goes on to use."""
    for param in net.collect_params().values():
        if param._data is not None:
            continue
        if param._deferred_init:
            raise ConversionError(
                f"{net.name}: parameter {param.name} has no shape yet (deferred "
                "initialization finishes on the first forward pass); run the network once, "
                "e.g. net(mx.nd.zeros(input_shape)), before convert_to_xnor")
        raise ConversionError(f"{net.name}: parameter {param.name} is not initialized; "
                              "initialize the network or load its trained parameters first")


def _cpu_copy(net):
    """A deep copy of ``net`` with its parameters on the CPU, made without touching ``net``.

    What cannot or must not be copied stays behind: the Trainer a parameter is attached to
    (with its KVStore, which holds C handles) and the cached graphs of hybridized blocks (the
    copy builds its own). Parameters trained on several devices are averaged as ``export``
    does (they are equal after synchronous training).
    """
    memo = {}
    for param in net.collect_params().values():
        if param._trainer is not None:
            memo[id(param._trainer)] = None
    for block in iter_blocks(net):
        if getattr(block, "_cached_op", None) is not None:
            memo[id(block._cached_op)] = None
    copied = copy.deepcopy(net, memo)
    for block in iter_blocks(copied):
        if isinstance(block, HybridBlock):
            block._clear_cached_op()
    params = copied.collect_params()
    if any(ctx != mx.cpu() for param in params.values() for ctx in param.list_ctx()):
        params.reset_ctx(mx.cpu())
    return copied


def _probe_shape(net, input_shape):
    shape = input_shape or getattr(net, "input_shape", None)
    size = getattr(net, "input_size", None)
    if shape is None and size is not None:
        shape = (1, 3, size, size)  # zoo networks take RGB images of their input_size
    if shape is None:
        raise ValueError("convert_to_xnor needs input_shape=(N, C, H, W) to verify the "
                         "converted network (this network does not declare one)")
    return tuple(shape)


def convert_to_xnor(net, input_shape=None, verify=True, seed=0, fuse=False):
    """Returns a packed copy of ``net`` whose binary units compute by xnor-popcount in C++.

    Parameters
    ----------
    net : HybridBlock
        A trained network built from :class:`~bmxnet_ext.binary.layers.BinaryConvolution` units (or
        ``QConv2D`` / ``QDense`` with input quantizers), its parameters initialized, on any
        devices (trained on several GPUs or CPUs, attached to a Trainer with any KVStore). It
        is not modified, not even run: conversion and verification work on CPU copies.
    input_shape : tuple, optional
        Shape of a probe input ``(N, C, H, W)``; defaults to ``(1, 3, S, S)`` for a network
        that declares its ``input_size`` S (zoo networks do).
    verify : bool
        Run (a copy of) ``net`` and the converted network on a random probe and raise
        :class:`ConversionError` unless their outputs agree. Keep it on.
    fuse : bool
        Also fold each binary unit's BatchNorm into its binarization and run runs of dense /
        improvement blocks as one operator (:mod:`bmxnet_ext.inference.fusion`): the fast form
        for deployment (:func:`bmxnet_ext.export` uses it by default). Without it every binary
        convolution stays its own ``XnorConv2D``.

    Returns
    -------
    ThreadSafeBlock
        The converted network on the CPU (hybridizable and exportable; reload exports with
        :func:`load_xnor`), wrapped in :class:`~bmxnet_ext.ThreadSafeBlock`: several threads
        may call it at once (see :mod:`bmxnet_ext.inference.threads`). The network itself is
        ``.block``; attribute reads pass through to it.

    Raises
    ------
    ConversionError
        For a layer without an exactly equal packed form, a network without binary units,
        parameters not initialized yet (deferred until a first forward pass), or a converted
        network that does not reproduce the original.
    """
    ops.require()
    shape = _probe_shape(net, input_shape) if verify else None
    _check_initialized(net)
    _check_one_bit(net)
    if _packed_replacement(net) is not None:
        raise ConversionError("convert_to_xnor takes a network; convert its parent instead of "
                              "a single binary unit")
    reference = _cpu_copy(net)
    converted = _cpu_copy(reference)
    fused = fuse_binary_units(converted) if fuse else 0
    if fused + _replace_children(converted) == 0:
        raise ConversionError(f"{net.name} has no binary unit to convert")
    if verify:
        _verify(reference, converted, shape, seed)
    return ThreadSafeBlock(converted)


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
    (which gives the input shape), their shapes and the number of outputs too."""
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
        _, (out_shape, *_), _ = symbol.infer_shape(data=(1, len(card["mean"]), size, size),
                                                   **shapes)
    except mx.base.MXNetError as err:
        raise ModelFileError(
            f"the parameters in {params_file} do not fit the network in {symbol_file} "
            f"({_first_line(err)}); they were exported from a network built with other "
            "arguments. Use the params file exported together with this symbol file") from err
    classes = card.get("classes")
    if classes is not None and tuple(out_shape) != (1, classes):
        raise ModelFileError(
            f"{card_path(symbol_file[:-len('-symbol.json')])} says the network has {classes} "
            f"outputs, but the network in {symbol_file} returns shape {tuple(out_shape)}; the "
            "card belongs to another export. Export the network again")


def load_xnor(prefix, epoch=0, ctx=mx.cpu()):
    """Loads a packed network written by ``export`` of a converted network.

    ``prefix`` is the path given to ``export``; it reads ``{prefix}-symbol.json`` and
    ``{prefix}-{epoch:04d}.params``. Equivalent to ``gluon.SymbolBlock.imports`` once the
    ``bmx_*`` operators are loaded, with errors that say what is wrong and what to do:
    FileNotFoundError for missing files, :class:`~bmxnet_ext.ops.OpsLibraryError` when the operators
    are missing, :class:`~bmxnet_ext.inference.model_card.ModelFileError` (a ValueError) for a
    damaged or truncated file, a params file of another network, a symbol file written for another
    version of the operators, or files that disagree with their model card (``{prefix}-model.json``,
    if any: the params file's SHA-256, the input and output shapes, packed or float).

    Returns a :class:`~bmxnet_ext.ThreadSafeBlock` around the ``SymbolBlock``: several threads
    may call it at once, as with :func:`convert_to_xnor`.
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
    bmx_ops = _read_symbol_json(symbol_file)
    missing = [op for op in bmx_ops if not hasattr(mx.sym, op)]
    if missing:
        raise ops.OpsLibraryError(
            f"{symbol_file} uses operators {missing} that this build of bmxnet_ext does not "
            "provide; rebuild bmxnet_ext from a version that has them (pip install .)")
    card = read_model_card(prefix)
    check_params_checksum(prefix, params_file)
    if card is not None and "packed" in card and card["packed"] != bool(bmx_ops):
        raise ModelFileError(
            f"{card_path(prefix)} describes a {'packed' if card['packed'] else 'float'} export, "
            f"but {symbol_file} is a {'packed' if bmx_ops else 'float'} graph: the files come "
            "from different exports. Export the network again")
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
    return ThreadSafeBlock(block)
