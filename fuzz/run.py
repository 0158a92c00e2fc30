"""Runs one harness under atheris for a bounded time and records what it did.

    python -m fuzz.run NAME [--seconds 60] [--out build/fuzz]

The committed seeds (`fuzz/corpus/NAME/`) are read, never written; new inputs go to
`OUT/corpus/NAME/`, crashing inputs to `OUT/crashes/NAME/`, and a summary
(seconds, runs, crashes) to `OUT/NAME.json`. A crash exits non-zero: copy the input
into `fuzz/regressions/NAME/` so the unit test replays it, then fix the parser.
libFuzzer runs in a child process, so a crash or an out-of-memory ends only that.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from fuzz import HARNESSES

ROOT = Path(__file__).resolve().parent
RSS_LIMIT_MB = 2048
INPUT_TIMEOUT_S = 20
MAX_INPUT_BYTES = 64 * 1024
OURS = ("fleetcast.", "fuzz.")


def child(name: str, args: list[str]) -> None:
    import atheris

    harness = importlib.import_module(f"fuzz.fuzz_{name}")
    instrument_ours(atheris)
    atheris.Setup([sys.argv[0], *args], harness.test_one_input)
    atheris.Fuzz()


def instrument_ours(atheris) -> None:  # noqa: ANN001 (the atheris module)
    """Adds coverage to every loaded function of ours. atheris.instrument_imports misses
    them (the editable install's import hook), and instrument_all takes minutes."""
    import gc
    import types

    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and str(obj.__module__).startswith(OURS):
            atheris.instrument_func(obj)


def run(name: str, seconds: int, out: Path) -> int:
    corpus, crashes = out / "corpus" / name, out / "crashes" / name
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    flags = [f"-max_total_time={seconds}", f"-rss_limit_mb={RSS_LIMIT_MB}", f"-timeout={INPUT_TIMEOUT_S}",
             f"-max_len={MAX_INPUT_BYTES}", f"-artifact_prefix={crashes}/", "-print_final_stats=1",
             str(corpus), str(ROOT / "corpus" / name)]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fuzz.run", "--child", name, "--", *flags],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    elapsed = time.monotonic() - started
    (out / f"{name}.log").write_text(proc.stdout)
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", proc.stdout)
    found = sorted(p.name for p in crashes.iterdir())
    summary = {"harness": name, "seconds": round(elapsed, 1), "runs": int(runs[-1]) if runs else None,
               "exit_code": proc.returncode, "crashes": found}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    if proc.returncode != 0:
        print(proc.stdout[-4000:], file=sys.stderr)
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[3:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=HARNESSES, metavar="NAME", help=", ".join(HARNESSES))
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per harness (default 60)")
    parser.add_argument("--out", type=Path, default=Path("build/fuzz"), help="work folder (default build/fuzz)")
    args = parser.parse_args(argv)
    codes = [run(name, args.seconds, args.out) for name in args.names]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
