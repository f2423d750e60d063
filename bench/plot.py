#!/usr/bin/env python3
# SPDX-FileCopyrightText: 2026 The attn authors
# SPDX-License-Identifier: MIT
"""Charts of attn's benchmark figures, from Google Benchmark's JSON output.

    ./build/native/bench/bench_attention --benchmark_out=attention.json \\
        --benchmark_out_format=json --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true
    ./build/native/bench/bench_decode --benchmark_out=decode.json \\
        --benchmark_out_format=json --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true
    python3 bench/plot.py --attention attention.json --decode decode.json --out docs

(Debian: python3-matplotlib.) Writes, each naming the machine (the benchmarks' "attn CPU" and
"attn SIMD" context, or --machine):
  - bench_prefill.png: prefill GFLOP/s against L for attn's kernel (causal and not), the naive
    Eigen baseline, Eigen's GEMM and the one-core FMA peak;
  - bench_decode.png: decode GB/s against cached keys for each storage type, against the
    machine's read bandwidth;
  - bench_threads.png: two threads over one, for the kernel, the backward, decoding and the FMA
    peak itself.
With repetitions, each point is the median (Google Benchmark's aggregate).
"""
import argparse
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        data = json.load(f)
    return data.get("context", {}), data.get("benchmarks", [])


def parse_name(name):
    """'Kernel/n:1024/m:1024/causal:0/threads:1/real_time' -> ('Kernel', {'n': 1024, ...})."""
    parts = name.split("/")
    args = {}
    for part in parts[1:]:
        m = re.fullmatch(r"(\w+):(-?\d+)", part)
        if m:
            args[m.group(1)] = int(m.group(2))
    return parts[0], args


def points(benchmarks, counter):
    """{(family, frozen args): value} of `counter`: medians where there are aggregates, else the
    one run's value."""
    medians, singles = {}, {}
    for b in benchmarks:
        if counter not in b:
            continue
        family, args = parse_name(b.get("run_name", b["name"]))
        key = (family, tuple(sorted(args.items())))
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[key] = b[counter]
        else:
            singles.setdefault(key, b[counter])
    return {**singles, **medians}


def select(values, family, **fixed):
    """[(args, value)] of a family whose args include `fixed`, sorted by args."""
    out = []
    for (fam, args), value in values.items():
        a = dict(args)
        if fam == family and all(a.get(k) == v for k, v in fixed.items()):
            out.append((a, value))
    return sorted(out, key=lambda item: sorted(item[0].items()))


def machine_name(context, override):
    if override:
        return override
    cpu = context.get("attn CPU", context.get("host_name", "unknown machine"))
    simd = context.get("attn SIMD", "")
    return f"{cpu}, {simd}" if simd else cpu


def plot_prefill(values, machine, path):
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for causal, style in ((0, "-"), (1, "--")):
        kernel = select(values, "Kernel", causal=causal, threads=1)
        kernel = [(a, v) for a, v in kernel if a.get("n") == a.get("m")]
        if kernel:
            ax.plot([a["n"] for a, _ in kernel], [v / 1e9 for _, v in kernel], "o" + style,
                    color="#d95f02", label="attn kernel" + (", causal" if causal else ""))
        naive = select(values, "Naive", causal=causal)
        naive = [(a, v) for a, v in naive if a.get("n") == a.get("m")]
        if naive:
            ax.plot([a["n"] for a, _ in naive], [v / 1e9 for _, v in naive], "s" + style,
                    color="#7570b3", label="naive Eigen" + (", causal" if causal else ""))
    gemm = select(values, "EigenGemm")
    if gemm:
        ax.plot([a["n"] for a, _ in gemm], [v / 1e9 for _, v in gemm], "^:", color="#1b9e77",
                label="Eigen GEMM (L x 64 by 64 x L)")
    peak = select(values, "FmaPeak", threads=1)
    if peak:
        ax.axhline(peak[0][1] / 1e9, color="black", lw=1, ls=":", label="FMA peak, one core")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length L (queries = keys)")
    ax.set_ylabel("GFLOP/s, one thread")
    ax.set_title(f"Prefill, float, 8 heads of 64\n{machine}", fontsize=10)
    ax.set_ylim(bottom=0)
    # Below the axes: the lines fill the plot from top to bottom.
    ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_decode(values, machine, path):
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    storages = (("DecodeStepF32", "float"), ("DecodeStepBF16", "bfloat16"),
                ("DecodeStepF16", "half"), ("DecodeStepQ8", "qint8"))
    for family, label in storages:
        rows = select(values, family, threads=1)
        if rows:
            ax.plot([a["m"] for a, _ in rows], [v / 1e9 for _, v in rows], "o-", label=label)
    bandwidth = select(values, "ReadBandwidth", threads=1)
    if bandwidth:
        ax.axhline(bandwidth[0][1] / 1e9, color="black", lw=1, ls=":",
                   label="read bandwidth, one core")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("cached keys m")
    ax.set_ylabel("GB/s of keys and values read, one thread")
    ax.set_title(f"Decoding one token (bytes as stored)\n{machine}", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_threads(attention, decode, machine, path):
    bars = []

    def ratio(values, family, **fixed):
        one = select(values, family, threads=1, **fixed)
        two = select(values, family, threads=2, **fixed)
        if one and two:
            return two[0][1] / one[0][1]
        return None

    for label, values, family, fixed in (
            ("FMA peak", attention, "FmaPeak", {}),
            ("kernel L=1024", attention, "Kernel", {"n": 1024, "m": 1024, "causal": 0}),
            ("kernel L=4096", attention, "Kernel", {"n": 4096, "m": 4096, "causal": 0}),
            ("backward L=1024", attention, "Backward", {"L": 1024}),
            ("backward L=4096", attention, "Backward", {"L": 4096}),
            ("read bandwidth", decode, "ReadBandwidth", {}),
            ("decode m=16384", decode, "DecodeStepF32", {"m": 16384})):
        if values is None:
            continue
        r = ratio(values, family, **fixed)
        if r is not None:
            bars.append((label, r))
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color="#66a61e")
    ax.axhline(2, color="black", lw=1, ls=":")
    ax.set_ylabel("2 threads / 1 thread")
    ax.set_ylim(0, 2.2)
    ax.set_title(f"Thread scaling on two cores\n{machine}", fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attention", help="bench_attention's JSON")
    parser.add_argument("--decode", help="bench_decode's JSON")
    parser.add_argument("--out", default="docs", help="directory for the PNG files")
    parser.add_argument("--machine", help="the machine's name on the charts")
    args = parser.parse_args()
    if not args.attention and not args.decode:
        parser.error("give --attention, --decode or both")
    os.makedirs(args.out, exist_ok=True)
    attention = decode = None
    context = {}
    if args.attention:
        context, benchmarks = load(args.attention)
        attention = points(benchmarks, "FLOP/s")
        plot_prefill(attention, machine_name(context, args.machine),
                     os.path.join(args.out, "bench_prefill.png"))
    if args.decode:
        decode_context, benchmarks = load(args.decode)
        context = context or decode_context
        decode = points(benchmarks, "bytes/s")
        plot_decode(decode, machine_name(decode_context, args.machine),
                    os.path.join(args.out, "bench_decode.png"))
    plot_threads(attention, decode, machine_name(context, args.machine),
                 os.path.join(args.out, "bench_threads.png"))
    print("wrote", ", ".join(os.path.join(args.out, n) for n in
                             ("bench_prefill.png", "bench_decode.png", "bench_threads.png")))


if __name__ == "__main__":
    sys.exit(main())
