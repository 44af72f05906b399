"""The model card written next to exported networks: ``{prefix}-model.json``.

It records what a symbol file cannot: which zoo model (and arguments) the graph came from, the
input size and normalization it expects, and its class names. ``bmxnet-ext convert`` reads it to
rebuild a trained network from an export; ``bmxnet-ext predict`` reads it to preprocess images.
"""
import json
import os

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "card_path", "write_model_card", "read_model_card"]

IMAGENET_MEAN = (123.68, 116.779, 103.939)
IMAGENET_STD = (58.393, 57.12, 57.375)


def card_path(prefix):
    """Path of the model card of the export at ``prefix``."""
    return f"{prefix}-model.json"


def write_model_card(prefix, model, model_kwargs=None, input_size=224, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, class_names=None, packed=False):
    """Writes ``{prefix}-model.json`` atomically and returns its path.

    ``model`` is a zoo name (or None for a network built by hand), ``model_kwargs`` the keyword
    arguments it was built with, ``mean``/``std`` the per-channel normalization of 0-255 pixels
    (one value per input channel), ``packed`` whether the export is a converted network.
    """
    if class_names is not None:
        class_names = [str(name) for name in class_names]
    card = {"model": model, "model_kwargs": dict(model_kwargs or {}),
            "input_size": int(input_size), "mean": list(mean), "std": list(std),
            "class_names": class_names, "packed": bool(packed)}
    path = card_path(prefix)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(card, f, indent=2)
    os.replace(tmp, path)
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
        raise ValueError(f"{path} is not a readable model card: {err}") from err
    missing = {"model", "input_size", "mean", "std"} - set(card)
    if missing:
        raise ValueError(f"{path} lacks the fields {sorted(missing)}")
    return card


def load_exported_parameters(net, params_file, ctx=None):
    """Loads the ``.params`` file of ``net.export`` (names carry the exporting network's prefix,
    e.g. ``meliusnet0_``) into a freshly built ``net`` of the same architecture, whatever its
    own prefix. Raises ValueError naming the first parameters that do not match."""
    import mxnet as mx

    def strip(name):
        return name.split("_", 1)[1] if "_" in name else name

    loaded = {strip(key.split(":", 1)[-1]): value for key, value in mx.nd.load(params_file).items()}
    full_names = {strip(name): name for name in net.collect_params()}
    missing = sorted(set(full_names) - set(loaded))
    extra = sorted(set(loaded) - set(full_names))
    if missing or extra:
        raise ValueError(f"{params_file} does not fit this network: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    net.collect_params().load_dict({full_names[key]: value for key, value in loaded.items()},
                                   ctx=ctx or mx.cpu())
