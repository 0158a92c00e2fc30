"""User errors: one clear message, a non-zero exit, nothing written, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleetcast.sdk.console import main as fleetcast

from tests.support import models
from tests.unit.compress.builders import DIGITS, ROOT

pytestmark = pytest.mark.timeout(120)

OCR = ROOT / "examples" / "ocr"


def only_message(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("fleetcast compress:")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def valid_conv_model(path: Path) -> Path:
    """A 5x5 convolution without padding over [N, 1, H, W]: images under 5x5 cannot run."""
    weight = numpy_helper.from_array(np.ones((2, 1, 5, 5), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "valid",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "h", "w"])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def compress(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = fleetcast(["compress", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("role", ["--calibration", "--eval"])
def test_a_sample_file_instead_of_a_directory_is_named_as_such(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str) -> None:
    one = next(p for p in (DIGITS / "calibration").iterdir())
    code, err = compress(tmp_path, capsys, str(DIGITS / "digits.onnx"), "--out", str(tmp_path / "out"),
                         role, str(one))
    assert code == 2 and "is a file, not a directory" in only_message(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("role", ["--calibration", "--eval"])
def test_a_sample_path_that_does_not_exist_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    role: str) -> None:
    code, err = compress(tmp_path, capsys, str(DIGITS / "digits.onnx"), "--out", str(tmp_path / "out"),
                         role, str(tmp_path / "missing"))
    message = only_message(err)
    assert code == 2 and "does not exist" in message and str(tmp_path / "missing") in message
    assert not (tmp_path / "out").exists()


def test_a_missing_model_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = compress(tmp_path, capsys, str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "out"))
    assert code == 2 and "does not exist" in only_message(err)


def test_out_that_is_a_file_is_refused_and_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.write_text("keep me")
    code, err = compress(tmp_path, capsys, str(DIGITS / "digits.onnx"), "--out", str(out), "--levels", "lossless")
    assert code == 2 and "is a file" in only_message(err)
    assert out.read_text() == "keep me"


def test_levels_that_all_need_calibration_without_it_exit_non_zero_before_writing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = compress(tmp_path, capsys, str(DIGITS / "digits.onnx"), "--out", str(tmp_path / "out"),
                         "--levels", "balanced")
    message = only_message(err)
    assert code == 2 and "needs calibration samples" in message and "--calibration DIR" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag, value, words", [
    ("--time-limit", "0", "time limit must be > 0"),
    ("--budget", "-1", "budget must be >= 0"),
    ("--threads", "0", "threads must be >= 1"),
])
def test_bad_numbers_are_refused_with_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  flag: str, value: str, words: str) -> None:
    code, err = compress(tmp_path, capsys, str(DIGITS / "digits.onnx"), "--out", str(tmp_path / "out"),
                         flag, value)
    assert code == 2 and words in only_message(err)


@pytest.mark.parametrize("role", ["--calibration", "--eval"])
def test_samples_too_small_for_the_model_are_named_with_their_shape(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str) -> None:
    model = valid_conv_model(tmp_path / "valid.onnx")
    samples = tmp_path / "samples"
    samples.mkdir()
    np.save(samples / "a.npy", np.ones((1, 1, 8, 8), np.float32))
    np.save(samples / "b.npy", np.ones((1, 1, 3, 9), np.float32))     # 3 rows: under the 5x5 kernel
    code, err = compress(tmp_path, capsys, str(model), "--out", str(tmp_path / "out"), "--levels", "lossless,fastest",
                         role, str(samples))
    message = only_message(err)
    assert code == 2 and "sample b.npy" in message and "[1, 1, 3, 9]" in message and "does not run" in message
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples", "valid.onnx"]


@pytest.mark.parametrize("spec, words", [
    ("nocolon", "is not module:function"),
    ("missing_module_xyz:f", "cannot be imported"),
    (f"{OCR / 'metrics.py'}:no_such_function", "has no function"),
])
def test_a_metric_that_cannot_be_loaded_is_refused_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, words: str) -> None:
    code, err = compress(tmp_path, capsys, str(DIGITS / "digits.onnx"), "--out", str(tmp_path / "out"),
                         "--metric", spec)
    assert code == 2 and words in only_message(err)
    assert not (tmp_path / "out").exists()


def test_a_model_that_needs_real_sizes_without_samples_asks_for_samples(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = valid_conv_model(tmp_path / "valid.onnx")
    code, err = compress(tmp_path, capsys, str(model), "--out", str(tmp_path / "out"), "--levels", "lossless")
    message = only_message(err)
    assert code == 2 and "generated inputs" in message and "--calibration DIR or --eval DIR" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["valid.onnx"]


def test_an_evaluation_sample_the_searches_would_see_first_is_named_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = valid_conv_model(tmp_path / "valid.onnx")
    samples = tmp_path / "samples"
    samples.mkdir()
    np.save(samples / "a.npy", np.ones((1, 1, 3, 3), np.float32))     # even-numbered: the searches' half
    np.save(samples / "b.npy", np.ones((1, 1, 8, 8), np.float32))
    code, err = compress(tmp_path, capsys, str(model), "--out", str(tmp_path / "out"), "--levels", "lossless",
                         "--eval", str(samples))
    assert code == 2 and "evaluation sample a.npy" in only_message(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples", "valid.onnx"]


def test_when_every_requested_level_fails_to_build_the_run_exits_1_with_one_message_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An attention-style mask of -inf runs in float, but INT8 has no scale for it.
    model = models.write(models.masked_classifier(), tmp_path / "masked.onnx")
    samples = tmp_path / "samples"
    samples.mkdir()
    for index in range(4):
        np.save(samples / f"{index}.npy", models.sample_input(seed=index))
    code = fleetcast(["compress", str(model), "--out", str(tmp_path / "new" / "variants"),
                      "--levels", "balanced,fastest", "--calibration", str(samples), "--json"])
    captured = capsys.readouterr()
    message = only_message(captured.err)
    assert code == 1
    assert "none of the requested levels could be built, so nothing was written" in message
    assert "balanced, fastest: initializer(s) 'mask' hold infinite or NaN values" in message
    assert "-1e4" in message and "(lossless, fp16)" in message
    assert "[2/2] fastest: timing" not in captured.err        # the failure is not measured twice
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masked.onnx", "samples"]   # not even new/


def test_a_held_out_half_too_small_for_the_budget_is_noted_with_the_count_needed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 39 labelled samples and a 10-point budget (20 needed): the 20 searched resolve it, the 19 held out do not.
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    for path in sorted((DIGITS / "eval").glob("0*.npy"))[:39]:
        (evaluation / path.name).write_bytes(path.read_bytes())
    np.save(evaluation / "labels.npy", np.load(DIGITS / "eval" / "labels.npy")[:39])
    code = fleetcast(["compress", str(DIGITS / "digits.onnx"), "--out", str(tmp_path / "out"), "--levels", "lossless",
                      "--eval", str(evaluation), "--budget", "10", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    note = ("note: too few evaluation samples to resolve a 10 point budget: one held-out sample moves a figure by "
            "5.26 points; give at least 20 evaluation samples")
    assert note in captured.err.splitlines()
    assert note.removeprefix("note: ") in json.loads(captured.out)["notes"]
