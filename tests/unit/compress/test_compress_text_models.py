"""Every level on two non-classifier models whose samples differ in size: the text
detector (a probability map and its logits) and the CTC recognizer in examples/ocr.
The report's figures are recomputed here from the built files, without Fleetcast's
fidelity code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fleetcast.proto import fcpack
from fleetcast.server.compress.pipeline import CompressConfig, CompressionReport, compress

from tests.unit.compress.builders import FAST_LATENCY, ROOT

pytestmark = pytest.mark.timeout(300)

OCR = ROOT / "examples" / "ocr"
LEVELS = ("lossless", "fp16", "balanced", "fastest", "smallest")


def build(tmp_path_factory: pytest.TempPathFactory, name: str) -> CompressionReport:
    out = tmp_path_factory.mktemp(name) / "variants"
    config = CompressConfig(calibration_dir=OCR / name / "calibration", eval_dir=OCR / name / "eval",
                            latency=FAST_LATENCY)
    return compress(OCR / f"{name}.onnx", out, config)


@pytest.fixture(scope="module")
def detector_report(tmp_path_factory: pytest.TempPathFactory) -> CompressionReport:
    return build(tmp_path_factory, "detector")


@pytest.fixture(scope="module")
def recognizer_report(tmp_path_factory: pytest.TempPathFactory) -> CompressionReport:
    return build(tmp_path_factory, "recognizer")


def held_out(name: str) -> list[np.ndarray]:
    """The odd-numbered evaluation files by name: what the report measures on."""
    files = sorted(p for p in (OCR / name / "eval").glob("*.npy") if p.name != "labels.npy")
    return [np.load(path) for path in files[1::2]]


def run(path: Path, input_name: str, samples: list[np.ndarray]) -> list[list[np.ndarray]]:
    data = path.read_bytes()
    if path.suffix == ".fcpack":
        data = fcpack.decode(data)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return [session.run(None, {input_name: sample}) for sample in samples]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def snr(a: np.ndarray, b: np.ndarray) -> float:
    noise = float(((a.astype(np.float64) - b) ** 2).sum())
    return 200.0 if noise == 0 else min(200.0, 10 * np.log10(float((a.astype(np.float64) ** 2).sum()) / noise))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a > 0.5, b > 0.5).sum()
    return 1.0 if union == 0 else float(np.logical_and(a > 0.5, b > 0.5).sum() / union)


def ctc(log_probs: np.ndarray) -> list[int]:
    best = log_probs.argmax(-1)
    return [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]


def outputs_of(result) -> dict[str, dict]:
    return {output["name"]: output for output in result.outputs}


def test_the_text_models_samples_differ_in_size() -> None:
    assert len({sample.shape for sample in held_out("detector")}) > 5
    assert len({sample.shape for sample in held_out("recognizer")}) > 5


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_builds_on_the_detector_and_its_map_figures_match_an_independent_computation(
        detector_report: CompressionReport, level: str) -> None:
    result = next(r for r in detector_report.levels if r.level == level)
    assert result.error is None and result.path is not None
    samples = held_out("detector")
    reference = run(OCR / "detector.onnx", "image", samples)
    built = run(result.path, "image", samples)
    outputs = outputs_of(result)
    assert outputs["probability"]["kind"] == "mask" and outputs["logits"]["kind"] == "tensor"
    ious = [iou(r[0], b[0]) for r, b in zip(reference, built)]
    assert outputs["probability"]["figure_pct"] == pytest.approx(100 * np.mean(ious), abs=1e-3)
    for index, name in enumerate(("probability", "logits")):
        assert outputs[name]["cosine"] == pytest.approx(np.mean([cosine(r[index], b[index])
                                                                 for r, b in zip(reference, built)]), abs=1e-6)
        assert outputs[name]["snr_db"] == pytest.approx(np.mean([snr(r[index], b[index])
                                                                 for r, b in zip(reference, built)]), abs=1e-2)
    # the budget is judged on the worst output: the mask IoU or the logits' cosine
    logits_cosine = 100 * np.mean([cosine(r[1], b[1]) for r, b in zip(reference, built)])
    assert result.score == pytest.approx(min(100 * np.mean(ious), logits_cosine), abs=1e-3)
    assert result.metric == ("mask_iou" if 100 * np.mean(ious) <= logits_cosine else "cosine")
    assert result.within_budget == (result.drop_pp <= 1.0 + 1e-9)


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_builds_on_the_recognizer_and_its_sequence_figures_match_an_independent_computation(
        recognizer_report: CompressionReport, level: str) -> None:
    result = next(r for r in recognizer_report.levels if r.level == level)
    assert result.error is None and result.path is not None
    samples = held_out("recognizer")
    reference = [r[0][0] for r in run(OCR / "recognizer.onnx", "line", samples)]
    built = [b[0][0] for b in run(result.path, "line", samples)]
    output = outputs_of(result)["log_probs"]
    assert output["kind"] == "sequence"
    same_text = [ctc(r) == ctc(b) for r, b in zip(reference, built)]
    assert output["figure_pct"] == pytest.approx(100 * np.mean(same_text), abs=1e-3)
    assert output["cosine"] == pytest.approx(np.mean([cosine(r, b) for r, b in zip(reference, built)]), abs=1e-6)
    # 24 validation lines cannot resolve a 1-point budget by whole-line agreement:
    # judged by the share of time steps whose top class is unchanged
    steps = [float((r.argmax(-1) == b.argmax(-1)).mean()) for r, b in zip(reference, built)]
    assert result.metric == "step_agreement"
    assert result.score == pytest.approx(100 * np.mean(steps), abs=1e-3)


def test_entropy_and_percentile_calibration_cope_with_samples_of_different_sizes(
        detector_report: CompressionReport, recognizer_report: CompressionReport) -> None:
    for report in (detector_report, recognizer_report):
        balanced = next(r for r in report.levels if r.level == "balanced")
        assert set(balanced.recipe["method_scores"]) == {"minmax", "entropy", "percentile"}
        assert any("differ in shape" in note for note in report.notes)


def test_the_recognizer_note_says_the_samples_cannot_resolve_the_budget_and_what_judges_instead(
        recognizer_report: CompressionReport) -> None:
    note = next(n for n in recognizer_report.notes if "cannot resolve" in n)
    assert "24 samples" in note and "at least 200" in note and "time steps" in note


def test_the_report_recommends_a_measured_level_for_this_machine_only(detector_report: CompressionReport) -> None:
    advice = detector_report.recommendations
    here = detector_report.machine["hardware_class"]
    assert advice[here]["measured"] is True
    candidates = [r for r in detector_report.levels
                  if r.within_budget and r.latency_ratio is not None and r.latency_ratio <= 1.05]
    expected = min(candidates, key=lambda r: r.latency_ratio).level if candidates else "original"
    assert advice[here]["level"] == expected
    assert all(entry["measured"] is False for name, entry in advice.items() if name != here)
    slow = [r.level for r in detector_report.levels if r.latency_ratio > 1.05]
    for level in slow:
        assert any(note.startswith(f"{level} is slower than the original") for note in detector_report.notes)
