"""Keeps signed metadata fresh: re-signs timestamps before they expire, tells devices.

Devices whose director `timestamp.json` changed get a notice, so an agent that
watches does not wait for its own poll to see the new expiry.
"""

from __future__ import annotations

import asyncio
import logging

from fleetcast.server.services import Services

logger = logging.getLogger(__name__)


def period_s(services: Services) -> float:
    """How often to look: the configured interval, but at least four times per timestamp lifetime."""
    return min(services.config.refresh_interval_s, services.config.signing.timestamp_expiry_s / 4)


def refresh(services: Services) -> list[str]:
    """Re-signs what is due; returns the devices told to look again."""
    devices = [d.device_id for d in services.store.devices()]

    def stamps() -> dict[str, bytes | None]:
        return {d: services.store.get_metadata(f"director/{d}", "timestamp.json") for d in devices}

    before = stamps()
    services.signer.refresh_timestamps()
    changed = [d for d, stamp in stamps().items() if stamp != before[d]]
    for device_id in changed:
        services.hub.publish(device_id, services.deployments.current_notice(device_id))
    if changed:
        logger.info("director timestamps refreshed devices=%d", len(changed))
    return changed


async def run(services: Services) -> None:
    period = period_s(services)
    while True:
        await asyncio.sleep(period)
        try:
            await asyncio.to_thread(refresh, services)
        except Exception:
            logger.exception("timestamp refresh failed; retrying in %.0f s", period)


