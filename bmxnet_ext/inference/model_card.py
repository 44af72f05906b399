"""The model card written next to exported networks: ``{prefix}-model.json``.

It records what a symbol file cannot: which zoo model (and arguments) the graph came from, the
input size and normalization it expects, its classes and their names, whether its weights were
trained and from which checkpoint, and the SHA-256 of the params file exported with it (so a
damaged params file is caught before it is used). :func:`bmxnet_ext.export` writes it with every
export; ``bmxnet-ext convert`` reads it to rebuild a trained network from a float export;
:class:`bmxnet_ext.Predictor` reads it to preprocess images and name classes;
:func:`bmxnet_ext.load_xnor` checks the export against it.
"""
import json
import os

from ..utils.files import sha256_file
from ..utils.imagenet import IMAGENET_MEAN, IMAGENET_STD, eval_resize

__all__ = ["ModelFileError", "CARD_FORMAT", "card_path", "make_card", "check_card",
           "read_model_card", "check_params_checksum", "read_params_file",
           "load_exported_parameters"]

CARD_FORMAT = 2  # 1: written before the card had format, classes, stem, fused, trained, source

class ModelFileError(ValueError):
    """An exported file (params, symbol, model card) is damaged, truncated or belongs to
    another network; the message names the file and what to do."""


def card_path(prefix):
    """Path of the model card of the export at ``prefix``."""
    return f"{prefix}-model.json"


def make_card(*, model=None, model_kwargs=None, input_size=224, resize=None, mean=IMAGENET_MEAN,
              std=IMAGENET_STD, classes=None, class_names=None, stem=None, packed=False,
              fused=False, trained=None, source_checkpoint=None, params_sha256=None):
    """The model card of an export as a dict; :func:`bmxnet_ext.export` writes it.

    ``model`` / ``model_kwargs``: the zoo name and keyword arguments that rebuild the network
    (None for a network built by hand); ``input_size``: height = width of the input;
    ``resize``: the shorter side images are resized to before the center crop (None: the
    ImageNet rule, :func:`bmxnet_ext.utils.imagenet.eval_resize`);
    ``mean`` / ``std``: per-channel normalization of 0-255 pixels, one value per input channel;
    ``classes`` / ``class_names``: number of outputs and their names (None: unnamed);
    ``stem``: the stem the network was built with; ``packed`` / ``fused``: the form of the
    export; ``trained``: False for random weights (``predict`` warns), None when not stated;
    ``source_checkpoint``: what the weights were loaded from; ``params_sha256``: the SHA-256 of
    the params file exported with it.
    """
    card = {"format": CARD_FORMAT, "model": model, "model_kwargs": dict(model_kwargs or {}),
            "input_size": input_size,
            "resize": resize if resize is not None else eval_resize(input_size),
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "classes": classes,
            "class_names": None if class_names is None else [str(n) for n in class_names],
            "stem": stem, "packed": bool(packed), "fused": bool(fused), "trained": trained,
            "source_checkpoint": source_checkpoint, "params_sha256": params_sha256}
    check_card(card, "the model card")
    return card


def check_card(card, path):
    """Raises :class:`ModelFileError` naming ``path`` unless ``card`` is a consistent card."""
    def fail(problem):
        raise ModelFileError(f"{path} {problem}; export the network again or delete the card")

    if not isinstance(card, dict):
        fail("is not a model card (a JSON object)")
    missing = {"model", "input_size", "mean", "std"} - set(card)
    if missing:
        fail(f"lacks the fields {sorted(missing)}")
    size = card["input_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        fail(f"has input_size {size!r}, not a positive integer")
    mean, std = card["mean"], card["std"]
    if (not isinstance(mean, list) or not isinstance(std, list) or not mean
            or len(mean) != len(std)
            or not all(isinstance(v, (int, float)) for v in mean + std)
            or not all(v > 0 for v in std)):
        fail(f"has mean {mean!r} / std {std!r}: expected two lists of numbers, one per input "
             "channel, std > 0")
    resize = card.get("resize")
    if resize is not None and (not isinstance(resize, int) or resize < size):
        fail(f"has resize {resize!r}: expected an integer >= input_size ({size})")
    classes, names = card.get("classes"), card.get("class_names")
    if classes is not None and (not isinstance(classes, int) or classes < 1):
        fail(f"has classes {classes!r}, not a positive integer")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            fail("has class_names that are not a list of strings")
        if classes is not None and len(names) != classes:
            fail(f"names {len(names)} classes for a network with {classes} outputs")


def read_model_card(prefix):
    """The model card of the export at ``prefix`` as a dict, or None when there is none."""
    path = card_path(prefix)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            card = json.load(f)
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{path} is not a readable model card ({err}); export the network "
                             "again or delete the card") from err
    check_card(card, path)
    return card


def check_params_checksum(prefix, params_file):
    """Raises :class:`ModelFileError` when the model card of ``prefix`` records a SHA-256 that
    ``params_file`` does not have (a damaged, truncated or replaced file)."""
    card = read_model_card(prefix)
    expected = card.get("params_sha256") if card else None
    if (expected and params_file == f"{prefix}-0000.params"
            and sha256_file(params_file) != expected):
        raise ModelFileError(
            f"{params_file} is damaged or was replaced: its SHA-256 differs from the one "
            f"{card_path(prefix)} recorded when it was exported. Export the network again (or, "
            f"if you re-exported it yourself on purpose, delete {card_path(prefix)})")


def read_params_file(params_file):
    """The arrays of an MXNet ``.params`` file as a dict; :class:`ModelFileError` when MXNet
    cannot read it (truncated, damaged, not a params file)."""
    import mxnet as mx

    if not os.path.isfile(params_file):
        raise FileNotFoundError(f"no params file at {params_file}")
    try:
        loaded = mx.nd.load(params_file)
    except (mx.base.MXNetError, ValueError, MemoryError) as err:
        # UnicodeDecodeError (a damaged name) is a ValueError
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ModelFileError(
            f"{params_file} is not a readable MXNet params file: it is truncated or damaged "
            f"({reason}). Export or save the network again") from err
    if not isinstance(loaded, dict):
        raise ModelFileError(f"{params_file} holds unnamed arrays, not the parameters of a "
                             "network (save_parameters or export write named ones)")
    return loaded


def load_exported_parameters(net, params_file, ctx=None):
    """Loads the ``.params`` file of ``net.export`` (names carry the exporting network's prefix,
    e.g. ``meliusnet0_``) into a freshly built ``net`` of the same architecture, whatever its
    own prefix. Raises :class:`ModelFileError` for a damaged file and for one of another network
    (naming the first parameters that do not match)."""
    import mxnet as mx

    def strip(name):
        return name.split("_", 1)[1] if "_" in name else name

    loaded = {strip(key.split(":", 1)[-1]): value
              for key, value in read_params_file(params_file).items()}
    full_names = {strip(name): name for name in net.collect_params()}
    missing = sorted(set(full_names) - set(loaded))
    extra = sorted(set(loaded) - set(full_names))
    if missing or extra:
        raise ModelFileError(f"{params_file} does not fit this network: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}; it was exported from another network "
                             "(or other model arguments, see the model card)")
    params = net.collect_params()
    wrong = [(key, params[full_names[key]].shape, value.shape) for key, value in loaded.items()
             if not _shape_fits(params[full_names[key]].shape, value.shape)]
    if wrong:
        key, expected, got = wrong[0]
        raise ModelFileError(f"{params_file} does not fit this network: {key} has shape {got}, "
                             f"the network expects {expected} ({len(wrong)} parameters differ); "
                             "it was exported from a network built with other arguments "
                             "(classes, stem, ...)")
    params.load_dict({full_names[key]: value for key, value in loaded.items()},
                     ctx=ctx or mx.cpu())


def _shape_fits(expected, got):
    """Gluon shapes may hold 0 (unknown until the first call) where the file has a size."""
    return expected is None or (len(expected) == len(got) and
                                all(e in (0, g) for e, g in zip(expected, got)))
