#!/usr/bin/env python
r"""Pack image folders into indexed RecordIO for ImageRecordIter (what MXNet's im2rec tool does;
the script is not in the pip wheel).

ImageNet, from the usual train/ and val/ class folders into /data/imagenet-rec:
    python examples/imagenet/im2rec.py /data/imagenet /data/imagenet-rec --resize 256 \
        --workers 16
writes train.rec/.idx/.classes and val.rec/.idx/.classes; pass the output directory to
train.py --data. Without --resize the files' bytes are stored unchanged. Existing output files
are refused unless --overwrite is given.
"""
import argparse
import os
import sys

from bmxnet_ext.training.records import folder_to_recordio, recordio_files


def _parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="directory holding train/<class>/... and val/<class>/...")
    p.add_argument("output", help="directory for train.rec/.idx/.classes and val.*")
    p.add_argument("--splits", default="train,val",
                   help="comma-separated sub-folders to pack (default: train,val)")
    p.add_argument("--resize", type=int, default=None,
                   help="resize the shorter side to this and re-encode (default: keep files)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality when re-encoding")
    p.add_argument("--encoding", choices=(".jpg", ".png"), default=".jpg",
                   help="format when re-encoding (default: .jpg)")
    p.add_argument("--no-shuffle", action="store_true",
                   help="keep folder order in the training file (validation is never shuffled)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that already exist (default: refuse)")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    splits = args.splits.split(",")
    existing = [path for split in splits
                for path in recordio_files(os.path.join(args.output, split))
                if os.path.exists(path)]
    if existing and not args.overwrite:
        # checked for every split first: nothing is written when any output is in the way
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite to replace it "
                              "or choose another output directory")
    for split in splits:
        count = folder_to_recordio(
            os.path.join(args.source, split), os.path.join(args.output, split),
            shuffle=split == "train" and not args.no_shuffle, seed=args.seed,
            resize=args.resize, quality=args.quality, encoding=args.encoding,
            workers=args.workers, overwrite=args.overwrite)
        print(f"{split}: {count} images -> {os.path.join(args.output, split)}.rec")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"im2rec.py: error: {err}", file=sys.stderr)
        sys.exit(2)
