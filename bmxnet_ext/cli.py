"""The ``bmxnet-ext`` command line.

Subcommands:
  demo      train a small binary network on real images, check it end to end, print a comparison
  summary   per-layer parameters, model size and operations of a zoo network (the paper's count)

Errors a user can cause (an unknown model name, a bad argument) end with a one-line message and
exit status 2, not a traceback.
"""
import argparse
import json
import sys

from .ops import OpsLibraryError


def _cmd_demo(args):
    from .demo import run_demo
    run_demo(epochs=args.epochs, seed=args.seed, quiet=args.quiet)


def _cmd_summary(args):
    from . import model_zoo
    from .summary import summary
    kwargs = {"classes": args.classes}
    if args.stem:
        kwargs["stem"] = args.stem
    net = model_zoo.get_model(args.name, **kwargs)
    size = args.input_size
    totals = summary(net, (1, 3, size, size), print_table=not args.json)
    if args.json:
        print(json.dumps(totals, indent=2, sort_keys=True))


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
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    summ = sub.add_parser("summary", help="parameters, size and OPs of a zoo network",
                          description="Prints a per-layer table and totals: binary and float "
                                      "parameters, size by the paper's accounting, BOPs, FLOPs "
                                      "and OPs = BOPs/64 + FLOPs.")
    summ.add_argument("name", help="model name, see bmxnet_ext.model_zoo.list_models()")
    summ.add_argument("--input-size", type=int, default=224, help="input height = width")
    summ.add_argument("--classes", type=int, default=1000, help="number of classes")
    summ.add_argument("--stem", default=None, help="stem override: grouped_stem, imagenet, "
                                                   "thumbnail")
    summ.add_argument("--json", action="store_true", help="print the totals as JSON only")
    summ.set_defaults(func=_cmd_summary)
    return parser


def main(argv=None):
    """Entry point of the ``bmxnet-ext`` console script."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError, OpsLibraryError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"bmxnet-ext {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bmxnet-ext {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
