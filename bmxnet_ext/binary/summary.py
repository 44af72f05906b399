"""Parameters, model size and operations of a network, counted as in the MeliusNet paper.

The network is traced symbolically (``net(mx.sym.var("data"))`` with forward hooks on its
layers) and every shape comes from one MXNet shape inference, so strides, padding, dilation and
groups are counted as MXNet computes them, and the network needs no initialized parameters.
Counts are per input sample:

- binary parameters: weights of ``QConv2D``/``QDense`` layers with a weight quantizer;
  float parameters: all others, without auxiliary states (a BatchNorm counts gamma and beta, not
  its running mean and variance);
- size = ``(binary_params * 1 + float_params * 32) / 8`` bytes;
- BOPs: multiply-accumulates of binary-weight convolutions; FLOPs: those of float convolutions;
  ``OPs = BOPs / 64 + FLOPs``. Fully connected layers are left out of OPs, as in the paper
  (``ops_with_fc`` adds them); norm, pooling and elementwise operations are not counted.
"""
import os

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from ..utils.blocktree import named_blocks
from .layers import QConv2D, QDense

__all__ = ["summary", "layer_table"]

_POOLS = (nn.MaxPool2D, nn.AvgPool2D, nn.GlobalAvgPool2D, nn.GlobalMaxPool2D)
_CONVS = (nn.Conv1D, nn.Conv2D, nn.Conv3D)
_TRANSPOSED = (nn.Conv1DTranspose, nn.Conv2DTranspose, nn.Conv3DTranspose)
_MIB = float(1 << 20)


def _kind(block):
    if isinstance(block, _TRANSPOSED):
        raise ValueError(f"summary does not count transposed convolutions ({block.name})")
    packed = [p.name for p in block.params.values() if np.dtype(p.dtype).kind != "f"]
    if packed:
        raise ValueError(f"summary counts training networks; {block.name} holds non-float "
                         f"parameters ({', '.join(packed)}), as a packed network does. Count "
                         "the network before convert_to_xnor and pass the packed export as "
                         "packed_params_file")
    binary = isinstance(block, (QConv2D, QDense)) and block.binary
    if isinstance(block, _CONVS):
        return "binary conv" if binary else "conv"
    if isinstance(block, nn.Dense):
        return "binary dense" if binary else "dense"
    if isinstance(block, _POOLS):
        return type(block).__name__
    return type(block).__name__ if list(block.params.keys()) else None


def layer_table(net, input_shape):
    """One dict per counted layer call, in execution order.

    Keys: ``name`` (attribute path in ``net``), ``type``, ``output_shape``, ``binary_params``,
    ``float_params``, ``bops``, ``flops`` (convolutions) and ``fc_bops``, ``fc_flops`` (fully
    connected layers). Layers without parameters other than pooling are not listed.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) < 2 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (batch, channels, ...) with positive sizes, "
                         f"got {input_shape}")
    calls, handles = [], []
    for name, block in named_blocks(net):
        kind = _kind(block)
        if kind is not None:
            hook = (lambda b, args, out, name=name, kind=kind:
                    calls.append((name, kind, b, out)))
            handles.append(block.register_forward_hook(hook))
    try:
        output = net(mx.sym.var("data"))
    finally:
        for handle in handles:
            handle.detach()
    if isinstance(output, (list, tuple)):
        output = mx.sym.Group(list(output))
    internals = output.get_internals()
    try:
        out_shapes = internals.infer_shape(data=input_shape)[1]
        arg_shapes = output.infer_shape(data=input_shape)[0]
    except mx.base.MXNetError as err:
        raise ValueError(f"{type(net).__name__} does not accept input_shape {input_shape}: "
                         f"{str(err).strip().splitlines()[0]}") from err
    if out_shapes is None or arg_shapes is None:
        raise ValueError(f"cannot infer the shapes of {type(net).__name__} for input "
                         f"{input_shape}")
    shape_of = dict(zip(internals.list_outputs(), out_shapes))
    param_shapes = dict(zip(output.list_arguments(), arg_shapes))
    aux_names = set(output.list_auxiliary_states())

    rows, seen = [], set()
    for name, kind, block, out in calls:
        out_shape = shape_of[out.list_outputs()[0]]
        row = dict(name=name, type=kind, output_shape=out_shape, binary_params=0,
                   float_params=0, bops=0, flops=0, fc_bops=0, fc_flops=0)
        for param in block.params.values():
            if param.name in aux_names or param.name in seen:
                continue
            seen.add(param.name)
            size = _prod(param_shapes[param.name])
            binary_weight = kind.startswith("binary") and param.name == block.weight.name
            row["binary_params" if binary_weight else "float_params"] += size
        if kind.endswith("conv") or kind.endswith("dense"):
            # each output element of a sample accumulates prod(weight.shape[1:]) products:
            # (in_channels / groups) * kernel for convolutions, in_units for dense layers
            macs = _prod(out_shape[1:]) * _prod(param_shapes[block.weight.name][1:])
            key = {"binary conv": "bops", "conv": "flops", "binary dense": "fc_bops",
                   "dense": "fc_flops"}[kind]
            row[key] = macs
        rows.append(row)
    return rows


def _prod(values):
    result = 1
    for value in values:
        result *= int(value)
    return result


def _totals(rows, input_shape, packed_params_file):
    totals = {key: sum(row[key] for row in rows)
              for key in ("binary_params", "float_params", "bops", "flops", "fc_bops",
                          "fc_flops")}
    totals["params"] = totals["binary_params"] + totals["float_params"]
    totals["size_bytes"] = (totals["binary_params"] + 32 * totals["float_params"]) / 8
    totals["size_mib"] = totals["size_bytes"] / _MIB
    totals["ops"] = totals["bops"] / 64 + totals["flops"]
    totals["ops_with_fc"] = totals["ops"] + totals["fc_bops"] / 64 + totals["fc_flops"]
    totals["input_shape"] = list(input_shape)
    if packed_params_file is not None:
        totals["packed_file_bytes"] = os.path.getsize(packed_params_file)
        totals["packed_file_mib"] = totals["packed_file_bytes"] / _MIB
    return totals


def _print_table(title, rows, totals):
    name_width = max([len(row["name"]) for row in rows] + [len("total")])
    type_width = max(len(row["type"]) for row in rows)
    header = (f"{'layer':<{name_width}}  {'type':<{type_width}}  {'output':<18} "
              f"{'binary p.':>10} {'float p.':>10} {'BOPs':>12} {'FLOPs':>12}")
    rule = "-" * len(header)
    print(title)
    print(rule)
    print(header)
    print(rule)
    for row in rows:
        flops = row["flops"] + row["fc_flops"]
        flops_text = f"({flops:,})" if row["fc_flops"] else f"{flops:,}"
        bops = row["bops"] + row["fc_bops"]
        bops_text = f"({bops:,})" if row["fc_bops"] else f"{bops:,}"
        shape = "x".join(str(d) for d in row["output_shape"][1:])
        print(f"{row['name']:<{name_width}}  {row['type']:<{type_width}}  {shape:<18} "
              f"{row['binary_params']:>10,} {row['float_params']:>10,} {bops_text:>12} "
              f"{flops_text:>12}")
    print(rule)
    print(f"{'total':<{name_width}}  {'':<{type_width}}  {'':<18} "
          f"{totals['binary_params']:>10,} {totals['float_params']:>10,} "
          f"{totals['bops']:>12,} {totals['flops']:>12,}")
    print(rule)
    print(f"parameters   {totals['params']:,} ({totals['binary_params']:,} binary, "
          f"{totals['float_params']:,} float; norm layers: gamma and beta)")
    print(f"model size   {totals['size_mib']:.2f} MiB ({totals['size_bytes']:,.0f} bytes = "
          "binary/8 + float*4)")
    if "packed_file_bytes" in totals:
        print(f"packed file  {totals['packed_file_mib']:.2f} MiB "
              f"({totals['packed_file_bytes']:,} bytes on disk)")
    print(f"OPs          {totals['ops']:.3e} = BOPs/64 + FLOPs = {totals['bops']:.3e}/64 + "
          f"{totals['flops']:.3e} (convolutions, per sample)")
    print(f"OPs with FC  {totals['ops_with_fc']:.3e} (fully connected layers, in parentheses "
          "above, included)")


def summary(net, input_shape, print_table=True, packed_params_file=None):
    """Counts parameters, size and operations of ``net`` for inputs of ``input_shape``.

    Parameters
    ----------
    net : gluon.HybridBlock
        The network; it need not be initialized, and hybridized networks work too.
    input_shape : tuple of int
        ``(batch, channels, height, width)``; counts are per sample.
    print_table : bool
        Print the per-layer table and the totals.
    packed_params_file : str, optional
        Exported params file of the packed (xnor) network: its bytes on disk are reported.

    Returns
    -------
    dict
        ``params``, ``binary_params``, ``float_params``, ``size_bytes``, ``size_mib``, ``bops``,
        ``flops``, ``ops`` (= bops/64 + flops, convolutions only), ``fc_bops``, ``fc_flops``,
        ``ops_with_fc``, ``input_shape`` and, with ``packed_params_file``,
        ``packed_file_bytes`` and ``packed_file_mib``.
    """
    rows = layer_table(net, input_shape)
    totals = _totals(rows, input_shape, packed_params_file)
    if print_table:
        _print_table(f"{type(net).__name__} ({net.name}), input {tuple(input_shape)}", rows,
                     totals)
    return totals
