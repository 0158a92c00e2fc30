"""Variant choice: which of a version's variants one device gets, and why.

An operator's pin for the device's group, else for its hardware class, wins when the
device can load the pinned variant. Otherwise, among the variants the device's
reported back ends can load (`proto.formats`) and whose
measured accuracy is within the version's budget (`within_budget` not false):
1. the fastest by mean latency measured on devices of its hardware class (telemetry,
   per variant), a variant not yet measured there estimated from the original's class
   latency times its build-machine latency ratio (one with neither is left out);
2. with no class measurement, on the build machine's own class (a CPU like the server's),
   the lowest build-machine `latency_ratio`, saying the figures are the build machine's;
3. otherwise the hardware class's preference order (`compress.levels.PREFERENCE`):
   build-machine CPU timings say nothing about a GPU, NPU or VPU.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from fleetcast.proto import formats
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.fleet import HARDWARE_CLASSES, NAME, choose_variant
from fleetcast.server.store import Aggregate, Device, DeviceProfile, ModelVersion, Store, Variant

BUILD_CLASS: Final = "arm-cpu" if platform.machine() in {"aarch64", "arm64"} else "x86-cpu"
LEGACY_BACKENDS: Final = ("onnxruntime",)   # agents that enrolled before reporting back ends


@dataclass(frozen=True)
class Choice:
    variant: Variant
    why: str


def class_latency(aggregates: Iterable[Aggregate], devices: Mapping[str, Device], *, model: str, version: str,
                  hardware_class: str) -> dict[str, float]:
    """variant -> mean ms over every device of `hardware_class` that served it."""
    sums: dict[str, tuple[float, int]] = {}
    for a in aggregates:
        d = devices.get(a.device_id)
        if a.model != model or a.version != version or d is None or d.hardware_class != hardware_class:
            continue
        total, count = sums.get(a.variant, (0.0, 0))
        sums[a.variant] = (total + a.latency_sum_ms, count + a.inferences)
    return {v: total / count for v, (total, count) in sums.items() if count}


def _ratio(v: Variant, backends: tuple[str, ...] = ("onnxruntime", "litert")) -> float | None:
    """The build machine's latency ratio, when it was measured with the back end this
    device would run the variant on (a figure for onnxruntime says nothing about OpenVINO)."""
    row = formats.FORMATS.get(v.format)
    runs_on = next((b for b in row.backends if b in backends), None) if row else None
    measured_with = v.metrics.get("backend") or (row.backends[0] if row else None)
    if runs_on is None or runs_on != measured_with:
        return None
    if v.variant == "original":
        return 1.0
    r = v.metrics.get("latency_ratio")
    return float(r) if isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 else None


def choose(device: Device | DeviceProfile, release: ModelVersion, measured: Mapping[str, float], *,
           pins: Mapping[str, str] | None = None) -> Choice:
    backends = tuple(device.backends) or LEGACY_BACKENDS
    # A build for one NPU platform (rknn-rk3588) runs only on that platform's devices.
    loadable = [v for v in release.variants if formats.loadable_by(v.format, backends)
                and v.metrics.get("platform") in (None, device.hardware_class)]
    for scope in (f"group:{device.group}" if device.group else "", f"hardware:{device.hardware_class}"):
        pinned = next((v for v in loadable if scope and v.variant == (pins or {}).get(scope)), None)
        if pinned is not None:
            return Choice(pinned, f"pinned by the operator for {scope}")
    if not loadable:
        original = release.variant("original") or release.variants[0]
        return Choice(original, f"no variant loads with this device's back ends ({', '.join(backends)}): "
                                "sent the original, which it will refuse")
    fits = [v for v in loadable if v.metrics.get("within_budget") is not False] or loadable
    klass = device.hardware_class
    base = measured.get("original")
    estimates = {v.variant: measured.get(v.variant) or (base * r if base and (r := _ratio(v, backends)) else None)
                 for v in fits}
    known = [v for v in fits if estimates[v.variant] is not None]
    if any(v.variant in measured for v in known):
        best = min(known, key=lambda v: estimates[v.variant] or 0.0)
        how = "measured" if best.variant in measured else "estimated from the original's latency x build ratio"
        return Choice(best, f"fastest on {klass} devices: {estimates[best.variant]:.3g} ms mean ({how}) "
                            f"among {len(known)} of {len(fits)} loadable variants within the accuracy budget "
                            "with figures for this class")
    ranked = [v for v in fits if _ratio(v, backends) is not None]
    if klass == BUILD_CLASS and ranked:
        best = min(ranked, key=lambda v: _ratio(v, backends) or 0.0)
        return Choice(best, f"no {klass} device has measured it yet: the build machine's figures "
                            f"(latency ratio {_ratio(best, backends):.3g} to the original on "
                            f"{best.metrics.get('backend') or 'its runtime'}) among {len(ranked)} loadable variants "
                            "measured with the back end this device runs them on")
    name = choose_variant(klass, [v.variant for v in fits])
    best = next((v for v in fits if v.variant == name), fits[0])
    return Choice(best, f"no {klass} measurement yet and the build machine is {BUILD_CLASS}: "
                        f"{klass}'s preference order among {len(fits)} loadable variants")


def check_pin_scope(scope: str) -> str:
    kind, _, value = scope.partition(":")
    if kind == "hardware" and value in HARDWARE_CLASSES:
        return scope
    if kind == "group" and NAME.fullmatch(value):
        return scope
    raise InvalidRequest(f"pin scope {scope[:80]!r} is not valid: use group:NAME or hardware:CLASS "
                         f"({', '.join(sorted(HARDWARE_CLASSES))})")


def assigned_devices(store: Store, model: str, version: str) -> list[dict[str, str]]:
    """The devices whose current assignment is `model@version`: the variant each got and why."""
    rows = []
    profiles = store.device_profiles()
    assignments = store.assignments_of([d.device_id for d in profiles])   # one read, not one per device
    for d in profiles:
        a = assignments.get(d.device_id)
        doc = a.document if a else {}
        if doc.get("model") == model and doc.get("version") == version:
            rows.append({"device_id": d.device_id, "hardware_class": d.hardware_class,
                         "variant": str(doc.get("variant")), "why": str(doc.get("why", ""))})
    return rows
