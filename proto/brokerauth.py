"""How a Fleetcast client (the server's bridge or an agent) logs in to the MQTT broker.

`mqtts://HOST:PORT` (default port 8883) is TLS: the broker's certificate must chain
to `ca`, and the client shows `cert`/`key` (the broker's `use_identity_as_username`
turns the certificate's CN into the MQTT user name its ACL keys on). A user name and
password can be given instead of, or as well as, the certificate. Plain `mqtt://` is
refused for anything but a loopback host.

Errors: `BrokerAuthError` (a ValueError) naming the setting to fix.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetcast.proto.addresses import is_loopback


class BrokerAuthError(ValueError):
    """An MQTT URL or login setting that cannot work."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_url(url: str) -> BrokerAddress:
    parts = urlsplit(url if "://" in url else f"mqtts://{url}")
    if parts.scheme not in {"mqtt", "mqtts", "tcp", "ssl"} or not parts.hostname:
        raise BrokerAuthError(f"MQTT URL {url!r} is not valid: use mqtts://HOST:8883")
    tls = parts.scheme in {"mqtts", "ssl"}
    if not tls and not is_loopback(parts.hostname):
        raise BrokerAuthError(f"MQTT URL {url!r} is plaintext to a host off loopback: use mqtts://{parts.hostname}:8883")
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


@dataclass(frozen=True)
class BrokerAuth:
    ca: Path | None = None        # CA the broker's certificate must chain to
    cert: Path | None = None      # client certificate (PEM) and ...
    key: Path | None = None       # ... its key
    username: str = ""
    password: str = ""

    def apply(self, client: Any, address: BrokerAddress) -> None:
        """Configures a paho client before it connects."""
        if address.tls:
            if self.ca is None or not self.ca.exists():
                raise BrokerAuthError(f"the broker's CA {self.ca} does not exist: give the CA that signed the "
                                      "broker's certificate (agents: --mqtt-ca; default: the server CA)")
            cert = self.cert if self.cert is not None and self.cert.exists() else None
            key = self.key if cert is not None else None
            client.tls_set(ca_certs=str(self.ca), certfile=None if cert is None else str(cert),
                           keyfile=None if key is None else str(key), cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if self.username:
            client.username_pw_set(self.username, self.password or None)
