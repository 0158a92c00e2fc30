"""Per back end, on the same two networks (a conv net and an MLP): latency against
onnxruntime in the same run, load time, and process RSS with the model loaded.

    .venv/bin/python benchmarks/backends_bench.py --rounds 300

Each network is built twice from the same weights (tests/support/tflite_models.py): a
.tflite file for LiteRT, and its ONNX twin for onnxruntime; MNN and OpenVINO run the
builds the server makes from the ONNX twin (`fleetcast.server.convert`: mnnconvert,
OpenVINO IR at f32), loaded through the agent's own back ends on one thread. Latency is
the median per call, each back end timed in alternation with onnxruntime (so load on a
shared machine hits both alike); the ratio is back end / onnxruntime from that pairing.
Load time is the median of 5 loads. RSS is VmRSS of a fresh Python process that
imports the back end, loads the model and runs it once (onnxruntime's own figure is
in the same table). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleetcast.agent import backends  # noqa: E402
from fleetcast.server.convert import mnn as mnn_convert, openvino as ov_convert  # noqa: E402
from tests.support import tflite_models  # noqa: E402

RSS_CODE = """
import sys, numpy as np
from pathlib import Path
from fleetcast.agent import backends
s = backends.backend(sys.argv[1]).load(Path(sys.argv[2]), threads=1, hardware_class="x86-cpu")
x = np.load(sys.argv[3])
s.run({s.inputs[0].name: x})
print([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
"""


def networks(work: Path) -> dict[str, dict[str, Any]]:
    nets = {}
    w = tflite_models.mlp_weights(features=256, hidden=1024)
    nets["mlp"] = {"tflite": tflite_models.mlp(features=256, hidden=1024, weights=w),
                   "onnx": tflite_models.onnx_twin("mlp", w), "nhwc": (1, 256), "nchw": (1, 256)}
    w = tflite_models.conv_weights(filters=32)
    nets["conv"] = {"tflite": tflite_models.conv_net(size=64, filters=32, weights=w),
                    "onnx": tflite_models.onnx_twin("conv", w, size=64), "nhwc": (1, 64, 64, 3), "nchw": (1, 3, 64, 64)}
    for name, net in nets.items():
        d = work / name
        d.mkdir()
        (d / "model.tflite").write_bytes(net["tflite"])
        (d / "model.onnx").write_bytes(net["onnx"])
        net["files"] = {"onnxruntime": d / "model.onnx", "litert": d / "model.tflite",
                        "mnn": mnn_convert.convert(d / "model.onnx", "onnx", d),
                        "openvino": ov_convert.convert(d / "model.onnx", "onnx", d)}
    return nets


def feed(name: str, net: dict[str, Any], x: np.ndarray) -> np.ndarray:
    return x if name == "litert" or x.ndim == 2 else x.transpose(0, 3, 1, 2).copy()


def load_time(name: str, path: Path) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        backends.backend(name).load(path, threads=1, hardware_class="x86-cpu")
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def paired(session: Any, x: np.ndarray, ort: Any, xo: np.ndarray, rounds: int) -> tuple[float, float]:
    a, b = [], []
    fa, fb = {session.inputs[0].name: x}, {ort.inputs[0].name: xo}
    for _ in range(20):
        session.run_values(fa)
        ort.run_values(fb)
    for _ in range(rounds):
        t = time.perf_counter()
        session.run_values(fa)
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        ort.run_values(fb)
        b.append(time.perf_counter() - t)
    return statistics.median(a) * 1000.0, statistics.median(b) * 1000.0


def rss_kib(name: str, path: Path, x: np.ndarray, work: Path) -> int:
    npy = work / f"{name}-input.npy"
    np.save(npy, x)
    out = subprocess.run([sys.executable, "-c", RSS_CODE, name, str(path), str(npy)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip().splitlines()
    return int(out[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nets = networks(work)
        for net_name, net in nets.items():
            x = np.random.default_rng(0).standard_normal(net["nhwc"]).astype(np.float32)
            ort = backends.backend("onnxruntime").load(net["files"]["onnxruntime"], threads=1, hardware_class="x86-cpu")
            reference = ort.run_values({ort.inputs[0].name: feed("onnxruntime", net, x)})[0]
            for name in ("onnxruntime", "litert", "mnn", "openvino"):
                path = net["files"][name]
                session = backends.backend(name).load(path, threads=1, hardware_class="x86-cpu")
                xi = feed(name, net, x)
                diff = float(np.abs(session.run_values({session.inputs[0].name: xi})[0].reshape(reference.shape)
                                    - reference).max())
                ms, ort_ms = paired(session, xi, ort, feed("onnxruntime", net, x), args.rounds)
                rows.append({"net": net_name, "backend": name, "latency_ms": round(ms, 4),
                             "onnxruntime_ms": round(ort_ms, 4), "ratio": round(ms / ort_ms, 3),
                             "load_ms": round(load_time(name, path), 2), "rss_mib": round(rss_kib(name, path, xi, work) / 1024, 1),
                             "max_abs_diff": diff, "file_bytes": path.stat().st_size})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| net | back end | median ms | onnxruntime ms (same run) | ratio | load ms | RSS MiB | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['net']} | {r['backend']} | {r['latency_ms']} | {r['onnxruntime_ms']} | {r['ratio']} | "
              f"{r['load_ms']} | {r['rss_mib']} | {r['max_abs_diff']:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
