"""The server's one error tree, and the two tables that turn it into wire statuses.

```
FleetcastError                 code            HTTP  gRPC
  + InvalidRequest             invalid_request 400   INVALID_ARGUMENT
  |   + ModelInvalid           model_invalid   422   INVALID_ARGUMENT
  |   |   + ModelTooCostly     model_too_costly      (the upload check's time or memory limit)
  |   + GoldenMismatch         golden_mismatch 422   INVALID_ARGUMENT
  |   + TargetEmpty            target_empty    422   FAILED_PRECONDITION
  |   + DataDirShared          data_dir_shared 400   INVALID_ARGUMENT  (start-up only)
  + Unauthenticated            unauthenticated 401   UNAUTHENTICATED
  + Forbidden                  forbidden       403   PERMISSION_DENIED  (a viewer's change; a refused CSRF token)
  + NotFound                   not_found       404   NOT_FOUND
  |   ModelNotFound, DeviceNotFound, DeploymentNotFound, ArtifactNotFound, MetadataNotFound,
  |   RolloutNotFound
  + Conflict                   conflict        409   ALREADY_EXISTS
  |   + IllegalTransition      illegal_transition  (a rollout verb its state does not allow)
  |   + VersionExists          version_exists
  |   + AlreadyEnrolled        already_enrolled
  |   + DataDirInUse           data_dir_in_use             (start-up only: another server holds the lock)
  + TooLarge                   too_large       413   RESOURCE_EXHAUSTED
  + TooManyRequests            too_many_requests 429 RESOURCE_EXHAUSTED (failed logins from one address)
  + OutOfRange                 out_of_range    416   OUT_OF_RANGE
  + Unavailable                unavailable     503   UNAVAILABLE
      + BlobsUnavailable       blobs_unavailable           (the blob store cannot be read or written)
      + StoreUnavailable       store_unavailable           (the database cannot be reached)
```

Domain code raises these with a message that names the problem and what to do.
Handlers never build error responses: `http_status()` and `grpc_code()` decide.
gRPC codes are given by name so this module imports no transport.
"""

from __future__ import annotations

from typing import Final


class FleetcastError(Exception):
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(FleetcastError):
    code = "invalid_request"


class ModelInvalid(InvalidRequest):
    code = "model_invalid"


class GoldenMismatch(InvalidRequest):
    code = "golden_mismatch"


class TargetEmpty(InvalidRequest):
    code = "target_empty"


class ModelTooCostly(ModelInvalid):
    code = "model_too_costly"


class DataDirShared(InvalidRequest):
    code = "data_dir_shared"


class Unauthenticated(FleetcastError):
    code = "unauthenticated"


class Forbidden(FleetcastError):
    code = "forbidden"


class NotFound(FleetcastError):
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class DeviceNotFound(NotFound):
    code = "device_not_found"


class DeploymentNotFound(NotFound):
    code = "deployment_not_found"


class RolloutNotFound(NotFound):
    code = "rollout_not_found"


class ArtifactNotFound(NotFound):
    code = "artifact_not_found"


class MetadataNotFound(NotFound):
    code = "metadata_not_found"


class Conflict(FleetcastError):
    code = "conflict"


class VersionExists(Conflict):
    code = "version_exists"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class AlreadyEnrolled(Conflict):
    code = "already_enrolled"


class DataDirInUse(Conflict):
    code = "data_dir_in_use"


class TooLarge(FleetcastError):
    code = "too_large"


class TooManyRequests(FleetcastError):
    code = "too_many_requests"


class OutOfRange(FleetcastError):
    code = "out_of_range"


class Unavailable(FleetcastError):
    code = "unavailable"


class BlobsUnavailable(Unavailable):
    code = "blobs_unavailable"
class StoreUnavailable(Unavailable):
    code = "store_unavailable"


HTTP_STATUS: Final[dict[type[FleetcastError], int]] = {
    FleetcastError: 500,
    InvalidRequest: 400,
    ModelInvalid: 422,
    GoldenMismatch: 422,
    TargetEmpty: 422,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    TooManyRequests: 429,
    OutOfRange: 416,
    Unavailable: 503,
}

GRPC_CODE: Final[dict[type[FleetcastError], str]] = {
    FleetcastError: "INTERNAL",
    InvalidRequest: "INVALID_ARGUMENT",
    TargetEmpty: "FAILED_PRECONDITION",
    Unauthenticated: "UNAUTHENTICATED",
    Forbidden: "PERMISSION_DENIED",
    NotFound: "NOT_FOUND",
    Conflict: "ALREADY_EXISTS",
    IllegalTransition: "FAILED_PRECONDITION",
    TooLarge: "RESOURCE_EXHAUSTED",
    TooManyRequests: "RESOURCE_EXHAUSTED",
    OutOfRange: "OUT_OF_RANGE",
    Unavailable: "UNAVAILABLE",
}


def _lookup(table: dict[type[FleetcastError], object], error: FleetcastError) -> object:
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return table[FleetcastError]


def http_status(error: FleetcastError) -> int:
    return int(_lookup(HTTP_STATUS, error))  # type: ignore[call-overload]


def grpc_code(error: FleetcastError) -> str:
    return str(_lookup(GRPC_CODE, error))
