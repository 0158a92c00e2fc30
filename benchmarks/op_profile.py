"""Where an ONNX model's inference time goes, per operator type, at 1 and 2 threads.

    .venv/bin/python benchmarks/op_profile.py MODEL.onnx [--threads 1,2] [--runs 30] [--repeats 1] [--nodes]

Runs the model on a random batch-1 input with onnxruntime's profiler on, then prints
the kernel time per run of the costliest operator types (or nodes, `--nodes`) and
their total: each node's median over the runs, summed per type. With `--repeats N`
each node's figure is the lowest of N profiled sessions, which a busy machine
disturbs least. Use it to see why a level's latency ratio changes with
the thread count, or which layer INT8 runs slowly (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from latency_pair import random_feed


def kernel_ms_per_node(model: Path, feed: dict, *, threads: int, runs: int) -> dict[str, tuple[str, float]]:
    """Node name -> (operator type, median kernel milliseconds over `runs` runs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as directory:
        options.profile_file_prefix = str(Path(directory) / "profile")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    durations: dict[str, list[float]] = collections.defaultdict(list)
    types: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][:-len("_kernel_time")]
            durations[name].append(event["dur"] / 1000.0)
            types[name] = event["args"]["op_name"]
    return {name: (types[name], statistics.median(values)) for name, values in durations.items()}


def kernel_ms(model: Path, feed: dict, *, threads: int, runs: int, repeats: int, nodes: bool) -> dict[str, float]:
    """Per operator type (or node): the sum of its nodes' lowest medians over `repeats` sessions."""
    lowest: dict[str, tuple[str, float]] = {}
    for _ in range(repeats):
        for name, (op, ms) in kernel_ms_per_node(model, feed, threads=threads, runs=runs).items():
            lowest[name] = (op, min(ms, lowest.get(name, (op, ms))[1]))
    totals: collections.Counter[str] = collections.Counter()
    for name, (op, ms) in lowest.items():
        totals[name if nodes else op] += ms
    return dict(totals.most_common())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, comma separated")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--top", type=int, default=6, help="operator types to list")
    parser.add_argument("--repeats", type=int, default=1, help="profiled sessions; each figure is their lowest")
    parser.add_argument("--nodes", action="store_true", help="per node instead of per operator type")
    args = parser.parse_args()
    feed = random_feed(args.model)
    for threads in (int(t) for t in args.threads.split(",")):
        per_op = kernel_ms(args.model, feed, threads=threads, runs=args.runs, repeats=args.repeats, nodes=args.nodes)
        listed = ", ".join(f"{op} {ms:.2f}" for op, ms in list(per_op.items())[:args.top])
        print(f"threads={threads}: total {sum(per_op.values()):.2f} ms per run; {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
