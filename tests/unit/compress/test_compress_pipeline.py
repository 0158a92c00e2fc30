from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fleetcast.server.compress import package
from fleetcast.server.compress.errors import OutputDirError, SampleError
from fleetcast.server.compress.measure import open_session
from fleetcast.server.compress.pipeline import CompressConfig, CompressionReport, compress
from fleetcast.server.compress.recipes import SLOWER_TOLERANCE

from tests.unit.compress.builders import DIGITS, FAST_LATENCY, strided_stem_model

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory: pytest.TempPathFactory) -> CompressionReport:
    out = tmp_path_factory.mktemp("digits") / "variants"
    config = CompressConfig(calibration_dir=DIGITS / "calibration", eval_dir=DIGITS / "eval", latency=FAST_LATENCY)
    return compress(DIGITS / "digits.onnx", out, config)


def by_level(report: CompressionReport) -> dict:
    return {result.level: result for result in report.levels}


def digits_accuracy(model_bytes: bytes, rows: slice = slice(None)) -> float:
    test = np.load(DIGITS / "test.npz")   # the eval directory's samples, in file-name order
    probabilities = open_session(model_bytes, threads=1).run(None, {"input": test["x"][rows]})[0]
    return 100.0 * float((probabilities.argmax(1) == test["y"][rows]).mean())


HELD_OUT = slice(1, None, 2)              # the odd-numbered evaluation files


def test_every_level_is_built_from_the_digits_model(digits_report: CompressionReport) -> None:
    results = by_level(digits_report)
    assert list(results) == ["lossless", "fp16", "balanced", "fastest", "smallest"]
    assert all(r.error is None and r.path.is_file() for r in results.values())
    assert results["smallest"].format == "fcpack" and results["smallest"].path.suffix == ".fcpack"


def test_reported_accuracy_is_the_real_accuracy_on_the_held_out_part(digits_report: CompressionReport) -> None:
    for result in by_level(digits_report).values():
        data = result.path.read_bytes()
        runnable = package.decode(data) if result.format == "fcpack" else data
        assert result.accuracy_pct == pytest.approx(digits_accuracy(runnable, HELD_OUT))
    original = (DIGITS / "digits.onnx").read_bytes()
    assert digits_report.original.accuracy_pct == pytest.approx(digits_accuracy(original, HELD_OUT))
    assert "270 held-out labelled samples" in digits_report.quality_data
    assert any("270 held-out samples" in note for note in digits_report.notes)


def test_searches_score_only_the_validation_part_and_the_report_only_the_held_out_part(tmp_path: Path) -> None:
    # The even-numbered (validation) files get wrong labels: a search that scored them
    # sees about 0 % accuracy; the held-out files keep theirs, so the report sees ~98 %.
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    for path in sorted((DIGITS / "eval").glob("0*.npy")):
        (evaluation / path.name).write_bytes(path.read_bytes())
    labels = np.load(DIGITS / "eval" / "labels.npy")
    labels[0::2] = (labels[0::2] + 1) % 10
    np.save(evaluation / "labels.npy", labels)
    config = CompressConfig(levels=("fastest",), calibration_dir=DIGITS / "calibration", eval_dir=evaluation,
                            latency=FAST_LATENCY, calibration_methods=("minmax",))
    report = compress(DIGITS / "digits.onnx", tmp_path / "out", config)
    fastest = report.levels[0]
    assert fastest.recipe["method_scores"]["minmax"] < 10.0
    assert fastest.accuracy_pct == pytest.approx(digits_accuracy(fastest.path.read_bytes(), HELD_OUT))
    assert fastest.accuracy_pct > 90.0 and report.original.accuracy_pct > 90.0


def test_lossless_keeps_the_original_outputs(digits_report: CompressionReport) -> None:
    lossless = by_level(digits_report)["lossless"]
    assert lossless.drop_pp == 0.0 and lossless.cosine == pytest.approx(1.0, abs=1e-9)


def test_budgeted_levels_meet_the_budget_with_a_margin_on_validation_and_report_the_held_out_drop(
        digits_report: CompressionReport) -> None:
    for level in ("balanced", "smallest"):
        result = by_level(digits_report)[level]
        recipe = result.recipe
        assert recipe["validation_allowance_pp"] > 0
        assert recipe["searched_within_pp"] == pytest.approx(max(recipe["validation_drop_pp"], 0.0)
                                                             + recipe["validation_allowance_pp"], abs=2e-3)
        assert recipe["searched_within_pp"] <= digits_report.budget_pp
        assert result.within_budget == (result.drop_pp <= digits_report.budget_pp + 1e-9)
        assert result.drop_pp == pytest.approx(digits_report.original.accuracy_pct - result.accuracy_pct)


def test_levels_shrink_the_model_in_the_expected_order(digits_report: CompressionReport) -> None:
    r = by_level(digits_report)
    assert r["fp16"].size_bytes < 0.6 * r["lossless"].size_bytes
    assert r["balanced"].size_bytes < r["fp16"].size_bytes
    assert r["smallest"].packed_bytes < r["balanced"].packed_bytes


def test_int8_levels_are_qdq_in_the_activation_type_timed_faster_with_int8_weights(
        digits_report: CompressionReport) -> None:
    for level in ("balanced", "fastest"):
        recipe = by_level(digits_report)[level].recipe
        timings = recipe["activation_latency_ms"]
        faster = "int8" if timings["int8"] * SLOWER_TOLERANCE < timings["uint8"] else "uint8"
        assert recipe["activation_type"] == faster
        model = onnx.load(str(by_level(digits_report)[level].path))
        zero_point_types = {t.data_type for t in model.graph.initializer if t.name.endswith("zero_point")}
        zero_point_types.discard(onnx.TensorProto.INT32)            # biases
        expected = {onnx.TensorProto.INT8} | ({onnx.TensorProto.UINT8} if faster == "uint8" else set())
        assert zero_point_types == expected
        assert "DequantizeLinear" in {n.op_type for n in model.graph.node}


def test_report_files_are_written_beside_the_variants(digits_report: CompressionReport) -> None:
    out = by_level(digits_report)["lossless"].path.parent
    document = json.loads((out / "report.json").read_text())
    assert [level["level"] for level in document["levels"]] == [r.level for r in digits_report.levels]
    assert document == json.loads(json.dumps(digits_report.to_json() | {"levels": document["levels"],
                                                                        "original": document["original"]}))
    markdown = (out / "report.md").read_text()
    assert all(f"| {r.level} |" in markdown for r in digits_report.levels)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob(".variants.partial-*"))


def test_without_calibration_only_data_free_levels_are_built_and_the_report_says_why(
        tmp_path: Path, conv_model_file, image_dir) -> None:
    config = CompressConfig(eval_dir=image_dir("eval", 8), latency=FAST_LATENCY)
    report = compress(conv_model_file(opset=11, weights_in_constants=True), tmp_path / "out", config)
    results = by_level(report)
    assert results["lossless"].error is None and results["fp16"].error is None
    for level in ("balanced", "fastest", "smallest"):
        assert results[level].path is None and "--calibration" in results[level].error
    assert any("data-free" in note for note in report.notes)
    # 4 validation samples cannot resolve a 1-point budget by top-1 agreement: judged by cosine
    assert results["lossless"].metric == "cosine" and results["lossless"].drop_pp == 0.0
    assert results["lossless"].agreement_pct == 100.0
    assert any("cannot resolve a 1-point budget by top-1 agreement" in note and "at least 200" in note
               for note in report.notes)


def test_conv_model_is_quantized_with_calibration_from_an_old_opset_export(
        tmp_path: Path, conv_model_file, image_dir) -> None:
    config = CompressConfig(levels=("fastest",), calibration_dir=image_dir("cal", 8), latency=FAST_LATENCY,
                            calibration_methods=("minmax",))
    report = compress(conv_model_file(opset=11, weights_in_constants=True), tmp_path / "out", config)
    fastest = report.levels[0]
    assert fastest.error is None
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(fastest.path)).graph.node}
    assert fastest.cosine > 0.9


def test_int8_levels_use_space_to_depth_only_when_the_rewritten_model_is_timed_faster(
        tmp_path: Path, image_dir) -> None:
    path = tmp_path / "stem.onnx"
    onnx.save(strided_stem_model(), str(path))                       # a 7x7 stride-2 stem over 3 channels
    config = CompressConfig(levels=("balanced", "fastest"), calibration_dir=image_dir("cal", 8, shape=(1, 3, 16, 16)),
                            latency=FAST_LATENCY, calibration_methods=("minmax",))
    report = compress(path, tmp_path / "out", config)
    for result in report.levels:
        timings = result.recipe["layout_latency_ms"]
        faster = timings["ratio"] * SLOWER_TOLERANCE < 1.0
        in_int8 = "stem" not in result.recipe["float_layers"]   # in float the plain form is kept
        assert result.recipe["space_to_depth"] == (["stem"] if faster and in_int8 else [])
        ops = {node.op_type for node in onnx.load(str(result.path)).graph.node}
        assert ("SpaceToDepth" in ops) == bool(result.recipe["space_to_depth"]) and "QuantizeLinear" in ops
        assert result.cosine > 0.9


def test_mismatched_calibration_leaves_nothing_behind(tmp_path: Path, conv_model_file, image_dir) -> None:
    config = CompressConfig(calibration_dir=image_dir("cal", 2, shape=(1, 3, 9, 9)))
    with pytest.raises(SampleError):
        compress(conv_model_file(), tmp_path / "out", config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal", "conv-0.onnx"]


def test_non_empty_output_directory_is_refused(tmp_path: Path, conv_model_file) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty"):
        compress(conv_model_file(), tmp_path / "out", CompressConfig())
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_smallest_both_shares_and_prunes_the_digits_layers_within_the_budget(digits_report: CompressionReport) -> None:
    recipe = by_level(digits_report)["smallest"].recipe
    # with the gain cap, pruning against half the budget could prune nothing on 270 samples
    assert any(sparsity > 0 for sparsity in recipe["sparsity"].values())
    assert all(entries is not None and entries <= 16 for entries in recipe["codebook_entries"].values())
    assert recipe["searched_within_pp"] <= digits_report.budget_pp


def test_balanced_float_layers_keep_one_weight_form(digits_report: CompressionReport) -> None:
    recipe = by_level(digits_report)["balanced"].recipe
    assert recipe["float_layer_weights"] in ("int8", "float32")
    assert recipe["budget_met"] is True and recipe["quantized_layers"] + len(recipe["float_layers"]) == 3
