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
After an interruption, the same command with --resume continues exactly where it stopped.
"""
import argparse
import json
import os
import sys

import mxnet as mx

from bmxnet_ext.training import data, fit, pipelines, recipe
from bmxnet_ext.training.distributed import KVSTORES, create_kvstore, is_distributed
from bmxnet_ext.inference.deploy import export
from bmxnet_ext.model_zoo import get_model, list_models
from bmxnet_ext.training.optim import SCHEDULES


def _parser():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
                   help="continue the run in --output from its last checkpoint")
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
        kinds = {"cpu": mx.cpu, "gpu": mx.gpu}
        try:
            return [kinds[kind](int(index)) for kind, index in
                    (item.strip().split(":") for item in args.ctx.split(","))]
        except (KeyError, ValueError):
            raise ValueError(f"--ctx: expected e.g. cpu:0,cpu:1 or gpu:0,gpu:1, got {args.ctx!r}")
    if args.gpus:
        return [mx.gpu(int(i)) for i in args.gpus.split(",")]
    return [mx.cpu()]


def _model_kwargs(args):
    kwargs = {}
    for item in args.model_arg:
        key, _, value = item.partition("=")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def main(argv=None):
    args = _parser().parse_args(argv)
    digits = args.data is None
    model = args.model or ("meliusnet_flex" if digits else "meliusnet22")
    base = recipe.get_recipe(model)
    if digits:
        base = base.replace(epochs=4, batch_per_device=64, image_size=16)
    step_epochs = tuple(int(e) for e in args.step_epochs.split(",")) if args.step_epochs else None
    optimizer_params = json.loads(args.optimizer_params) if args.optimizer_params else (
        {} if args.optimizer not in (None, base.optimizer) else None)
    chosen = base.replace(lr=args.lr, epochs=args.epochs, batch_per_device=args.batch_size,
                          optimizer=args.optimizer, optimizer_params=optimizer_params,
                          wd=args.wd, schedule=args.schedule, step_epochs=step_epochs,
                          step_factor=args.step_factor, image_size=args.image_size)
    contexts = _contexts(args)
    kvstore = create_kvstore(args.kvstore)
    rank, num_workers = (kvstore.rank, kvstore.num_workers) if is_distributed(args.kvstore) \
        else (0, 1)
    batch = chosen.batch_per_device * len(contexts)
    shard = dict(seed=args.seed, num_parts=num_workers, part_index=rank)
    if digits:
        aug = data.digits_augmentation(chosen.image_size)
        train_data, val_data = data.digits_data(args.digits_format, chosen.image_size, batch,
                                                **shard)
    else:
        aug = pipelines.Augmentation(size=chosen.image_size)
        train_data, val_data = pipelines.open_image_data(args.data, batch, aug,
                                                         workers=args.workers, **shard)
    classes = args.classes or (len(train_data.classes) if train_data.classes else 1000)

    fit.seed_everything(args.seed)
    net = get_model(model, classes=classes, stem=args.stem, input_size=chosen.image_size,
                    **_model_kwargs(args))
    input_shape = (1, 3, chosen.image_size, chosen.image_size)
    recipe.prepare_network(net, contexts, input_shape)
    net.hybridize()
    trainer = recipe.make_trainer(net, chosen, len(train_data), kvstore)
    output = args.output or os.path.join("runs", model)
    if num_workers > 1:
        output = os.path.join(output, f"worker-{rank}")
    if not args.quiet:
        print(f"{model}: {classes} classes, {train_data.num_samples} training images "
              f"({len(train_data)} steps per epoch on this worker), {len(contexts)} device(s) x "
              f"{chosen.batch_per_device}, worker {rank + 1}/{num_workers}, {chosen.optimizer} "
              f"lr {chosen.lr} {chosen.schedule}, {chosen.epochs} epochs -> {output}")
    result = fit.fit(net, trainer, train_data, chosen.epochs, val_data=val_data, ctx=contexts,
            out_dir=output, resume=args.resume, seed=args.seed,
            kvstore=kvstore if num_workers > 1 else None, quiet=args.quiet)
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
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
