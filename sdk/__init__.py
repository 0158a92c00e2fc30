"""Fleetcast sdk.

The Python operator SDK: push models, deploy them, watch devices.

    from pathlib import Path
    from fleetcast.sdk import Client

    with Client.from_data_dir(Path("/var/lib/fleetcast")) as fc:
        v = fc.push_model(Path("digits.onnx"), name="digits")
        d = fc.wait_deployment(fc.deploy("digits", version=v.version).id, timeout_s=300)

Errors are drawn in `fleetcast.sdk._errors`; catch `FleetcastError` for all of them.

`Client` (and with it httpx, the `sdk` extra) is imported on first use, so the
`fleetcast` command on a device that installed only the agent never needs it.
"""

from typing import TYPE_CHECKING, Any

from fleetcast.sdk._errors import (
    ApiError,
    AuthError,
    CompressionTimeoutError,
    ConfigError,
    ConflictError,
    DeploymentTimeoutError,
    FleetcastError,
    IntegrityError,
    InvalidRequestError,
    NotFoundError,
    RolloutTimeoutError,
    ServerError,
    TransportError,
)
from fleetcast.sdk._models import (
    Deployment,
    Device,
    DeviceOutcome,
    Model,
    ModelSummary,
    ModelVersion,
    Rollout,
    Variant,
    VersionStats,
)

if TYPE_CHECKING:
    from fleetcast.sdk._client import Client


def __getattr__(name: str) -> Any:
    if name == "Client":
        from fleetcast.sdk._client import Client

        return Client
    raise AttributeError(f"module 'fleetcast.sdk' has no attribute {name!r}")


__all__ = [
    "ApiError",
    "AuthError",
    "Client",
    "CompressionTimeoutError",
    "ConfigError",
    "ConflictError",
    "Deployment",
    "DeploymentTimeoutError",
    "Device",
    "DeviceOutcome",
    "FleetcastError",
    "IntegrityError",
    "InvalidRequestError",
    "Model",
    "ModelSummary",
    "ModelVersion",
    "NotFoundError",
    "Rollout",
    "RolloutTimeoutError",
    "ServerError",
    "TransportError",
    "Variant",
    "VersionStats",
]
