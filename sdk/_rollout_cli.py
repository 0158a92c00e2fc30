"""`fleetcast rollout ...`: staged rollouts from the command line (see docs/cli.md).

`rollout status ID --watch` follows a rollout until it ends and exits 1 when it ended
unhealthy (aborted or rolled back), so it can gate a CI job.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from fleetcast.sdk import _table
from fleetcast.sdk._client import Client
from fleetcast.sdk._errors import RolloutTimeoutError
from fleetcast.sdk._models import Rollout

EXIT_UNHEALTHY = 1


def add_rollout(commands: Any, common: argparse.ArgumentParser) -> None:
    from fleetcast.sdk.cli import _group, _leaf, _target

    sub = _group(commands, "rollout", help="roll a model out in stages gated on serving health", examples=[
        'fleetcast rollout start digits@2 --to all --stages 1,10%,50%,100% --soak 60s '
        '--gate "latency_p95 <= 1.2x control" --gate "error_rate <= 0.01"',
        "fleetcast rollout status ro-1a2b --watch", "fleetcast rollout pause ro-1a2b",
        "fleetcast rollout undo ro-1a2b"])
    for name, run, text, example in (
            ("start", cmd_start, "start a staged rollout",
             'fleetcast rollout start digits@2 --stages 1,10%,100% --soak 60s --gate "error_rate <= 0.01" '
             "--data /tmp/fc"),
            ("plan", cmd_plan, "dry run: which devices each stage would reach, per cohort",
             "fleetcast rollout plan digits@2 --to group:lab --stages 1,50%,100% --data /tmp/fc")):
        leaf = _leaf(sub, name, common, help=text, run=run, example=example)
        leaf.add_argument("ref", metavar="NAME[@VERSION]", help="model, and version (default: latest)")
        leaf.add_argument("--to", default="all", type=_target, metavar="TARGET",
                          help="all | group:G | device:ID[,ID...] (default: all)")
        _options(leaf)
    status = _leaf(sub, "status", common, help="a rollout's stages, cohorts and every check's numbers",
                   run=cmd_status, example="fleetcast rollout status ro-1a2b --watch --data /tmp/fc")
    status.add_argument("id", metavar="ID", help="rollout id")
    status.add_argument("--watch", action="store_true",
                        help="follow it until it ends; exit 1 if it ended aborted or rolled back")
    status.add_argument("--timeout", metavar="S", type=float, default=3600.0, help="seconds --watch waits")
    _leaf(sub, "list", common, help="list rollouts", run=cmd_list, example="fleetcast rollout list --data /tmp/fc")
    for verb, text in (("pause", "pause a running rollout"),
                       ("resume", "resume a paused rollout (an inconclusive stage soaks again)"),
                       ("promote", "pass the current stage now"),
                       ("abort", "abort: every device it reached goes back to its previous version"),
                       ("undo", "roll every device back to the version it ran before (also after completion)")):
        leaf = _leaf(sub, verb, common, help=text, run=cmd_verb,
                     example=f"fleetcast rollout {verb} ro-1a2b --data /tmp/fc")
        leaf.add_argument("id", metavar="ID", help="rollout id")
        leaf.set_defaults(verb=verb)
        if verb == "promote":
            leaf.add_argument("--full", action="store_true", help="every remaining device in one last stage")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stages", default="1,10%,50%,100%", help="cumulative sizes (default 1,10%%,50%%,100%%)")
    parser.add_argument("--soak", metavar="DURATION", default="60s", help="soak per stage: 30s, 5m (default 60s)")
    parser.add_argument("--gate", action="append", default=[], metavar="CHECK",
                        help='a check, repeatable: "latency_p95 <= 1.2x control", "error_rate <= 0.01", '
                             '"serving >= 0.95", "trial_rollbacks <= 0" (default: the server\'s four)')
    parser.add_argument("--min-inferences", type=int, default=100, metavar="N",
                        help="inferences per cohort and side before a telemetry check decides (default 100)")
    parser.add_argument("--min-devices", type=int, default=1, metavar="N")
    parser.add_argument("--on-inconclusive", choices=("pause", "abort"), default="pause")
    parser.add_argument("--on-fail", choices=("abort", "pause"), default="abort")
    parser.add_argument("--hold-back", action="store_true",
                        help="a failed cohort is held back and reverted while the others go on")
    parser.add_argument("--device-timeout", metavar="DURATION", default="10m",
                        help="a device not serving by then counts as failed (default 10m)")
    parser.add_argument("--max-in-flight", type=int, default=0, metavar="N", help="devices updating at once (0: all)")
    parser.add_argument("--start-rate", type=float, default=0.0, metavar="PER_S",
                        help="devices assigned per second (0: no limit)")


def _seconds(text: str, flag: str) -> float:
    from fleetcast.sdk.cli import UsageError

    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a duration: use for example 30s, 5m or 1h") from None


def _request(args: argparse.Namespace) -> tuple[str, str | None, dict[str, Any]]:
    from fleetcast.sdk.cli import _split_ref

    name, version = _split_ref(args.ref)
    options: dict[str, Any] = {
        "stages": args.stages, "soak_s": _seconds(args.soak, "--soak"), "min_inferences": args.min_inferences,
        "min_devices": args.min_devices, "on_inconclusive": args.on_inconclusive, "on_fail": args.on_fail,
        "hold_back": args.hold_back, "device_timeout_s": _seconds(args.device_timeout, "--device-timeout"),
        "max_in_flight": args.max_in_flight, "start_rate_per_s": args.start_rate}
    if args.gate:
        options["gates"] = list(args.gate)
    return name, version, options


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    name, version, options = _request(args)
    rollout = client.start_rollout(name, version=version, to=args.to, options=options)
    return _show(args, rollout)


def cmd_plan(client: Client, args: argparse.Namespace) -> int:
    from fleetcast.sdk.cli import _emit

    name, version, options = _request(args)
    doc = client.plan_rollout(name, version=version, to=args.to, options=options)
    rows = [(s["index"], s["size"], s["adds"], cohort, n) for s in doc["stages"] for cohort, n in s["cohorts"].items()]
    _emit(args, doc, lambda: f"{doc['model']}@{doc['version']} to {doc['target']}: {doc['devices']} devices\n"
          + _table.render(["stage", "size", "adds", "cohort", "devices"], rows))
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    rollout = client.get_rollout(args.id)
    if args.watch:
        try:
            rollout = client.wait_rollout(args.id, timeout_s=args.timeout, on_update=_progress)
        except RolloutTimeoutError as e:
            _show(args, e.rollout)
            raise
    code = _show(args, rollout)
    if args.watch and not rollout.healthy:
        print(f"fleetcast rollout: {rollout.id} ended {rollout.state}; the log says why", file=sys.stderr)
        return EXIT_UNHEALTHY
    return code


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    from fleetcast.sdk.cli import _emit, _when

    rollouts = client.list_rollouts()
    _emit(args, {"rollouts": [r.raw for r in rollouts]}, lambda: _table.render(
        ["id", "model", "target", "state", "stage", "devices", "created"],
        [(r.id, f"{r.model}@{r.version}", r.target, r.state, f"{r.stage + 1}/{len(r.stages)}",
          r.raw.get("devices", {}).get("total"), _when(r.raw.get("created_at"))) for r in rollouts]))
    return 0


def cmd_verb(client: Client, args: argparse.Namespace) -> int:
    return _show(args, client.rollout_command(args.id, args.verb, full=getattr(args, "full", False)))


def _show(args: argparse.Namespace, rollout: Rollout) -> int:
    from fleetcast.sdk.cli import _emit

    _emit(args, rollout.raw, lambda: rollout_text(rollout))
    return 0


def rollout_text(rollout: Rollout) -> str:
    """The status for people: the rollout, each stage's cohorts, each check, the last log lines."""
    doc = rollout.raw
    head = _table.fields([("rollout", rollout.id), ("model", f"{rollout.model}@{rollout.version}"),
                          ("target", rollout.target), ("state", rollout.state),
                          ("stage", f"{rollout.stage + 1} of {len(rollout.stages)}"),
                          ("devices", ", ".join(f"{k} {v}" for k, v in sorted(doc.get("devices", {}).items())))])
    stages = _table.render(["stage", "size", "state", "cohort", "devices"], [
        (s["index"], s["size"], s["state"], cohort, ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
        for s in rollout.stages for cohort, states in sorted(s.get("cohorts", {}).items())])
    checks = [(s["index"], c["cohort"], c["check"], c["value"], c["control"], c["threshold"], c["inferences"],
               c["devices"], c["verdict"]) for s in rollout.stages for c in s.get("checks", ())]
    parts = [head, "", stages]
    if checks:
        parts += ["", _table.render(["stage", "cohort", "check", "value", "control", "threshold", "inferences",
                                     "devices", "verdict"], checks)]
    log = doc.get("log") or []
    if log:
        parts += ["", _table.render(["at", "actor", "event", "state", "reason"], [
            (time.strftime("%H:%M:%S", time.gmtime(e["at"])), e["actor"], e["event"], e["to"], e["reason"][:100])
            for e in log[-8:]])]
    return "\n".join(parts)


def _progress(rollout: Rollout) -> None:
    if sys.stderr.isatty():
        print(f"rollout {rollout.id}: {rollout.state}, stage {rollout.stage + 1}/{len(rollout.stages)}",
              file=sys.stderr)
