"""The ``bmxnet-ext`` command line.

Subcommands:
  demo      train a small binary network on real images, check it end to end, print a comparison
  summary   per-layer parameters, model size and operations of a zoo network (the paper's count)
  convert   convert a zoo network or an exported training graph to the packed xnor form
  predict   top-k classes of images with an exported (packed or float) network
  list      names of the zoo models (optionally matching a pattern)
  import-bmxnet-v2  load a BMXNet-v2 MeliusNet/BinaryDenseNet checkpoint, export or register it

Errors a user can cause (an unknown model name, a bad argument, a missing or damaged file, an
input too large for memory) end with a one-line message and exit status 2, not a traceback.
``predict`` reports an image it cannot read on its own line, goes on with the others and exits
with status 1.
"""
import argparse
import json
import os
import sys

import mxnet as mx

from .. import __version__
from ..inference.model_card import ModelFileError
from ..inference.ops import OpsLibraryError


def _cmd_demo(args):
    from .demo import check_out_dir, run_demo
    if args.out is not None:
        try:
            check_out_dir(args.out)
        except ValueError as err:
            raise ValueError(f"--out {err}") from None
    run_demo(epochs=args.epochs, seed=args.seed, quiet=args.quiet, lr=args.lr,
             data_format=args.data_format, out_dir=args.out)


def _cmd_summary(args):
    from .. import model_zoo
    from ..binary.summary import summary
    net = model_zoo.get_model(args.name, classes=args.classes, stem=args.stem,
                              input_size=args.input_size)
    size = args.input_size
    totals = summary(net, (1, 3, size, size), print_table=not args.json)
    if args.json:
        print(json.dumps(totals, indent=2, sort_keys=True))


def _trained_network(source, args):
    """(net, what export should record) for a zoo name or a float export prefix."""
    from .. import model_zoo
    from ..inference.model_card import load_exported_parameters, read_model_card
    from ..training.recipe import paper_initializer

    if os.path.exists(f"{source}-symbol.json") or os.path.exists(f"{source}-model.json"):
        card = read_model_card(source)
        if card is None or not card.get("model"):
            raise ValueError(f"{source}-model.json is missing or names no zoo model; convert "
                             "rebuilds the network from the zoo and needs it (export writes it)")
        if card.get("packed"):
            raise ValueError(f"{source} is already a packed export")
        net = model_zoo.get_model(card["model"], **card["model_kwargs"])
        load_exported_parameters(net, f"{source}-0000.params")
        size = card["input_size"]
        record = dict(input_shape=(1, len(card["mean"]), size, size), mean=card["mean"],
                      std=card["std"], class_names=card.get("class_names"),
                      trained=card.get("trained"),
                      source_checkpoint=card.get("source_checkpoint") or f"{source}-0000.params",
                      model=card["model"], model_kwargs=card["model_kwargs"])
        return net, record
    kwargs = {"classes": args.classes, "input_size": args.input_size}
    net = model_zoo.get_model(source, pretrained=True if args.pretrained else None, **kwargs)
    if args.params:
        _load_weights(net, args.params, source, kwargs)
        trained, origin = True, os.path.abspath(args.params)
    elif args.pretrained:
        trained, origin = True, f"model store: {source}"
    else:
        net.initialize(paper_initializer())
        trained, origin = False, None
        print(f"note: {source} has untrained (random) weights; pass --pretrained or --params "
              "FILE to convert trained ones")
    size = args.input_size
    return net, dict(input_shape=(1, 3, size, size), trained=trained, source_checkpoint=origin)


def _load_weights(net, params_file, model, kwargs):
    """``net.load_parameters`` with errors that say which file does not fit which network."""
    from ..inference.model_card import read_params_file

    names = set(read_params_file(params_file))  # a damaged or truncated file: its own message
    built = ", ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None) or "defaults"
    if names and all(name.startswith(("arg:", "aux:")) for name in names):
        raise ModelFileError(f"{params_file} was written by export(), not save_parameters(): "
                             "convert the export prefix itself (bmxnet-ext convert PREFIX, "
                             "with its PREFIX-model.json)")
    expected = set(net._collect_params_with_prefix())
    missing, extra = sorted(expected - names), sorted(names - expected)
    if missing or extra:
        raise ModelFileError(f"{params_file} does not fit {model} built with {built}: missing "
                             f"{missing[:3]}, unexpected {extra[:3]}; pass the weights saved "
                             "(save_parameters) from this network")
    try:
        net.load_parameters(params_file)
    except (AssertionError, mx.base.MXNetError) as err:
        detail = str(err).strip().splitlines()[0][:300]
        raise ModelFileError(f"{params_file} does not fit {model} built with {built} ({detail}); "
                             "pass the weights of a network built with the same --classes and "
                             "model arguments") from err


def _mib(size):
    return f"{size / 2 ** 20:.2f} MiB"


def _cmd_convert(args):
    from ..inference.deploy import export

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} exists and is not a directory")
    net, record = _trained_network(args.source, args)
    name = record.get("model") or getattr(net, "model_name", None) or "model"
    size = record["input_shape"][-1]
    form = "packed xnor form" + ("" if args.no_fuse else ", fused")
    print(f"converting {name} (input {size}x{size}) to the {form} ...")
    float_bytes = 4 * sum(p.data().size for p in net.collect_params().values())
    files = export(net, os.path.join(args.out, name), packed=True, fuse=not args.no_fuse,
                   **record)
    print("verified: packed outputs equal the training network's on a probe input")
    print(f"wrote {files.symbol}, {files.params} ({_mib(os.path.getsize(files.params))}; "
          f"float32 parameters: {_mib(float_bytes)}) and {files.card_file}")
    print(f"load it with: bmxnet_ext.load_xnor({files.prefix!r}) or bmxnet-ext predict "
          f"{files.prefix} IMAGE...")


def _cmd_predict(args):
    from .predict import run_predict
    return run_predict(args.prefix, args.inputs, topk=args.topk, batch_size=args.batch_size,
                       as_json=args.json, input_size=args.input_size)


def _cmd_list(args):
    from .. import model_zoo
    names = model_zoo.list_models(args.pattern)
    if not names:
        print(f"bmxnet-ext list: no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


def _cmd_import_bmxnet_v2(args):
    from ..inference.deploy import export
    from ..model_zoo.bmxnet_v2 import import_bmxnet_v2

    register = (args.name if args.register is True else args.register) or None
    net = import_bmxnet_v2(args.name, args.params, stem=args.stem, classes=args.classes,
                           register=register)
    print(f"loaded {args.params} into {args.name} (stem {net.stem_name}, {net.classes} classes)")
    if register:
        print(f"registered as {register!r}: get_model({register!r}, pretrained=True"
              + "".join(f", {k}={v!r}" for k, v in net.model_kwargs.items()) + ")")
    if args.out:
        files = export(net, args.out, packed=False, trained=True,
                       source_checkpoint=os.path.abspath(args.params))
        print(f"wrote {files.symbol}, {files.params} and {files.card_file}; pack it with "
              f"bmxnet-ext convert {files.prefix}")


def _positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog="bmxnet-ext",
        description="Binary neural networks (MeliusNet and peers) for MXNet 1.9.1 / Gluon.")
    parser.add_argument("--version", action="version",
                        version=f"bmxnet-ext {__version__} (MXNet {mx.__version__})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="train, check and compare a small binary network",
                          description="Trains a small binary network on scikit-learn's "
                                      "handwritten digits (no download), checks imperative vs "
                                      "hybridized, exports and reloads it, and compares it with "
                                      "its float twin.")
    demo.add_argument("--epochs", type=int, default=8, help="training epochs (default: 8)")
    demo.add_argument("--lr", type=float, default=0.01,
                      help="peak learning rate of RAdam's cosine schedule (default: 0.01)")
    demo.add_argument("--data-format", choices=("recordio", "folder"), default="recordio",
                      help="pipeline the digits go through: RecordIO (ImageRecordIter) or an "
                           "image folder (gluon ImageFolderDataset); default: recordio")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--out", metavar="DIR", default=None,
                      help="new or empty directory for the training logs, checkpoints and "
                           "exports (default: a new temporary directory)")
    demo.add_argument("--quiet", action="store_true",
                      help="no progress bars, epoch lines or layer table")
    demo.set_defaults(func=_cmd_demo)

    summ = sub.add_parser("summary", help="parameters, size and OPs of a zoo network",
                          description="Prints a per-layer table and totals: binary and float "
                                      "parameters, size by the paper's accounting, BOPs, FLOPs "
                                      "and OPs = BOPs/64 + FLOPs.")
    summ.add_argument("name", help="model name, see bmxnet_ext.model_zoo.list_models()")
    summ.add_argument("--input-size", type=_positive_int, default=224,
                      help="input height = width")
    summ.add_argument("--classes", type=_positive_int, default=1000, help="number of classes")
    summ.add_argument("--stem", default=None, help="stem override: grouped_stem, imagenet, "
                                                   "thumbnail")
    summ.add_argument("--json", action="store_true", help="print the totals as JSON only")
    summ.set_defaults(func=_cmd_summary)

    conv = sub.add_parser("convert", help="convert a network to the packed xnor form",
                          description="Builds a zoo network (random, --pretrained or --params "
                                      "weights) or reads an exported training graph "
                                      "(PREFIX-symbol.json, PREFIX-0000.params and "
                                      "PREFIX-model.json, as train.py --export writes them), "
                                      "converts it to the packed fused form, verifies it and "
                                      "exports it with its model card to DIR/NAME-*.")
    conv.add_argument("source", metavar="NAME_OR_PREFIX", help="zoo model name or export prefix")
    conv.add_argument("--out", required=True, metavar="DIR", help="output directory")
    conv.add_argument("--params", metavar="FILE", help="weights saved by save_parameters")
    conv.add_argument("--pretrained", action="store_true", help="weights from the model store")
    conv.add_argument("--classes", type=_positive_int, default=None,
                      help="number of classes (zoo name)")
    conv.add_argument("--input-size", type=_positive_int, default=224,
                      help="input height = width (zoo name)")
    conv.add_argument("--no-fuse", action="store_true",
                      help="one operator per binary convolution, BatchNorm unfolded (default: "
                           "the fused deployment form)")
    conv.set_defaults(func=_cmd_convert)

    pred = sub.add_parser("predict", help="classify images with an exported network",
                          description="Loads PREFIX-symbol.json / PREFIX-0000.params (packed "
                                      "or float) and prints the top classes of each image, "
                                      "preprocessed as PREFIX-model.json says and with its "
                                      "class names. An image that cannot be read is reported "
                                      "on stderr (PATH: error: ...) and the others go on; the "
                                      "exit status is then 1.")
    pred.add_argument("prefix", metavar="PREFIX", help="export prefix")
    pred.add_argument("inputs", metavar="INPUT", nargs="+",
                      help="image files, folders (searched recursively for .jpg .jpeg .png "
                           ".bmp) or glob patterns (quoted patterns are expanded too)")
    pred.add_argument("--topk", type=_positive_int, default=5,
                      help="classes to show (default: 5)")
    pred.add_argument("--batch-size", type=_positive_int, default=32,
                      help="images per forward pass (default: 32)")
    pred.add_argument("--json", action="store_true",
                      help="print one JSON document with all predictions and errors")
    pred.add_argument("--input-size", type=_positive_int, default=None,
                      help="input size when PREFIX-model.json is absent (default: 224)")
    pred.set_defaults(func=_cmd_predict)

    lst = sub.add_parser("list", help="names of the zoo models",
                         description="Prints the registered zoo models, one per line.")
    lst.add_argument("pattern", metavar="PATTERN", nargs="?", default=None,
                     help="shell-style pattern, e.g. 'meliusnet*' (default: all)")
    lst.set_defaults(func=_cmd_list)

    v2 = sub.add_parser(
        "import-bmxnet-v2", help="import a BMXNet-v2 MeliusNet/BinaryDenseNet checkpoint",
        description="Loads a .params file saved by BMXNet-v2's Gluon MeliusNet or "
                    "BinaryDenseNet (save_parameters or the older save_params) into the zoo "
                    "network NAME, checking every parameter first: a checkpoint of another "
                    "variant, stem or class count is refused with what differs. --out writes a "
                    "float export (PREFIX-symbol.json, PREFIX-0000.params, PREFIX-model.json; "
                    "'bmxnet-ext convert PREFIX' packs it); --register puts the weights into the "
                    "local model store so that get_model(NAME, pretrained=True) loads them.")
    v2.add_argument("name", metavar="NAME", help="zoo model, e.g. meliusnet22, binary_densenet28")
    v2.add_argument("params", metavar="FILE.params", help="the BMXNet-v2 checkpoint")
    v2.add_argument("--stem", choices=("grouped_stem", "imagenet", "thumbnail"), default=None,
                    help="BMXNet-v2's --initial-layers when not the model's default")
    v2.add_argument("--classes", type=_positive_int, default=None,
                    help="classes of the checkpoint (default: 1000)")
    v2.add_argument("--out", metavar="PREFIX", default=None, help="write a float export here")
    v2.add_argument("--register", metavar="STORE_NAME", nargs="?", const=True, default=None,
                    help="register in the model store (under NAME unless STORE_NAME is given)")
    v2.set_defaults(func=_cmd_import_bmxnet_v2)
    return parser


def _one_line(message):
    return " ".join(str(message).split())


def main(argv=None):
    """Entry point of the ``bmxnet-ext`` console script."""
    args = _parser().parse_args(argv)
    try:
        status = args.func(args)
    except (ValueError, KeyError, OSError, OpsLibraryError) as err:
        # ModelFileError is a ValueError; OSError covers missing, unreadable and unwritable files
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"bmxnet-ext {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return 2
    except MemoryError as err:
        print(f"bmxnet-ext {args.command}: error: not enough memory ({_one_line(err)}); use a "
              "smaller --input-size or batch", file=sys.stderr)
        return 2
    except mx.base.MXNetError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        print(f"bmxnet-ext {args.command}: error: MXNet: {lines[-1] if lines else err}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bmxnet-ext {args.command}: interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
