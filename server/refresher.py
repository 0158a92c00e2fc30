"""Keeps signed metadata fresh: re-signs timestamps before they expire, tells devices,
and drops the files newer versions replaced a while ago.

When the director's `timestamp.json` (shared by the fleet) changed, every device gets
a notice, so an agent that watches does not wait for its own poll to see the new expiry.
Without pruning the store would keep every bin and snapshot ever signed (each deploy to
the whole fleet signs 256 bins).
"""

from __future__ import annotations

import asyncio
import logging
import time

from fleetcast.server.services import Services
from fleetcast.server.signing import DIRECTOR

logger = logging.getLogger(__name__)


def period_s(services: Services) -> float:
    """How often to look: the configured interval, but at least four times per timestamp lifetime."""
    return min(services.config.refresh_interval_s, services.config.signing.timestamp_expiry_s / 4)


def refresh(services: Services) -> list[str]:
    """Re-signs what is due; returns the devices told to look again."""
    before = services.store.get_metadata(DIRECTOR, "timestamp.json")
    services.signer.refresh_timestamps()
    if services.store.get_metadata(DIRECTOR, "timestamp.json") == before:
        return []
    changed = [d.device_id for d in services.store.devices()]
    # Nothing changed for any device but the expiry: one wake-up for the fleet, which
    # spreads its checks over the window its size warrants.
    services.hub.publish_many(services.deployments.current_notices(changed))
    logger.info("director timestamp refreshed devices=%d", len(changed))
    return changed


def prune(services: Services, *, now: float | None = None) -> int:
    """Drops the metadata replaced more than `superseded_keep_s` ago; returns how many files."""
    now = time.time() if now is None else now
    dropped = services.store.prune_metadata(superseded_before=now - services.config.signing.superseded_keep_s)
    if dropped:
        logger.info("superseded metadata pruned files=%d", dropped)
    return dropped


async def run(services: Services) -> None:
    period = period_s(services)
    while True:
        await asyncio.sleep(period)
        try:
            await asyncio.to_thread(refresh, services)
        except Exception:
            logger.exception("timestamp refresh failed; retrying in %.0f s", period)
        try:
            await asyncio.to_thread(prune, services)
        except Exception:   # housekeeping: the next period tries again
            logger.exception("pruning superseded metadata failed; retrying in %.0f s", period)


