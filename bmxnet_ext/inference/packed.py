"""The packed (xnor) inference blocks: each holds its weights as bit words and calls one ``bmx_*``
operator. :mod:`~bmxnet_ext.inference.converter` and :mod:`~bmxnet_ext.inference.fusion` build
them from trained layers; exported networks name their operators as these blocks do.
"""
import warnings

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn

from . import kernels

__all__ = ["XnorConv2D", "XnorDense", "XnorBinaryStage", "NormReluPool", "XnorResidualUnit",
           "GroupedConv2D"]

# Node names of the packed operators carry this hint: MXNet names the failing node when it cannot
# find an operator, so loading an exported packed model without `import bmxnet_ext` says what to do.
OP_NODE_NAME = "fwd__load_with_import_bmxnet_ext"


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
    :mod:`bmxnet_ext.inference.fusion`).
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
        y = F.bmx_binary_conv2d(*inputs, name=OP_NODE_NAME, **self._attrs)
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
        y = F.bmx_binary_dense(*inputs, name=OP_NODE_NAME, **self._attrs)
        if bias is not None:
            y = F.broadcast_add(y, bias)
        return y


class XnorBinaryStage(HybridBlock):
    """Packed inference form of a run of dense / improvement units (one ``bmx_binary_stage``).

    Unit ``i`` reads the first ``C_i`` channels of the stage's buffer (``C_0 = in_channels``),
    binarizes them by its folded BatchNorm and either appends ``growth`` channels (``"d"``,
    :class:`~bmxnet_ext.binary.blocks.DenseBlock`) or adds into the last ``growth`` (``"i"``,
    :class:`~bmxnet_ext.binary.blocks.ImprovementBlock`). Built by :meth:`from_blocks`; parameters
    ``unit{i}_packed_weight`` (int32), ``unit{i}_threshold_sign`` and
    ``unit{i}_threshold_bias`` (float32, ``(C_i,)``).
    """

    def __init__(self, in_channels, units, growth, kernel, dilate, pad_value, offset, **kwargs):
        super().__init__(**kwargs)
        self._units = units
        self._attrs = {"in_channels": in_channels, "growth": growth, "units": units,
                       "kernel": kernel, "dilate": dilate, "offset": offset,
                       "pad_value": int(pad_value)}
        self.out_channels = in_channels + growth * units.count("d")
        channels = in_channels
        with self.name_scope():
            for i, kind in enumerate(units):
                words = -(-channels // 32)
                setattr(self, f"unit{i}_packed_weight", self.params.get(
                    f"unit{i}_packed_weight", shape=(growth,) + tuple(kernel) + (words,),
                    dtype="int32", grad_req="null", init=mx.init.Zero()))
                for part in ("sign", "bias"):
                    setattr(self, f"unit{i}_threshold_{part}", self.params.get(
                        f"unit{i}_threshold_{part}", shape=(channels,), grad_req="null",
                        init=mx.init.Zero()))
                channels += growth if kind == "d" else 0

    def __repr__(self):
        return (f"{type(self).__name__}({self._attrs['in_channels']} -> {self.out_channels}, "
                f"units={self._units!r}, growth={self._attrs['growth']}, "
                f"kernel={self._attrs['kernel']}, dilate={self._attrs['dilate']})")

    def hybrid_forward(self, F, x, **params):
        inputs = [x]
        for i in range(len(self._units)):
            inputs += [params[f"unit{i}_packed_weight"], params[f"unit{i}_threshold_sign"],
                       params[f"unit{i}_threshold_bias"]]
        return F.bmx_binary_stage(*inputs, name=OP_NODE_NAME, **self._attrs)


class NormReluPool(HybridBlock):
    """``MaxPool(ReLU(BatchNorm(x)))`` (= ``ReLU(MaxPool(BatchNorm(x)))``) as one
    ``bmx_norm_relu_pool`` operator, sharing the BatchNorm's parameters (same names in an
    export); without a BatchNorm (``norm=None``), ``MaxPool(ReLU(x))``. Built by
    :meth:`from_layers`."""

    _NORM_PARAMS = ("gamma", "beta", "running_mean", "running_var")

    def __init__(self, norm, pool_kwargs, **kwargs):
        if norm is not None:
            kwargs = dict(kwargs, prefix=norm.prefix, params=norm.params)
        super().__init__(**kwargs)
        self._attrs = {"kernel": tuple(pool_kwargs["kernel"]),
                       "stride": tuple(pool_kwargs["stride"]), "pad": tuple(pool_kwargs["pad"])}
        if norm is None:
            self._attrs["norm"] = False
            return
        self._attrs.update(eps=norm._kwargs["eps"], fix_gamma=norm._kwargs["fix_gamma"])
        with self.name_scope():
            for name in self._NORM_PARAMS:
                setattr(self, name, self.params.get(name))

    @staticmethod
    def _parts(layers):
        """(norm or None, pool kwargs) of layers that this block computes, or None."""
        norm = layers[0] if layers and isinstance(layers[0], nn.BatchNorm) else None
        rest = layers[1:] if norm is not None else layers
        pools = [b for b in rest if isinstance(b, nn.MaxPool2D)]
        relus = [b for b in rest if isinstance(b, nn.Activation) and b._act_type == "relu"]
        if (len(relus) != 1 or len(relus) + len(pools) != len(rest)
                or len(pools) > 1 or (norm is None and not pools)):
            return None  # a ReLU alone is one MXNet operator already
        if norm is not None and (norm._kwargs.get("axis", 1) != 1 or norm.fuse_relu):
            return None
        pool = pools[0]._kwargs if pools else {"kernel": (1, 1), "stride": (1, 1),
                                                "pad": (0, 0), "pool_type": "max"}
        if (pool.get("pool_type") != "max" or pool.get("global_pool")
                or pool.get("pooling_convention", "valid") != "valid"
                or pool.get("layout", "NCHW") not in ("NCHW", None)
                or any(p >= k for p, k in zip(pool["pad"], pool["kernel"]))):
            return None
        return norm, pool

    @classmethod
    def from_layers(cls, layers):
        """The fused form of ``[BatchNorm, MaxPool2D, relu]``, ``[BatchNorm, relu, MaxPool2D]``,
        ``[BatchNorm, relu]`` (a 1x1 window), ``[relu, MaxPool2D]`` or ``[MaxPool2D, relu]`` (in
        that order in a HybridSequential), or None when they are something else or the fused
        operator does not reproduce them exactly on a probe."""
        parts = cls._parts(list(layers))
        if parts is None:
            return None
        norm, pool = parts
        block = cls(norm, pool)
        channels = norm.gamma.shape[0] if norm is not None else 5
        probe = np.random.RandomState(0).standard_normal((2, channels, 13, 11)) * 2
        probe = mx.nd.array(probe.astype(np.float32))
        expected = probe
        for layer in layers:
            expected = layer(expected)
        if not np.array_equal(block(probe).asnumpy(), expected.asnumpy()):
            name = norm.name if norm is not None else layers[0].name
            warnings.warn(f"{name}: the fused (BatchNorm ->) ReLU (-> max pooling) does not "
                          "reproduce MXNet's operators; keeping them", stacklevel=3)
            return None
        return block

    def hybrid_forward(self, F, x, **norm):
        inputs = [norm[name] for name in self._NORM_PARAMS] if norm else []
        return F.bmx_norm_relu_pool(x, *inputs, name=OP_NODE_NAME, **self._attrs)


class XnorResidualUnit(HybridBlock):
    """``x + BatchNorm(ReLU(binary_conv(x)))`` (QuickNet's residual block) as one
    ``bmx_binary_conv2d`` whose output write applies the ReLU and the BatchNorm and adds ``x``,
    instead of three more passes over the output. Holds the packed convolution's parameters and
    the BatchNorm's (same names as in the unfused export). Built by :meth:`from_layers`."""

    def __init__(self, conv, norm, **kwargs):
        super().__init__(prefix=conv.prefix, **kwargs)
        self._attrs = dict(conv._attrs, post_relu=True, post_norm=True, residual=True,
                           eps=norm._kwargs["eps"], fix_gamma=norm._kwargs["fix_gamma"])
        self.params.update(conv.params)
        self.params.update(norm.params)
        self.packed_weight = conv.packed_weight
        self.norm_gamma, self.norm_beta = norm.gamma, norm.beta
        self.norm_mean, self.norm_var = norm.running_mean, norm.running_var

    @classmethod
    def from_layers(cls, conv, norm):
        """The fused form of ``x + norm(relu(conv(x)))`` for a packed ``conv``
        (:class:`XnorConv2D` without bias, scale or thresholds) and an ``nn.BatchNorm`` ``norm``,
        or None when they are something else or the fused operator does not reproduce them
        exactly on a probe."""
        if (not isinstance(conv, XnorConv2D) or not isinstance(norm, nn.BatchNorm)
                or conv.bias is not None or conv.scale is not None
                or conv.threshold_sign is not None or norm._kwargs.get("axis", 1) != 1
                or norm.fuse_relu):
            return None
        block = cls(conv, norm)
        channels = conv._attrs["in_channels"]
        probe = np.random.RandomState(0).standard_normal((2, channels, 9, 7)) * 2
        probe = mx.nd.array(probe.astype(np.float32))
        try:
            got = block(probe).asnumpy()
        except mx.base.MXNetError:  # the output's shape is not the input's: no residual form
            return None
        expected = probe + norm(mx.nd.relu(conv(probe)))
        if not np.array_equal(got, expected.asnumpy()):
            warnings.warn(f"{norm.name}: the binary convolution with its ReLU, BatchNorm and "
                          "residual addition in one operator does not reproduce MXNet's "
                          "operators; keeping them", stacklevel=3)
            return None
        return block

    def hybrid_forward(self, F, x, packed_weight, norm_gamma, norm_beta, norm_mean, norm_var):
        return F.bmx_binary_conv2d(x, packed_weight, norm_gamma, norm_beta, norm_mean, norm_var,
                                   name=OP_NODE_NAME, **self._attrs)


class GroupedConv2D(HybridBlock):
    """A grouped float ``nn.Conv2D`` with few input channels per group (MeliusNet's grouped stem)
    as one ``bmx_grouped_conv2d`` operator, sharing the convolution's weight (same name in an
    export).

    MXNet runs these through oneDNN at a low rate (its gemm convolution for fewer than 8 input
    channels per group: about 1.3 multiply-adds a cycle) and in blocked memory layouts the next
    operators must reorder. The operator sums in one of oneDNN's orders (``order="gemm"`` or
    ``"direct"`` with an input channel ``block``, ``src/kernels/group_conv.h``), a few times
    faster, and writes plain NCHW. Which order this machine's oneDNN uses depends on its
    instruction set, so :meth:`from_layer` takes the first that reproduces MXNet bit for bit on
    probes, or none."""

    # Spatial probe sizes: output pixel counts with each kind of last 16-pixel block (none, short,
    # long) at stride 1 and 2, and a batch of two.
    _PROBE_SHAPES = ((1, 16, 16), (2, 13, 13), (1, 5, 7), (1, 17, 17), (2, 9, 30))
    # (order, block) candidates, in the order they are tried.
    _ORDERS = (("gemm", 8), ("direct", 8), ("direct", 16))
    # The largest input channels per group this is for (oneDNN is fast on wider groups).
    MAX_GROUP_CHANNELS = 8

    def __init__(self, conv, order="gemm", block=8, **kwargs):
        super().__init__(prefix=conv.prefix, params=conv.params, **kwargs)
        k = conv._kwargs
        self._attrs = {"kernel": tuple(k["kernel"]), "stride": tuple(k["stride"]),
                       "pad": tuple(k["pad"]), "num_filter": k["num_filter"],
                       "num_group": k["num_group"], "order": order, "block": block}
        with self.name_scope():
            self.weight = self.params.get("weight")

    @classmethod
    def applies_to(cls, layer):
        """True for a grouped ``nn.Conv2D`` with a spatial window, 2 to
        :attr:`MAX_GROUP_CHANNELS` input channels per group, no bias, no dilation and no
        activation. Depthwise and ungrouped convolutions stay MXNet's: measured in a network
        (MeliusNet22, QuickNet), oneDNN's kernels for them are as fast or faster."""
        if not isinstance(layer, nn.Conv2D) or layer.bias is not None or layer.act is not None:
            return False
        k = layer._kwargs
        groups, in_channels = k["num_group"], layer._in_channels
        per_group = in_channels // groups
        return (in_channels > 0 and per_group <= cls.MAX_GROUP_CHANNELS
                and groups > 1 and per_group > 1
                and len(k["kernel"]) == 2 and tuple(k["kernel"]) != (1, 1)
                and tuple(k["dilate"]) == (1, 1) and k.get("layout", "NCHW") == "NCHW")

    @classmethod
    def from_layer(cls, conv):
        """The operator form of ``conv`` in the first order that reproduces MXNet's Convolution
        exactly on every probe, or None when :meth:`applies_to` is false or no order does (this
        machine's oneDNN sums otherwise; no warning, the convolution simply stays as it is)."""
        if not cls.applies_to(conv):
            return None
        rng = np.random.RandomState(0)
        probes = []
        for batch, height, width in cls._PROBE_SHAPES:
            probe = rng.standard_normal((batch, conv._in_channels, height, width)) * 2
            probe[probe < -1.5] = 0  # zeros, as after a ReLU
            probe = mx.nd.array(probe.astype(np.float32))
            try:
                probes.append((probe, conv(probe).asnumpy().view(np.int32)))
            except mx.base.MXNetError:  # the window does not fit the probe
                continue
        for order, block in cls._ORDERS:
            candidate = cls(conv, order, block)
            if probes and all(np.array_equal(candidate(probe).asnumpy().view(np.int32), expected)
                              for probe, expected in probes):
                return candidate
        return None

    def hybrid_forward(self, F, x, weight):
        return F.bmx_grouped_conv2d(x, weight, name=OP_NODE_NAME, **self._attrs)
