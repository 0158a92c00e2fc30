"""Replays every fuzzing seed and every input that once crashed a parser (fuzz/regressions/)
through its harness, without atheris: each must end normally or in a documented error."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fuzz import HARNESSES

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


def inputs() -> list[tuple[str, Path]]:
    found = []
    for name in HARNESSES:
        for folder in (FUZZ / "corpus" / name, FUZZ / "regressions" / name):
            found += [(name, p) for p in sorted(folder.glob("*")) if p.is_file()]
    return found


def test_every_harness_has_seeds() -> None:
    with_seeds = {name for name, path in inputs() if path.parent.parent.name == "corpus"}
    assert with_seeds == set(HARNESSES)


@pytest.mark.parametrize(("name", "path"), inputs(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_harness_input_ends_in_a_documented_error_or_none(name: str, path: Path) -> None:
    harness = importlib.import_module(f"fuzz.fuzz_{name}")
    harness.test_one_input(path.read_bytes())
