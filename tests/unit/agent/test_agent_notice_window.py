"""A notice's check window: the agent checks at a moment of its own within it."""

from __future__ import annotations

import random
import time
from pathlib import Path

from fleetcast.agent.config import AgentConfig
from fleetcast.agent.service import Agent


def _agent(tmp_path: Path, seed: int) -> Agent:
    agent = Agent(AgentConfig(server="127.0.0.1:9", data_dir=tmp_path / "data", device_id="dev-1",
                              hardware_class="x86-cpu", trust_root=tmp_path / "trust-root.json"))
    agent.rng.seed(seed)
    return agent


def test_a_notice_without_a_window_wakes_the_check_at_once(tmp_path: Path) -> None:
    agent = _agent(tmp_path, seed=1)
    agent._notice("dep-1", 0.0)
    assert agent.wake.is_set()


def test_a_notice_with_a_window_wakes_the_check_at_the_devices_own_moment_within_it(tmp_path: Path) -> None:
    seed = next(s for s in range(100) if random.Random(s).uniform(0.0, 1.0) > 0.5)
    moment_s = random.Random(seed).uniform(0.0, 1.0)
    agent = _agent(tmp_path, seed=seed)
    start = time.monotonic()
    agent._notice("dep-1", 1.0)
    assert not agent.wake.is_set()
    assert agent.wake.wait(timeout=moment_s + 2.0)
    assert time.monotonic() - start >= moment_s - 0.05
