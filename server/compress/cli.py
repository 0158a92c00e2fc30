"""`fleetcast compress MODEL.onnx --out DIR [...]`: the pipeline as an operator's command.

Exit codes: 0 built (some levels may be reported missing), 2 unusable input (nothing is
written), 1 no requested level could be built (one message gives each level's reason;
nothing is written) or another failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fleetcast.server.compress.clock import DEFAULT_TIME_LIMIT_S
from fleetcast.server.compress.errors import CompressError, InputError
from fleetcast.server.compress.levels import ALL_LEVELS, DESCRIPTIONS, parse_levels

logger = logging.getLogger(__name__)

EXAMPLE = """\
levels:
{levels}

Example:
  fleetcast compress examples/digits/digits.onnx --out /tmp/digits-variants \\
      --calibration examples/digits/calibration --eval examples/digits/eval --levels balanced,smallest

  fleetcast compress detector.onnx --out /tmp/det --calibration images/ --eval held-out/ \
      --levels balanced --time-limit 60 --metric mytask.py:mean_iou

Sample directories hold one .npz per sample (input name -> array), or .npy files for
single-input models; samples may differ in size where the model's dimensions are free.
An evaluation directory may add labels.npy (one row per sample) for accuracy or --metric.
"""


def parser() -> argparse.ArgumentParser:
    levels = "\n".join(f"  {name:<9} {DESCRIPTIONS[name]}" for name in ALL_LEVELS)
    command = argparse.ArgumentParser(
        prog="fleetcast compress", description="Build measured, smaller and faster variants of an ONNX model.",
        epilog=EXAMPLE.format(levels=levels), formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_argument("model", type=Path, help="the trained model, an .onnx file")
    command.add_argument("--out", type=Path, required=True, help="new or empty directory for the variants")
    command.add_argument("--calibration", type=Path, help="calibration samples (needed for INT8 and smallest)")
    command.add_argument("--eval", type=Path, help="evaluation samples, with labels.npy for accuracy")
    command.add_argument("--levels", default=",".join(ALL_LEVELS), help="comma-separated levels (default: all)")
    command.add_argument("--budget", type=float, default=1.0, help="allowed accuracy drop, percentage points")
    command.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="SECONDS",
                         help=f"time for the searches (default {DEFAULT_TIME_LIMIT_S:g}); when it runs out the best "
                              "choice so far is kept and the report says so")
    command.add_argument("--metric", metavar="MODULE:FUNCTION",
                         help="your task metric: called with the evaluation outputs and labels, returns a score "
                              "(higher is better) the budget applies to; module:function or file.py:function")
    command.add_argument("--threads", type=int, default=1, help="threads for accuracy runs")
    command.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    command.add_argument("-v", "--verbose", action="store_true", help="log more")
    return command


class ProgressLine:
    """One status line on stderr, rewritten in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, text: str) -> None:
        if self.tty and text.startswith("note: "):
            sys.stderr.write("\r\x1b[2K" + text + "\n")     # notes stay on screen
        elif self.tty:
            sys.stderr.write("\r\x1b[2K" + text[:160])
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        levels = parse_levels(args.levels)
    except ValueError as error:
        print(f"fleetcast compress: {error}", file=sys.stderr)
        return 2
    from fleetcast.server.compress.pipeline import CompressConfig, compress
    from fleetcast.server.compress.report import render_markdown

    try:
        config = CompressConfig(levels=levels, budget_pp=args.budget, calibration_dir=args.calibration,
                                eval_dir=args.eval, intra_op_threads=args.threads, time_limit_s=args.time_limit,
                                metric=args.metric)
    except ValueError as error:
        print(f"fleetcast compress: {error}", file=sys.stderr)
        return 2
    progress = ProgressLine()
    try:
        report = compress(args.model, args.out, config, progress)
    except InputError as error:
        progress.done()
        print(f"fleetcast compress: {error}", file=sys.stderr)
        return 2
    except CompressError as error:  # AllLevelsFailedError: each level's reason, nothing written
        progress.done()
        print(f"fleetcast compress: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the output directory's disk or permissions
        progress.done()
        print(f"fleetcast compress: cannot write {args.out}: {error}", file=sys.stderr)
        return 1
    progress.done()
    print(json.dumps(report.to_json(), indent=2) if args.json else render_markdown(report))
    if not args.json:
        print(f"written to {args.out}/ (report.json, report.md, report.png)")
    return 0
