"""Speed and size of packed binary networks against their float forms and float MobileNet v1.

One command measures everything in one run, each configuration in its own process (MXNet reads
OMP_NUM_THREADS once, at start-up), with warm-up and the median of repeats:

  (a) layers: every distinct binary-layer shape of MeliusNet22 at 224x224, our bmx_binary_conv2d
      against MXNet's fp32 Convolution on the same shape; ratio per layer and summed, binary MACs
      per cycle per core;
  (b) end to end: packed vs float zoo networks and gluoncv's fp32 MobileNet v1 (1.0 / 0.75 / 0.5),
      all hybridized with static memory.

It writes ``results.md`` (Markdown tables), ``results.json`` and ``latency.png`` to ``--out``.

    python benchmarks/run.py                     # the full matrix (several minutes)
    python benchmarks/run.py --quick             # batch 1, 1 thread, MeliusNet22 + MobileNets
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FLOAT_REFERENCES = ["mobilenet1.0", "mobilenet0.75", "mobilenet0.5"]


# ----------------------------------------------------------------------------- worker side

def _median_ms(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _binary_layer_shapes(mx, size=224):
    """Distinct (C_in, H, W, C_out, kernel, stride, pad, dilate, groups) of MeliusNet22."""
    from bmxnet_ext.layers import BinaryConvolution
    from bmxnet_ext.model_zoo import get_model

    net = get_model("meliusnet22")
    net.initialize()
    shapes = []

    def hook(block, inputs, output):
        conv = block.conv
        kw = conv._kwargs
        _, c, h, w = inputs[0].shape
        shapes.append((c, h, w, conv._channels, kw["kernel"][0], kw["stride"][0],
                       conv.padding[0], kw["dilate"][0], kw["num_group"]))

    def visit(block):
        if isinstance(block, BinaryConvolution):
            block.register_forward_hook(hook)
        for child in block._children.values():
            visit(child)

    visit(net)
    net(mx.nd.zeros((1, 3, size, size)))
    counts = {}
    for shape in shapes:
        counts[shape] = counts.get(shape, 0) + 1
    return counts


def _cpu_mhz():
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        return max(mhz) if mhz else None
    except OSError:
        return None


def work_layers(batch, threads, repeats):
    import mxnet as mx

    import bmxnet_ext  # noqa: F401  (loads the ops)
    from bmxnet_ext import kernels

    rng = np.random.RandomState(0)
    rows = []
    for (c, h, w, o, k, s, p, d, g), count in sorted(_binary_layer_shapes(mx).items()):
        x = mx.nd.array(rng.standard_normal((batch, c, h, w)).astype(np.float32))
        weight = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
        packed = mx.nd.array(kernels.pack_conv_weights(weight, g), dtype="int32")
        w_float = mx.nd.array(np.sign(weight) + (weight == 0))
        attrs = dict(kernel=(k, k), stride=(s, s), pad=(p, p), dilate=(d, d), num_group=g)
        binary_ms = _median_ms(lambda: mx.nd.bmx_binary_conv2d(
            x, packed, num_filter=o, in_channels=c, **attrs).wait_to_read(), repeats)
        float_ms = _median_ms(lambda: mx.nd.Convolution(
            x, w_float, num_filter=o, no_bias=True, **attrs).wait_to_read(), repeats)
        out_h = (h + 2 * p - d * (k - 1) - 1) // s + 1
        out_w = (w + 2 * p - d * (k - 1) - 1) // s + 1
        macs = batch * o * out_h * out_w * (c // g) * k * k
        rows.append({"shape": f"{c}x{h}x{w} -> {o}, {k}x{k}/{s}", "count": count,
                     "binary_ms": binary_ms, "float_ms": float_ms, "macs": macs})
    mhz = _cpu_mhz()
    return {"rows": rows, "cpu_mhz": mhz, "kernel": kernels.kernel_name()}


def work_e2e(model, batch, threads, repeats):
    import mxnet as mx

    import bmxnet_ext

    shape = (batch, 3, 224, 224)
    x = mx.nd.array(np.random.RandomState(0).standard_normal(shape).astype(np.float32))
    if model in FLOAT_REFERENCES:
        from gluoncv.model_zoo import get_model as gluoncv_model
        nets = {"float": gluoncv_model(model, pretrained=False)}
        nets["float"].initialize()
    else:
        from bmxnet_ext.model_zoo import get_model
        net = get_model(model)
        net.initialize(mx.init.Xavier(magnitude=2))
        nets = {"float": net, "packed": bmxnet_ext.convert_to_xnor(net, input_shape=shape)}
    result = {}
    for kind, net in nets.items():
        net.hybridize(static_alloc=True, static_shape=True)
        result[kind] = _median_ms(lambda: net(x).wait_to_read(), repeats)
    return result


# ----------------------------------------------------------------------------- driver side

def _run_worker(task, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_CPU_WORKER_NTHREADS="1")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task)],
                         capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker {task} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _progress(items, desc):
    try:
        from tqdm import tqdm
        return tqdm(items, desc=desc, unit="run")
    except ImportError:
        return items


def _layer_table(layer_runs):
    lines = ["| batch | threads | kernel | binary layers (ms) | fp32 Convolution (ms) | speed-up "
             "| binary MACs/cycle/core |", "|---|---|---|---|---|---|---|"]
    for run in layer_runs:
        rows = run["result"]["rows"]
        binary = sum(r["binary_ms"] * r["count"] for r in rows)
        floating = sum(r["float_ms"] * r["count"] for r in rows)
        macs = sum(r["macs"] * r["count"] for r in rows)
        mhz = run["result"]["cpu_mhz"]
        per_cycle = (macs / (binary / 1000) / (mhz * 1e6) / run["threads"]) if mhz else float("nan")
        run.update(binary_ms=binary, float_ms=floating, speedup=floating / binary,
                   macs_per_cycle_per_core=per_cycle)
        lines.append(f"| {run['batch']} | {run['threads']} | {run['result']['kernel']} | "
                     f"{binary:.2f} | {floating:.2f} | {floating / binary:.1f}x | {per_cycle:.0f} |")
    return lines


def _per_layer_table(run):
    lines = ["| layer (C_in x H x W -> C_out, kernel/stride) | count | binary (ms) | fp32 (ms) "
             "| speed-up |", "|---|---|---|---|---|"]
    for r in run["result"]["rows"]:
        lines.append(f"| {r['shape']} | {r['count']} | {r['binary_ms']:.3f} | "
                     f"{r['float_ms']:.3f} | {r['float_ms'] / r['binary_ms']:.1f}x |")
    return lines


def _e2e_table(e2e_runs):
    lines = ["| network | batch | threads | float (ms) | packed (ms) | packed vs float |",
             "|---|---|---|---|---|---|"]
    for run in e2e_runs:
        r = run["result"]
        packed = r.get("packed")
        ratio = f"{r['float'] / packed:.1f}x" if packed else "-"
        lines.append(f"| {run['model']} | {run['batch']} | {run['threads']} | {r['float']:.2f} | "
                     f"{packed:.2f} | {ratio} |" if packed else
                     f"| {run['model']} | {run['batch']} | {run['threads']} | {r['float']:.2f} | "
                     f"- | - |")
    return lines


def _chart(e2e_runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    for run in e2e_runs:
        for kind, ms in run["result"].items():
            labels.append(f"{run['model']} {kind}\nb{run['batch']} t{run['threads']}")
            values.append(ms)
            colors.append("tab:green" if kind == "packed" else
                          "tab:gray" if run["model"] in FLOAT_REFERENCES else "tab:blue")
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 4.5))
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=75, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (median, log scale)")
    ax.set_title("CPU latency: packed (green), float (blue), MobileNet v1 (grey)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+",
                        default=["meliusnet22", "meliusnet29", "meliusnet_a", "meliusnet_c"])
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per measurement")
    parser.add_argument("--quick", action="store_true",
                        help="batch 1, 1 thread, MeliusNet22 and the MobileNets only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        task = json.loads(args.worker)
        kind = task.pop("kind")
        result = work_layers(**task) if kind == "layers" else work_e2e(**task)
        print(json.dumps(result))
        return 0

    if args.quick:
        args.batches, args.threads, args.models = [1], [1], ["meliusnet22"]
    configs = [(b, t) for b in args.batches for t in args.threads]
    layer_runs = [{"batch": b, "threads": t,
                   "result": _run_worker({"kind": "layers", "batch": b, "threads": t,
                                          "repeats": args.repeats}, t)}
                  for b, t in _progress(configs, "binary layers")]
    e2e_tasks = [(m, b, t) for m in args.models + FLOAT_REFERENCES for b, t in configs]
    e2e_runs = [{"model": m, "batch": b, "threads": t,
                 "result": _run_worker({"kind": "e2e", "model": m, "batch": b, "threads": t,
                                        "repeats": args.repeats}, t)}
                for m, b, t in _progress(e2e_tasks, "end to end")]

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    try:
        with open("/proc/cpuinfo") as f:
            machine = next(line.split(":", 1)[1].strip() for line in f
                           if line.startswith("model name")) + f", {os.cpu_count()} cores"
    except (OSError, StopIteration):
        pass
    lines = [f"Machine: {machine}. Medians of {args.repeats} runs after warm-up.", "",
             "### MeliusNet22 binary layers (224x224): bmx_binary_conv2d vs fp32 Convolution", ""]
    lines += _layer_table(layer_runs)
    lines += ["", f"Per layer, batch {layer_runs[0]['batch']}, {layer_runs[0]['threads']} thread(s):",
              ""] + _per_layer_table(layer_runs[0])
    lines += ["", "### End to end (224x224, hybridized, static memory)", ""] + _e2e_table(e2e_runs)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": machine, "repeats": args.repeats, "layers": layer_runs,
                   "end_to_end": e2e_runs}, f, indent=2)
    _chart(e2e_runs, os.path.join(args.out, "latency.png"))
    print("\n".join(lines))
    print(f"\nwrote {args.out}/results.md, results.json and latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
