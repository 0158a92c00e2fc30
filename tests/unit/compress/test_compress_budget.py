"""Small sample sets judged by a continuous figure, searches bounded by --time-limit,
and a user's task metric."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fleetcast.sdk.console import main as fleetcast
from fleetcast.server.compress.pipeline import CompressConfig, compress

from tests.unit.compress.builders import DIGITS, FAST_LATENCY, ROOT

pytestmark = pytest.mark.timeout(240)

OCR = ROOT / "examples" / "ocr"


def session(data: bytes | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def sixteen_samples(tmp_path: Path) -> Path:
    directory = tmp_path / "cal16"
    directory.mkdir()
    for path in sorted((DIGITS / "calibration").glob("*.npy"))[:16]:
        shutil.copy(path, directory / path.name)
    return directory


def test_sixteen_samples_without_eval_are_judged_by_cosine_so_balanced_keeps_full_int8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calibration = sixteen_samples(tmp_path)
    out = tmp_path / "out"
    code = fleetcast(["compress", str(DIGITS / "digits.onnx"), "--out", str(out), "--levels", "balanced",
                      "--calibration", str(calibration), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    err_lines = captured.err.splitlines()
    note_at = next(i for i, line in enumerate(err_lines) if line.startswith("note: 16 samples cannot resolve"))
    assert "at least 200 are needed" in err_lines[note_at] and "cosine" in err_lines[note_at]
    assert note_at < next(i for i, line in enumerate(err_lines) if line.startswith("[1/1] balanced"))
    balanced = json.loads(captured.out)["levels"][0]
    assert balanced["metric"] == "cosine" and balanced["recipe"]["float_layers"] == []
    # the reported cosine, recomputed from the files on the same 16 samples
    samples = [np.load(p) for p in sorted(calibration.glob("*.npy"))]
    original, built = session(str(DIGITS / "digits.onnx")), session(str(out / "balanced.onnx"))
    cosines = []
    for sample in samples:
        a = original.run(None, {"input": sample})[0].ravel().astype(np.float64)
        b = built.run(None, {"input": sample})[0].ravel().astype(np.float64)
        cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert balanced["cosine"] == pytest.approx(np.mean(cosines), abs=1e-6)
    assert balanced["score"] == pytest.approx(100 * np.mean(cosines), abs=1e-4)


def test_a_spent_time_limit_keeps_the_best_choice_so_far_and_the_report_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = CompressConfig(levels=("balanced", "smallest"), calibration_dir=DIGITS / "calibration",
                            eval_dir=DIGITS / "eval", budget_pp=0.0, time_limit_s=0.001, latency=FAST_LATENCY)
    messages: list[str] = []
    report = compress(DIGITS / "digits.onnx", tmp_path / "out", config, messages.append)
    balanced, smallest = report.levels
    assert balanced.error is None and smallest.error is None
    assert balanced.recipe["time_limit_reached"] is True and len(balanced.recipe["method_scores"]) == 1
    assert balanced.recipe["float_layers"] == []                 # the only set measured before the limit
    assert smallest.recipe["time_limit_reached"] is True
    assert set(smallest.recipe["codebook_entries"].values()) == {None}   # no layer decided: all kept safe
    note = next(n for n in report.notes if "time limit" in n)
    assert "0.001 s, --time-limit" in note and "balanced layer search" in note and "best choice" in note
    assert any(m.startswith("[1/2] balanced:") and m.endswith("s of search time left)") for m in messages)


def test_a_user_metric_scores_every_level_on_the_held_out_outputs_and_labels(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = fleetcast(["compress", str(OCR / "recognizer.onnx"), "--out", str(out), "--levels", "lossless,fastest",
                      "--calibration", str(OCR / "recognizer" / "calibration"),
                      "--eval", str(OCR / "recognizer" / "eval"),
                      "--metric", f"{OCR / 'metrics.py'}:line_accuracy", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    files = sorted(p for p in (OCR / "recognizer" / "eval").glob("*.npy") if p.name != "labels.npy")[1::2]
    labels = np.load(OCR / "recognizer" / "eval" / "labels.npy")[1::2]
    truth = [[int(d) for d in row if d >= 0] for row in labels]

    def line_accuracy(model: str) -> float:
        run = session(model)
        read = []
        for path in files:
            best = run.run(None, {"line": np.load(path)})[0][0].argmax(-1)
            read.append([int(c) - 1 for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])])
        return 100.0 * float(np.mean([a == b for a, b in zip(read, truth)]))

    assert report["original"]["metric"].startswith("metric:") and report["original"]["metric"].endswith(
        "metrics.py:line_accuracy")
    assert report["original"]["score"] == pytest.approx(line_accuracy(str(OCR / "recognizer.onnx")))
    fastest = report["levels"][1]
    assert fastest["score"] == pytest.approx(line_accuracy(str(out / "fastest.onnx")))
    assert fastest["drop_pp"] == pytest.approx(report["original"]["score"] - fastest["score"])
