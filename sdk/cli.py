"""The operator's commands: `fleetcast model|deploy|device ...` (see docs/cli.md).

`main(argv)` gets argv with argv[0] being "model", "deploy", "rollout" or "device" and returns
the exit status: 0 done, 1 the operation failed, 2 the command line is wrong.
Every command takes the connection options (`--server`/`--token`, or `--data DIR`
of a local server), `--json` for the server's JSON documents and `-v` for more log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from fleetcast.sdk import _table
from fleetcast.sdk._client import Client, read_data_dir, read_token_file
from fleetcast.sdk._errors import ConfigError, DeploymentTimeoutError, FleetcastError
from fleetcast.sdk._models import Deployment, Device, ModelVersion

logger = logging.getLogger(__name__)

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
DEPLOY_SUBCOMMANDS: Final = frozenset({"create", "status", "list", "cancel", "undo"})
Command = Callable[[Client, argparse.Namespace], int]


class UsageError(Exception):
    """The command line is wrong; exit 2 with the message."""


def main(
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run one command. `environ` and `transport` default to the process's and the network."""
    args_in = _expand_deploy_shorthand(list(argv))
    try:
        args = build_parser().parse_args(args_in)
    except SystemExit as e:  # argparse has printed usage or help
        return int(e.code or 0)
    _configure_logging(args.verbose)
    try:
        with connect(args, os.environ if environ is None else environ, transport) as client:
            return int(args.run(client, args))
    except (UsageError, ConfigError) as e:
        print(f"fleetcast {args.command} {args.action}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FleetcastError as e:
        print(f"fleetcast {args.command} {args.action}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fleetcast device list | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def connect(
    args: argparse.Namespace, env: Mapping[str, str], transport: httpx.BaseTransport | None
) -> Client:
    """The client the options name: flags first, then --data, then the environment."""
    server, token, ca = args.server, args.token, args.ca
    if args.token_file is not None:
        token = read_token_file(args.token_file)
    if args.data is not None and (server is None or token is None):
        data_server, data_token = read_data_dir(args.data)
        server, token = server or data_server, token or data_token
    if args.data is not None and ca is None and (args.data / "server-ca.pem").exists():
        ca = args.data / "server-ca.pem"
    ca = ca or (Path(env["FLEETCAST_CA"]) if env.get("FLEETCAST_CA") else None)
    server = server or env.get("FLEETCAST_SERVER")
    token = token or env.get("FLEETCAST_TOKEN")
    if not server:
        raise UsageError("no server: pass --server URL, set FLEETCAST_SERVER, or --data DIR")
    if not token:
        raise UsageError(
            "no operator token: pass --token-file DIR/operator-token, set FLEETCAST_TOKEN, "
            "or --data DIR"
        )
    return Client(server, token, timeout_s=args.http_timeout, transport=transport, ca=ca)


# the parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("connection")
    conn.add_argument("--server", metavar="URL", help="server URL (env FLEETCAST_SERVER)")
    conn.add_argument("--token", metavar="T", help="operator token (env FLEETCAST_TOKEN)")
    conn.add_argument("--token-file", metavar="F", type=Path, help="file holding the operator token")
    conn.add_argument("--data", metavar="DIR", type=Path,
                      help="data dir of a local server: reads server.json, operator-token and server-ca.pem")
    conn.add_argument("--ca", metavar="FILE", type=Path,
                      help="the server's CA (its DATA/server-ca.pem) to check https:// against (env FLEETCAST_CA)")
    conn.add_argument("--http-timeout", metavar="S", type=float, default=30.0,
                      help="seconds to wait for each HTTP answer (default 30)")
    out = common.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the server's JSON document")
    out.add_argument("-v", "--verbose", action="count", default=0, help="more log (-vv: debug)")

    root = argparse.ArgumentParser(prog="fleetcast")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_model(commands, common)
    _add_deploy(commands, common)
    _add_device(commands, common)
    _add_enroll_token(commands, common)
    from fleetcast.sdk._rollout_cli import add_rollout   # imports this module's helpers

    add_rollout(commands, common)
    return root


def _leaf(
    group: Any, name: str, common: argparse.ArgumentParser, *, help: str, example: str, run: Command
) -> argparse.ArgumentParser:
    parser = group.add_parser(
        name, parents=[common], help=help, description=help,
        epilog=f"Example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _group(commands: Any, name: str, *, help: str, examples: Sequence[str]) -> Any:
    parser = commands.add_parser(
        name, help=help, description=help,
        epilog="Examples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def _add_model(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = _group(commands, "model", help="push, list and show models", examples=[
        "fleetcast model push digits.onnx --name digits --data /var/lib/fleetcast",
        "fleetcast model list", "fleetcast model show digits@1"])
    push = _leaf(sub, "push", common, help="upload a model file as a new version", run=cmd_model_push,
                 example="fleetcast model push examples/digits/digits.onnx --name digits "
                         "--compress lossless,balanced,smallest --calibration examples/digits/calibration "
                         "--eval examples/digits/eval --wait --data /tmp/fc")
    push.add_argument("file", metavar="FILE", type=Path, help="the model (.onnx)")
    push.add_argument("--name", required=True, help="model name")
    push.add_argument("--version", help="version label (default: the next integer)")
    push.add_argument("--golden", metavar="F.npz", type=Path,
                      help="golden inputs and outputs the devices check the model against")
    push.add_argument("--compress", metavar="L1,L2", type=_comma_list, default=(),
                      help="compression levels the server builds variants for, in the background "
                           "(lossless,fp16,balanced,fastest,smallest)")
    push.add_argument("--targets", metavar="T1,T2", type=_comma_list, default=(),
                      help="per-target builds the server converts and measures in the background "
                           "(mnn, openvino, rknn-rk3588, rknn-rk3566)")
    push.add_argument("--calibration", metavar="DIR", type=Path,
                      help="calibration samples for --compress: one .npz/.npy per sample")
    push.add_argument("--eval", metavar="DIR", type=Path,
                      help="evaluation samples (and optional labels.npy) the variants' quality is measured on")
    push.add_argument("--wait", action="store_true",
                      help="wait until compression is done and show the variants; exit 1 if it failed")
    push.add_argument("--timeout", metavar="S", type=float, default=1800.0,
                      help="seconds --wait waits (default 1800)")
    push.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="progress bar on stderr (default: when stderr is a terminal)")
    _leaf(sub, "list", common, help="list models and their latest version", run=cmd_model_list,
          example="fleetcast model list --data /tmp/fc")
    pin = _leaf(sub, "pin", common, help="pin a variant for a group or hardware class (or --remove it)",
                run=cmd_model_pin, example="fleetcast model pin digits mnn --hardware rk3399 --data /tmp/fc")
    pin.add_argument("name", metavar="NAME", help="model name")
    pin.add_argument("variant", metavar="VARIANT", nargs="?", help="the variant those devices get")
    scope = pin.add_mutually_exclusive_group(required=True)
    scope.add_argument("--group", help="devices of this group")
    scope.add_argument("--hardware", help="devices of this hardware class")
    pin.add_argument("--remove", action="store_true", help="remove the pin instead")
    show = _leaf(sub, "show", common, help="show a model's versions and their variants",
                 run=cmd_model_show, example="fleetcast model show digits@1 --data /tmp/fc")
    show.add_argument("ref", metavar="NAME[@VERSION]", help="model, and version (default: all)")


def _add_deploy(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = _group(commands, "deploy", help="deploy a model version and follow a deployment", examples=[
        "fleetcast deploy digits@1 --to all --wait   (short for `deploy create ...`)",
        "fleetcast deploy status 3 --wait", "fleetcast deploy list", "fleetcast deploy cancel 3",
        "fleetcast deploy undo 3"])
    create = _leaf(sub, "create", common, help="deploy a model version to devices",
                   run=cmd_deploy_create,
                   example="fleetcast deploy digits@1 --to group:lab --wait --data /tmp/fc")
    create.add_argument("ref", metavar="NAME[@VERSION]", help="model, and version (default: latest)")
    create.add_argument("--to", default="all", type=_target, metavar="TARGET",
                        help="all | group:G | device:ID[,ID...] (default: all)")
    _wait_options(create)
    status = _leaf(sub, "status", common, help="show each device's state in a deployment",
                   run=cmd_deploy_status, example="fleetcast deploy status 3 --wait --data /tmp/fc")
    status.add_argument("id", metavar="ID", help="deployment id")
    _wait_options(status)
    _leaf(sub, "list", common, help="list deployments", run=cmd_deploy_list,
          example="fleetcast deploy list --data /tmp/fc")
    cancel = _leaf(sub, "cancel", common, help="cancel a deployment: devices not yet installed "
                   "get their previous model back", run=cmd_deploy_cancel,
                   example="fleetcast deploy cancel 3 --data /tmp/fc")
    cancel.add_argument("id", metavar="ID", help="deployment id")
    undo = _leaf(sub, "undo", common, help="undo a deployment: every device goes back to the version it ran "
                 "before", run=cmd_deploy_undo, example="fleetcast deploy undo dep-1a2b --data /tmp/fc")
    undo.add_argument("id", metavar="ID", help="deployment id")


def _add_device(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = _group(commands, "device", help="list and show enrolled devices",
                 examples=["fleetcast device list", "fleetcast device show cam-01"])
    _leaf(sub, "list", common, help="list devices, what they run and how it serves",
          run=cmd_device_list, example="fleetcast device list --data /tmp/fc")
    show = _leaf(sub, "show", common, help="show one device", run=cmd_device_show,
                 example="fleetcast device show cam-01 --data /tmp/fc")
    show.add_argument("id", metavar="ID", help="device id")
    again = _leaf(sub, "reprovision", common, help="allow one re-enrollment of a device id with a new key "
                  "(a replaced or reset device); its current credential works until then",
                  run=cmd_device_reprovision, example="fleetcast device reprovision cam-01 --data /tmp/fc")
    again.add_argument("id", metavar="ID", help="device id")


def _add_enroll_token(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = _group(commands, "enroll-token", help="make and list enrollment tokens", examples=[
        "fleetcast enroll-token create --group lab --expires 24h --uses 1 --out lab-token",
        "fleetcast enroll-token list"])
    create = _leaf(sub, "create", common, help="make an enrollment token (shown once)",
                   run=cmd_enroll_token_create,
                   example="fleetcast enroll-token create --group lab --expires 24h --uses 1 --out token --data /tmp/fc")
    create.add_argument("--group", default="", help="devices that enroll with it join this group")
    create.add_argument("--expires", metavar="DURATION", help="lifetime: 90s, 30m, 24h, 7d (default: none)")
    create.add_argument("--uses", type=int, metavar="N", help="how many enrollments it admits (default: no limit)")
    create.add_argument("--out", metavar="FILE", type=Path,
                        help="write the token to FILE (mode 0600) for the agent's --enroll-token-file, "
                             "instead of printing it")
    _leaf(sub, "list", common, help="list enrollment tokens (never the tokens themselves)",
          run=cmd_enroll_token_list, example="fleetcast enroll-token list --data /tmp/fc")


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true",
                        help="wait until every device has an outcome; exit 1 if any failed")
    parser.add_argument("--timeout", metavar="S", type=float, default=600.0,
                        help="seconds --wait waits (default 600)")


def _expand_deploy_shorthand(argv: list[str]) -> list[str]:
    """`deploy NAME@V ...` means `deploy create NAME@V ...`."""
    if len(argv) >= 2 and argv[0] == "deploy":
        first = argv[1]
        if first not in DEPLOY_SUBCOMMANDS and first not in {"-h", "--help"}:
            return ["deploy", "create", *argv[1:]]
    return argv


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _target(text: str) -> str:
    kind, _, rest = text.partition(":")
    if text == "all" or (kind in {"group", "device"} and rest.strip(",")):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a target: use all, group:NAME or device:ID[,ID...]"
    )


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, at, version = ref.partition("@")
    if not name or (at and not version):
        raise UsageError(f"{ref!r} is not NAME or NAME@VERSION")
    return name, version or None


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# the commands


def cmd_model_push(client: Client, args: argparse.Namespace) -> int:
    for path in (args.file, args.golden):
        if path is not None and not path.is_file():
            raise UsageError(f"{path} is not a file")
    for directory in (args.calibration, args.eval):
        if directory is not None and not directory.is_dir():
            raise UsageError(f"{directory} is not a directory of samples")
    if (args.calibration or args.eval) and not args.compress:
        raise UsageError("--calibration and --eval go with --compress LEVELS")
    if args.wait and not (args.compress or args.targets):
        raise UsageError("--wait goes with --compress LEVELS or --targets TARGETS")
    show_bar = sys.stderr.isatty() if args.progress is None else args.progress
    with _ProgressBar(f"push {args.name}", enabled=show_bar) as bar:
        version = client.push_model(
            args.file, name=args.name, version=args.version, golden=args.golden,
            compress=args.compress, calibration=args.calibration, eval=args.eval, progress=bar.update,
            targets=args.targets,
        )
    if args.wait:
        if sys.stderr.isatty():
            print(f"building {version.name}@{version.version}: {','.join((*args.compress, *args.targets))}",
                  file=sys.stderr)
        version = client.wait_compression(version.name, version.version, timeout_s=args.timeout)
    _emit(args, version.raw, lambda: _version_text(version))
    return 1 if version.compression_status == "failed" else 0


def cmd_model_list(client: Client, args: argparse.Namespace) -> int:
    models = client.list_models()
    _emit(args, {"models": [m.raw for m in models]}, lambda: _table.render(
        ["name", "latest", "versions"], [(m.name, m.latest_version, m.versions) for m in models]))
    return 0


def cmd_model_pin(client: Client, args: argparse.Namespace) -> int:
    if bool(args.variant) == bool(args.remove):
        raise UsageError("give a VARIANT to pin, or --remove")
    scope = f"group:{args.group}" if args.group else f"hardware:{args.hardware}"
    pins = client.pin_variant(args.name, scope, None if args.remove else args.variant)
    _emit(args, {"model": args.name, "pins": pins}, lambda: _table.render(
        ["scope", "variant"], sorted(pins.items())) or f"{args.name}: no pins")
    return 0


def cmd_model_show(client: Client, args: argparse.Namespace) -> int:
    name, version = _split_ref(args.ref)
    if version is not None:
        one = client.get_version(name, version)
        _emit(args, one.raw, lambda: _version_text(one))
    else:
        model = client.get_model(name)
        _emit(args, model.raw, lambda: "\n\n".join(_version_text(v) for v in model.versions)
              or f"{name}: no versions")
    return 0


def cmd_deploy_create(client: Client, args: argparse.Namespace) -> int:
    name, version = _split_ref(args.ref)
    deployment = client.deploy(name, version=version, to=args.to)
    if not args.json:
        print(f"deployment {deployment.id}: {deployment.model}@{deployment.version} "
              f"to {deployment.target}, {deployment.total} devices", file=sys.stderr)
    return _show_deployment(client, args, deployment)


def cmd_deploy_status(client: Client, args: argparse.Namespace) -> int:
    return _show_deployment(client, args, client.get_deployment(args.id))


def cmd_deploy_list(client: Client, args: argparse.Namespace) -> int:
    deployments = client.list_deployments()
    _emit(args, {"deployments": [d.raw for d in deployments]}, lambda: _table.render(
        ["id", "model", "target", "state", "devices", "outcomes", "created"],
        [(d.id, f"{d.model}@{d.version}", d.target, d.state, d.total, _outcomes(d),
          _when(d.created_at)) for d in deployments]))
    return 0


def cmd_deploy_cancel(client: Client, args: argparse.Namespace) -> int:
    deployment = client.cancel_deployment(args.id)
    _emit(args, deployment.raw, lambda: _deployment_text(deployment))
    return 0


def cmd_deploy_undo(client: Client, args: argparse.Namespace) -> int:
    deployment = client.undo_deployment(args.id)
    _emit(args, deployment.raw, lambda: _deployment_text(deployment))
    return 0


def cmd_device_list(client: Client, args: argparse.Namespace) -> int:
    devices = client.list_devices()
    now = datetime.now(UTC)
    _emit(args, {"devices": [d.raw for d in devices]}, lambda: _table.render(
        ["device", "hardware", "backends", "active", "state", "liveness", "p50/p95 ms", "inferences",
         "errors", "last seen"],
        [(d.id, d.hardware_class, d.backends, _active(d), d.state, d.liveness, _latency(d), d.inferences,
          d.errors, _ago(d.last_seen, now)) for d in devices]))
    return 0


def cmd_device_show(client: Client, args: argparse.Namespace) -> int:
    device = client.get_device(args.id)
    _emit(args, device.raw, lambda: _device_text(device))
    return 0


def cmd_device_reprovision(client: Client, args: argparse.Namespace) -> int:
    doc = client.reprovision_device(args.id)
    _emit(args, doc, lambda: f"device {args.id}: the next enrollment with an enroll token may bring a new key")
    return 0


def _duration_s(text: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise UsageError(f"--expires {text!r} is not a duration: use for example 90s, 30m, 24h or 7d") from None
    if value <= 0:
        raise UsageError("--expires must be positive")
    return value


def cmd_enroll_token_create(client: Client, args: argparse.Namespace) -> int:
    expires_s = None if args.expires is None else _duration_s(args.expires)
    doc = client.create_enroll_token(group=args.group, expires_s=expires_s, uses=args.uses)
    token = str(doc.pop("token"))
    if args.out is not None:
        _write_private(args.out, token + "\n")
        doc["written_to"] = str(args.out)
    else:
        doc["token"] = token
    _emit(args, doc, lambda: token if args.out is None else f"enroll token {doc['name']} written to {args.out}")
    return 0


def _write_private(path: Path, text: str) -> None:
    """Writes a secret 0600 (temp file in the same dir, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cmd_enroll_token_list(client: Client, args: argparse.Namespace) -> int:
    tokens = client.list_enroll_tokens()
    _emit(args, {"enroll_tokens": tokens}, lambda: _table.render(
        ["name", "group", "expires_at", "uses_left"],
        [(t["name"], t["group"] or "-", t["expires_at"] or "never",
          "unlimited" if t["uses_left"] is None else t["uses_left"]) for t in tokens]))
    return 0


# output


def _emit(args: argparse.Namespace, doc: Any, text: Callable[[], str]) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else text())


def _show_deployment(client: Client, args: argparse.Namespace, deployment: Deployment) -> int:
    if args.wait:
        try:
            deployment = client.wait_deployment(
                deployment.id, timeout_s=args.timeout, on_update=_report_progress)
        except DeploymentTimeoutError as e:
            last = e.deployment
            _emit(args, last.raw, lambda: _deployment_text(last))
            raise
    _emit(args, deployment.raw, lambda: _deployment_text(deployment))
    failed = deployment.failed_devices
    if args.wait and failed:
        print(f"fleetcast deploy: {len(failed)} of {deployment.total} devices failed; "
              "the reasons are in the table", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _report_progress(deployment: Deployment) -> None:
    done = deployment.total - deployment.pending
    logger.info("deployment=%s state=%s final=%d/%d", deployment.id, deployment.state, done, deployment.total)
    if sys.stderr.isatty():
        print(f"deployment {deployment.id}: {deployment.state or '-'}, {done}/"
              f"{deployment.total} devices done", file=sys.stderr)


def _version_text(version: ModelVersion) -> str:
    head = _table.fields([("model", f"{version.name}@{version.version}"),
                          ("created", _when(version.created_at)),
                          ("inputs", _io_text(version.inputs)),
                          ("outputs", _io_text(version.outputs)),
                          ("golden", _golden_text(version.raw.get("golden")))])
    variants = _table.render(
        ["variant", "format", "size", "sha256"],
        [(v.variant, v.format, _table.size(v.length), v.sha256[:12]) for v in version.variants])
    assigned = _table.render(["device", "hardware", "variant", "why"],
                             [(d.get("device_id"), d.get("hardware_class"), d.get("variant"), d.get("why"))
                              for d in version.raw.get("devices") or ()]) if version.raw.get("devices") else ""
    return "\n\n".join(part for part in (head, variants, _compression_text(version), _metrics_text(version),
                                          assigned)
                       if part)


def _compression_text(version: ModelVersion) -> str:
    """The compression job: its status, each level built or why not, and the pipeline's notes."""
    job = version.compression
    if job is None:
        return ""
    built = {v.variant for v in version.variants}
    levels = _table.render(["level", "result"], [
        (x.get("level"), "built" if x.get("level") in built else (x.get("error") or job.get("status")))
        for x in job.get("levels") or () if isinstance(x, dict)])
    notes = "\n".join(f"note: {n}" for n in job.get("notes") or ())
    return "\n\n".join(part for part in (f"compression: {job.get('status')}", levels, notes) if part)


# The figures a compressed variant carries, in reading order (names carry their units).
METRICS: Final = (
    "size_bytes", "packed_bytes", "size_ratio", "packed_ratio", "latency_ms_1t", "latency_ms_2t",
    "latency_ratio", "latency_ratio_2t", "metric", "accuracy_pct", "agreement_pct", "cosine", "snr_db",
    "drop_pp", "within_budget",
)


def _metrics_text(version: ModelVersion) -> str:
    """The measured metrics, one row per metric and one column per variant, side by side."""
    present = {k for v in version.variants for k in v.metrics}
    names = [key for key in METRICS if key in present] + sorted(present - set(METRICS))
    if not names:
        return ""

    def shown(value: Any) -> Any:
        return ("yes" if value else "no") if isinstance(value, bool) else value

    return _table.render(
        ["metric", *(v.variant for v in version.variants)],
        [(name, *(shown(v.metrics.get(name)) for v in version.variants)) for name in names])


def _deployment_text(deployment: Deployment) -> str:
    head = _table.fields([("deployment", deployment.id),
                          ("model", f"{deployment.model}@{deployment.version}"),
                          ("target", deployment.target), ("state", deployment.state),
                          ("outcomes", _outcomes(deployment))])
    if not deployment.devices:   # a summary (create, cancel, undo answer with counts only)
        return f"{head}\n\neach device's row: fleetcast deploy status {deployment.id}" if deployment.total else head
    devices = _table.render(
        ["device", "state", "outcome", "reason", "updated"],
        [(d.device_id, d.state, d.outcome, d.reason, _when(d.updated_at))
         for d in deployment.devices])
    return f"{head}\n\n{devices}"


def _device_text(device: Device) -> str:
    head = _table.fields([
        ("device", device.id), ("hardware", device.hardware_class),
        ("backends", device.backends), ("group", device.group), ("active", _active(device)),
        ("state", device.state), ("liveness", device.liveness), ("last seen", _when(device.last_seen)),
        *_assignment_rows(device.raw.get("assignment")),
        # what each back end's start-up probe found: version, accelerator, fallback
        *sorted((k, v) for k, v in (device.raw.get("labels") or {}).items() if k.startswith("backend.")),
    ])
    stats = _table.render(
        ["model", "variant", "inferences", "errors", "p50 ms", "p95 ms", "p99 ms"],
        [(f"{s.model}@{s.version}", s.variant, s.inferences, s.errors, s.p50_ms, s.p95_ms, s.p99_ms)
         for s in device.stats])
    note = device.raw.get("percentiles")
    return f"{head}\n\n{stats}" + (f"\n\npercentiles: {note}" if note else "")


def _assignment_rows(assignment: Any) -> list[tuple[str, Any]]:
    """Which variant the device was given and why (the server's variant choice)."""
    if not isinstance(assignment, dict):
        return []
    return [("assigned", f"{assignment.get('model')}@{assignment.get('version')} "
                         f"variant {assignment.get('variant')} ({assignment.get('format')})"),
            ("why", assignment.get("why") or None)]


def _golden_text(golden: Any) -> str | None:
    if not isinstance(golden, dict):
        return None
    return (f"{str(golden.get('sha256', ''))[:12]}, {_table.size(golden.get('length'))}, "
            f"atol={golden.get('atol')} rtol={golden.get('rtol')}")


def _io_text(spec: Any) -> str:
    """`{"input": {"dtype": "float32", "shape": [1, 64]}}` as `input float32[1,64]`."""
    if not spec:
        return "-"
    items = spec.items() if isinstance(spec, dict) else ((s.get("name"), s) for s in spec)
    parts = []
    for name, info in items:
        shape = ",".join("?" if d is None else str(d) for d in info.get("shape") or ())
        parts.append(f"{name} {info.get('dtype', '?')}[{shape}]")
    return ", ".join(parts)


def _outcomes(deployment: Deployment) -> str:
    if deployment.counts:
        return " ".join(f"{k}={v}" for k, v in sorted(deployment.counts.items()))
    tally: dict[str, int] = {}
    for d in deployment.devices:
        key = d.outcome or "pending"
        tally[key] = tally.get(key, 0) + 1
    return " ".join(f"{k}={v}" for k, v in sorted(tally.items())) or "-"


def _active(device: Device) -> str | None:
    if not device.active_model:
        return None
    return f"{device.active_model}@{device.active_version}" if device.active_version else device.active_model


def _latency(device: Device) -> str | None:
    stats = device.active_stats
    if stats is None or stats.p50_ms is None:
        return None
    return f"{_table.cell(stats.p50_ms)}/{_table.cell(stats.p95_ms)}"


def _when(value: Any) -> str | None:
    """Epoch seconds as `2025-01-31 12:00:00Z`; text as it is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return None if value is None else str(value)


def _ago(when: Any, now: datetime) -> str | None:
    """A timestamp (ISO 8601 or epoch seconds) as `12s ago`; unparseable ones as they are."""
    if when is None:
        return None
    try:
        then = (datetime.fromtimestamp(float(when), UTC) if isinstance(when, (int, float))
                else datetime.fromisoformat(str(when)))
    except ValueError:
        return str(when)
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


class _ProgressBar:
    """A tqdm byte counter on stderr, or nothing when disabled."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self._label = label
        self._enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, sent: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            from tqdm import tqdm  # only the push command needs it

            self._bar = tqdm(total=total or None, desc=self._label, unit="B", unit_scale=True,
                             unit_divisor=1024, file=sys.stderr, leave=True)
        self._bar.update(sent - self._bar.n)
