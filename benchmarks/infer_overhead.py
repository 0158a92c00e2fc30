"""Per-inference overhead of the agent's inference API against a bare onnxruntime session.

    .venv/bin/python benchmarks/infer_overhead.py --threads 1 --rounds 15

For each model, the same file is loaded twice with the same thread count: once as a
bare `onnxruntime.InferenceSession`, once through the agent's real path (installed
into a slot, loaded by the onnxruntime back end, served by `Runtime.infer` with its
telemetry). Rounds alternate between the two so drift on a shared machine hits both
alike; each round times a block of calls, and the result is the median per-call time
of each and their ratio. The agent's local API (a Unix socket to the agent process)
is timed too, as an absolute per-call cost: an app on the device pays it only when it
calls the agent from another process. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleetcast.agent.datadir import DataDir  # noqa: E402
from fleetcast.agent.local_api import InferenceClient, LocalApi  # noqa: E402
from fleetcast.agent.runtime import Runtime, load_model  # noqa: E402
from fleetcast.agent.slots import Slots  # noqa: E402
from fleetcast.agent.telemetry import Recorder  # noqa: E402
from fleetcast.agent.trust import VerifiedAssignment  # noqa: E402
from tests.support import models  # noqa: E402


def assignment_for(path: Path, input_shape: list[int | str]) -> VerifiedAssignment:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    # What a verifier hands the flow; built from a saved document, as the agent does on restart.
    return VerifiedAssignment.from_saved({
        "deployment_id": "bench", "device_id": "bench-1", "model": path.stem, "version": "1",
        "variant": "original", "format": "onnx", "target_path": f"artifacts/{sha}", "sha256": sha,
        "length": len(data), "golden": None,
        "inputs": {"input": {"dtype": "float32", "shape": input_shape}}, "director_version": 1,
    })


def time_block(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def measure(path: Path, x: np.ndarray, *, threads: int, rounds: int, work: Path) -> tuple[float, float, float]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    bare = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    bare_out = [o.name for o in bare.get_outputs()]

    data = DataDir(work / path.stem).create()
    slots = Slots(data)
    installed = slots.install("a", assignment_for(path, ["N", int(x.shape[1])]), model_file=path, golden_file=None)
    runtime = Runtime()
    runtime.swap(load_model(installed, recorder=Recorder("bench-1"), threads=threads, hardware_class="x86-cpu"))

    feed = {"input": x}
    bare_call = lambda: bare.run(bare_out, feed)  # noqa: E731
    ours_call = lambda: runtime.infer(feed)  # noqa: E731
    single = time_block(bare_call, 20)
    calls = max(50, int(0.2 / max(single, 1e-6)))  # about 0.2 s per block
    for _ in range(3):  # warm both
        time_block(bare_call, calls), time_block(ours_call, calls)
    bare_times, ours_times = [], []
    for _ in range(rounds):
        bare_times.append(time_block(bare_call, calls))
        ours_times.append(time_block(ours_call, calls))
    # The local API: the same runtime behind the agent's Unix socket (server threads in this
    # process, so client and server share one interpreter: an upper bound on its cost).
    api = LocalApi(data.root / "agent.sock", runtime, status=lambda: None)  # type: ignore[arg-type]
    api.start()
    with InferenceClient(data.root) as client:
        api_call = lambda: client.infer(feed)  # noqa: E731
        api_calls = max(20, calls // 10)
        time_block(api_call, api_calls)
        api_time = statistics.median(time_block(api_call, api_calls) for _ in range(max(3, rounds // 3)))
    api.stop()
    return statistics.median(bare_times), statistics.median(ours_times), api_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetcast-bench-") as tmp:
        work = Path(tmp)
        cases = [
            ("digits (examples/digits)", ROOT / "examples" / "digits" / "digits.onnx",
             np.load(ROOT / "examples" / "digits" / "test.npz")["x"][:1].astype(np.float32)),
            ("5 MB MLP, batch 1", models.write(models.sized_model(5.0, seed=3), work / "mlp5.onnx"),
             models.sample_input(rows=1)),
            ("5 MB MLP, batch 32", work / "mlp5.onnx", models.sample_input(rows=32)),
        ]
        print(f"threads={args.threads} rounds={args.rounds}")
        print("| model | bare onnxruntime (us/call) | agent Runtime.infer (us/call) | overhead "
              "| local API over the socket (us/call) |")
        print("|---|---|---|---|---|")
        for i, (name, path, x) in enumerate(cases):
            bare, ours, api = measure(path, x, threads=args.threads, rounds=args.rounds, work=work / f"case{i}")
            print(f"| {name} | {bare * 1e6:.1f} | {ours * 1e6:.1f} | {100 * (ours / bare - 1):+.1f} % | {api * 1e6:.0f} |")


if __name__ == "__main__":
    main()
