"""What each dashboard page shows, read from the store (blocking: call from a worker thread).

Every figure comes from the API's documents (`fleetcast.server.documents`) or from
the same store reads the REST API makes, so a page and the API never disagree.
Each view carries `as_of`, the time its figures were read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from fleetcast.server import documents, liveness
from fleetcast.server.services import Services
from fleetcast.server.store import DeploymentDevice, DeviceTally
from fleetcast.server.web.devicefilter import DeviceFilter

RECENT_DEPLOYMENTS: Final = 10
DEPLOYMENT_PAGE_ROWS: Final = 100
HISTORY_ROWS: Final = 20


def _tally(s: Services, now: float) -> list[DeviceTally]:
    c = s.config.liveness
    return s.store.device_tally(online_since=now - c.expected_interval_s, late_since=now - c.offline_after_s)


def fleet_summary(s: Services, *, now: float) -> dict[str, Any]:
    """Devices by liveness, by hardware class (and liveness) and by active model version."""
    tally = _tally(s, now)
    by_liveness = Counter[str]()
    by_hardware: dict[str, Counter[str]] = {}
    by_version = Counter[str]()
    for t in tally:
        by_liveness[t.liveness] += t.devices
        by_hardware.setdefault(t.hardware_class, Counter())[t.liveness] += t.devices
        by_version[t.active_model or "(none)"] += t.devices
    return {
        "as_of": now, "total": sum(by_liveness.values()),
        "liveness": {state: by_liveness[state] for state in liveness.STATES},
        "hardware": [{"hardware_class": hw, "total": sum(c.values()), **{st: c[st] for st in liveness.STATES}}
                     for hw, c in sorted(by_hardware.items())],
        "versions": [{"active_model": m, "devices": n} for m, n in sorted(by_version.items())],
    }


def recent_deployments(s: Services, *, limit: int = RECENT_DEPLOYMENTS) -> list[dict[str, Any]]:
    return [documents.deployment_summary(s.store, d) for d in s.store.deployments(limit=limit)]


def overview(s: Services, *, now: float) -> dict[str, Any]:
    return {"fleet": fleet_summary(s, now=now), "deployments": recent_deployments(s),
            "models": documents.model_list(s.store.models())["models"], "as_of": now,
            "liveness_config": s.config.liveness}


def device_table(s: Services, f: DeviceFilter, *, now: float) -> dict[str, Any]:
    page = s.store.find_devices(f.store_query(now=now, config=s.config.liveness))
    pages = max(1, -(-page.total // f.per))
    hardware = sorted({t.hardware_class for t in _tally(s, now)})
    return {
        "rows": [documents.device_row(d, now=now, config=s.config.liveness) for d in page.devices],
        "total": page.total, "page": f.page, "pages": pages, "filter": f, "hardware_classes": hardware,
        "as_of": now,
    }


def _history_row(r: DeploymentDevice) -> dict[str, Any]:
    return {**documents.deployment_device(r), "deployment_id": r.deployment_id}


def device_page(s: Services, device_id: str, *, now: float) -> dict[str, Any]:
    d = s.fleet.device(device_id)
    return {"device": documents.device(s.store, d, now=now, config=s.config.liveness),
            "history": [_history_row(r) for r in s.store.device_deployments(d.device_id, limit=HISTORY_ROWS)],
            "as_of": now}


def models_page(s: Services, *, now: float) -> dict[str, Any]:
    return {**documents.model_list(s.store.models()), "as_of": now}


def model_page(s: Services, name: str, *, now: float) -> dict[str, Any]:
    versions = s.registry.versions(name)
    serving = Counter[str]()
    for t in _tally(s, now):
        if t.active_model.partition("@")[0] == name:
            serving[t.active_model.partition("@")[2]] += t.devices
    return {"model": documents.model(name, versions), "serving": dict(serving), "pins": s.store.pins(name),
            "as_of": now}


def deployments_page(s: Services, *, now: float) -> dict[str, Any]:
    return {"deployments": recent_deployments(s, limit=200), "as_of": now}


def progress(rows: Sequence[DeploymentDevice], *, created_at: float) -> list[dict[str, Any]]:
    """Final outcomes over time: one point per change, cumulative counts per outcome."""
    running = Counter[str]()
    points = [{"at": created_at, "counts": {}}]
    for r in sorted((r for r in rows if r.outcome), key=lambda r: r.updated_at):
        running[r.outcome] += 1
        points.append({"at": r.updated_at, "counts": dict(running)})
    return points


def deployment_page(s: Services, deployment_id: str, *, page: int, now: float) -> dict[str, Any]:
    d = s.deployments.get(deployment_id)
    rows = s.store.deployment_devices(d.deployment_id)
    pages = max(1, -(-len(rows) // DEPLOYMENT_PAGE_ROWS))
    page = min(page, pages)
    shown = rows[(page - 1) * DEPLOYMENT_PAGE_ROWS:page * DEPLOYMENT_PAGE_ROWS]
    return {"deployment": documents.deployment_summary(s.store, d),
            "devices": [documents.deployment_device(r) for r in shown], "page": page, "pages": pages,
            "progress": progress(rows, created_at=d.created_at), "as_of": now}
