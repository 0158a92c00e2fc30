from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetcast.sdk.console import main as fleetcast

from tests.unit.compress.builders import DIGITS

pytestmark = pytest.mark.timeout(240)


def test_compress_command_writes_variants_and_shows_progress_by_step_and_layer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "variants"
    code = fleetcast(["compress", str(DIGITS / "digits.onnx"), "--out", str(out), "--levels", "lossless,smallest",
                      "--calibration", str(DIGITS / "calibration"), "--eval", str(DIGITS / "eval"), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    report = json.loads(captured.out)
    assert [level["level"] for level in report["levels"]] == ["lossless", "smallest"]
    assert sorted(p.name for p in out.iterdir()) == ["lossless.onnx", "report.json", "report.md", "report.png",
                                                     "smallest.fcpack"]
    assert "[2/2] smallest: pruning" in captured.err and "layer fc" in captured.err


def test_a_file_that_is_not_onnx_exits_non_zero_with_one_message_and_no_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_text("hello")
    code = fleetcast(["compress", str(bogus), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("fleetcast compress:")] == [
        next(line for line in err.splitlines() if "not an ONNX model" in line)]
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_calibration_arrays_named_wrongly_exit_non_zero_naming_the_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    calibration = tmp_path / "cal"
    calibration.mkdir()
    np.savez(calibration / "0.npz", pixels=np.zeros((1, 64), np.float32))
    code = fleetcast(["compress", str(DIGITS / "digits.onnx"), "--out", str(tmp_path / "out"),
                      "--calibration", str(calibration)])
    assert code == 2
    assert "'input'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_level_exits_non_zero_listing_the_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = fleetcast(["compress", str(DIGITS / "digits.onnx"), "--out", str(tmp_path / "out"), "--levels", "turbo"])
    assert code == 2 and "choose from lossless" in capsys.readouterr().err
