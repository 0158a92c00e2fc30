"""Read-only viewer tokens for the dashboard, and the `fleetcast token` command.

A viewer token logs into the dashboard with the `viewer` role: every page, no
change. Tokens are made on the server's machine with the data dir at hand
(`fleetcast token create --viewer --data DIR`), printed once, and stored only as
sha256 in `DATA/viewer-tokens.json` (mode 0600, written atomically). The running
server re-reads the file when it changes, so a new token works without a restart;
`fleetcast token revoke` removes one. The operator token (`DATA/operator-token`)
logs in with the `operator` role.
"""

from __future__ import annotations

import argparse
import hmac
import json
import re
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from fleetcast.server import datadir
from fleetcast.server.enrolltokens import hash_token
from fleetcast.server.errors import InvalidRequest

FILE_NAME: Final = "viewer-tokens.json"
MAX_TOKENS: Final = 1000
MAX_FILE_BYTES: Final = 1024 * 1024
NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ViewerToken:
    name: str
    sha256: str
    created_at: float


def _path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def load(data_dir: Path) -> list[ViewerToken]:
    """The stored tokens (hashes); an absent file is none. A damaged file is an error, never 'no tokens'."""
    path = _path(data_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return []
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidRequest(f"{path} is larger than {MAX_FILE_BYTES} bytes; remove tokens with `fleetcast token revoke`")
    try:
        doc = json.loads(raw)
        return [ViewerToken(name=str(t["name"]), sha256=str(t["sha256"]), created_at=float(t["created_at"]))
                for t in doc["tokens"]]
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidRequest(f"{path} is not a viewer token file ({e}); restore it or delete it "
                             "and make new tokens with `fleetcast token create --viewer`") from e


def _save(data_dir: Path, tokens: Sequence[ViewerToken]) -> None:
    body = json.dumps({"tokens": [asdict(t) for t in tokens]}, indent=1, sort_keys=True) + "\n"
    datadir.write_atomic(_path(data_dir), body.encode(), mode=0o600)


def create(data_dir: Path, name: str, *, now: float) -> str:
    """Makes a viewer token named `name`; returns the token (stored only as its hash)."""
    if not NAME.fullmatch(name):
        raise InvalidRequest(f"token name {name[:70]!r} must be 1-64 letters, digits, '.', '_' or '-'")
    tokens = load(data_dir)
    if any(t.name == name for t in tokens):
        raise InvalidRequest(f"a viewer token named {name!r} exists; revoke it first or choose another name")
    if len(tokens) >= MAX_TOKENS:
        raise InvalidRequest(f"{MAX_TOKENS} viewer tokens exist; revoke some first")
    token = "fcv-" + secrets.token_hex(32)
    _save(data_dir, [*tokens, ViewerToken(name=name, sha256=hash_token(token), created_at=now)])
    return token


def revoke(data_dir: Path, name: str) -> bool:
    tokens = load(data_dir)
    kept = [t for t in tokens if t.name != name]
    if len(kept) == len(tokens):
        return False
    _save(data_dir, kept)
    return True


class ViewerTokens:
    """The server's view of the file: re-read when its mtime or size changes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._seen: tuple[int, int] | None = None
        self._hashes: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def _current(self) -> tuple[str, ...]:
        try:
            st = _path(self.data_dir).stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        with self._lock:
            if stamp != self._seen:
                self._hashes = tuple(t.sha256 for t in load(self.data_dir)) if stamp != (0, 0) else ()
                self._seen = stamp
            return self._hashes

    def accepts(self, token: str) -> bool:
        digest = hash_token(token[:512])
        return any(hmac.compare_digest(digest, h) for h in self._current())


# -- the `fleetcast token` command ----------------------------------------------------

EPILOG: Final = """\
Example:
  fleetcast token create --viewer --data ./data --name oncall
  fleetcast token list --data ./data --json
  fleetcast token revoke --data ./data --name oncall
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetcast token", description="Make, list and revoke read-only dashboard "
                                "viewer tokens (stored hashed in DATA/viewer-tokens.json).", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    for action, summary in (("create", "make a token (printed once)"), ("list", "list tokens (names, no secrets)"),
                            ("revoke", "remove a token by name")):
        a = sub.add_parser(action, help=summary, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        a.add_argument("--data", required=True, type=Path, metavar="DIR", help="the server's data directory")
        a.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if action == "create":
            a.add_argument("--viewer", action="store_true", required=True,
                           help="the role: read-only (the only role a made token can have)")
        if action != "list":
            a.add_argument("--name", required=action == "revoke", default="", metavar="NAME",
                           help="a name for the token (default: viewer-<time>)")
    return p


def _print(doc: dict[str, Any], *, as_json: bool, table: str) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True) if as_json else table)


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] == "token":
        args_in = args_in[1:]
    args = parser().parse_args(args_in)
    try:
        if args.action == "create":
            name = args.name or time.strftime("viewer-%Y%m%d-%H%M%S", time.gmtime())
            token = create(args.data, name, now=time.time())
            _print({"name": name, "role": "viewer", "token": token}, as_json=args.json,
                   table=f"viewer token {name} (shown once; stored hashed):\n{token}")
        elif args.action == "list":
            tokens = load(args.data)
            rows = "\n".join(f"{t.name:<32} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t.created_at))}"
                             for t in tokens)
            _print({"tokens": [{"name": t.name, "role": "viewer", "created_at": t.created_at} for t in tokens]},
                   as_json=args.json, table=f"{'NAME':<32} CREATED (UTC)\n{rows}" if tokens else "no viewer tokens")
        else:
            if not revoke(args.data, args.name):
                print(f"fleetcast token: no viewer token named {args.name!r}", file=sys.stderr)
                return 1
            _print({"revoked": args.name}, as_json=args.json, table=f"revoked {args.name}")
    except InvalidRequest as e:
        print(f"fleetcast token: {e.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
