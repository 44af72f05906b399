#!/usr/bin/env python
r"""Train a zoo network (MeliusNet and peers) with the paper's recipe: ImageNet RecordIO or image
folders, one or more devices, one or more machines. Without --data it trains on the embedded
handwritten digits (scikit-learn; nothing is downloaded), through the same pipelines.

Single GPU, MeliusNet22 on ImageNet RecordIO (train.rec/.idx and val.rec/.idx in /data/imagenet):
    python examples/imagenet/train.py --model meliusnet22 --data /data/imagenet --gpus 0 \
        --batch-size 64
Two GPUs, the paper's setting (32 per GPU, lr 0.002, 120 epochs come from the recipe):
    python examples/imagenet/train.py --model meliusnet22 --data /data/imagenet --gpus 0,1
Two machines (see launch.py): --kvstore dist_sync under examples/imagenet/launch.py.
After an interruption, the same command with --resume continues exactly where it stopped; a
changed --lr, --epochs, --batch-size or --schedule needs --reschedule as well.

Mistakes in the command line (a batch larger than the data, a GPU the machine lacks, train and
val with other classes, a resume with other settings, ...) end with one line naming the flag and
exit status 2.
"""
import argparse
import json
import os
import re
import sys

import mxnet as mx

from bmxnet_ext.training import data, fit, pipelines, recipe
from bmxnet_ext.training.checkpoint import CheckpointError, CheckpointManager
from bmxnet_ext.training.loop import LabelRangeError, NonFiniteLossError
from bmxnet_ext.training.distributed import KVSTORES, create_kvstore, is_distributed
from bmxnet_ext.inference.deploy import export
from bmxnet_ext.model_zoo import get_model, list_models
from bmxnet_ext.training.optim import SCHEDULES


class _UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, as every other refusal of this script (--help shows the usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser():
    p = _Parser(prog="train.py", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="zoo model name (default: meliusnet22 with --data, meliusnet_flex on the "
                        "digits); one of: " + ", ".join(list_models()))
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model argument, VALUE as JSON (e.g. blocks=[1,1,1,1]); "
                        "repeatable")
    p.add_argument("--stem", default=None,
                   help="stem override: grouped_stem, imagenet or thumbnail (default: model's)")
    p.add_argument("--data", default=None,
                   help="data directory: train.rec/.idx + val.rec/.idx (RecordIO) or train/ + "
                        "val/ image folders; absent: the embedded digits")
    p.add_argument("--digits-format", choices=("recordio", "folder"), default="recordio",
                   help="which pipeline feeds the digits when --data is absent "
                        "(default: recordio)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input height = width (default: 224 with --data, 16 on the digits)")
    p.add_argument("--classes", type=int, default=None,
                   help="classifier outputs (default: the number of class folders, or 1000)")
    p.add_argument("--gpus", default=None,
                   help="comma-separated GPU ids, e.g. 0,1 (default: CPU)")
    p.add_argument("--ctx", default=None,
                   help="explicit device list instead of --gpus, e.g. cpu:0,cpu:1 or gpu:0,gpu:1")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per device per step (default: the model's recipe; 64 on the "
                        "digits)")
    p.add_argument("--kvstore", choices=KVSTORES, default="device",
                   help="gradient aggregation: local/device on one machine, dist_sync/"
                        "dist_device_sync across machines under launch.py (default: device)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the model's recipe; 4 on the digits)")
    p.add_argument("--lr", type=float, default=None,
                   help="base learning rate (default: the model's recipe)")
    p.add_argument("--optimizer", default=None,
                   help="optimizer name (default: radam with beta1 0.95, epsilon 1e-5)")
    p.add_argument("--optimizer-params", default=None, metavar="JSON",
                   help="optimizer arguments as JSON, replacing the recipe's "
                        "(e.g. '{\"momentum\": 0.9}')")
    p.add_argument("--wd", type=float, default=None,
                   help="weight decay (default 0; never applied to binary weights or BN)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="learning-rate schedule per iteration (default: cosine to 0)")
    p.add_argument("--step-epochs", default=None,
                   help="comma-separated epochs where the step schedule multiplies lr by "
                        "--step-factor")
    p.add_argument("--step-factor", type=float, default=None,
                   help="factor of the step schedule (default 0.1)")
    p.add_argument("--output", default=None,
                   help="run directory: checkpoints/, log.csv, log.json, curves.png, export/ "
                        "(default: runs/<model>); distributed workers use <output>/worker-<rank>")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint (a new run when "
                        "it holds none); refused when the model, batch size, lr, epochs or "
                        "schedule differ from the checkpoint's run")
    p.add_argument("--reschedule", action="store_true",
                   help="with --resume: accept a changed --lr, --epochs, --batch-size or "
                        "--schedule and recompute the learning-rate schedule for them")
    p.add_argument("--export", action="store_true",
                   help="at the end, export the float training graph with its model card to "
                        "<output>/export/MODEL (bmxnet-ext convert takes that prefix)")
    p.add_argument("--export-packed", action="store_true",
                   help="at the end, export the packed fused form with its model card to "
                        "<output>/export/MODEL-packed (bmxnet-ext predict takes that prefix)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=4,
                   help="data decoding threads (RecordIO) or processes (image folders; 0 decodes "
                        "in-process and makes runs exactly reproducible) (default 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    return p


def _contexts(args):
    if args.ctx:
        flag, value = "--ctx", args.ctx
        kinds = {"cpu": mx.cpu, "gpu": mx.gpu}
        try:
            contexts = [kinds[kind](int(index)) for kind, index in
                        (item.strip().split(":") for item in args.ctx.split(","))]
        except (KeyError, ValueError):
            raise _UsageError(f"--ctx: expected e.g. cpu:0,cpu:1 or gpu:0,gpu:1, got "
                              f"{args.ctx!r}") from None
    elif args.gpus:
        flag, value = "--gpus", args.gpus
        try:
            contexts = [mx.gpu(int(i)) for i in args.gpus.split(",")]
        except ValueError:
            raise _UsageError(f"--gpus: expected comma-separated GPU ids, e.g. 0,1, got "
                              f"{args.gpus!r}") from None
    else:
        return [mx.cpu()]
    try:
        recipe.check_contexts(contexts)
    except ValueError as err:
        raise _UsageError(f"{flag} {value}: {err}; leave {flag} out to train on the CPU") \
            from None
    return contexts


_PLAIN_WORD = re.compile(r"^[A-Za-z_][\w.-]*$")


def _model_kwargs(args):
    kwargs = {}
    for item in args.model_arg:
        key, equals, value = item.partition("=")
        if not equals or not key.isidentifier():
            raise _UsageError(f"--model-arg {item!r}: expected KEY=VALUE, e.g. blocks=[1,1,1,1]")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError as err:
            if not _PLAIN_WORD.match(value):  # a bare word is a string (stem=thumbnail)
                raise _UsageError(f"--model-arg {item!r}: the value is not valid JSON "
                                  f"({err})") from None
            kwargs[key] = value
    return kwargs


def _optimizer_params(args, base):
    if not args.optimizer_params:
        return {} if args.optimizer not in (None, base.optimizer) else None
    try:
        params = json.loads(args.optimizer_params)
    except json.JSONDecodeError as err:
        raise _UsageError(f"--optimizer-params: not valid JSON ({err}), e.g. "
                          "'{\"momentum\": 0.9}'") from None
    if not isinstance(params, dict):
        raise _UsageError(f"--optimizer-params: expected a JSON object of optimizer arguments, "
                          f"e.g. '{{\"momentum\": 0.9}}', got {args.optimizer_params}")
    return params


def _check_numbers(args):
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--epochs", args.epochs, 1),
                               ("--lr", args.lr, 0), ("--wd", args.wd, 0),
                               ("--classes", args.classes, 1),
                               ("--image-size", args.image_size, 1)):
        if value is not None and not value >= least:  # not >=: NaN is refused too
            raise _UsageError(f"{flag} must be at least {least}, got {value}")
    if args.reschedule and not args.resume:
        raise _UsageError("--reschedule only applies with --resume")


# how train.py names the settings fit() compares when resuming
_FLAGS = {"model": "--model", "model_args": "--model-arg", "stem": "--stem",
          "classes": "--classes", "image_size": "--image-size", "batch_size": "--batch-size",
          "lr": "--lr", "epochs": "--epochs", "schedule": "--schedule",
          "step_epochs": "--step-epochs", "step_factor": "--step-factor",
          "optimizer": "--optimizer", "optimizer_params": "--optimizer-params", "wd": "--wd",
          "iters_per_epoch": "steps per epoch (--data, --batch-size, devices)"}


def _mismatch(err, output):
    listed = ", ".join(f"{_FLAGS.get(key, key)} {json.dumps(old)} -> {json.dumps(new)}"
                       for key, old, new in err.changes)
    advice = ("pass --reschedule to continue with a learning-rate schedule recomputed for them"
              if err.reschedulable else "these cannot change on resume; train into another "
                                        "--output")
    return f"--resume: the run in {output} was trained with other settings ({listed}); {advice}"


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        return _train(args)
    except _UsageError as err:
        return _fail(err)
    except fit.RunMismatchError as err:
        return _fail(_mismatch(err, args.output_dir))
    except LabelRangeError as err:  # labels the data's class names did not announce
        return _fail(f"--classes: {err}")
    except (CheckpointError, ValueError, FileNotFoundError, FileExistsError) as err:
        return _fail(err)
    except NonFiniteLossError as err:
        _fail(f"{err}; lower --lr and continue with --resume --reschedule")
        return 1
    except KeyboardInterrupt:
        output = getattr(args, "output_dir", None) or args.output or "runs/<model>"
        print(f"train.py: interrupted; to continue, run the same command with --resume "
              f"(--output {output})", file=sys.stderr)
        return 130


def _fail(message):
    print(f"train.py: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _train(args):
    _check_numbers(args)
    digits = args.data is None
    model = args.model or ("meliusnet_flex" if digits else "meliusnet22")
    args.output_dir = args.output or os.path.join("runs", model)
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise _UsageError(f"--output {args.output_dir} is an existing file; choose a directory")
    base = recipe.get_recipe(model)
    if digits:
        base = base.replace(epochs=4, batch_per_device=64, image_size=16)
    try:
        step_epochs = tuple(int(e) for e in args.step_epochs.split(",")) \
            if args.step_epochs else None
    except ValueError:
        raise _UsageError(f"--step-epochs: expected comma-separated epochs, e.g. 30,60, got "
                          f"{args.step_epochs!r}") from None
    optimizer_params = _optimizer_params(args, base)
    model_kwargs = _model_kwargs(args)
    chosen = base.replace(lr=args.lr, epochs=args.epochs, batch_per_device=args.batch_size,
                          optimizer=args.optimizer, optimizer_params=optimizer_params,
                          wd=args.wd, schedule=args.schedule, step_epochs=step_epochs,
                          step_factor=args.step_factor, image_size=args.image_size)
    contexts = _contexts(args)
    kvstore = create_kvstore(args.kvstore)
    rank, num_workers = (kvstore.rank, kvstore.num_workers) if is_distributed(args.kvstore) \
        else (0, 1)
    output = args.output_dir
    if num_workers > 1:
        output = args.output_dir = os.path.join(output, f"worker-{rank}")
    checkpoint = CheckpointManager(os.path.join(output, "checkpoints")).latest()
    if checkpoint is not None and not args.resume:
        raise _UsageError(f"--output {output} already holds a checkpoint (epoch "
                          f"{checkpoint['epoch']}); pass --resume to continue it or choose "
                          "another --output")
    batch = chosen.batch_per_device * len(contexts)
    shard = dict(seed=args.seed, num_parts=num_workers, part_index=rank)
    try:
        if digits:
            aug = data.digits_augmentation(chosen.image_size)
            train_data, val_data = data.digits_data(args.digits_format, chosen.image_size,
                                                    batch, **shard)
        else:
            aug = pipelines.Augmentation(size=chosen.image_size)
            train_data, val_data = pipelines.open_image_data(args.data, batch, aug,
                                                             workers=args.workers, **shard)
    except pipelines.BatchSizeError as err:
        raise _UsageError(f"--batch-size {chosen.batch_per_device} x {len(contexts)} device(s): "
                          f"{err}") from None
    except ValueError as err:
        raise _UsageError(f"--data {args.data or '(the digits)'}: {err}") from None
    classes = args.classes or (len(train_data.classes) if train_data.classes else 1000)
    if train_data.classes and classes < len(train_data.classes):
        raise _UsageError(f"--classes {classes} is smaller than the {len(train_data.classes)} "
                          "classes of the training data; pass at least that many or leave "
                          "--classes out")

    fit.seed_everything(args.seed)
    try:
        net = get_model(model, classes=classes, stem=args.stem, input_size=chosen.image_size,
                        **model_kwargs)
    except (TypeError, ValueError) as err:
        if model not in list_models():
            raise _UsageError(f"--model: {err}") from None
        given = " ".join(f"--model-arg {item}" for item in args.model_arg) or "its arguments"
        raise _UsageError(f"{given}: {model} cannot be built with them ({err})") from None
    input_shape = (1, 3, chosen.image_size, chosen.image_size)
    recipe.prepare_network(net, contexts, input_shape)
    net.hybridize()
    try:
        trainer = recipe.make_trainer(net, chosen, len(train_data), kvstore)
    except ValueError as err:
        flag = "--optimizer-params" if args.optimizer_params else "--optimizer"
        raise _UsageError(f"{flag}: {err}") from None
    run = dict(model=model, model_args=model_kwargs, stem=args.stem, classes=classes,
               image_size=chosen.image_size, batch_size=chosen.batch_per_device, lr=chosen.lr,
               schedule=chosen.schedule, step_epochs=chosen.step_epochs,
               step_factor=chosen.step_factor, optimizer=chosen.optimizer,
               optimizer_params=chosen.optimizer_params, wd=chosen.wd)
    if not args.quiet:
        print(f"{model}: {classes} classes, {train_data.num_samples} training images "
              f"({len(train_data)} steps per epoch on this worker), {len(contexts)} device(s) x "
              f"{chosen.batch_per_device}, worker {rank + 1}/{num_workers}, {chosen.optimizer} "
              f"lr {chosen.lr} {chosen.schedule}, {chosen.epochs} epochs -> {output}")
    result = fit.fit(net, trainer, train_data, chosen.epochs, val_data=val_data, ctx=contexts,
                     run=run, reschedule=args.reschedule, out_dir=output, resume=args.resume,
                     seed=args.seed, kvstore=kvstore if num_workers > 1 else None,
                     quiet=args.quiet)
    # names travel with the export only where they name every output
    names = train_data.classes if train_data.classes and len(train_data.classes) == classes \
        else None
    forms = [(model, False)] * args.export + [(f"{model}-packed", True)] * args.export_packed
    for name, packed in forms:
        files = export(net, os.path.join(output, "export", name), packed=packed,
                       input_shape=input_shape, class_names=names, mean=aug.mean,
                       std=aug.std, resize=aug.val_resize, trained=True,
                       source_checkpoint=result.checkpoint)
        if not args.quiet:
            print(f"exported {files.prefix} ({'packed, fused' if packed else 'float'}): "
                  f"symbol, params and model card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
