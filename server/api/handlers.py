"""Thin HTTP handlers: parse, call the domain, respond. Errors are raised, never built here."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from fleetcast.proto.topics import TopicError, check_device_id
from fleetcast.server.api.blob_responses import blob_response
from fleetcast.server import documents
from fleetcast.server.api.bodies import parse_json
from fleetcast.server.api.keys import DEVICE_ID, OPENAPI, SERVICES
from fleetcast.server.blobs import StagedFile, check_sha256
from fleetcast.server.errors import ArtifactNotFound, InvalidRequest, TooLarge
from fleetcast.server.choice import assigned_devices, check_pin_scope
from fleetcast.server.fleet import NAME, read_metadata
from fleetcast.server.registry import check_model_name, parse_levels, parse_targets
from fleetcast.server.store import Device

CHUNK_BYTES: Final = 256 * 1024
MAX_FIELD_BYTES: Final = 256
PAGE_ROWS: Final = 1000        # rows of a paged list (devices, a deployment's devices) unless ?limit= says
MAX_PAGE_ROWS: Final = 10_000


def _int_query(request: web.Request, name: str, *, default: int, most: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidRequest(f'"{name}" must be a whole number from 1 to {most}, not {raw[:20]!r}')
    return int(raw)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, sort_keys=True))


async def openapi(request: web.Request) -> web.Response:
    return _json(request.app[OPENAPI])


# -- models ---------------------------------------------------------------------------

async def _next_part(reader: MultipartReader) -> Any:
    """The next part; a malformed part header is the client's error (400), not a crash."""
    try:
        return await reader.next()
    except HttpProcessingError as e:
        raise InvalidRequest(f"the multipart body is malformed ({str(e.message)[:120]}); "
                             "send multipart/form-data with plain field names") from e


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_BYTES):
        yield chunk


async def _field(part: BodyPartReader) -> str:
    data = await part.read_chunk(MAX_FIELD_BYTES + 1)
    if len(data) > MAX_FIELD_BYTES or await part.read_chunk(1):
        raise InvalidRequest(f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")
    return data.decode("utf-8", errors="replace").strip()


async def upload_model(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    name = check_model_name(request.match_info["name"])
    limit = s.config.max_upload_bytes
    bounds = {"model": limit, "golden": s.config.max_golden_bytes,
              "calibration": s.config.max_samples_bytes, "eval": s.config.max_samples_bytes}
    if request.content_length is not None and request.content_length > sum(bounds.values()) + 65536:
        raise TooLarge(f"upload of {request.content_length} bytes is larger than the server's limits "
                       f"(model {limit} bytes, samples {s.config.max_samples_bytes} bytes each)")
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("send the model as multipart/form-data with a file field named 'model'")
    staged: dict[str, StagedFile] = {}
    fields: dict[str, str] = {}
    try:
        try:
            reader = await request.multipart()
        except (KeyError, ValueError) as e:   # no boundary, or one over 70 characters
            raise InvalidRequest("the multipart/form-data Content-Type needs a boundary of at most "
                                 "70 characters") from e
        while (part := await _next_part(reader)) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("nested multipart bodies are not accepted")
            if part.name in bounds and part.name not in staged:
                staged[part.name] = await s.blobs.stage_stream(_chunks(part), bounds[part.name])
            elif part.name in {"version", "compress", "targets"} and part.name not in fields:
                fields[part.name] = await _field(part)
            else:
                raise InvalidRequest(
                    f"form field {str(part.name)[:40]!r} is unknown or repeated: "
                    "send model, golden, version, compress, targets, calibration, eval"
                )
        if "model" not in staged:
            raise InvalidRequest("the multipart field 'model' (an .onnx file) is required")
        levels = parse_levels(fields.get("compress", ""))
        targets = parse_targets(fields.get("targets", ""))
        uploads = {key: staged.pop(key, None) for key in ("golden", "calibration", "eval")}
        model = staged.pop("model")
    except BaseException:
        for f in staged.values():
            f.discard()
        raise
    add = functools.partial(
        s.registry.add_version, name, model, golden=uploads["golden"], version=fields.get("version") or None,
        compress=levels, calibration=uploads["calibration"], evaluation=uploads["eval"], targets=targets,
    )
    # The registry's own bounded pool: uploads waiting for a check never take the threads device calls use.
    record = await asyncio.get_running_loop().run_in_executor(s.registry.uploads, add)
    return _json(documents.version(record), status=201)


async def list_models(request: web.Request) -> web.Response:
    models = await asyncio.to_thread(request.app[SERVICES].store.models)
    return _json(documents.model_list(models))


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    versions = await asyncio.to_thread(request.app[SERVICES].registry.versions, name)
    return _json(documents.model(name, versions))


async def list_pins(request: web.Request) -> web.Response:
    name = check_model_name(request.match_info["name"])
    return _json({"model": name, "pins": await asyncio.to_thread(request.app[SERVICES].store.pins, name)})


async def put_pin(request: web.Request) -> web.Response:
    name = check_model_name(request.match_info["name"])
    scope = check_pin_scope(request.match_info["scope"])
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f'the body is not JSON ({e}); send {{"variant": "..."}}') from e
    variant = body.get("variant") if isinstance(body, dict) else None
    if not isinstance(variant, str) or not NAME.fullmatch(variant):
        raise InvalidRequest('send {"variant": NAME}: a variant name such as "mnn" or "balanced"')
    store = request.app[SERVICES].store
    await asyncio.to_thread(store.set_pin, name, scope, variant)
    return _json({"model": name, "pins": await asyncio.to_thread(store.pins, name)})


async def delete_pin(request: web.Request) -> web.Response:
    name = check_model_name(request.match_info["name"])
    scope = check_pin_scope(request.match_info["scope"])
    store = request.app[SERVICES].store
    await asyncio.to_thread(store.set_pin, name, scope, None)
    return _json({"model": name, "pins": await asyncio.to_thread(store.pins, name)})


async def get_version(request: web.Request) -> web.Response:
    registry = request.app[SERVICES].registry
    v = await asyncio.to_thread(registry.version, request.match_info["name"], request.match_info["version"])
    devices = await asyncio.to_thread(assigned_devices, registry.store, v.model, v.version)
    return _json({**documents.version(v), "devices": devices})


async def download_version(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    v = await asyncio.to_thread(s.registry.version, request.match_info["name"], request.match_info["version"])
    name = request.query.get("variant", "original")
    variant = v.variant(name)
    if variant is None:
        raise ArtifactNotFound(
            f"{v.model}@{v.version} has no variant {name[:40]!r}; it has {', '.join(x.variant for x in v.variants)}"
        )
    return await blob_response(request, s.blobs, variant.sha256)


# -- devices --------------------------------------------------------------------------

def _device_document(request: web.Request, d: Device) -> dict[str, Any]:
    s = request.app[SERVICES]
    return documents.device(s.store, d, now=time.time(), config=s.config.liveness)


def _page_query(request: web.Request) -> tuple[str, int]:
    """The `after` cursor (a device id: the previous page's `next`) and the `limit` of a paged list."""
    after = request.query.get("after", "")
    limit = _int_query(request, "limit", default=PAGE_ROWS, most=MAX_PAGE_ROWS)
    if after:
        try:
            check_device_id(after)
        except TopicError:
            raise InvalidRequest('"after" must be a device id: pass the "next" of the previous page') from None
    return after, limit


async def list_devices(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    after, limit = _page_query(request)
    return _json(await asyncio.to_thread(documents.devices, s.store, after=after, limit=limit, now=time.time(),
                                         config=s.config.liveness))


async def get_device(request: web.Request) -> web.Response:
    fleet = request.app[SERVICES].fleet

    def build() -> dict[str, Any]:
        return _device_document(request, fleet.device(request.match_info["id"]))
    return _json(await asyncio.to_thread(build))


# -- deployments ----------------------------------------------------------------------

async def create_deployment(request: web.Request) -> web.Response:
    body = parse_json(await request.read(), hint='{"model", "version", "target"}')
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object: {"model": ..., "version": ..., "target": ...}')
    model, version, target = body.get("model"), body.get("version"), body.get("target", "all")
    if not isinstance(model, str) or not isinstance(target, str) or not (version is None or isinstance(version, str)):
        raise InvalidRequest('"model" and "target" must be strings, "version" a string or absent')
    d = request.app[SERVICES].deployments
    deployment = await asyncio.to_thread(d.create, model=model, version=version or None, target=target, wake=False)
    try:
        response = _json(await asyncio.to_thread(documents.deployment, d.store, deployment), status=201)
        # Written before the assigner wakes: signing and the devices it tells would
        # otherwise compete with this answer for the CPU.
        await response.prepare(request)
        await response.write_eof()
    finally:
        d.on_created()
    return response


async def list_deployments(request: web.Request) -> web.Response:
    d = request.app[SERVICES].deployments

    def build() -> list[dict[str, Any]]:
        return [documents.deployment(d.store, x) for x in d.store.deployments()]
    return _json({"deployments": await asyncio.to_thread(build)})


async def get_deployment(request: web.Request) -> web.Response:
    d = request.app[SERVICES].deployments

    def build() -> dict[str, Any]:
        return documents.deployment(d.store, d.get(request.match_info["id"]))
    return _json(await asyncio.to_thread(build))


async def list_deployment_devices(request: web.Request) -> web.Response:
    d = request.app[SERVICES].deployments
    after, limit = _page_query(request)

    def build() -> dict[str, Any]:
        deployment_id = d.get(request.match_info["id"]).deployment_id    # NotFound names an unknown id
        return documents.deployment_devices(d.store, deployment_id, after=after, limit=limit)
    return _json(await asyncio.to_thread(build))


async def cancel_deployment(request: web.Request) -> web.Response:
    d = request.app[SERVICES].deployments

    def run() -> dict[str, Any]:
        return documents.deployment(d.store, d.cancel(request.match_info["id"]))
    return _json(await asyncio.to_thread(run))


# -- device data plane ----------------------------------------------------------------

async def get_artifact(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    sha256 = check_sha256(request.match_info["sha256"])
    if await asyncio.to_thread(s.store.artifact, sha256) is None:
        raise ArtifactNotFound(f"artifact {sha256} is not known to this server")
    return await blob_response(request, s.blobs, sha256)


async def _metadata(request: web.Request, repository: str) -> web.Response:
    s = request.app[SERVICES]
    data = await asyncio.to_thread(
        read_metadata, s.signer, repository=repository, name=request.match_info["name"][:128],
        device_id=request[DEVICE_ID],
    )
    return web.Response(body=data, content_type="application/json")


async def get_image_metadata(request: web.Request) -> web.Response:
    return await _metadata(request, "image")


async def get_director_metadata(request: web.Request) -> web.Response:
    return await _metadata(request, "director")
