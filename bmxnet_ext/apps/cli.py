"""The ``bmxnet-ext`` command line.

Subcommands:
  demo      train a small binary network on real images, check it end to end, print a comparison
  summary   per-layer parameters, model size and operations of a zoo network (the paper's count)
  convert   convert a zoo network or an exported training graph to the packed xnor form
  predict   top-k classes of images with an exported (packed or float) network

Errors a user can cause (an unknown model name, a bad argument, a missing or damaged file, an
image that cannot be read, an input too large for memory) end with a one-line message and exit
status 2, not a traceback.
"""
import argparse
import json
import os
import sys
import tempfile

import mxnet as mx

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
    """(net, model name, model kwargs, input size) for a zoo name or an export prefix."""
    from .. import model_zoo
    from ..inference.model_card import load_exported_parameters, read_model_card

    if os.path.exists(f"{source}-symbol.json") or os.path.exists(f"{source}-model.json"):
        card = read_model_card(source)
        if card is None or not card.get("model"):
            raise ValueError(f"{source}-model.json is missing or names no zoo model; convert "
                             "rebuilds the network from the zoo and needs it (the training "
                             "example writes it with --export)")
        if card.get("packed"):
            raise ValueError(f"{source} is already a packed export")
        net = model_zoo.get_model(card["model"], **card["model_kwargs"])
        load_exported_parameters(net, f"{source}-0000.params")
        return net, card["model"], card["model_kwargs"], card["input_size"]
    kwargs = {"classes": args.classes, "input_size": args.input_size}
    net = model_zoo.get_model(source, pretrained=True if args.pretrained else None, **kwargs)
    if args.params:
        _load_weights(net, args.params, source, kwargs)
    elif not args.pretrained:
        net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
        print(f"note: {source} has untrained (random) weights; pass --pretrained or --params "
              "FILE to convert trained ones")
    return net, source, {k: v for k, v in kwargs.items() if v is not None}, args.input_size


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


def _file_size(path):
    return f"{os.path.getsize(path) / 2 ** 20:.2f} MiB"


def _cmd_convert(args):
    from ..inference.converter import convert_to_xnor
    from ..inference.model_card import write_model_card

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} exists and is not a directory")
    net, model, kwargs, size = _trained_network(args.source, args)
    shape = (1, 3, size, size)
    print(f"converting {model} (input {size}x{size}) to the packed xnor form ...")
    packed = convert_to_xnor(net, input_shape=shape)
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, model)
    packed.hybridize()
    packed(mx.nd.zeros(shape))
    packed.export(prefix)
    write_model_card(prefix, model, kwargs, input_size=size, packed=True)
    with tempfile.TemporaryDirectory() as tmp:
        net.hybridize()
        net(mx.nd.zeros(shape))
        net.export(os.path.join(tmp, "float"))
        float_size = _file_size(os.path.join(tmp, "float-0000.params"))
    print(f"verified: packed outputs equal the training network's on a probe input")
    print(f"wrote {prefix}-symbol.json, {prefix}-0000.params ({_file_size(prefix + '-0000.params')}"
          f"; float params: {float_size}) and {prefix}-model.json")
    print(f"load it with: bmxnet_ext.load_xnor({prefix!r})")


def _preprocess(path, size, mean, std):
    import numpy as np

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file at {path}")
    try:
        image = mx.image.imread(path, flag=1 if len(mean) == 3 else 0)
    except mx.base.MXNetError as err:
        raise ValueError(f"cannot read {path} as an image") from err
    image = mx.image.resize_short(image, max(size, int(round(size * 256 / 224))))
    image, _ = mx.image.center_crop(image, (size, size))
    data = (image.astype("float32").asnumpy() - np.array(mean, dtype=np.float32)) / \
        np.array(std, dtype=np.float32)
    return data.transpose(2, 0, 1)[None]


def _cmd_predict(args):
    import numpy as np

    from ..inference.converter import load_xnor
    from ..inference.model_card import IMAGENET_MEAN, IMAGENET_STD, read_model_card

    card = read_model_card(args.prefix) or {"input_size": args.input_size or 224,
                                            "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                            "class_names": None}
    net = load_xnor(args.prefix)
    names = card.get("class_names")
    for path in args.images:
        x = _preprocess(path, card["input_size"], card["mean"], card["std"])
        probs = mx.nd.softmax(net(mx.nd.array(x))).asnumpy()[0]
        if names and len(names) != probs.size:
            raise ModelFileError(f"{args.prefix}-model.json has {len(names)} class names but the "
                                 f"network has {probs.size} outputs; fix or remove class_names")
        top = np.argsort(-probs)[:args.topk]
        labels = [f"{names[i] if names else i} ({probs[i]:.3f})" for i in top]
        print(f"{path}: {', '.join(labels)}")


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
                                      "PREFIX-model.json), converts it with convert_to_xnor, "
                                      "verifies it and exports it to DIR/NAME-*.")
    conv.add_argument("source", metavar="NAME_OR_PREFIX", help="zoo model name or export prefix")
    conv.add_argument("--out", required=True, metavar="DIR", help="output directory")
    conv.add_argument("--params", metavar="FILE", help="weights saved by save_parameters")
    conv.add_argument("--pretrained", action="store_true", help="weights from the model store")
    conv.add_argument("--classes", type=_positive_int, default=None,
                      help="number of classes (zoo name)")
    conv.add_argument("--input-size", type=_positive_int, default=224,
                      help="input height = width")
    conv.set_defaults(func=_cmd_convert)

    pred = sub.add_parser("predict", help="classify images with an exported network",
                          description="Loads PREFIX-symbol.json / PREFIX-0000.params (packed "
                                      "or float) and prints the top classes of each image, "
                                      "with class names when PREFIX-model.json has them.")
    pred.add_argument("prefix", metavar="PREFIX", help="export prefix")
    pred.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    pred.add_argument("--topk", type=_positive_int, default=5,
                      help="classes to show (default: 5)")
    pred.add_argument("--input-size", type=_positive_int, default=None,
                      help="input size when PREFIX-model.json is absent (default: 224)")
    pred.set_defaults(func=_cmd_predict)
    return parser


def _one_line(message):
    return " ".join(str(message).split())


def main(argv=None):
    """Entry point of the ``bmxnet-ext`` console script."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
