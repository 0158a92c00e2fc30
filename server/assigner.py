"""Signs the directors of new deployments in the background and tells each device.

`Deployments.create` only records the deployment; this loop signs the devices'
director entries a batch at a time (`Deployments.sign_pending`: one publish of the
shared director's bins per batch, ADR 0008), so a deploy to ten thousand devices
returns at once and each device hears of its assignment as soon as it is signed. It wakes when a deployment is created and also looks
every `period_s`, so rows left unsigned by a stop are signed after the next start.
"""

from __future__ import annotations

import asyncio
import logging

from fleetcast.server.deployments import Deployments

logger = logging.getLogger(__name__)

BATCH_DEVICES = 10_000   # one director publish signs a whole batch (every bin at most once)


def drain(deployments: Deployments) -> int:
    """Signs every pending row now; returns how many (also for tests and tools)."""
    total = 0
    while (n := deployments.sign_pending(limit=BATCH_DEVICES)) > 0:
        total += n
    return total


async def run(deployments: Deployments, *, period_s: float = 5.0, settle_s: float = 0.05) -> None:
    """Signs pending rows whenever woken (and every `period_s`). After a wake-up it waits
    `settle_s` first, so the deploy call that woke it answers before signing takes the CPU."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    deployments.on_created = lambda: loop.call_soon_threadsafe(wake.set)
    try:
        while True:
            wake.clear()
            await asyncio.sleep(settle_s)
            try:
                signed = await asyncio.to_thread(drain, deployments)
                if signed:
                    logger.info("director assignments signed devices=%d", signed)
            except Exception:
                logger.exception("signing assignments failed; retrying in %.0f s", period_s)
            try:
                await asyncio.wait_for(wake.wait(), period_s)
            except TimeoutError:
                pass
    finally:
        deployments.on_created = lambda: None
