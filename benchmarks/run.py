"""Speed of packed binary networks against their float forms and float MobileNet v1 on this CPU.

One command measures everything in one run, each configuration in its own process (MXNet reads
OMP_NUM_THREADS once, at start-up; BMXNET_ISA picks the kernels), with warm-up and the median of
repeats:

  (a) layers: every distinct binary-layer shape of MeliusNet22 at 224x224, our bmx_binary_conv2d
      on each instruction-set path (AVX-512 VPOPCNTDQ, AVX2, scalar) against MXNet's fp32
      Convolution on the same shape: ratio per layer and summed, binary MACs per cycle per core,
      batch 1 and 8, 1 and 2 threads. Each op runs inside a hybridized graph, as it does in a
      network: copies of it, each with its own weights, timed together (as many as make ~5 ms,
      2 to 32, so that Python's call into the graph does not count against small layers);
  (b) end to end: float and packed zoo networks (packed as convert_to_xnor makes them, and with
      fuse=True; MeliusNet22 and the QuickNets by default) and gluoncv's fp32 MobileNet v1
      (1.0 / 0.75 / 0.5), all hybridized with static memory, batch 1 and 8, 1 and 2 threads;
      each fused network against its ideal (its binary and float MACs at the peak rates (a)
      measured: our tile kernel's best layer and MXNet's best fp32 Convolution), and batch 8 per
      image against batch 1;
  (c) MeliusNet22 and QuickNet fused at batch 1 on 1 and 2 threads, idle and beside a process
      spinning on one core, and on MXNet's threaded engine against NaiveEngine: interleaved
      rounds, so that drift and neighbours hit every case alike.

It writes ``results.md`` (Markdown tables, the targets of issues 5, 11 and 13 included),
``results.json`` and ``latency.png`` to ``--out``.

    python benchmarks/run.py                     # the full matrix (tens of minutes)
    python benchmarks/run.py --quick             # batch 1, 1 thread, best ISA, MeliusNet22

Timings on a shared machine vary with what else runs: the JSON keeps the load average around each
measurement and the minimum next to the median. Cycles: a VM's /proc/cpuinfo gives the nominal
clock; the harness also measures the clock (dependent additions) and divides by the larger of the
two, so MACs/cycle are never flattered by a clock set too low.
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
ISAS = ["avx512", "avx2", "scalar"]
GRAPH_MS = 5.0  # the layer measurements time graphs of about this length
MAX_COPIES = 32
DEFAULT_MODELS = ["meliusnet22", "quicknet_small", "quicknet", "quicknet_large"]
COMPARED = ["meliusnet22", "quicknet"]  # also timed beside a busy core and on NaiveEngine


# ----------------------------------------------------------------------------- worker side

def _timed_ms(fn, repeats, warmup=3):
    """(median, minimum) wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)), 1000.0 * float(np.min(times))


def _binary_layer_shapes(mx, size=224):
    """Distinct (C_in, H, W, C_out, kernel, stride, pad, dilate, groups) of MeliusNet22 -> count."""
    from bmxnet_ext.binary.layers import BinaryConvolution
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


def _layer_graph(mx, op, weights, attrs):
    """A hybridized block applying ``op`` to its input once per weight array (no two alike, so
    MXNet cannot merge them), returning all outputs."""
    from mxnet import gluon

    class Copies(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                for i, w in enumerate(weights):
                    setattr(self, f"w{i}", self.params.get(
                        f"w{i}", shape=w.shape, dtype=w.dtype, grad_req="null",
                        init=mx.init.Constant(0)))

        def hybrid_forward(self, F, x, **params):
            return tuple(getattr(F, op)(x, params[f"w{i}"], **attrs)
                         for i in range(len(weights)))

    block = Copies()
    block.initialize()
    for i, w in enumerate(weights):
        getattr(block, f"w{i}").set_data(mx.nd.array(w, dtype=w.dtype))
    block.hybridize(static_alloc=True, static_shape=True)
    return block


def work_layers(kind, batch, threads, repeats):
    """Per distinct layer: median/min ms of one op (`kind` "binary": bmx_binary_conv2d on the
    path BMXNET_ISA selects; "float": fp32 Convolution)."""
    import mxnet as mx

    import bmxnet_ext  # noqa: F401  (loads the ops)
    from bmxnet_ext.inference import kernels

    rng = np.random.RandomState(0)
    rows = []
    for (c, h, w, o, k, s, p, d, g), count in sorted(_binary_layer_shapes(mx).items()):
        x = mx.nd.array(rng.standard_normal((batch, c, h, w)).astype(np.float32))
        geometry = dict(kernel=(k, k), stride=(s, s), pad=(p, p), dilate=(d, d), num_group=g,
                        num_filter=o)

        def graph_of(copies):
            latent = [rng.standard_normal((o, c // g, k, k)).astype(np.float32)
                      for _ in range(copies)]
            if kind == "binary":
                return _layer_graph(mx, "bmx_binary_conv2d",
                                    [kernels.pack_conv_weights(lw, g) for lw in latent],
                                    dict(geometry, in_channels=c))
            return _layer_graph(mx, "Convolution",
                                [np.where(lw >= 0, 1.0, -1.0).astype(np.float32)
                                 for lw in latent], dict(geometry, no_bias=True))

        def timed(graph, times):
            def run():
                for y in graph(x):
                    y.wait_to_read()
            return _timed_ms(run, times, warmup=2)

        estimate = timed(graph_of(2), 2)[1] / 2
        copies = int(min(MAX_COPIES, max(2, round(GRAPH_MS / max(estimate, 1e-3)))))
        median, minimum = timed(graph_of(copies), repeats)
        out_h = (h + 2 * p - d * (k - 1) - 1) // s + 1
        out_w = (w + 2 * p - d * (k - 1) - 1) // s + 1
        rows.append({"shape": f"{c}x{h}x{w} -> {o}, {k}x{k}/{s}", "count": count,
                     "ms": median / copies, "min_ms": minimum / copies, "copies": copies,
                     "macs": batch * o * out_h * out_w * (c // g) * k * k})
    return {"rows": rows, "kernel": kernels.kernel_name() if kind == "binary" else "oneDNN fp32"}


def work_e2e(model, batch, threads, repeats, forms=("float", "packed", "fused")):
    """Median/min ms of a forward pass of each of `forms` of `model` (float; packed, fused), and
    for our networks their binary and float multiply-accumulates per image (``summary``)."""
    import mxnet as mx

    import bmxnet_ext
    from bmxnet_ext.inference import kernels

    shape = (batch, 3, 224, 224)
    x = mx.nd.array(np.random.RandomState(0).standard_normal(shape).astype(np.float32))
    result = {"kernel": kernels.kernel_name()}
    if model in FLOAT_REFERENCES:
        from gluoncv.model_zoo import get_model as gluoncv_model
        nets = {"float": gluoncv_model(model, pretrained=False)}
        nets["float"].initialize()
    else:
        from bmxnet_ext.model_zoo import get_model
        net = get_model(model)
        net.initialize(mx.init.Xavier(magnitude=2))
        totals = bmxnet_ext.summary(net, (1, 3, 224, 224), print_table=False)
        result["binary_macs"] = totals["bops"] + totals["fc_bops"]
        result["float_macs"] = totals["flops"] + totals["fc_flops"]
        nets = {}
        if "float" in forms:
            nets["float"] = net
        for form in ("packed", "fused"):
            if form in forms:
                nets[form] = bmxnet_ext.convert_to_xnor(net, input_shape=(1, 3, 224, 224),
                                                        fuse=form == "fused")
    for form, net in nets.items():
        net.hybridize(static_alloc=True, static_shape=True)
        result[form], result[form + "_min"] = _timed_ms(lambda: net(x).wait_to_read(), repeats)
    return result


def _worker(task):
    kind = task.pop("kind")
    load_before = os.getloadavg()[0]
    result = work_e2e(**task) if kind == "e2e" else work_layers(kind, **task)
    result["load_average"] = [load_before, os.getloadavg()[0]]
    return result


# ----------------------------------------------------------------------------- driver side

def _run_worker(task, threads, isa=None, env=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_CPU_WORKER_NTHREADS="1",
               **(env or {}))
    if isa:
        env["BMXNET_ISA"] = isa
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task)],
                         capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker {task} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _interleaved(cases, rounds, repeats):
    """Fused batch-1 latency of each case ``(label, model, threads, env)``, the cases run in turn
    ``rounds`` times (so that a drifting clock or neighbour load hits all of them alike): the
    median over rounds of each run's median, per label."""
    times = {label: [] for label, *_ in cases}
    for _ in range(rounds):
        for label, model, threads, env in cases:
            result = _run_worker({"kind": "e2e", "model": model, "batch": 1, "threads": threads,
                                  "repeats": repeats, "forms": ["fused"]}, threads, env=env)
            times[label].append(result["fused"])
    return {label: float(np.median(values)) for label, values in times.items()}


class _BusyCore:
    """A process spinning on one core for the duration of a ``with`` block: the neighbour that
    a shared machine has."""

    def __enter__(self):
        self._process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self._process.kill()
        self._process.wait()


def _progress(items, desc):
    try:
        from tqdm import tqdm
        return tqdm(items, desc=desc, unit="run")
    except ImportError:
        return items


def _machine():
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("model name"))
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
        simd = [f for f in ("fma", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq",
                            "avx512_vnni", "amx_tile", "amx_int8") if f in flags]
        machine = f"{name}, {os.cpu_count()} cores ({', '.join(simd)})"
    except (OSError, StopIteration):
        pass
    return machine


def _clock_mhz():
    """(/proc/cpuinfo MHz or None, measured MHz): the harness divides by the larger."""
    proc = None
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        proc = max(mhz) if mhz else None
    except OSError:
        pass
    from bmxnet_ext.inference import _kernels
    return proc, _kernels.measured_clock_mhz()


def _summaries(float_runs, binary_runs, clock_hz):
    """One summary per binary run: summed ms, speed-up over fp32, MACs/cycle/core."""
    floats = {(r["batch"], r["threads"]): r for r in float_runs}
    summaries = []
    for run in binary_runs:
        reference = floats[(run["batch"], run["threads"])]
        rows, float_rows = run["result"]["rows"], reference["result"]["rows"]
        binary = sum(r["ms"] * r["count"] for r in rows)
        floating = sum(r["ms"] * r["count"] for r in float_rows)
        macs = sum(r["macs"] * r["count"] for r in rows)
        summaries.append(dict(
            isa=run["isa"], kernel=run["result"]["kernel"], batch=run["batch"],
            threads=run["threads"], binary_ms=binary, float_ms=floating,
            speedup=floating / binary,
            macs_per_cycle_per_core=macs / (binary / 1000) / clock_hz / run["threads"]))
    return summaries


def _layer_table(summaries):
    lines = ["| ISA (kernel) | batch | threads | binary layers (ms) | fp32 Convolution (ms) "
             "| speed-up | binary MACs/cycle/core |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['isa']} ({s['kernel']}) | {s['batch']} | {s['threads']} | "
                     f"{s['binary_ms']:.2f} | {s['float_ms']:.2f} | {s['speedup']:.1f}x | "
                     f"{s['macs_per_cycle_per_core']:.0f} |")
    return lines


def _per_layer_table(binary_run, float_run, clock_hz):
    lines = ["| layer (C_in x H x W -> C_out, kernel/stride) | count | binary (ms) | fp32 (ms) "
             "| speed-up | MACs/cycle |", "|---|---|---|---|---|---|"]
    for r, f in zip(binary_run["result"]["rows"], float_run["result"]["rows"]):
        per_cycle = r["macs"] / (r["ms"] / 1000) / clock_hz / binary_run["threads"]
        lines.append(f"| {r['shape']} | {r['count']} | {r['ms']:.3f} | {f['ms']:.3f} | "
                     f"{f['ms'] / r['ms']:.1f}x | {per_cycle:.0f} |")
    return lines


def _e2e_table(e2e_runs):
    reference = {(r["batch"], r["threads"]): r["result"]["float"] for r in e2e_runs
                 if r["model"] == "mobilenet1.0"}
    lines = ["| network | batch | threads | float (ms) | packed (ms) | packed, fused (ms) "
             "| fused vs float | fused vs MobileNet v1 1.0 |", "|---|---|---|---|---|---|---|---|"]
    for run in e2e_runs:
        r = run["result"]
        fused = r.get("fused")
        cells = [run["model"], run["batch"], run["threads"], f"{r['float']:.2f}",
                 f"{r['packed']:.2f}" if "packed" in r else "-",
                 f"{fused:.2f}" if fused else "-",
                 f"{r['float'] / fused:.1f}x" if fused else "-"]
        mobilenet = reference.get((run["batch"], run["threads"]))
        cells.append(f"{mobilenet / fused:.2f}x" if fused and mobilenet else "-")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _find(runs, **keys):
    for run in runs:
        if all(run.get(k) == v for k, v in keys.items()):
            return run
    return None


def _peak_rates(float_runs, binary_runs):
    """(binary, float) MACs per ms on one thread at batch 1: the fastest MeliusNet22 layer of our
    tile kernel on the best ISA measured, and of MXNet's fp32 Convolution. None where not run."""
    binary = next((run for run in binary_runs if run["batch"] == 1 and run["threads"] == 1),
                  None)
    floating = _find(float_runs, batch=1, threads=1)
    if binary is None or floating is None:
        return None

    def best(run):
        return max(r["macs"] / r["ms"] for r in run["result"]["rows"])
    return best(binary), best(floating)


def _ideal_ms(run, rates):
    """A network's time if every binary MAC ran at our kernel's peak and every float MAC at MXNet's
    best fp32 convolution rate, on all threads with no overhead."""
    binary_rate, float_rate = rates
    result = run["result"]
    return ((result["binary_macs"] / binary_rate + result["float_macs"] / float_rate)
            * run["batch"] / run["threads"])


def _ideal_table(e2e_runs, rates):
    lines = ["| network | batch | threads | binary MACs | float MACs | ideal (ms) | fused (ms) "
             "| fused / ideal |", "|---|---|---|---|---|---|---|---|"]
    for run in e2e_runs:
        if "fused" not in run["result"]:
            continue
        r, ideal = run["result"], _ideal_ms(run, rates)
        lines.append(f"| {run['model']} | {run['batch']} | {run['threads']} | "
                     f"{r['binary_macs'] / 1e9:.2f}e9 | {r['float_macs'] / 1e6:.0f}e6 | "
                     f"{ideal:.2f} | {r['fused']:.2f} | {r['fused'] / ideal:.2f} |")
    return lines


def _per_image_ratios(e2e_runs, batch=8):
    """(model, threads, batch-1 ms, batch-`batch` ms per image) of each fused network run at both."""
    rows = []
    for run in e2e_runs:
        big = _find(e2e_runs, model=run["model"], batch=batch, threads=run["threads"])
        if run["batch"] == 1 and big and "fused" in run["result"]:
            rows.append((run["model"], run["threads"], run["result"]["fused"],
                         big["result"]["fused"] / batch))
    return rows


def _per_image_table(e2e_runs):
    lines = ["| network | threads | batch 1 (ms) | batch 8, per image (ms) | ratio |",
             "|---|---|---|---|---|"]
    lines += [f"| {m} | {t} | {one:.2f} | {eight:.2f} | {eight / one:.2f} |"
              for m, t, one, eight in _per_image_ratios(e2e_runs)]
    return lines


def _contention_table(contention, threads):
    """Rows per model: each thread count idle and beside a busy core, interleaved runs."""
    lines = ["| network | " + " | ".join(f"{t} thread(s), {load}" for load in ("idle", "busy core")
                                          for t in threads)
             + f" | {threads[-1]} vs {threads[0]} threads, busy core |",
             "|" + "---|" * (2 + 2 * len(threads))]
    for model, times in contention.items():
        cells = [f"{times[(load, t)]:.2f}" for load in ("idle", "busy") for t in threads]
        ratio = times[("busy", threads[-1])] / times[("busy", threads[0])]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return lines


def _engine_table(engines, threads):
    lines = ["| network | threads | threaded engine (ms) | NaiveEngine (ms) | threaded / naive |",
             "|---|---|---|---|---|"]
    for model, times in engines.items():
        for t in threads:
            threaded, naive = times[("threaded", t)], times[("naive", t)]
            lines.append(f"| {model} | {t} | {threaded:.2f} | {naive:.2f} | "
                         f"{threaded / naive:.2f} |")
    return lines


def _targets(summaries, e2e_runs):
    """Issue 5's targets against this run: (target, measured, met) rows, where measured."""
    rows = []
    for isa, bound in (("avx512", 250), ("avx2", 90)):
        s = _find(summaries, isa=isa, batch=1, threads=1)
        if s:
            value = s["macs_per_cycle_per_core"]
            rows.append((f"{isa}: >= {bound} binary MACs/cycle/core (MeliusNet22 layers, batch 1,"
                         " 1 thread)", f"{value:.0f}", value >= bound))
    for batch, bound in ((1, 15), (8, 12)):
        s = _find(summaries, isa="avx512", batch=batch, threads=1)
        if s:
            rows.append((f"binary layers summed vs fp32 Convolution, batch {batch}, 1 thread: "
                         f">= {bound}x", f"{s['speedup']:.1f}x", s["speedup"] >= bound))
    m22 = _find(e2e_runs, model="meliusnet22", batch=1, threads=2)
    if m22 and "fused" in m22["result"] and "float" in m22["result"]:
        fused, float_ms = m22["result"]["fused"], m22["result"]["float"]
        rows.append(("end to end, batch 1, 2 threads: packed MeliusNet22 >= 8x faster than float",
                     f"{float_ms / fused:.1f}x ({fused:.2f} vs {float_ms:.2f} ms)",
                     float_ms / fused >= 8))
    return rows


def _speed_targets(e2e_runs, rates, contention, engines):
    """Issues 11 and 13's targets against this run: (target, measured, met) rows, where
    measured."""
    rows = []

    def fused(model, threads, batch=1):
        run = _find(e2e_runs, model=model, batch=batch, threads=threads)
        return run["result"].get("fused") if run else None

    def mobilenet(name, threads):
        run = _find(e2e_runs, model=name, batch=1, threads=threads)
        return run["result"]["float"] if run else None

    for threads in (1, 2):
        run = _find(e2e_runs, model="meliusnet22", batch=1, threads=threads)
        if rates and run and "fused" in run["result"]:
            ratio = run["result"]["fused"] / _ideal_ms(run, rates)
            rows.append((f"MeliusNet22 fused, batch 1, {threads} thread(s): <= 1.4x the ideal",
                         f"{ratio:.2f}x", ratio <= 1.4))
    for model, threads, one, eight in _per_image_ratios(e2e_runs):
        if model == "meliusnet22":
            rows.append((f"MeliusNet22 fused, {threads} thread(s): batch 8 per image <= 0.9x "
                         "batch 1", f"{eight / one:.2f}x ({eight:.2f} vs {one:.2f} ms)",
                         eight / one <= 0.9))
    for model, times in contention.items():
        ratio = times[("busy", 2)] / times[("busy", 1)]
        rows.append((f"{model} fused, batch 1, one core busy: 2 threads <= 1.15x 1 thread",
                     f"{ratio:.2f}x ({times[('busy', 2)]:.2f} vs {times[('busy', 1)]:.2f} ms)",
                     ratio <= 1.15))
    for model, times in engines.items():
        for threads in sorted({t for _, t in times}):
            ratio = times[("threaded", threads)] / times[("naive", threads)]
            rows.append((f"{model} fused, batch 1, {threads} thread(s): threaded engine within "
                         "10% of NaiveEngine", f"{ratio:.2f}x", ratio <= 1.1))
    for model, reference, bound in (("quicknet", "mobilenet0.5", 1.0),
                                    ("quicknet_small", "mobilenet0.5", 1.3),
                                    ("meliusnet22", "mobilenet1.0", 1.0),
                                    ("meliusnet22", "mobilenet0.5", 1.0)):
        for threads in (1, 2):
            ours, theirs = fused(model, threads), mobilenet(reference, threads)
            if ours and theirs:
                rows.append((f"{model} fused, batch 1, {threads} thread(s): >= {bound:g}x as "
                             f"fast as fp32 MobileNet v1 {reference[9:]}",
                             f"{theirs / ours:.2f}x ({ours:.2f} vs {theirs:.2f} ms)",
                             theirs / ours >= bound))
    return rows


def _chart(summaries, e2e_runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5),
                                      gridspec_kw={"width_ratios": [3, 2]})
    labels, values, colors = [], [], []
    palette = {"float": "tab:blue", "packed": "tab:olive", "fused": "tab:green"}
    for run in e2e_runs:
        for form in ("float", "packed", "fused"):
            if form in run["result"]:
                labels.append(f"{run['model']} {form}\nb{run['batch']} t{run['threads']}")
                values.append(run["result"][form])
                colors.append("tab:gray" if run["model"] in FLOAT_REFERENCES else palette[form])
    left.bar(range(len(values)), values, color=colors)
    left.set_xticks(range(len(values)))
    left.set_xticklabels(labels, rotation=80, fontsize=6)
    left.set_yscale("log")
    left.set_ylabel("latency, ms (median, log scale)")
    left.set_title("End to end: float (blue), packed (olive), fused (green), MobileNet v1 (grey)",
                   fontsize=9)
    names = [f"{s['isa']}\nb{s['batch']} t{s['threads']}" for s in summaries]
    right.bar(range(len(summaries)), [s["speedup"] for s in summaries], color="tab:green")
    right.set_xticks(range(len(summaries)))
    right.set_xticklabels(names, rotation=80, fontsize=7)
    right.set_ylabel("speed-up over fp32 Convolution (summed layers)")
    right.set_title("MeliusNet22 binary layers", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _engine():
    """The MXNet engine the workers run on (they inherit MXNET_ENGINE_TYPE)."""
    engine = os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice")
    if engine == "NaiveEngine":
        return "MXNet's NaiveEngine (operators run in the calling thread)"
    return f"MXNet's {engine} with one CPU worker"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--isas", nargs="+", default=ISAS, choices=ISAS)
    parser.add_argument("--models", nargs="+", help="zoo networks timed end to end (default: "
                        f"{', '.join(DEFAULT_MODELS)}, those registered)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds of the busy-core and engine comparisons")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per measurement")
    parser.add_argument("--quick", action="store_true",
                        help="batch 1, 1 thread, the best ISA, MeliusNet22 and the MobileNets")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    from bmxnet_ext.inference import _kernels
    from bmxnet_ext.model_zoo import list_models
    supported = [isa for isa in args.isas if isa in _kernels.supported_isas()]
    if args.models is None:
        args.models = [m for m in DEFAULT_MODELS if m in list_models()]
    if args.quick:
        args.batches, args.threads, args.models = [1], [1], ["meliusnet22"]
        supported = supported[:1]
    proc_mhz, measured_mhz = _clock_mhz()
    clock_hz = 1e6 * max(proc_mhz or 0.0, measured_mhz)
    configs = [(b, t) for b in args.batches for t in args.threads]

    float_runs = [{"batch": b, "threads": t,
                   "result": _run_worker({"kind": "float", "batch": b, "threads": t,
                                          "repeats": args.repeats}, t)}
                  for b, t in _progress(configs, "fp32 layers")]
    binary_runs = [{"isa": isa, "batch": b, "threads": t,
                    "result": _run_worker({"kind": "binary", "batch": b, "threads": t,
                                           "repeats": args.repeats}, t, isa)}
                   for isa, (b, t) in _progress([(i, c) for i in supported for c in configs],
                                                "binary layers")]
    e2e_tasks = [(m, b, t) for m in args.models + FLOAT_REFERENCES for b, t in configs]
    e2e_runs = [{"model": m, "batch": b, "threads": t,
                 "result": _run_worker({"kind": "e2e", "model": m, "batch": b, "threads": t,
                                        "repeats": args.repeats}, t)}
                for m, b, t in _progress(e2e_tasks, "end to end")]
    compared = [m for m in COMPARED if m in args.models] if len(args.threads) > 1 else []
    contention, engines = {}, {}
    naive = {"MXNET_ENGINE_TYPE": "NaiveEngine"}
    for model in _progress(compared, "busy core, engines"):
        idle = _interleaved([(("threaded", t), model, t, None) for t in args.threads]
                            + [(("naive", t), model, t, naive) for t in args.threads],
                            args.rounds, args.repeats)
        with _BusyCore():
            busy = _interleaved([(t, model, t, None) for t in args.threads], args.rounds,
                                args.repeats)
        engines[model] = idle
        contention[model] = {**{("idle", t): idle[("threaded", t)] for t in args.threads},
                             **{("busy", t): ms for t, ms in busy.items()}}

    summaries = _summaries(float_runs, binary_runs, clock_hz)
    rates = _peak_rates(float_runs, binary_runs)
    first = binary_runs[0]
    lines = [f"Machine: {_machine()}. Clock: {proc_mhz or float('nan'):.0f} MHz in "
             f"/proc/cpuinfo, {measured_mhz:.0f} MHz measured; cycles counted at "
             f"{clock_hz / 1e6:.0f} MHz. Medians of {args.repeats} runs after warm-up, "
             f"{_engine()}.", "",
             "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in
              _speed_targets(e2e_runs, rates, contention, engines)
              + _targets(summaries, e2e_runs)]
    lines += ["", "### End to end (224x224, hybridized, static memory)", "",
              "packed: `convert_to_xnor(net)`; fused: `convert_to_xnor(net, fuse=True)` "
              f"(kernels: {e2e_runs[0]['result']['kernel']}).", ""] + _e2e_table(e2e_runs)
    if rates:
        binary_rate, float_rate = rates
        lines += ["", "### Fused networks against their ideal", "",
                  "Ideal: every binary MAC at the best rate our kernel reached on a MeliusNet22 "
                  f"layer in this run ({binary_rate * 1000 / clock_hz:.0f} binary MACs/cycle, "
                  f"{first['isa']}, 1 thread) and every float MAC at MXNet's best fp32 "
                  f"Convolution rate on those shapes ({float_rate * 1000 / clock_hz:.1f} "
                  "MACs/cycle), divided over the threads with no overhead.", ""]
        lines += _ideal_table(e2e_runs, rates)
    if _per_image_ratios(e2e_runs):
        lines += ["", "### Batch 8 per image against batch 1 (fused)", ""]
        lines += _per_image_table(e2e_runs)
    if contention:
        lines += ["", "### Beside a busy core (fused, batch 1)", "",
                  f"A process spinning on one core; {args.rounds} interleaved rounds, the median "
                  "of the runs' medians.", ""] + _contention_table(contention, args.threads)
        lines += ["", "### MXNet's threaded engine against NaiveEngine (fused, batch 1)", "",
                  f"{args.rounds} interleaved rounds, the median of the runs' medians.", ""]
        lines += _engine_table(engines, args.threads)
    lines += ["", "### MeliusNet22 binary layers (224x224): bmx_binary_conv2d vs fp32 "
              "Convolution, summed over the 34 layers", ""] + _layer_table(summaries)
    lines += ["", f"Per layer, {first['isa']}, batch {first['batch']}, {first['threads']} "
              "thread(s):", ""]
    lines += _per_layer_table(first, _find(float_runs, batch=first["batch"],
                                           threads=first["threads"]), clock_hz)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": _machine(), "cpu_mhz_proc": proc_mhz,
                   "cpu_mhz_measured": measured_mhz, "repeats": args.repeats,
                   "layer_summaries": summaries, "float_layers": float_runs,
                   "binary_layers": binary_runs, "end_to_end": e2e_runs,
                   "peak_macs_per_ms": rates,
                   "busy_core": {m: [[k[0], k[1], v] for k, v in t.items()]
                                 for m, t in contention.items()},
                   "engines": {m: [[k[0], k[1], v] for k, v in t.items()]
                               for m, t in engines.items()}}, f, indent=2)
    _chart(summaries, e2e_runs, os.path.join(args.out, "latency.png"))
    print("\n".join(lines))
    print(f"\nwrote {args.out}/results.md, results.json and latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
