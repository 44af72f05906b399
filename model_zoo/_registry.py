"""The model registry: ``@register_model``, :func:`get_model`, :func:`list_models`."""
import difflib
import fnmatch
import functools

from mxnet.gluon import Block

__all__ = ["register_model", "get_model", "list_models", "no_pretrained_weights"]

_MODELS = {}


def register_model(fn):
    """Registers a network constructor under its function name; a second one of that name is
    refused with ValueError. Networks it builds carry ``model_name`` and ``model_kwargs`` (the
    keyword arguments given, ``pretrained`` left out), which export records."""
    name = fn.__name__
    if name in _MODELS:
        previous = _MODELS[name]
        raise ValueError(f"a model named {name!r} is already registered (by "
                         f"{previous.__module__}.{previous.__qualname__})")

    @functools.wraps(fn)
    def build(**kwargs):
        net = fn(**kwargs)
        if isinstance(net, Block):
            # What rebuilds this network: bmxnet_ext.export records it in the model card.
            net.model_name = name
            net.model_kwargs = {key: value for key, value in kwargs.items()
                                if key != "pretrained" and value is not None}
        return net

    _MODELS[name] = build
    return build


def list_models(pattern=None):
    """Sorted names of the registered models, optionally filtered by a shell-style ``pattern``
    (``fnmatch``, e.g. ``"meliusnet*"``)."""
    names = sorted(_MODELS)
    if pattern is not None:
        names = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
    return names


def get_model(name, **kwargs):
    """Builds the registered model ``name``.

    Keyword arguments that are ``None`` are dropped, so a caller (e.g. a CLI whose options default
    to None) never overrides the model's own defaults. An unknown name raises ValueError naming
    the closest registered names.
    """
    if name not in _MODELS:
        by_lower = {known.lower(): known for known in _MODELS}
        close = [by_lower[match] for match in
                 difflib.get_close_matches(str(name).lower(), by_lower, n=3, cutoff=0.5)]
        hint = (f"did you mean {', '.join(close)}?" if close
                else f"known models: {', '.join(sorted(_MODELS))}")
        raise ValueError(f"unknown model {name!r}; {hint}")
    return _MODELS[name](**{key: value for key, value in kwargs.items() if value is not None})


def no_pretrained_weights(name):
    """The error for ``pretrained=True`` on a constructor whose structure its arguments decide."""
    return ValueError(f"{name} has no pretrained weights: its structure is whatever its arguments "
                      "make it. Load your own with "
                      "bmxnet_ext.inference.model_store.load_pretrained(net, name) after "
                      "register_pretrained(trained_net, name)")
