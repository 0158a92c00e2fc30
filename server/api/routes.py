"""The route table: every HTTP route the server serves, in one place.

The app factory registers these, the auth wrapper reads `auth`, and the OpenAPI
document is generated from the same rows, so the three never disagree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import web

from fleetcast.server.api import handlers as h
from fleetcast.server.api import identity_handlers as ih
from fleetcast.server.api import monitoring as m
from fleetcast.server.api import rollout_handlers as rh

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Auth = Literal["operator", "device", "public", "metrics"]  # metrics: DATA/metrics-token or the operator token
Body = Literal["none", "model-upload", "deployment", "enroll-token", "pin", "rollout"]
Reply = Literal["json", "binary", "created", "text"]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    auth: Auth
    summary: str
    body: Body = "none"
    reply: Reply = "json"
    query: Sequence[str] = ()

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/v1/openapi.json", h.openapi, "public", "This OpenAPI 3.1 document"),
    Route("GET", "/healthz", m.healthz, "public", "Alive: the process answers"),
    Route("GET", "/readyz", m.readyz, "public", "Ready: store, blobs and signer usable (503 names the failing part)"),
    Route("GET", "/metrics", m.prometheus, "metrics", "Fleet and process metrics in the Prometheus text format",
          reply="text"),
    Route("GET", "/v1/models", h.list_models, "operator", "List models with their latest version"),
    Route("POST", "/v1/models/{name}", h.upload_model, "operator",
          "Upload a model version (multipart: model, golden, version, compress)", body="model-upload", reply="created"),
    Route("GET", "/v1/models/{name}", h.get_model, "operator", "A model and all its versions"),
    Route("GET", "/v1/models/{name}/pins", h.list_pins, "operator",
          "Operator pins: scope (group:G | hardware:CLASS) -> the variant its devices get"),
    Route("PUT", "/v1/models/{name}/pins/{scope}", h.put_pin, "operator",
          "Pin a variant for a group or hardware class (applies to deployments made from now on)", body="pin"),
    Route("DELETE", "/v1/models/{name}/pins/{scope}", h.delete_pin, "operator", "Remove a pin"),
    Route("GET", "/v1/models/{name}/versions/{version}", h.get_version, "operator", "One version document"),
    Route("GET", "/v1/models/{name}/versions/{version}/download", h.download_version, "operator",
          "The bytes of one variant of a version", reply="binary", query=("variant",)),
    Route("GET", "/v1/devices", h.list_devices, "operator",
          "A page of the enrolled devices by id, with state and telemetry summary (?after=: the previous page's next)",
          query=("after", "limit")),
    Route("GET", "/v1/devices/{id}", h.get_device, "operator", "One device document"),
    Route("POST", "/v1/devices/{id}/reprovision", ih.reprovision_device, "operator",
          "Allow one re-enrollment of this device id with a new key"),
    Route("POST", "/v1/enroll-tokens", ih.create_enroll_token, "operator",
          "Make an enrollment token (group, expiry, uses); the token is in this answer only",
          body="enroll-token", reply="created"),
    Route("GET", "/v1/enroll-tokens", ih.list_enroll_tokens, "operator", "Enrollment tokens, without the tokens"),
    Route("POST", "/v1/deployments", h.create_deployment, "operator",
          "Deploy a model version to all devices, a group or a list of devices", body="deployment", reply="created"),
    Route("GET", "/v1/deployments", h.list_deployments, "operator", "Deployments, newest first"),
    Route("GET", "/v1/deployments/{id}", h.get_deployment, "operator", "One deployment and its counts per outcome"),
    Route("GET", "/v1/deployments/{id}/devices", h.list_deployment_devices, "operator",
          "A page of the deployment's device rows, by device id (?after=: the previous page's next)",
          query=("after", "limit")),
    Route("POST", "/v1/deployments/{id}/cancel", h.cancel_deployment, "operator",
          "Cancel: devices not yet final get their previous assignment back"),
    Route("POST", "/v1/deployments/{id}/undo", rh.undo_deployment, "operator",
          "Undo: every device of the deployment goes back to what it ran before"),
    Route("POST", "/v1/rollouts", rh.create_rollout, "operator",
          "Start a staged rollout gated on serving health", body="rollout", reply="created"),
    Route("POST", "/v1/rollout-plans", rh.plan_rollout, "operator",
          "Dry run: the devices each stage would reach, per cohort", body="rollout"),
    Route("GET", "/v1/rollouts", rh.list_rollouts, "operator", "Rollouts, newest first", query=("state",)),
    Route("GET", "/v1/rollouts/{id}", rh.get_rollout, "operator",
          "One rollout: stages, devices per cohort, every check's numbers, the log"),
    Route("POST", "/v1/rollouts/{id}/pause", rh.pause_rollout, "operator", "Pause a running rollout"),
    Route("POST", "/v1/rollouts/{id}/resume", rh.resume_rollout, "operator",
          "Resume a paused rollout (an inconclusive stage soaks again)"),
    Route("POST", "/v1/rollouts/{id}/promote", rh.promote_rollout, "operator",
          "Pass the current stage now (?full=1: every remaining device in one last stage)", query=("full",)),
    Route("POST", "/v1/rollouts/{id}/abort", rh.abort_rollout, "operator",
          "Abort: every device the rollout reached goes back to its previous version"),
    Route("POST", "/v1/rollouts/{id}/undo", rh.undo_rollout, "operator",
          "Undo (also after completion): every device back to the version it ran before"),
    Route("GET", "/v1/artifacts/{sha256}", h.get_artifact, "device",
          "An artifact's bytes (Range requests give 206 / 416)", reply="binary"),
    Route("GET", "/v1/repository/image/{name}", h.get_image_metadata, "device",
          "Signed image repository metadata (DSSE envelope bytes)", reply="binary"),
    Route("GET", "/v1/repository/director/{name}", h.get_director_metadata, "device",
          "The calling device's signed director metadata", reply="binary"),
)
