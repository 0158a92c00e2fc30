"""How long `balanced` takes on ResNet-18 with 16 calibration samples and no evaluation set.

    .venv/bin/python benchmarks/compress_search_time.py [--train-steps 300] [--calibration-samples 16]

With torch (`pip install torch==2.13.0`, the CPU build) and `--source torch` (the
default), ResNet-18 is trained on the `shapes` task by benchmarks/compress_torch_nets.py
(cached under --model-cache) and exported at 224x224; `--source helper` builds it with
onnx.helper instead (benchmarks/compress_nets.py: random, BatchNorm-calibrated weights,
no torch) and calibrates it on that script's image-like inputs. The run is `fleetcast compress --levels balanced` as a user would
start it, default --time-limit; the wall time printed is the whole compress call
(loading, normalizing, searching, measuring, writing the report). With 16 samples
top-1 agreement cannot resolve a 1-point budget, so the run is judged by output cosine
(server/compress/measure.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compress_nets  # noqa: E402

from fleetcast.server.compress.clock import DEFAULT_TIME_LIMIT_S  # noqa: E402
from fleetcast.server.compress.pipeline import CompressConfig, compress  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="resnet18")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S)
    parser.add_argument("--model-cache", type=Path, default=Path.home() / ".cache" / "fleetcast" / "compress-bench")
    parser.add_argument("--source", choices=("torch", "helper"), default="torch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="fleetcast-search-time-"))
    if args.source == "torch":
        import compress_torch_nets

        model = compress_torch_nets.trained_model(args.net, args.model_cache, steps=args.train_steps)
        images, _ = compress_torch_nets.shapes(args.calibration_samples, seed=1)
    else:
        import onnx

        model = work / f"{args.net}.onnx"
        onnx.save(getattr(compress_nets, args.net)(), str(model))
        images = compress_nets.images(args.calibration_samples, seed=1)
    calibration = work / "calibration"
    calibration.mkdir()
    for index, image in enumerate(images):
        np.save(calibration / f"{index:04d}.npy", image[None])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start, onnxruntime {ort.__version__}")
    config = CompressConfig(levels=("balanced",), calibration_dir=calibration, time_limit_s=args.time_limit)
    started = time.monotonic()
    report = compress(model, work / "variants", config, lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    elapsed = time.monotonic() - started
    balanced = report.levels[0]
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    print("\n".join(f"- {note}" for note in report.notes))
    if balanced.error:
        print(f"balanced not built: {balanced.error}")
        return 1
    print(f"{args.net} ({args.source}) balanced, {args.calibration_samples} calibration samples, no evaluation set: "
          f"{elapsed:.0f} s wall (time limit {args.time_limit:g} s, reached: {balanced.recipe['time_limit_reached']}); "
          f"size {balanced.size_ratio:.3f}x, latency {balanced.latency_ratio:.2f}x FP32 at 1 thread, "
          f"{balanced.latency_ratio_2t:.2f}x at 2; judged by {balanced.metric} {balanced.score:.3f} "
          f"(cosine {balanced.cosine:.5f}, top-1 agreement {balanced.agreement_pct:.2f} %); float layers "
          f"{len(balanced.recipe['float_layers'])}, method {balanced.recipe['calibration_method']}, "
          f"method scores {balanced.recipe['method_scores']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
