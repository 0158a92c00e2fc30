"""What the gates read: each cohort's stage devices and both sides' windowed telemetry.

The canary side is the stage's devices serving the new version; the control side is the
cohort's devices the rollout has not reached yet (or held back), on whatever version they
run but the new one, over the same window (the store's per-minute telemetry windows,
`fleetcast.server.telemetry_windows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fleetcast.server import telemetry_windows
from fleetcast.server.rollouts.gates import Evidence
from fleetcast.server.store import Rollout, RolloutDevice, Store, WindowRow

WAITING: Final = frozenset({"planned", "held"})     # not assigned: the control group
GONE: Final = frozenset({"reverting", "reverted"})  # sent back: judged no more


def gather(store: Store, rollout: Rollout, devices: Sequence[RolloutDevice], *, stage: int, since: float,
           until: float | None = None) -> list[Evidence]:
    """One Evidence per cohort of `stage`, from the windows since `since`."""
    mine = [d for d in devices if d.stage == stage and d.state not in WAITING | GONE]
    cohorts = sorted({d.cohort for d in mine})
    control = {d.device_id: d.cohort for d in devices if d.state in WAITING and d.cohort in cohorts}
    canary = {d.device_id: d.cohort for d in mine if d.state == "serving"}

    def side(row: WindowRow) -> tuple[str, str] | None:
        if row.version == rollout.version and row.device_id in canary:
            return (canary[row.device_id], "canary")
        if row.version != rollout.version and row.device_id in control:
            return (control[row.device_id], "control")
        return None

    ids = [*canary, *control]
    rows = store.window_rows(rollout.model, since=since, until=until, device_ids=ids) if ids else []
    figures = telemetry_windows.figures(rows, key=side)
    out = []
    for cohort in cohorts:
        members = [d for d in mine if d.cohort == cohort]
        out.append(Evidence(
            cohort=cohort, devices=len(members), serving=sum(d.state == "serving" for d in members),
            trial_rollbacks=sum(d.state == "rolled_back" for d in members),
            canary=figures.get((cohort, "canary")), control=figures.get((cohort, "control")),
            control_devices=sum(c == cohort for c in control.values()),
        ))
    return out
