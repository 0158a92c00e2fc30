"""`fleetcast compress MODEL.onnx --out DIR [...]`: the pipeline as an operator's command.

Exit codes: 0 built (some levels may be reported missing), 2 unusable input, 1 other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fleetcast.server.compress.errors import CompressError, InputError
from fleetcast.server.compress.levels import ALL_LEVELS, DESCRIPTIONS, parse_levels

logger = logging.getLogger(__name__)

EXAMPLE = """\
levels:
{levels}

Example:
  fleetcast compress examples/digits/digits.onnx --out /tmp/digits-variants \\
      --calibration examples/digits/calibration --eval examples/digits/eval --levels balanced,smallest

Sample directories hold one .npz per sample (input name -> array), or .npy files for
single-input models; an evaluation directory may add labels.npy (one class per sample).
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
    command.add_argument("--threads", type=int, default=1, help="threads for accuracy runs")
    command.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    command.add_argument("-v", "--verbose", action="store_true", help="log more")
    return command


class ProgressLine:
    """One status line on stderr, rewritten in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, text: str) -> None:
        if self.tty:
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

    config = CompressConfig(levels=levels, budget_pp=args.budget, calibration_dir=args.calibration,
                            eval_dir=args.eval, intra_op_threads=args.threads)
    progress = ProgressLine()
    try:
        report = compress(args.model, args.out, config, progress)
    except InputError as error:
        progress.done()
        print(f"fleetcast compress: {error}", file=sys.stderr)
        return 2
    except CompressError as error:
        progress.done()
        print(f"fleetcast compress: {error}", file=sys.stderr)
        return 1
    progress.done()
    print(json.dumps(report.to_json(), indent=2) if args.json else render_markdown(report))
    if not args.json:
        print(f"written to {args.out}/ (report.json, report.md, report.png)")
    return 0
