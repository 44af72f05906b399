"""``bmxnet-ext demo``: the package's main job on an embedded default.

Trains a small MeliusNet (``meliusnet_flex``, thumbnail stem) and its full-precision twin on
scikit-learn's handwritten digits (real images, no download), fed through the ImageNet code path
(the digits written as RecordIO or an image folder, read by :mod:`bmxnet_ext.training.pipelines`)
and trained by :func:`bmxnet_ext.training.fit.fit` with the paper's recipe (RAdam, cosine schedule).
Then it does what a user does with a binary network and checks each step: hybridized == imperative,
conversion to the packed xnor form, export, reload in a fresh Python process with the same
predictions. It ends with accuracy, parameter-file size and latency side by side.
"""
import os
import subprocess
import sys
import tempfile
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..binary.summary import summary
from ..inference.converter import load_xnor
from ..inference.deploy import export
from ..training import recipe
from ..training.data import DIGITS_CLASSES, digits_augmentation, digits_data
from ..training.fit import fit, seed_everything
from ..training.loop import evaluate, predict

IMAGE_SIZE = 16
# A MeliusNet with one DenseBlock + ImprovementBlock per stage: small enough to train in a
# minute or two on 2 CPU cores, the real architecture all the same.
DEMO_ARCHITECTURE = dict(blocks=(1, 1, 1), reductions=(1 / 2, 1 / 2), stem="thumbnail",
                         input_size=IMAGE_SIZE)


def build_demo_network(binary, classes=10):
    """The demo's MeliusNet (``binary=True``) or its full-precision twin (``binary=False``)."""
    from .. import model_zoo  # the CLI's demo may use the zoo; the core package does not

    return model_zoo.get_model("meliusnet_flex", classes=classes,
                               activation="det_sign" if binary else "relu", **DEMO_ARCHITECTURE)


def _whole_set(pipeline):
    """All images and labels of a (validation) pipeline as numpy arrays, in its order."""
    batches = [(data.asnumpy(), label.asnumpy()) for data, label in pipeline]
    return (np.concatenate([d for d, _ in batches]),
            np.concatenate([lab for _, lab in batches]).astype(np.float32))


def _latency_ms(net, sample, repeats=30):
    for _ in range(3):
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


def _predict_in_fresh_process(prefix, images_file):
    """Class predictions of the export at ``prefix`` from a new interpreter (load_xnor)."""
    out_file = images_file + ".pred.npy"
    script = ("import numpy as np, mxnet as mx, bmxnet_ext; "
              f"net = bmxnet_ext.load_xnor({prefix!r}); "
              f"x = mx.nd.array(np.load({images_file!r})); "
              f"np.save({out_file!r}, net(x).asnumpy())")
    # cwd: run outside any source checkout, whose unbuilt bmxnet_ext/ would shadow the install
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600, cwd=os.path.dirname(images_file))
    if result.returncode != 0:
        raise RuntimeError(f"reloading {prefix} in a fresh process failed:\n"
                           f"{result.stderr[-2000:]}")
    return np.load(out_file)


def _train(net, kind, data, demo_recipe, out_dir, seed, quiet):
    train_data, val_data = data
    recipe.prepare_network(net, mx.cpu(), (1, 3, IMAGE_SIZE, IMAGE_SIZE))
    net.hybridize()
    trainer = recipe.make_trainer(net, demo_recipe, len(train_data), kvstore="local")
    start = time.perf_counter()
    fit(net, trainer, train_data, demo_recipe.epochs, val_data=val_data, out_dir=out_dir,
        seed=seed, quiet=quiet, print_fn=lambda line: print(f"  {kind:6s} {line}"))
    return time.perf_counter() - start


def check_out_dir(out_dir):
    """Raises ValueError unless ``out_dir`` is new or an empty directory (a second demo's
    checkpoints and exports would be refused by, or mixed with, the first one's)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} is an existing file, not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty; choose a new or empty directory")


def run_demo(epochs=8, seed=0, quiet=False, batch_size=64, lr=0.01, data_format="recordio",
             out_dir=None):
    """Runs the demo; returns a dict of the figures it printed, per network.

    ``data_format`` picks the pipeline the digits go through: ``"recordio"``
    (``ImageRecordIter``) or ``"folder"`` (gluon ``ImageFolderDataset``). Training logs,
    checkpoints, curves and the exports are written to ``out_dir`` (new or empty; default: a
    new temporary directory), printed at the end. ``quiet``: no progress bars, epoch lines or
    layer table.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if out_dir is not None:
        check_out_dir(out_dir)
        os.makedirs(out_dir, exist_ok=True)
    workdir = out_dir or tempfile.mkdtemp(prefix="bmxnet_demo_")
    seed_everything(seed)
    data = digits_data(data_format, image_size=IMAGE_SIZE, batch_size=batch_size, seed=seed)
    x_test, y_test = _whole_set(data[1])
    test_loader = gluon.data.DataLoader(gluon.data.ArrayDataset(x_test, y_test), 256)
    shape = (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    sample = mx.nd.array(x_test[:1])
    demo_recipe = recipe.get_recipe("meliusnet_flex").replace(
        epochs=epochs, batch_per_device=batch_size, image_size=IMAGE_SIZE, lr=lr)
    print(f"bmxnet-ext demo: handwritten digits (scikit-learn) as {data_format}, "
          f"{data[0].num_samples} train / {len(x_test)} test images at "
          f"{IMAGE_SIZE}x{IMAGE_SIZE}, 10 classes; {demo_recipe.optimizer} lr {lr} "
          f"{demo_recipe.schedule}, {epochs} epochs")

    binary = build_demo_network(binary=True)
    if not quiet:  # the heading of the layer table, which quiet leaves out
        print("\nThe binary network (MeliusNet, blocks (1, 1, 1), thumbnail stem):")
    totals = summary(binary, shape, print_table=not quiet)
    floating = build_demo_network(binary=False)
    times = {kind: _train(net, kind, data, demo_recipe, os.path.join(workdir, kind), seed, quiet)
             for kind, net in (("binary", binary), ("float", floating))}

    print("\nchecks:")
    logits = predict(binary, test_loader)
    weights = os.path.join(workdir, "binary.params")
    binary.save_parameters(weights)
    imperative = build_demo_network(binary=True)
    imperative.load_parameters(weights)
    _check(np.allclose(predict(imperative, test_loader), logits, rtol=1e-4, atol=1e-4),
           "the imperative binary network equals the hybridized one")

    aug = digits_augmentation(IMAGE_SIZE)
    card = dict(input_shape=shape, class_names=DIGITS_CLASSES, mean=aug.mean, std=aug.std,
                resize=aug.val_resize, trained=True)
    exports = {kind: export(net, os.path.join(workdir, "export", kind), packed=packed,
                            source_checkpoint=os.path.join(workdir, source, "checkpoints"),
                            **card)
               for kind, net, packed, source in (("packed", binary, True, "binary"),
                                                 ("binary", binary, False, "binary"),
                                                 ("float", floating, False, "float"))}
    prefixes = {kind: files.prefix for kind, files in exports.items()}
    packed = load_xnor(prefixes["packed"])
    packed_logits = predict(packed, test_loader)
    _check((packed_logits.argmax(1) == logits.argmax(1)).all(),
           "the exported packed (xnor, fused) network predicts the classes of the training "
           "network")
    images_file = os.path.join(workdir, "test_images.npy")
    np.save(images_file, x_test)
    reloaded = _predict_in_fresh_process(prefixes["packed"], images_file)
    _check((reloaded.argmax(1) == packed_logits.argmax(1)).all(),
           "the exported packed model, reloaded in a fresh process, predicts the same classes")
    with warnings.catch_warnings():  # MXNet warns that it cannot guess the input's dtype
        warnings.simplefilter("ignore", UserWarning)
        float_reloaded = gluon.SymbolBlock.imports(prefixes["float"] + "-symbol.json", ["data"],
                                                   prefixes["float"] + "-0000.params")
    _check((predict(float_reloaded, test_loader).argmax(1)
            == predict(floating, test_loader).argmax(1)).all(),
           "the exported float twin, re-imported, predicts the same classes")

    results = {}
    for kind, net in (("binary", binary), ("packed", packed), ("float", floating)):
        results[kind] = {
            "accuracy": evaluate(net, test_loader),
            "train_seconds": times.get("float" if kind == "float" else "binary"),
            "params_bytes": os.path.getsize(prefixes[kind] + "-0000.params"),
            "latency_ms": _latency_ms(net, sample)}
    results["binary"]["size_mib_paper"] = totals["size_mib"]
    _print_table(results)
    print(f"\nTraining logs, curves (curves.png), checkpoints and exports: {workdir}")
    return results


def _print_table(results):
    names = {"binary": "binary (training graph)", "packed": "binary, packed (xnor)",
             "float": "float twin"}
    print()
    print(f"{'network':<26}{'test accuracy':>14}{'train time':>12}{'params file':>14}"
          f"{'latency, batch 1':>18}")
    for kind, r in results.items():
        print(f"{names[kind]:<26}{r['accuracy']:>14.3f}{r['train_seconds']:>11.1f}s"
              f"{r['params_bytes'] / 1024:>10.1f} KiB{r['latency_ms']:>15.2f} ms")
    print("\nThe packed params file holds the binary layers' weights as bits; the stem, "
          "transitions, BatchNorm and classifier stay float32.")
