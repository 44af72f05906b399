"""Where a packed network's time goes: a per-operator profile of one forward pass.

    python benchmarks/profile.py meliusnet22                 # fused, batch 1, this process's threads
    OMP_NUM_THREADS=2 python benchmarks/profile.py quicknet --batch 8 --form packed

Runs the network hybridized with static memory, as ``benchmarks/run.py`` times it, under MXNet's
profiler with operator bulking off (bulked operators would be reported as one), and prints each
operator type's calls and milliseconds per forward pass and its share of the operators' total.
The operators' sum is a little above the plain latency: the profiler itself costs time per
operator. ``--json FILE`` keeps the table.
"""
import argparse
import json
import os
import sys
import tempfile

# Bulking groups consecutive operators into one engine operation, which the profiler then reports
# under a joined name: it must be off before MXNet starts.
os.environ["MXNET_EXEC_BULK_EXEC_INFERENCE"] = "0"
os.environ["MXNET_EXEC_BULK_EXEC_TRAIN"] = "0"


def profile(model, form="fused", batch=1, passes=20, size=224):
    """Rows ``(operator, calls per pass, ms per pass)`` of `model` in `form` ("float", "packed" or
    "fused"), slowest first."""
    import mxnet as mx
    import numpy as np

    import bmxnet_ext
    from bmxnet_ext.model_zoo import get_model

    net = get_model(model)
    net.initialize(mx.init.Xavier(magnitude=2))
    if form != "float":
        net = bmxnet_ext.convert_to_xnor(net, input_shape=(1, 3, size, size),
                                         fuse=form == "fused")
    net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.array(np.random.RandomState(0).standard_normal((batch, 3, size, size)),
                    dtype=np.float32)
    for _ in range(3):
        net(x).wait_to_read()
    trace = os.path.join(tempfile.mkdtemp(prefix="bmxnet-profile-"), "profile.json")
    mx.profiler.set_config(profile_all=True, aggregate_stats=True, filename=trace)
    mx.profiler.set_state("run")
    for _ in range(passes):
        net(x).wait_to_read()
    mx.profiler.set_state("stop")
    stats = json.loads(mx.profiler.dumps(format="json", reset=True))["Time"]["operator"]
    rows = [(name, s["Count"] / passes, s["Total"] / passes) for name, s in stats.items()
            if name not in ("WaitForVar", "DeleteVariable")]
    return sorted(rows, key=lambda row: -row[2])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="zoo network, e.g. meliusnet22 or quicknet")
    parser.add_argument("--form", choices=["float", "packed", "fused"], default="fused")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = profile(args.model, args.form, args.batch, args.passes)
    total = sum(ms for _, _, ms in rows)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"{args.model}, {args.form}, batch {args.batch}, OMP_NUM_THREADS={threads}: "
          f"{total:.2f} ms of operators per pass")
    print(f"{'operator':<28} {'calls':>6} {'ms':>8} {'share':>7}")
    for name, calls, ms in rows:
        print(f"{name:<28} {calls:>6.0f} {ms:>8.3f} {100 * ms / total:>6.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "form": args.form, "batch": args.batch,
                       "threads": threads, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
