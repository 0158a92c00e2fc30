"""Compression benchmark: every level on ResNet-18, MobileNetV2 and the digits model.

    .venv/bin/python benchmarks/compress_bench.py [--nets resnet18,mobilenet_v2,digits] [--out DIR]

With torch installed (`pip install torch==2.13.0`, the CPU build), ResNet-18 and
MobileNetV2 are trained briefly on a procedurally drawn 10-class image task and
exported to ONNX (benchmarks/compress_torch_nets.py; cached under --model-cache), and
scored by top-1 accuracy on a labelled set of that task. Without torch (or with
--source helper) they are built with onnx.helper (benchmarks/compress_nets.py) with
random, BatchNorm-calibrated weights and fed image-like inputs: their quality is then
fidelity to FP32 (top-1 agreement, cosine, SNR). The digits model (examples/digits)
is scored on its labelled test split.
Every run splits its evaluation samples: the searches score on the even-numbered
files, the tables report the odd-numbered ones, which the searches never saw.
Every ratio is against the FP32 original measured in the same run, on the same
machine. Prints a markdown table per model, the form used in docs/benchmarks.md,
and leaves each run's report.{json,md,png} under --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compress_nets  # noqa: E402

from fleetcast.server.compress.levels import ALL_LEVELS  # noqa: E402
from fleetcast.server.compress.pipeline import CompressConfig, CompressionReport, compress  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"


def write_images(directory: Path, count: int, seed: int) -> Path:
    directory.mkdir(parents=True)
    for start in range(0, count, 64):
        batch = compress_nets.images(min(64, count - start), seed=seed * 100_003 + start)
        for offset, image in enumerate(batch):
            np.save(directory / f"{start + offset:04d}.npy", image[None])
    return directory


def write_shapes(directory: Path, count: int, seed: int, *, labelled: bool) -> Path:
    import compress_torch_nets

    directory.mkdir(parents=True)
    labels = []
    for start in range(0, count, 64):
        batch, classes = compress_torch_nets.shapes(min(64, count - start), seed=seed * 100_003 + start)
        labels.append(classes)
        for offset, image in enumerate(batch):
            np.save(directory / f"{start + offset:04d}.npy", image[None])
    if labelled:
        np.save(directory / "labels.npy", np.concatenate(labels))
    return directory


def run_net(name: str, work: Path, args: argparse.Namespace) -> CompressionReport:
    if args.source == "torch":
        import compress_torch_nets

        model_path = compress_torch_nets.trained_model(name, args.model_cache, steps=args.train_steps)
        calibration = write_shapes(work / f"{name}-calibration", args.calibration_samples, seed=1, labelled=False)
        evaluation = write_shapes(work / f"{name}-eval", args.eval_samples, seed=2, labelled=True)
    else:
        model_path = work / f"{name}.onnx"
        onnx.save(getattr(compress_nets, name)(), str(model_path))
        calibration = write_images(work / f"{name}-calibration", args.calibration_samples, seed=1)
        evaluation = write_images(work / f"{name}-eval", args.eval_samples, seed=2)
    config = CompressConfig(levels=args.levels, budget_pp=args.budget, calibration_dir=calibration,
                            eval_dir=evaluation, intra_op_threads=args.quality_threads,
                            max_eval_samples=args.eval_samples)
    return compress(model_path, work / f"{name}-variants", config, progress)


def run_digits(work: Path, args: argparse.Namespace) -> CompressionReport:
    config = CompressConfig(levels=args.levels, budget_pp=args.budget, calibration_dir=DIGITS / "calibration",
                            eval_dir=DIGITS / "eval", intra_op_threads=args.quality_threads)
    return compress(DIGITS / "digits.onnx", work / "digits-variants", config, progress)


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def table(report: CompressionReport) -> str:
    rows = ["| level | file | packed | size x | packed x | latency 1t | 1t x | latency 2t | 2t x | quality | drop pp |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in [report.original, *report.levels]:
        if r.error:
            rows.append(f"| {r.level} | not built: {r.error} |||||||||")
            continue
        quality = (f"top-1 {r.accuracy_pct:.2f} % (agree {r.agreement_pct:.1f} %)" if r.metric == "accuracy" else
                   f"agree {r.agreement_pct:.1f} %, cos {r.cosine:.4f}, SNR {r.snr_db:.1f} dB")
        rows.append(f"| {r.level} | {r.size_bytes / 1024:,.0f} KiB | {r.packed_bytes / 1024:,.0f} KiB "
                    f"| {r.size_ratio:.3f} | {r.packed_ratio:.3f} | {r.latency_ms_1t:.3f} ms | {r.latency_ratio:.2f} "
                    f"| {r.latency_ms_2t:.3f} ms | {r.latency_ratio_2t:.2f} | {quality} | {r.drop_pp:+.2f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default="resnet18,mobilenet_v2,digits")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=512, help="half search, half held out")
    parser.add_argument("--quality-threads", type=int, default=1, help="threads for the quality runs")
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None, help="keep variants and reports here")
    parser.add_argument("--levels", default=",".join(ALL_LEVELS), help="levels to build (default: all)")
    parser.add_argument("--source", choices=("auto", "torch", "helper"), default="auto",
                        help="ResNet-18/MobileNetV2: trained with torch, or random onnx.helper nets "
                             "(auto: torch when installed)")
    parser.add_argument("--train-steps", type=int, default=1000, help="training steps per net (torch source)")
    parser.add_argument("--model-cache", type=Path, default=Path.home() / ".cache" / "fleetcast" / "compress-bench",
                        help="trained nets are kept here and reused (torch source)")
    args = parser.parse_args()
    args.levels = tuple(args.levels.split(","))
    if args.source == "auto":
        args.source = "torch" if importlib.util.find_spec("torch") else "helper"
    logging.basicConfig(level=logging.WARNING)
    work = args.out or Path(tempfile.mkdtemp(prefix="fleetcast-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, onnxruntime {ort.__version__}, "
          f"numpy {np.__version__}, python {platform.python_version()}, nets from {args.source}")
    for name in args.nets.split(","):
        started = time.monotonic()
        report = run_digits(work, args) if name == "digits" else run_net(name, work, args)
        print(f"\n### {name} ({report.quality_data}; budget {report.budget_pp} pp; "
              f"built in {time.monotonic() - started:.0f} s)\n")
        print("\n".join(f"- {note}" for note in report.notes) + "\n")
        print(table(report))
        balanced = next((r for r in report.levels if r.level == "balanced" and not r.error), None)
        if balanced is not None:
            print(f"\nbalanced recipe: method={balanced.recipe.get('calibration_method')} "
                  f"float layers={len(balanced.recipe.get('float_layers', []))} "
                  f"(weights {balanced.recipe.get('float_layer_weights')}) "
                  f"budget met={balanced.recipe.get('budget_met')} "
                  f"validation drop={balanced.recipe.get('validation_drop_pp')} pp "
                  f"+ allowance {balanced.recipe.get('validation_allowance_pp')} pp")
        smallest = next((r for r in report.levels if r.level == "smallest" and not r.error), None)
        if smallest is not None:
            print(f"smallest: {1 / smallest.packed_ratio:.1f}x smaller than the FP32 file (packed), "
                  f"validation drop={smallest.recipe.get('validation_drop_pp')} pp "
                  f"+ allowance {smallest.recipe.get('validation_allowance_pp')} pp")
        sys.stdout.flush()
    print(f"\nreports under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
