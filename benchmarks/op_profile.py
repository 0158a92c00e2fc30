"""Where an ONNX model's inference time goes, per operator type, at 1 and 2 threads.

    .venv/bin/python benchmarks/op_profile.py MODEL.onnx [--threads 1,2] [--runs 30]

Runs the model on a random batch-1 input with onnxruntime's profiler on, then prints
the mean kernel time per run of the costliest operator types and their total. Use it
to see why a level's latency ratio changes with the thread count (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from latency_pair import random_feed


def kernel_ms_per_op(model: Path, feed: dict, *, threads: int, runs: int) -> dict[str, float]:
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
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: microseconds / runs / 1000.0 for op, microseconds in totals.most_common()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, comma separated")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--top", type=int, default=6, help="operator types to list")
    args = parser.parse_args()
    feed = random_feed(args.model)
    for threads in (int(t) for t in args.threads.split(",")):
        per_op = kernel_ms_per_op(args.model, feed, threads=threads, runs=args.runs)
        listed = ", ".join(f"{op} {ms:.2f}" for op, ms in list(per_op.items())[:args.top])
        print(f"threads={threads}: total {sum(per_op.values()):.2f} ms per run; {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
