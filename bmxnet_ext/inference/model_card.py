"""The model card written next to exported networks: ``{prefix}-model.json``.

It records what a symbol file cannot: which zoo model (and arguments) the graph came from, the
input size and normalization it expects, its class names, and the SHA-256 of the params file
exported with it (so a damaged params file is caught before it is used). ``bmxnet-ext convert``
reads it to rebuild a trained network from an export; ``bmxnet-ext predict`` reads it to
preprocess images; :func:`bmxnet_ext.load_xnor` checks the params file against it.
"""
import json
import os

from ..utils.files import atomic_write_json, sha256_file
from ..utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ModelFileError", "card_path", "write_model_card",
           "read_model_card", "check_params_checksum", "read_params_file",
           "load_exported_parameters"]



class ModelFileError(ValueError):
    """An exported file (params, symbol, model card) is damaged, truncated or belongs to
    another network; the message names the file and what to do."""


def card_path(prefix):
    """Path of the model card of the export at ``prefix``."""
    return f"{prefix}-model.json"


def write_model_card(prefix, model, model_kwargs=None, input_size=224, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, class_names=None, packed=False):
    """Writes ``{prefix}-model.json`` atomically and returns its path.

    ``model`` is a zoo name (or None for a network built by hand), ``model_kwargs`` the keyword
    arguments it was built with, ``mean``/``std`` the per-channel normalization of 0-255 pixels
    (one value per input channel), ``packed`` whether the export is a converted network. Write it
    after the export: the SHA-256 of ``{prefix}-0000.params``, if that exists, is recorded.
    """
    if class_names is not None:
        class_names = [str(name) for name in class_names]
    params_file = f"{prefix}-0000.params"
    card = {"model": model, "model_kwargs": dict(model_kwargs or {}),
            "input_size": int(input_size), "mean": list(mean), "std": list(std),
            "class_names": class_names, "packed": bool(packed),
            "params_sha256": sha256_file(params_file) if os.path.isfile(params_file) else None}
    path = card_path(prefix)
    atomic_write_json(path, card)
    return path


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
    if not isinstance(card, dict):
        raise ModelFileError(f"{path} is not a model card (a JSON object); export the network "
                             "again or delete the card")
    missing = {"model", "input_size", "mean", "std"} - set(card)
    if missing:
        raise ModelFileError(f"{path} lacks the fields {sorted(missing)}; export the network "
                             "again or delete the card")
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
