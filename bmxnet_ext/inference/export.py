"""Final exports of a trained network: the float training graph and the packed xnor form.

Both write ``{prefix}-symbol.json`` and ``{prefix}-0000.params`` (reload with
``gluon.SymbolBlock.imports`` / :func:`bmxnet_ext.converter.load_xnor`); each file appears
complete or not at all.
"""
import os

import mxnet as mx

__all__ = ["export_float", "export_packed"]


def _context_of(net):
    return next(iter(net.collect_params().values())).list_ctx()[0]


def _export(net, prefix, input_shape):
    """hybridize -> one forward pass (builds the graph) -> export to temp names -> rename."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    net.hybridize()
    net(mx.nd.zeros(input_shape, ctx=_context_of(net))).wait_to_read()
    temp = f"{prefix}.tmp-{os.getpid()}"
    names = [("-symbol.json", "-symbol.json"), ("-0000.params", "-0000.params")]
    try:
        net.export(temp)
        for suffix, final in names:
            os.replace(temp + suffix, prefix + final)
    finally:
        for suffix, _ in names:
            if os.path.exists(temp + suffix):
                os.remove(temp + suffix)
    return prefix + "-symbol.json", prefix + "-0000.params"


def export_float(net, prefix, input_shape):
    """Exports ``net`` as trained (binary layers still with latent float weights).

    ``input_shape`` is a full input shape, e.g. ``(1, 3, 224, 224)``. Returns the symbol and
    params paths.
    """
    return _export(net, prefix, input_shape)


def export_packed(net, prefix, input_shape):
    """Converts ``net`` with :func:`bmxnet_ext.converter.convert_to_xnor` (which checks that the
    result computes the same outputs) and exports the packed network; returns the paths.

    The network must be on the CPU (the packed operators are CPU operators).
    """
    from .converter import convert_to_xnor

    if _context_of(net).device_type != "cpu":
        raise ValueError("export_packed needs the network on the CPU; "
                         "net.collect_params().reset_ctx(mx.cpu()) first")
    return _export(convert_to_xnor(net, input_shape=input_shape), prefix, input_shape)
