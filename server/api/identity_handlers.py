"""Operator routes of device identity (ADR 0005): re-provisioning and enroll tokens."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from fleetcast.server.api.keys import SERVICES
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.fleet import NAME
from fleetcast.server.store import EnrollToken


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, sort_keys=True))


def _token_document(t: EnrollToken) -> dict[str, Any]:
    return {"name": t.name, "group": t.group, "created_at": t.created_at, "expires_at": t.expires_at,
            "uses_left": t.uses_left}


async def reprovision_device(request: web.Request) -> web.Response:
    fleet = request.app[SERVICES].fleet
    device_id = request.match_info["id"]
    approved = await asyncio.to_thread(fleet.approve_reprovision, device_id)
    return _json({"id": device_id, "reprovision_approved_at": approved.reprovision_approved_at})


async def create_enroll_token(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"the body is not JSON ({e}); send {{\"group\", \"expires_s\", \"uses\"}}") from e
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object: {"group": ..., "expires_s": ..., "uses": ...}')
    group, expires_s, uses = body.get("group", ""), body.get("expires_s"), body.get("uses")
    if not isinstance(group, str) or (group and not NAME.fullmatch(group)):
        raise InvalidRequest('"group" must be a group name (letters, digits, ".", "_", "-") or ""')
    if expires_s is not None and (isinstance(expires_s, bool) or not isinstance(expires_s, (int, float))):
        raise InvalidRequest('"expires_s" must be a number of seconds or absent')
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int)):
        raise InvalidRequest('"uses" must be an integer or absent')
    tokens = request.app[SERVICES].fleet.tokens
    token, record = await asyncio.to_thread(
        tokens.create, group=group, expires_s=None if expires_s is None else float(expires_s), uses=uses)
    return _json({**_token_document(record), "token": token}, status=201)


async def list_enroll_tokens(request: web.Request) -> web.Response:
    records = await asyncio.to_thread(request.app[SERVICES].store.enroll_tokens)
    return _json({"enroll_tokens": [_token_document(t) for t in records]})
