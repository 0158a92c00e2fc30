"""The errors the operator SDK raises. Catch the most specific one you can act on.

```
FleetcastError
  + ConfigError             no server address or token; an unreadable data dir
  + TransportError          the server could not be reached, or did not answer in time
  + ApiError                the server answered with an error: .status, .code, .message
  |   + InvalidRequestError   400, 413, 422: the request is wrong (bad model, bad target)
  |   + AuthError             401, 403: missing or wrong operator token
  |   + NotFoundError         404: no such model, version, deployment or device
  |   + ConflictError         409: the version exists, the deployment already ended
  |   + ServerError           5xx: the server failed; its log says why
  + IntegrityError          a downloaded artifact does not match its signed sha256/length
  + DeploymentTimeoutError  wait_deployment ran out of time; .deployment is the last seen
  + CompressionTimeoutError wait_compression ran out of time; .version is the last seen
  + RolloutTimeoutError     wait_rollout ran out of time; .rollout is the last seen
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from fleetcast.sdk._models import Deployment, ModelVersion, Rollout


class FleetcastError(Exception):
    """Base of every error the SDK raises."""


class ConfigError(FleetcastError):
    """The client is not configured: no server address, no token, unreadable data dir."""


class TransportError(FleetcastError):
    """The server could not be reached, or did not answer within the timeout."""


class ApiError(FleetcastError):
    """The server answered with an error document `{"error": {"code", "message"}}`."""

    def __init__(self, *, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.message = message


class InvalidRequestError(ApiError):
    """The request is wrong: an invalid model, an unknown target, a bad field."""


class AuthError(ApiError):
    """The operator token is missing or wrong."""


class NotFoundError(ApiError):
    """No such model, version, deployment or device."""


class ConflictError(ApiError):
    """The request conflicts with the server's state (the version already exists...)."""


class ServerError(ApiError):
    """The server failed while handling the request."""


class IntegrityError(FleetcastError):
    """A downloaded artifact does not match the sha256 or length the server published."""


class RolloutTimeoutError(FleetcastError):
    """A rollout did not end in time. `rollout` is the last state seen."""

    def __init__(self, message: str, *, rollout: Rollout) -> None:
        super().__init__(message)
        self.rollout = rollout


class DeploymentTimeoutError(FleetcastError):
    """A deployment did not finish in time. `deployment` is the last state seen."""

    def __init__(self, message: str, *, deployment: Deployment) -> None:
        super().__init__(message)
        self.deployment = deployment


class CompressionTimeoutError(FleetcastError):
    """A version's compression did not finish in time. `version` is the last state seen."""

    def __init__(self, message: str, *, version: ModelVersion) -> None:
        super().__init__(message)
        self.version = version


_BY_STATUS: Final[dict[int, type[ApiError]]] = {
    400: InvalidRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
}


def api_error(*, status: int, code: str, message: str) -> ApiError:
    """The most specific `ApiError` for an HTTP status."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(status=status, code=code, message=message)
