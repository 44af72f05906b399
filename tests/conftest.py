"""Shared test set-up.

The suite tests the *installed* package. A Python started with ``-c`` or ``-m`` puts its working
directory first on sys.path, so a subprocess started from the repository root would import the
unbuilt source tree's ``bmxnet_ext/`` instead; PYTHONSAFEPATH (Python >= 3.11) turns that off for
every interpreter the tests start. Tests still pass an explicit ``cwd`` where they can.
"""
import os

os.environ.setdefault("PYTHONSAFEPATH", "1")

import pytest  # noqa: E402

# --- helpers shared by test modules (import them: ``from conftest import trained_like``) -------


def trained_like(net, shape, seed=0, rng=None, negative_scales=False):
    """Initializes ``net`` (Xavier, magnitude 2), completes deferred shapes with one forward pass
    of zeros of ``shape`` and gives every BatchNorm non-trivial statistics and affine terms, so
    that comparisons are not degenerate. ``rng`` (default: seeded with ``seed``, which also
    seeds MXNet) draws them; ``negative_scales`` gives gamma random signs. Returns ``net``."""
    import mxnet as mx
    import numpy as np

    if rng is None:
        mx.random.seed(seed)
        rng = np.random.RandomState(seed)
    net.initialize(mx.init.Xavier(magnitude=2))
    net(mx.nd.zeros(shape))
    for name, param in net.collect_params().items():
        if name.endswith(("running_mean", "beta")):
            param.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, param.shape)))
        elif name.endswith("running_var"):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
        elif name.endswith("gamma"):
            gamma = rng.uniform(0.5, 1.5, param.shape)
            if negative_scales:
                gamma = gamma * rng.choice([-1, 1], param.shape)
            param.set_data(mx.nd.array(gamma))
    return net


def forward_backward(block, x, hybridize, head_grad=None):
    """``(output, input gradient)`` of ``block`` on numpy ``x`` (hybridized or not), with the
    output gradient ``head_grad`` (default: ones)."""
    import mxnet as mx

    if hybridize:
        block.hybridize()
    data = mx.nd.array(x)
    data.attach_grad()
    with mx.autograd.record():
        y = block(data)
    y.backward(mx.nd.ones_like(y) if head_grad is None else mx.nd.array(head_grad))
    return y.asnumpy(), data.grad.asnumpy()


def numpy_pack(x):
    """Reference of the bit layout: (N, C, H, W) floats -> (N, H, W, ceil(C/32)) int32 words,
    bit c % 32 of word c // 32 is x >= 0 (NaN: 0). Conv weights OIHW pack to the op's
    (O, kh, kw, words) the same way."""
    import numpy as np

    n, c, h, w = x.shape
    words = -(-c // 32)
    bits = np.zeros((n, h, w, words * 32), dtype=np.uint64)
    bits[..., :c] = (x >= 0).transpose(0, 2, 3, 1)
    weights = np.uint64(1) << np.arange(32, dtype=np.uint64)
    return (bits.reshape(n, h, w, words, 32) * weights).sum(axis=-1).astype(np.uint32).view(
        np.int32)


def op_library():
    """The loaded op library (the handle MXNet holds) with the C entries the tests call."""
    import ctypes

    import bmxnet_ext

    lib = bmxnet_ext.ops.native()
    lib.bmx_pool_jobs.restype = ctypes.c_int64
    return lib


def _isa_names():
    from bmxnet_ext.inference import _kernels

    return _kernels.ISAS


@pytest.fixture(params=_isa_names())
def op_isa(request):
    """Makes the kernels (the op library's included) use one path for the test, then restores
    the previous."""
    import bmxnet_ext

    if request.param not in bmxnet_ext.kernels.supported_isas():
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    with bmxnet_ext.kernels.use_isa(request.param):
        yield request.param


def conv_inputs(case, seed=0):
    """``(x, w, geometry)`` for a convolution case of ``binary_reference.CONV_CASES``: random
    floats (specials included) for the input and the OIHW latent weights, and the keyword
    arguments of ``binary_reference.conv2d``."""
    import binary_reference as ref

    x = ref.random_floats((case["n"], case["c"], case["h"], case["w"]), seed)
    w = ref.random_floats((case["c_out"], case["c"] // case["groups"], case["k"], case["k"]),
                          seed + 1)
    geometry = dict(stride=case["stride"], pad=case["pad"], dilate=case["dilate"],
                    groups=case["groups"])
    return x, w, geometry

CLASS_NAMES = ("cat", "dog", "bird")


TINY_MELIUSNET = dict(blocks=[1, 1, 1], reductions=[1 / 2, 1 / 2], stem="thumbnail",
                      classes=len(CLASS_NAMES), input_size=16)


def _tiny_network(channels):
    """A small binary classifier (random weights) of 3 classes on 16x16 images: the demo's
    MeliusNet for RGB, a hand-built stem + BinaryConvolution + head for one channel (the zoo's
    stems take RGB)."""
    import mxnet as mx

    from bmxnet_ext import BinaryConvolution, model_zoo

    if channels == 3:
        net = model_zoo.get_model("meliusnet_flex", **TINY_MELIUSNET)
    else:
        net = mx.gluon.nn.HybridSequential()
        net.add(mx.gluon.nn.Conv2D(16, 3, padding=1, in_channels=channels),
                mx.gluon.nn.BatchNorm(in_channels=16),
                BinaryConvolution(32, in_channels=16),
                mx.gluon.nn.BatchNorm(in_channels=32),
                mx.gluon.nn.GlobalAvgPool2D(), mx.gluon.nn.Flatten(),
                mx.gluon.nn.Dense(len(CLASS_NAMES), in_units=32))
    mx.random.seed(0)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    _calibrate_batch_norms(net, mx.nd.random.normal(shape=(32, channels, 16, 16)))
    return net


def _calibrate_batch_norms(net, probe):
    """Sets every BatchNorm's running statistics to those of ``probe`` (one training pass with
    momentum 0; MXNet updates them in the backward pass). Without it random binary layers
    produce counts in the hundreds, the classifier saturates, and every image gets one class
    with probability 1: tests could not tell one image, or one preprocessing, from another."""
    import mxnet as mx

    from bmxnet_ext.utils.blocktree import iter_blocks

    norms = [block for block in iter_blocks(net) if isinstance(block, mx.gluon.nn.BatchNorm)]
    for norm in norms:
        norm._kwargs["momentum"] = 0.0
    with mx.autograd.record():
        out = net(probe)
    out.backward()
    for norm in norms:
        norm._kwargs["momentum"] = 0.9


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory):
    """``make(packed=True, channels=3, class_names=CLASS_NAMES) -> prefix``: a tiny network of
    3 classes on 16x16 images, exported (converted to the packed form or not) with its model
    card. Cached per argument set for the session."""
    made = {}

    def make(packed=True, channels=3, class_names=CLASS_NAMES):
        key = (packed, channels, class_names)
        if key not in made:
            import mxnet as mx

            import bmxnet_ext

            prefix = str(tmp_path_factory.mktemp("export") / "tiny")
            mean, std = ([123.68, 116.779, 103.939], [58.393, 57.12, 57.375]) if channels == 3 \
                else ([127.0], [64.0])
            bmxnet_ext.export(_tiny_network(channels), prefix, packed=packed,
                              input_shape=(1, channels, 16, 16), mean=mean, std=std,
                              class_names=class_names, trained=True)
            made[key] = prefix
        return made[key]

    return make
