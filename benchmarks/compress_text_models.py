"""Every compression level on the text models of examples/ocr (a detector whose
output is a probability map, a CTC recognizer), on samples of varying size.

    .venv/bin/python benchmarks/compress_text_models.py [--models detector,recognizer] [--out DIR]

Prints one markdown table per model: size, latency ratio to the FP32 original timed in
alternating rounds in the same run (1 and 2 threads), the figure the budget is judged
by, and each output's own figure, cosine and SNR (server/compress/fidelity.py), all on
the held-out half of the evaluation samples. Leaves each report under --out.
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

import onnxruntime as ort

from fleetcast.server.compress.pipeline import CompressConfig, CompressionReport, compress

OCR = Path(__file__).resolve().parent.parent / "examples" / "ocr"


def table(report: CompressionReport) -> str:
    names = [output["name"] for output in report.original.outputs]
    head = ["level", "size", "size x", "packed x", "latency 1t", "1t x", "2t x", "judged by", "drop pp",
            *[f"{name}: figure / cosine / SNR" for name in names]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in [report.original, *report.levels]:
        if r.error:
            rows.append(f"| {r.level} | not built: {r.error} |")
            continue
        outputs = {o["name"]: o for o in r.outputs}
        cells = [r.level, f"{r.size_bytes / 1024:,.1f} KiB", f"{r.size_ratio:.3f}", f"{r.packed_ratio:.3f}",
                 f"{r.latency_ms_1t:.3f} ms", f"{r.latency_ratio:.2f}", f"{r.latency_ratio_2t:.2f}",
                 f"{r.metric} {r.score:.2f}", f"{r.drop_pp:+.2f}",
                 *[f"{outputs[n]['kind']} {outputs[n]['figure_pct']:.2f} / {outputs[n]['cosine']:.5f} / "
                   f"{outputs[n]['snr_db']:.1f} dB" for n in names]]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="detector,recognizer")
    parser.add_argument("--out", type=Path, default=None, help="keep variants and reports here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.out or Path(tempfile.mkdtemp(prefix="fleetcast-text-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, onnxruntime {ort.__version__}, python {platform.python_version()}")
    for name in args.models.split(","):
        config = CompressConfig(calibration_dir=OCR / name / "calibration", eval_dir=OCR / name / "eval")
        started = time.monotonic()
        report = compress(OCR / f"{name}.onnx", work / f"{name}-variants", config,
                          lambda text: print(f"  {text}", file=sys.stderr, flush=True))
        print(f"\n### {name} ({report.quality_data}; budget {report.budget_pp} pp; "
              f"built in {time.monotonic() - started:.0f} s)\n")
        print("\n".join(f"- {note}" for note in report.notes) + "\n")
        print(table(report))
        sys.stdout.flush()
    print(f"\nreports under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
