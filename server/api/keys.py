"""Typed keys for what the app and each request carry."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from fleetcast.server.metrics import Metrics
from fleetcast.server.services import Services


@dataclass
class Addresses:
    """Where this process listens, filled in as each server starts (ports may be 0 until then)."""

    http: str = ""
    grpc: str = ""


SERVICES = web.AppKey("services", Services)
ADDRESSES = web.AppKey("addresses", Addresses)
DEVICE_ID = web.RequestKey("device_id", str)
OPENAPI = web.AppKey("openapi", dict)
METRICS = web.AppKey("metrics", Metrics)
