"""What each dashboard page shows, read from the store (blocking: call from a worker thread).

Every figure comes from the API's documents (`fleetcast.server.documents`) or from
the same store reads the REST API makes, so a page and the API never disagree.
Each view carries `as_of`, the time its figures were read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from fleetcast.server import documents, liveness, telemetry_windows
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.fleetview import QUANTILES
from fleetcast.server.services import Services
from fleetcast.server.store import DeploymentDevice, DeviceTally
from fleetcast.server.web.devicefilter import DeviceFilter

COLORS: Final = ("#1f5fbf", "#17813a", "#b26a00", "#8e3bb7", "#b3261e", "#0f8a8a", "#5d6773")
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
    return [documents.deployment(s.store, d) for d in s.store.deployments(limit=limit)]


OVERVIEW_MODELS: Final = 10
OVERVIEW_WINDOW: Final = "1h"


def fleet_latency(s: Services, models: Sequence[str], *, now: float) -> list[dict[str, Any]]:
    """Each model's last hour by (version, hardware class), from the fleet's telemetry windows."""
    span_s, _ = telemetry_windows.WINDOWS[OVERVIEW_WINDOW]
    out = []
    for name in models[:OVERVIEW_MODELS]:
        rows = s.store.series_rows(name, since=now - span_s)
        figures = telemetry_windows.figures(rows, key=lambda r: (r.version, r.hardware_class))
        out += [{"model": name, "version": v, "hardware_class": hw, **f.figures()}
                for (v, hw), f in sorted(figures.items())]
    return out


def overview(s: Services, *, now: float) -> dict[str, Any]:
    models = documents.model_list(s.store.models())["models"]
    return {"fleet": fleet_summary(s, now=now), "deployments": recent_deployments(s), "models": models,
            "latency": fleet_latency(s, [m["name"] for m in models], now=now), "latency_window": OVERVIEW_WINDOW,
            "percentiles": telemetry_windows.INTERPOLATION, "as_of": now}


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


def check_window(window: str) -> str:
    if window not in telemetry_windows.WINDOWS:
        raise InvalidRequest(f"'window' must be one of {', '.join(telemetry_windows.WINDOWS)}")
    return window


def _plot(by: dict[Any, list[telemetry_windows.Point]], *, quantiles: Sequence[tuple[str, float]],
          label: Any, since: float, until: float) -> dict[str, Any]:
    """uPlot's columns: shared times, one line per (key, quantile); null where a step had no data."""
    xs = sorted({p.at for points in by.values() for p in points})
    lines = []
    for i, (k, points) in enumerate(sorted(by.items())):
        at = {p.at: p.figures for p in points}
        for j, (name, q) in enumerate(quantiles):
            lines.append({"label": f"{label(k)} {name[:3]}", "color": COLORS[(i * len(quantiles) + j) % len(COLORS)],
                          "values": [at[x].quantile(q) if x in at else None for x in xs]})
    return {"kind": "latency", "x": xs, "series": lines, "range": [since, until]}


def latency(rows: Sequence[Any], *, window: str, key: Any, label: Any, now: float) -> dict[str, Any]:
    """A window's figures by `key` (a table) and their p50/p95/p99 over time (a plot)."""
    span_s, step_s = telemetry_windows.WINDOWS[window]
    table = [{"key": k, "label": label(k), **f.figures(), "devices": f.devices}
             for k, f in sorted(telemetry_windows.figures(rows, key=key).items())]
    series = telemetry_windows.series(rows, step_s=step_s, key=key)
    return {"window": window, "windows": list(telemetry_windows.WINDOWS), "step_s": step_s, "table": table,
            "plot": _plot(series, quantiles=QUANTILES, label=label, since=now - span_s, until=now), "percentiles": telemetry_windows.INTERPOLATION}


def device_page(s: Services, device_id: str, *, window: str, now: float) -> dict[str, Any]:
    d = s.fleet.device(device_id)
    doc = documents.device(s.store, d, now=now, config=s.config.liveness)
    span_s, _ = telemetry_windows.WINDOWS[check_window(window)]
    model = (d.active_model.partition("@")[0] or (doc["telemetry"][-1]["model"] if doc["telemetry"] else ""))
    rows = s.store.window_rows(model, since=now - span_s, device_ids=[d.device_id]) if model else []
    return {"device": doc, "latency_model": model,
            "latency": latency(rows, window=window, key=lambda r: (r.version, r.variant),
                               label=lambda k: f"v{k[0]} {k[1]}", now=now),
            "history": [_history_row(r) for r in s.store.device_deployments(d.device_id, limit=HISTORY_ROWS)],
            "as_of": now}


def models_page(s: Services, *, now: float) -> dict[str, Any]:
    return {**documents.model_list(s.store.models()), "as_of": now}


def model_page(s: Services, name: str, *, window: str, now: float) -> dict[str, Any]:
    versions = s.registry.versions(name)
    span_s, _ = telemetry_windows.WINDOWS[check_window(window)]
    rows = s.store.series_rows(name, since=now - span_s)
    serving = Counter[str]()
    for t in _tally(s, now):
        if t.active_model.partition("@")[0] == name:
            serving[t.active_model.partition("@")[2]] += t.devices
    return {"model": documents.model(name, versions), "serving": dict(serving), "pins": s.store.pins(name),
            "by_version": latency(rows, window=window, key=lambda r: r.version, label=lambda k: f"v{k}", now=now),
            "by_hardware": latency(rows, window=window, key=lambda r: (r.version, r.hardware_class, r.backend),
                                   label=lambda k: f"v{k[0]} {k[1]} {k[2]}".strip(), now=now),
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
    return {"deployment": documents.deployment(s.store, d),
            "devices": [documents.deployment_device(r) for r in shown], "page": page, "pages": pages,
            "progress": progress(rows, created_at=d.created_at), "as_of": now}


def rollouts_page(s: Services, *, now: float) -> dict[str, Any]:
    """The rollouts REST lists, newest first, as the same documents (without their logs)."""
    return {"rollouts": [documents.rollout(s.store, r, log_limit=0) for r in s.store.rollouts()], "as_of": now}


def rollout_page(s: Services, rollout_id: str, *, now: float) -> dict[str, Any]:
    return {"rollout": documents.rollout(s.store, s.rollouts.get(rollout_id)), "as_of": now}
