"""Time two ONNX models against each other on onnxruntime's CPU provider.

    .venv/bin/python benchmarks/latency_pair.py REFERENCE.onnx CANDIDATE.onnx \\
        [--threads 1,2] [--seconds 10] [--repeats 3]

Both are run on the same random batch-1 input, in alternating rounds
(`measure.measure_latency_pair_ms`), so load from other processes falls on both alike.
Prints each repeat's medians and ratio, then the median ratio per thread count. Use it
to re-check a `fleetcast compress` level's latency ratio on a quiet machine, apart from
the compression run that built it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from fleetcast.server.compress.measure import LatencyConfig, measure_latency_pair_ms, open_session

ONNX_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def random_feed(model: Path) -> dict[str, np.ndarray]:
    """One batch-1 input per model input; symbolic dimensions other than the first are refused."""
    rng = np.random.default_rng(0)
    feed = {}
    for spec in open_session(str(model), threads=1).get_inputs():
        shape = [1 if index == 0 and not isinstance(size, int) else size for index, size in enumerate(spec.shape)]
        if not all(isinstance(size, int) for size in shape):
            raise SystemExit(f"input {spec.name} has symbolic dimensions {spec.shape}; this script needs fixed ones")
        feed[spec.name] = rng.standard_normal(shape).astype(ONNX_TO_NUMPY[spec.type])
    return feed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per model per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    feed = random_feed(args.reference)
    config = LatencyConfig(min_duration_s=args.seconds, max_runs=100_000)
    for threads in (int(t) for t in args.threads.split(",")):
        ratios = []
        for repeat in range(1, args.repeats + 1):
            reference_ms, candidate_ms = measure_latency_pair_ms(str(args.reference), str(args.candidate), feed,
                                                                 threads=threads, config=config)
            ratios.append(candidate_ms / reference_ms)
            print(f"threads={threads} repeat={repeat}: reference {reference_ms:.3f} ms, "
                  f"candidate {candidate_ms:.3f} ms, ratio {ratios[-1]:.3f}", flush=True)
        print(f"threads={threads}: median ratio {statistics.median(ratios):.3f} over {len(ratios)} repeats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
