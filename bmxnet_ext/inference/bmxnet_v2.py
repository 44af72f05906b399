"""Loads parameters saved by BMXNet-v2's Gluon MeliusNet / BinaryDenseNet into our networks.

BMXNet-v2 (hpi-xnor/BMXNet-v2-examples, ``binary_models/basenet_dense.py`` and
``meliusnet.py``) builds the same layers in the same order as :class:`model_zoo.meliusnet.MeliusNet`,
under other block names. Parameters are matched by structure, group by group:

===================================  ===========================  ===============================
BMXNet-v2 (``save_parameters``)      BMXNet-v2 (old ``save_params``)  ours
===================================  ===========================  ===============================
``features.*``                       names without ``stageN_``    ``features.0.*`` (the stem)
``layer0.0.*``                       ``stage1_*``                 ``features.1.*`` (stage 1)
``layerK.0.*`` (K >= 1)              names without ``stageN_``    transition K
``layerK.1.*``                       ``stage{K+1}_*``             stage K + 1
``current_stage.*``                  (not stored twice)           the last stage, again
``finalize.0.*``, ``output.*``       names without ``stageN_``    ``head.norm.*``, ``head.output.*``
===================================  ===========================  ===============================

Within a group the order is the file's (Gluon saves in construction order): BatchNorm ``gamma,
beta, running_mean, running_var`` then the binary convolution's ``qconv.weight`` for each dense
and improvement block; the transition's BatchNorm then its 1x1 convolution; the stem's
convolutions and BatchNorms. Old prefixed files carry every parameter once, in the order of
``collect_params``: stem, the last stage (BMXNet-v2 registers it first, as ``current_stage``),
stage 1, transition 1, stage 2, ...; the ``stageN_`` prefix puts each stage in its place.

BMXNet-v2's model keeps its last stage a second time as the child ``current_stage``, so
``save_parameters`` writes it twice; the copies must be identical (a file where they differ is
refused). A file of ``save_parameters(deduplicate=True)`` keeps only ``current_stage.*``.

Before anything is loaded every group is compared with the network: stem, binary convolutions
per stage, transition widths and groups, classes, then each parameter's kind and shape. Any
difference raises :class:`CheckpointMismatch` naming it, and the network is left untouched.
"""
import re
from collections import OrderedDict

import mxnet as mx
import numpy as np

from ..binary.blocks import Stem, Transition

__all__ = ["CheckpointMismatch", "load_bmxnet_v2", "read_bmxnet_v2"]

_KINDS = ("running_mean", "running_var", "gamma", "beta", "weight", "bias")
# Parameters in each stem (a conv has 1, a BatchNorm 4): how a file's stem is recognised.
_STEM_SIZES = {15: "grouped_stem", 5: "imagenet", 1: "thumbnail"}


class CheckpointMismatch(ValueError):
    """A BMXNet-v2 checkpoint does not fit the network it is loaded into (another variant, stem,
    class count, or a damaged file)."""


def _kind(name):
    for kind in _KINDS:
        if name.endswith("." + kind) or name.endswith("_" + kind) or name == kind:
            return kind
    return None


def _group_structural(arrays, path):
    """Groups ``save_parameters`` names: {group: [(name, array)]} plus the current_stage copy."""
    groups, copy = OrderedDict(), []
    for name, array in arrays.items():
        head, _, rest = name.partition(".")
        layer = re.fullmatch(r"layer(\d+)", head)
        if head == "features":
            key = "stem"
        elif head == "current_stage":
            copy.append((rest, array))
            continue
        elif head in ("finalize", "output"):
            key = "head"
        elif layer:
            index = int(layer.group(1))
            position = rest.split(".", 1)[0]
            if index == 0 and position == "0":
                key = "stage1"
            elif index > 0 and position == "0":
                key = f"transition{index}"
            elif index > 0 and position == "1":
                key = f"stage{index + 1}"
            else:
                raise CheckpointMismatch(f"{path}: unexpected parameter {name!r} (not a "
                                         "BMXNet-v2 MeliusNet/BinaryDenseNet layout)")
        else:
            raise CheckpointMismatch(f"{path}: unexpected parameter {name!r} (not a BMXNet-v2 "
                                     "MeliusNet/BinaryDenseNet layout)")
        groups.setdefault(key, []).append((name, array))
    if copy:
        count = max([int(k[5:]) for k in groups if k.startswith("stage")]
                    + [int(k[10:]) + 1 for k in groups if k.startswith("transition")] + [1])
        last = f"stage{count}"
        prefix = "layer0.0." if count == 1 else f"layer{count - 1}.1."
        stored = groups.get(last)
        if stored is None:  # save_parameters(deduplicate=True): only the copy is left
            groups[last] = [(f"current_stage.{rest}", a) for rest, a in copy]
        else:
            mine = [(name[len(prefix):], a) for name, a in stored]
            if [n for n, _ in mine] != [n for n, _ in copy]:
                raise CheckpointMismatch(f"{path}: current_stage does not hold the same "
                                         f"parameters as the last stage ({prefix}*)")
            for (rest, a), (_, b) in zip(mine, copy):
                if a.shape != b.shape or not np.array_equal(a.asnumpy(), b.asnumpy()):
                    raise CheckpointMismatch(f"{path}: current_stage.{rest} differs from "
                                             f"{prefix}{rest}; the two copies of the last "
                                             "stage must be identical")
    return groups


def _group_prefixed(arrays, path):
    """Groups old ``save_params`` names: stages by their ``stageN_`` prefix, the rest in order."""
    stages, others = OrderedDict(), []
    for name, array in arrays.items():
        found = re.search(r"(?:^|_)stage(\d+)_", name)
        if found:
            stages.setdefault(int(found.group(1)), []).append((name, array))
        else:
            others.append((name, array))
    groups = OrderedDict()
    # Everything outside the stages: stem, 5 per transition (BatchNorm + 1x1 conv), 6 in the
    # head (BatchNorm + dense weight and bias).
    stem_size = len(others) - 5 * max(len(stages) - 1, 0) - 6
    if stem_size < 1:
        raise CheckpointMismatch(f"{path}: too few parameters outside the stages "
                                 f"({len(others)}) for a stem, transitions and a head")
    groups["stem"] = others[:stem_size]
    rest = others[stem_size:]
    numbers = sorted(stages)
    if numbers != list(range(1, len(numbers) + 1)):
        raise CheckpointMismatch(f"{path}: stages {numbers} are not numbered 1..N")
    for i, number in enumerate(numbers):
        groups[f"stage{number}"] = stages[number]
        if i < len(numbers) - 1:
            # A transition is BatchNorm (4) + 1x1 conv (1).
            groups[f"transition{number}"], rest = rest[:5], rest[5:]
    groups["head"] = rest
    return groups


def read_bmxnet_v2(path):
    """Reads a BMXNet-v2 params file into groups ``{"stem", "stage1", "transition1", ...,
    "head"}`` of ``[(name, NDArray)]`` in structural order (see the module docstring).

    Raises :class:`CheckpointMismatch` for a file that cannot be read (truncated, not an MXNet
    params file) or whose names follow neither BMXNet-v2 layout.
    """
    try:
        arrays = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise CheckpointMismatch(f"cannot read {path}: truncated or not an MXNet params file "
                                 f"({str(err).strip().splitlines()[0]})") from err
    if not isinstance(arrays, dict) or not arrays:
        raise CheckpointMismatch(f"{path} holds no named parameters (not a Gluon params file)")
    names = list(arrays)
    structural = any(name.startswith(("features.", "layer0.", "output.")) for name in names)
    groups = (_group_structural if structural else _group_prefixed)(arrays, path)
    return groups


def _network_groups(net):
    """Our network's parameters grouped as :func:`read_bmxnet_v2` groups a file."""
    features = getattr(net, "features", None)
    head = getattr(net, "head", None)
    if features is None or head is None:
        raise TypeError(f"load_bmxnet_v2 takes a MeliusNet or BinaryDenseNet of the model zoo, "
                        f"got {type(net).__name__}")
    groups, stage, transition = OrderedDict(), 0, 0
    for name, child in features._children.items():
        child_params = list(child._collect_params_with_prefix(f"features.{name}.").items())
        if isinstance(child, Stem):
            groups["stem"] = child_params
        elif isinstance(child, Transition):
            transition += 1
            groups[f"transition{transition}"] = child_params
        else:
            stage += 1
            groups[f"stage{stage}"] = child_params
    groups["head"] = list(head._collect_params_with_prefix("head.").items())
    return groups


def _describe(groups):
    """What distinguishes variants: stem, binary convs per stage, transitions, classes."""
    def shape(item):
        return tuple(item[1].shape)
    stem_size = len(groups.get("stem", ()))
    stem = _STEM_SIZES.get(stem_size, f"unknown ({stem_size} parameters)")
    stages = sorted((k for k in groups if k.startswith("stage")), key=lambda k: int(k[5:]))
    convs = tuple(sum(len(shape(item)) == 4 for item in groups[k]) for k in stages)
    transitions = []
    for k in sorted((k for k in groups if k.startswith("transition")), key=lambda k: int(k[10:])):
        items = groups[k]
        conv = next((shape(item) for item in items if len(shape(item)) == 4), None)
        if conv is None or len(shape(items[0])) != 1:
            transitions.append(f"unknown ({len(items)} parameters)")
        else:
            transitions.append(f"{shape(items[0])[0]}->{conv[0]} (groups "
                               f"{shape(items[0])[0] // conv[1]})")
    weights = [shape(item) for item in groups.get("head", ()) if len(shape(item)) == 2]
    classes = weights[0][0] if weights else None
    return OrderedDict([("stem", stem), ("binary convolutions per stage", convs),
                        ("transition widths", tuple(transitions)), ("classes", classes)])


def _match(groups, ours, path, what):
    """[(our param, array)] for every parameter of ``ours``; raises before anything is loaded."""
    theirs_d, ours_d = _describe(groups), _describe(ours)
    differences = [f"{key}: checkpoint {theirs_d[key]}, network {ours_d[key]}"
                   for key in ours_d if theirs_d[key] != ours_d[key]]
    if differences:
        raise CheckpointMismatch(f"{path} does not fit {what}: " + "; ".join(differences))
    pairs = []
    for key, our_items in ours.items():
        their_items = groups.get(key, [])
        if len(their_items) != len(our_items):
            raise CheckpointMismatch(f"{path}: {key} holds {len(their_items)} parameters, "
                                     f"{what} has {len(our_items)} there (truncated file or "
                                     "another variant)")
        for (their_name, array), (our_name, param) in zip(their_items, our_items):
            if _kind(their_name) != _kind(our_name) or tuple(array.shape) != param.shape:
                raise CheckpointMismatch(
                    f"{path}: {their_name} {tuple(array.shape)} does not fit {our_name} "
                    f"{param.shape} of {what}")
            pairs.append((param, array))
    extra = [key for key in groups if key not in ours]
    if extra:
        raise CheckpointMismatch(f"{path}: groups {extra} have no place in {what}")
    return pairs


def load_bmxnet_v2(net, path, ctx=None):
    """Loads the BMXNet-v2 checkpoint ``path`` into ``net`` (a zoo MeliusNet or BinaryDenseNet
    built with the checkpoint's variant, stem and classes) and returns ``net``.

    Both of BMXNet-v2's file layouts are read: ``save_parameters`` (structural names, the last
    stage stored twice) and the older ``save_params`` (prefixed names). Every group and shape is
    checked first; a mismatch raises :class:`CheckpointMismatch` naming what differs and leaves
    ``net`` as it was. ``ctx``: context(s) to load onto (default CPU).
    """
    groups = read_bmxnet_v2(path)
    what = getattr(net, "model_name", type(net).__name__)
    pairs = _match(groups, _network_groups(net), path, what)
    ctx = ctx or mx.cpu()
    for param, array in pairs:
        param._load_init(array.astype(param.dtype), ctx)
    return net
