"""The API's documents: one place builds what the REST API, the dashboard and its
server-sent events show of a model, a version, a device, a deployment and a rollout.

Each function takes records (and the store where it must read more) and returns a
JSON-able dict; none imports aiohttp. The blocking ones read the store: call them
from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from fleetcast.server import fleetview, liveness
from fleetcast.server.rollouts.table import FINAL_ROLLOUT_STATES, HEALTHY_ROLLOUT_STATES
from fleetcast.server.store import Assignment, Deployment, DeploymentDevice, Device, Golden, ModelVersion, Rollout, Store

ROLLOUT_FAILURES: Final = frozenset({"failed", "timed_out", "rolled_back"})


def _golden(g: Golden | None) -> dict[str, Any] | None:
    return None if g is None else {"sha256": g.sha256, "length": g.length, "atol": g.atol, "rtol": g.rtol}


def version(v: ModelVersion) -> dict[str, Any]:
    """One model version with its variants and their measured metrics."""
    return {
        "name": v.model,
        "version": v.version,
        "created_at": v.created_at,
        "variants": [
            {"variant": x.variant, "format": x.format, "sha256": x.sha256, "length": x.length,
             "metrics": dict(x.metrics), "golden": _golden(x.golden)}
            for x in v.variants
        ],
        "compression": None if v.compression is None else dict(v.compression),
        "inputs": v.inputs,
        "outputs": v.outputs,
        "golden": _golden(v.golden),
    }


def model(name: str, versions: Sequence[ModelVersion]) -> dict[str, Any]:
    return {"name": name, "versions": [version(v) for v in versions]}


def model_list(models: Sequence[tuple[str, str, int]]) -> dict[str, Any]:
    """`Store.models()` rows: (name, latest version, count)."""
    return {"models": [{"name": n, "latest_version": v, "versions": c} for n, v, c in models]}


def devices(store: Store, *, after: str, limit: int, now: float, config: liveness.LivenessConfig) -> dict[str, Any]:
    """A page of device documents by device id and the cursor of the next (null on the last);
    the page's assignments are read in one query."""
    page = store.devices(after=after, limit=limit + 1)
    shown = page[:limit]
    assignments = store.assignments_of([d.device_id for d in shown])
    return {"devices": [_device(store, d, assignments.get(d.device_id), now=now, config=config) for d in shown],
            "next": shown[-1].device_id if len(page) > limit else None}


def device(store: Store, d: Device, *, now: float, config: liveness.LivenessConfig) -> dict[str, Any]:
    """The device document REST, the SDK, the CLI and the dashboard show."""
    return _device(store, d, store.assignment(d.device_id), now=now, config=config)


def _device(store: Store, d: Device, assignment: Assignment | None, *, now: float,
            config: liveness.LivenessConfig) -> dict[str, Any]:
    doc = assignment.document if assignment else None
    aggregates = store.aggregates(device_id=d.device_id)
    return {
        "id": d.device_id, "hardware_class": d.hardware_class, "backends": list(d.backends), "group": d.group,
        "labels": dict(d.labels), "agent_version": d.agent_version, "enrolled_at": d.enrolled_at,
        "last_seen": d.last_seen, "active_model": d.active_model or None, "state": d.state or None,
        "liveness": liveness.document(d.last_seen, now=now, config=config),
        "deployment_id": d.deployment_id or None,
        "last_error": {"reason": d.last_error, "at": d.last_error_at} if d.last_error else None,
        "assignment": None if doc is None else {**{k: doc[k] for k in ("deployment_id", "model", "version", "variant")},
                                                "format": doc.get("format"), "why": doc.get("why", "")},
        "telemetry": fleetview.telemetry_rows(aggregates),
        "serving": fleetview.serving(aggregates, d.active_model),
        "percentiles": fleetview.INTERPOLATION,
    }


def device_row(d: Device, *, now: float, config: liveness.LivenessConfig) -> dict[str, Any]:
    """A device as one row of a table or CSV export: the record alone, no further reads."""
    return {
        "id": d.device_id, "hardware_class": d.hardware_class, "group": d.group,
        "liveness": liveness.state_of(d.last_seen, now=now, config=config), "last_seen": d.last_seen,
        "active_model": d.active_model or None, "state": d.state or None, "agent_version": d.agent_version,
        "last_error": d.last_error or None,
    }


def deployment_counts(store: Store, deployment_id: str) -> dict[str, int]:
    """Devices per outcome: total, pending, then each final outcome present."""
    by_outcome = store.deployment_counts(deployment_id)
    counts = {"total": sum(by_outcome.values()), "pending": by_outcome.get("", 0)}
    return counts | {k: v for k, v in by_outcome.items() if k}


def deployment_device(r: DeploymentDevice) -> dict[str, Any]:
    return {"device_id": r.device_id, "variant": r.variant, "sha256": r.sha256, "state": r.state,
            "outcome": r.outcome or None, "reason": r.reason, "updated_at": r.updated_at}


def deployment(store: Store, d: Deployment) -> dict[str, Any]:
    """A deployment and its counts per outcome; its device rows come in pages
    (`deployment_devices`)."""
    return {
        "id": d.deployment_id, "model": d.model, "version": d.version, "target": d.target, "status": d.status,
        "created_at": d.created_at, "updated_at": d.updated_at, "counts": deployment_counts(store, d.deployment_id),
    }


def deployment_devices(store: Store, deployment_id: str, *, after: str, limit: int) -> dict[str, Any]:
    """One page of a deployment's device rows (by device id) and the cursor of the next
    (null on the last page): a deployment to the whole fleet has a row per device, too
    many for one answer."""
    rows = store.deployment_devices(deployment_id, after=after, limit=limit + 1)
    return {"devices": [deployment_device(r) for r in rows[:limit]],
            "next": rows[limit - 1].device_id if len(rows) > limit else None}


def rollout(store: Store, r: Rollout, *, log_limit: int = 200) -> dict[str, Any]:
    """A rollout with its stages (per cohort device states, each gate's results), failures and
    the last `log_limit` log entries (0: none, as lists of many rollouts send)."""
    stages = store.rollout_stages(r.rollout_id)
    devices = store.rollout_devices(r.rollout_id)
    log = store.rollout_log(r.rollout_id)
    by_stage: dict[int, dict[str, dict[str, int]]] = {}
    totals: dict[str, int] = {}
    for d in devices:
        cohorts = by_stage.setdefault(d.stage, {})
        states = cohorts.setdefault(d.cohort, {})
        states[d.state] = states.get(d.state, 0) + 1
        totals[d.state] = totals.get(d.state, 0) + 1
    failures = [{"device_id": d.device_id, "cohort": d.cohort, "state": d.state, "reason": d.reason}
                for d in devices if d.state in ROLLOUT_FAILURES][:100]
    return {
        "id": r.rollout_id, "model": r.model, "version": r.version, "target": r.target,
        "deployment_id": r.deployment_id, "state": r.state, "stage": r.stage,
        "final": r.state in FINAL_ROLLOUT_STATES,
        # a rollout that held a cohort back completes, but not healthily: that cohort never got it
        "healthy": r.state in HEALTHY_ROLLOUT_STATES and not any(e.event == "cohort_held" for e in log),
        "spec": dict(r.spec), "created_at": r.created_at, "updated_at": r.updated_at,
        "devices": {"total": len(devices), **totals}, "failures": failures,
        "stages": [{"index": s.index, "size": s.size, "state": s.state, "started_at": s.started_at,
                    "soak_started_at": s.soak_started_at, "ended_at": s.ended_at,
                    "devices": sum(sum(c.values()) for c in by_stage.get(s.index, {}).values()),
                    "cohorts": by_stage.get(s.index, {}), "checks": list(s.results)} for s in stages],
        "log": [{"at": e.at, "actor": e.actor, "event": e.event, "from": e.from_state, "to": e.to_state,
                 "reason": e.reason, "snapshot": dict(e.snapshot)} for e in (log[-log_limit:] if log_limit > 0 else [])],
    }
