"""``bmxnet-ext demo``: the package's main job on an embedded default.

Trains a small binary network and its float twin on scikit-learn's handwritten digits (real
images, no download), then checks what a user relies on: hybridized == imperative, export ->
``SymbolBlock.imports`` predicts the same, and the C++ bit packing agrees with the Cython one. It
ends with a side-by-side table of accuracy, parameter-file size and latency.
"""
import os
import tempfile
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import nn

from . import kernels, ops
from .data import digits_datasets
from .layers import BinaryConvolution
from .training import evaluate, predict, train_epoch

IMAGE_SIZE = 16


def build_demo_network(binary, classes=10, clip_threshold=1.3):
    """A small MeliusNet-like network: float stem, two BN -> sign -> binary 3x3 conv units with
    dense (concatenating) connections, float head. ``binary=False`` gives its float twin (the
    binary units replaced by BN -> ReLU -> 3x3 conv)."""

    def unit(in_channels):
        block = nn.HybridSequential()
        block.add(nn.BatchNorm())
        if binary:
            block.add(BinaryConvolution(32, in_channels=in_channels,
                                        clip_threshold=clip_threshold))
        else:
            block.add(nn.Activation("relu"), nn.Conv2D(32, 3, padding=1, use_bias=False,
                                                       in_channels=in_channels))
        return block

    class DemoNet(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.stem = nn.HybridSequential()
                self.stem.add(nn.Conv2D(32, 3, padding=1, use_bias=False, in_channels=1),
                              nn.BatchNorm(), nn.Activation("relu"))
                self.unit1 = unit(32)
                self.unit2 = unit(64)
                self.head = nn.HybridSequential()
                self.head.add(nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(2),
                              nn.GlobalAvgPool2D(), nn.Dense(classes, in_units=96))

        def hybrid_forward(self, F, x):
            x = self.stem(x)
            x = F.concat(x, self.unit1(x), dim=1)
            x = F.concat(x, self.unit2(x), dim=1)
            return self.head(x)

    return DemoNet(prefix="binary_" if binary else "float_")


def _latency_ms(net, sample, repeats=30):
    net(sample).wait_to_read()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(sample).wait_to_read()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _check(condition, what):
    if not condition:
        raise RuntimeError(f"demo check failed: {what}")
    print(f"  ok  {what}")


def run_demo(epochs=8, seed=0, quiet=False, batch_size=64, lr=2e-3):
    """Runs the demo; returns a dict of the figures it printed."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    mx.random.seed(seed)
    np.random.seed(seed)
    train_set, test_set = digits_datasets(size=IMAGE_SIZE, seed=seed)
    train_loader = gluon.data.DataLoader(train_set, batch_size, shuffle=True, last_batch="keep")
    test_loader = gluon.data.DataLoader(test_set, 256)
    print(f"bmxnet-ext demo: handwritten digits (scikit-learn), {len(train_set)} train / "
          f"{len(test_set)} test images upsampled to {IMAGE_SIZE}x{IMAGE_SIZE}, 10 classes")

    results = {}
    workdir = tempfile.mkdtemp(prefix="bmxnet_demo_")
    for binary in (True, False):
        kind = "binary" if binary else "float"
        net = build_demo_network(binary)
        net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
        net.hybridize()
        trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": lr})
        start = time.perf_counter()
        for epoch in range(epochs):
            loss, acc = train_epoch(net, trainer, train_loader, desc=f"{kind} epoch {epoch + 1}",
                                    quiet=quiet)
            if not quiet:
                print(f"  {kind:6s} epoch {epoch + 1}/{epochs}: loss {loss:.3f}, "
                      f"train accuracy {acc:.3f}")
        train_seconds = time.perf_counter() - start
        accuracy = evaluate(net, test_loader)

        prefix = os.path.join(workdir, kind)
        net.export(prefix)
        params_file = prefix + "-0000.params"
        results[kind] = {"accuracy": accuracy, "train_seconds": train_seconds,
                         "params_bytes": os.path.getsize(params_file),
                         "latency_ms": _latency_ms(net, mx.nd.array(test_set[:1][0]))}

        print(f"checks on the {kind} network:")
        logits = predict(net, test_loader)
        weights_file = prefix + ".weights"
        net.save_parameters(weights_file)
        imperative = build_demo_network(binary)
        imperative.load_parameters(weights_file)
        _check(np.allclose(predict(imperative, test_loader), logits, rtol=1e-4, atol=1e-4),
               "imperative run equals the hybridized one")
        with warnings.catch_warnings():  # MXNet warns that it cannot guess the input's dtype
            warnings.simplefilter("ignore", UserWarning)
            reloaded = gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"], params_file)
        _check((predict(reloaded, test_loader).argmax(1) == logits.argmax(1)).all(),
               "exported and re-imported model predicts the same classes")
        if binary:
            sample = mx.nd.array(test_set[:8][0])
            activations = net.stem(sample)
            _check((ops.sign_pack(activations).asnumpy()
                    == kernels.pack_bits(activations.asnumpy())).all(),
                   "C++ op and Cython bit packing agree on the binary layer's input")

    _print_table(results)
    return results


def _print_table(results):
    print()
    print(f"{'network':<10}{'test accuracy':>15}{'train time':>13}{'params file':>14}"
          f"{'latency (batch 1)':>20}")
    for kind, r in results.items():
        print(f"{kind:<10}{r['accuracy']:>15.3f}{r['train_seconds']:>12.1f}s"
              f"{r['params_bytes'] / 1024:>11.1f} KiB{r['latency_ms']:>17.2f} ms")
    print("\nThe binary network's weights are still stored as float latents here; packing them "
          "to 1 bit comes with convert_to_xnor.")
