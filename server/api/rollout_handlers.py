"""Thin HTTP handlers for staged rollouts: parse, call `Rollouts`, respond."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from fleetcast.server import documents
from fleetcast.server.api.bodies import parse_json
from fleetcast.server.api.handlers import _json
from fleetcast.server.api.keys import SERVICES
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.rollouts.spec import RolloutSpec, spec_from
from fleetcast.server.rollouts.table import RolloutState

HINT = '{"model", "version", "target", "stages", "soak_s", "gates", ...}'


async def _request(request: web.Request) -> tuple[str, str | None, str, RolloutSpec]:
    body = parse_json(await request.read(), hint=HINT)
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object: {HINT}")
    model, version, target = body.pop("model", None), body.pop("version", None), body.pop("target", "all")
    if not isinstance(model, str) or not isinstance(target, str) or not (version is None or isinstance(version, str)):
        raise InvalidRequest('"model" and "target" must be strings, "version" a string or absent')
    return model, version or None, target, spec_from(body)


async def create_rollout(request: web.Request) -> web.Response:
    model, version, target, spec = await _request(request)
    r = request.app[SERVICES].rollouts

    def run() -> dict[str, Any]:
        return documents.rollout(r.store, r.start(model=model, version=version, target=target, spec=spec))
    return _json(await asyncio.to_thread(run), status=201)


async def plan_rollout(request: web.Request) -> web.Response:
    model, version, target, spec = await _request(request)
    r = request.app[SERVICES].rollouts
    return _json(await asyncio.to_thread(r.plan, model=model, version=version, target=target, spec=spec))


async def list_rollouts(request: web.Request) -> web.Response:
    r = request.app[SERVICES].rollouts
    state = request.query.get("state")
    if state is not None and state not in set(RolloutState):
        raise InvalidRequest(f"state {state[:40]!r} is not a rollout state: use {', '.join(RolloutState)}")

    def build() -> list[dict[str, Any]]:
        found = r.store.rollouts(states=None if state is None else [state])
        return [documents.rollout(r.store, x, log_limit=0) for x in found]
    return _json({"rollouts": await asyncio.to_thread(build)})


async def get_rollout(request: web.Request) -> web.Response:
    r = request.app[SERVICES].rollouts

    def build() -> dict[str, Any]:
        return documents.rollout(r.store, r.get(request.match_info["id"]))
    return _json(await asyncio.to_thread(build))


async def _verb(request: web.Request, verb: str) -> web.Response:
    r = request.app[SERVICES].rollouts
    full = request.query.get("full", "") in {"1", "true", "yes"}

    def run() -> dict[str, Any]:
        return documents.rollout(r.store, r.command(request.match_info["id"], verb, full=full))
    return _json(await asyncio.to_thread(run))


async def pause_rollout(request: web.Request) -> web.Response:
    return await _verb(request, "pause")


async def resume_rollout(request: web.Request) -> web.Response:
    return await _verb(request, "resume")


async def promote_rollout(request: web.Request) -> web.Response:
    return await _verb(request, "promote")


async def abort_rollout(request: web.Request) -> web.Response:
    return await _verb(request, "abort")


async def undo_rollout(request: web.Request) -> web.Response:
    return await _verb(request, "undo")


async def undo_deployment(request: web.Request) -> web.Response:
    d = request.app[SERVICES].deployments

    def run() -> dict[str, Any]:
        return documents.deployment(d.store, d.undo(request.match_info["id"]))
    return _json(await asyncio.to_thread(run))
