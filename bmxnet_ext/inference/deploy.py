"""Deployment: one :func:`export` from a trained network to the files a user ships.

Every export is three files that appear together and complete, or not at all::

    {prefix}-symbol.json    the graph (packed: bmx_* operators; float: the training graph)
    {prefix}-0000.params    its parameters (packed: 1-bit weights as int32 words)
    {prefix}-model.json     the model card (bmxnet_ext.inference.model_card): how to rebuild,
                            preprocess and name the outputs, and the params file's SHA-256

The training example (``--export`` / ``--export-packed``), ``bmxnet-ext convert``, the demo and
library users all export through here. Reload with :func:`bmxnet_ext.load_xnor` or
:class:`bmxnet_ext.Predictor`.
"""
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import mxnet as mx

from ..utils.files import replacing, sha256_file
from ..utils.imagenet import IMAGENET_MEAN, IMAGENET_STD
from .converter import convert_to_xnor
from .model_card import card_path, make_card

__all__ = ["ExportedFiles", "export"]


@dataclass(frozen=True)
class ExportedFiles:
    """The files one :func:`export` wrote, and its model card."""

    prefix: str
    symbol: str
    params: str
    card_file: str
    card: dict


def _json_ready(kwargs):
    """``kwargs`` as the card stores them, or None when one of them is no JSON value (such a
    network cannot be rebuilt from its card; it can still be loaded from the export)."""
    try:
        return json.loads(json.dumps(kwargs))
    except (TypeError, ValueError):
        return None


def _spec(net, model, model_kwargs):
    model = model if model is not None else getattr(net, "model_name", None)
    if model_kwargs is None:
        model_kwargs = getattr(net, "model_kwargs", {}) if model is not None else {}
    kwargs = _json_ready(dict(model_kwargs))
    return (model, kwargs) if kwargs is not None else (None, {})


def _input_shape(net, input_shape, channels):
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 4 or shape[2] != shape[3] or min(shape) < 1:
            raise ValueError(f"export: input_shape must be (N, C, S, S) with positive sizes, "
                             f"got {input_shape}")
        return shape
    size = getattr(net, "input_size", None)
    if size is None:
        raise ValueError(f"export: {type(net).__name__} declares no input_size; pass "
                         "input_shape=(1, C, S, S)")
    return (1, channels, int(size), int(size))


def _first_context(net):
    return next(iter(net.collect_params().values())).list_ctx()[0]


def export(net, prefix, *, packed=True, fuse=True, input_shape=None, class_names=None,
           mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=None, trained=None, source_checkpoint=None,
           model=None, model_kwargs=None, verify=True):
    """Exports a trained network, by default in its packed fused form, with its model card.

    Parameters
    ----------
    net : HybridBlock
        The trained network (binary layers with latent float weights), on any devices: the
        packed form is computed on a CPU copy, and ``net`` is not modified (a float export
        hybridizes it and runs it once, as ``HybridBlock.export`` needs).
    prefix : str
        Path prefix of the three files; its directory is created.
    packed : bool
        Convert with :func:`~bmxnet_ext.convert_to_xnor` (verified on a probe) and export the
        packed form; False exports the float training graph.
    fuse : bool
        With ``packed``: fold BatchNorm into the binarizations and run dense / improvement
        stages as one operator (the deployment form). Ignored for float exports.
    input_shape : tuple, optional
        ``(1, C, S, S)``; default: ``net.input_size`` (zoo networks declare it) and one
        channel per ``mean`` value.
    class_names : list of str, optional
        Names of the outputs in order (image-folder names, the ``.classes`` of RecordIO).
    mean, std : sequence of float
        Per-channel normalization of 0-255 pixels the network was trained with.
    resize : int, optional
        Shorter side images are resized to before the center crop, as in validation
        (default: ``round(S / 0.875)``).
    trained : bool, optional
        False records random weights (``predict`` warns); None leaves it unstated.
    source_checkpoint : str, optional
        Where the weights came from (a checkpoint directory or params file), recorded.
    model, model_kwargs : optional
        Zoo name and arguments that rebuild the network; default: what the zoo recorded on
        ``net`` (``net.model_name`` / ``net.model_kwargs``).
    verify : bool
        With ``packed``: check the converted network against ``net`` on a probe input.

    Returns
    -------
    ExportedFiles
        The paths and the card. The files replace an earlier export at ``prefix`` only once all
        of them are written.
    """
    if len(mean) != len(std):
        raise ValueError(f"export: mean has {len(mean)} values and std {len(std)}; give one "
                         "per input channel")
    shape = _input_shape(net, input_shape, len(mean))
    model, model_kwargs = _spec(net, model, model_kwargs)
    if packed:
        out = convert_to_xnor(net, input_shape=shape, verify=verify, fuse=fuse)
        ctx = mx.cpu()
    else:
        out, ctx = net, _first_context(net)
    out.hybridize()
    classes = int(out(mx.nd.zeros(shape, ctx=ctx)).shape[-1])
    if class_names is not None and len(class_names) != classes:
        raise ValueError(f"export: {len(class_names)} class names for a network with {classes} "
                         "outputs")

    prefix = os.fspath(prefix)
    directory = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(directory, exist_ok=True)
    files = (f"{prefix}-symbol.json", f"{prefix}-0000.params", card_path(prefix))
    stem = getattr(net, "stem_name", None)
    with replacing(*files) as (symbol_tmp, params_tmp, card_tmp):
        scratch = tempfile.mkdtemp(dir=directory, prefix=".export-")
        try:
            out.export(os.path.join(scratch, "net"))
            os.replace(os.path.join(scratch, "net-symbol.json"), symbol_tmp)
            os.replace(os.path.join(scratch, "net-0000.params"), params_tmp)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        card = make_card(model=model, model_kwargs=model_kwargs, input_size=shape[-1],
                         resize=resize, mean=mean, std=std, classes=classes,
                         class_names=class_names,
                         stem=stem, packed=packed, fused=bool(packed and fuse),
                         trained=trained, source_checkpoint=source_checkpoint,
                         params_sha256=sha256_file(params_tmp))
        with open(card_tmp, "w") as f:
            json.dump(card, f, indent=2)
            f.write("\n")
    return ExportedFiles(prefix, files[0], files[1], files[2], card)
