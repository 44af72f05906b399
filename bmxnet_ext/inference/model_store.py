"""Local store of pretrained weights, checked by SHA-256. Nothing is ever downloaded.

The store is a directory, ``$MXNET_HOME/models`` (``~/.mxnet/models`` by default, as gluoncv's),
or the ``root`` given to each function. A model ``NAME`` is two files there:

``NAME.params``
    Gluon parameters, as written by ``net.save_parameters``.
``NAME.sha256``
    Its SHA-256 in ``sha256sum`` format (``<hex digest>  NAME.params``), so
    ``sha256sum -c NAME.sha256`` checks it by hand too.

:func:`register_pretrained` writes both from a trained network or a checkpoint file;
``get_model(NAME, pretrained=True)`` calls :func:`load_pretrained`.
"""
import os
import re
import shutil

import mxnet as mx

from ..utils.files import atomic_write, sha256_file

__all__ = ["ChecksumError", "store_root", "pretrained_file", "load_pretrained",
           "register_pretrained"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ChecksumError(ValueError):
    """A stored params file does not match its recorded SHA-256 (corrupt or incomplete)."""


def store_root(root=None):
    """The store directory: ``root`` if given, else ``$MXNET_HOME/models``
    (``MXNET_HOME`` defaults to ``~/.mxnet``)."""
    if root is None:
        root = os.path.join(os.environ.get("MXNET_HOME", os.path.join("~", ".mxnet")), "models")
    return os.path.abspath(os.path.expanduser(root))


def _paths(name, root):
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a model store name is letters, digits, '_', '.', '-' (no path), "
                         f"got {name!r}")
    directory = store_root(root)
    return os.path.join(directory, name + ".params"), os.path.join(directory, name + ".sha256")


def _how_to_add(name, directory):
    return (f"Register trained weights with "
            f"bmxnet_ext.inference.model_store.register_pretrained(net, {name!r}) (or copy "
            f"{name}.params and its {name}.sha256 into {directory}); set MXNET_HOME or pass "
            "root= to use another store.")


def pretrained_file(name, root=None):
    """Path of the verified params file of ``name``.

    Raises FileNotFoundError (saying where it looked and how to add weights) when the params file
    or its checksum is missing, and :class:`ChecksumError` when the file does not match.
    """
    params, checksum = _paths(name, root)
    directory = os.path.dirname(params)
    if not os.path.isfile(params):
        raise FileNotFoundError(f"no pretrained weights for {name!r}: looked for {params}. "
                                + _how_to_add(name, directory))
    if not os.path.isfile(checksum):
        raise FileNotFoundError(f"{params} has no checksum file {checksum}, so it cannot be "
                                "verified. " + _how_to_add(name, directory))
    with open(checksum) as f:
        fields = f.read().split()
    expected = fields[0].lower() if fields else ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ChecksumError(f"{checksum} holds no SHA-256 digest. " + _how_to_add(name, directory))
    actual = sha256_file(params)
    if actual != expected:
        raise ChecksumError(f"{params} is corrupt or incomplete: its SHA-256 is {actual}, "
                            f"{checksum} records {expected}. " + _how_to_add(name, directory))
    return params


def load_pretrained(net, name, root=None, ctx=None):
    """Loads the verified weights of ``name`` from the store into ``net`` (on ``ctx``).

    Raises ValueError when they do not fit ``net`` (a network built with other arguments, e.g.
    ``classes`` or ``stem``, than the one registered).
    """
    path = pretrained_file(name, root)
    try:
        net.load_parameters(path, ctx=ctx)
    except (AssertionError, mx.base.MXNetError) as err:
        raise ValueError(f"the weights in {path} do not fit this {type(net).__name__}; build it "
                         f"with the arguments (classes, stem, ...) of the registered network. "
                         f"MXNet: {str(err).strip().splitlines()[0]}") from err
    return net


def register_pretrained(net_or_params_file, name, root=None):
    """Puts trained weights into the store under ``name`` and records their SHA-256.

    Parameters
    ----------
    net_or_params_file : gluon.Block or str
        A network (its parameters are saved with ``save_parameters``) or the path of a params
        file written by ``save_parameters`` (copied as is).
    name : str
        Store name, e.g. ``"meliusnet22"``: ``get_model(name, pretrained=True)`` then loads it.
    root : str, optional
        Store directory (default: :func:`store_root`). Created if missing.

    Returns the path of the stored params file. Both files are written atomically (temporary
    file + rename), replacing an earlier registration of the same name.
    """
    params, checksum = _paths(name, root)
    directory = os.path.dirname(params)
    if isinstance(net_or_params_file, (str, os.PathLike)):
        source = os.fspath(net_or_params_file)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"register_pretrained: no params file at {source}")
        write = lambda tmp: shutil.copyfile(source, tmp)  # noqa: E731
    elif hasattr(net_or_params_file, "save_parameters"):
        write = net_or_params_file.save_parameters
    else:
        raise TypeError("register_pretrained takes a Gluon block or the path of a params file, "
                        f"got {type(net_or_params_file).__name__}")
    os.makedirs(directory, exist_ok=True)
    atomic_write(params, write)
    line = f"{sha256_file(params)}  {os.path.basename(params)}\n"

    def write_checksum(tmp):
        with open(tmp, "w") as f:
            f.write(line)
    atomic_write(checksum, write_checksum)
    return params
