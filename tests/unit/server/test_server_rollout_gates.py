from __future__ import annotations

import pytest

from fleetcast.proto import telemetry as buckets
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.fleetview import Figures
from fleetcast.server.rollouts.gates import Evidence, decide, evaluate, evaluate_all, parse_gate, parse_gates


def _figures(latency_ms: float, n: int, *, errors: int = 0, devices: int = 1) -> Figures:
    histogram = buckets.empty()
    histogram[buckets.bucket_of(latency_ms)] = n
    return Figures(inferences=n, errors=errors, latency_sum_ms=latency_ms * n, histogram=tuple(histogram),
                   devices=devices)


def _evidence(canary: Figures | None, control: Figures | None, *, control_devices: int = 1, devices: int = 1,
              serving: int = 1, trial_rollbacks: int = 0) -> Evidence:
    return Evidence(cohort="rk3399/onnxruntime/int8", devices=devices, serving=serving,
                    trial_rollbacks=trial_rollbacks, canary=canary, control=control, control_devices=control_devices)


def test_gate_texts_parse_and_print_back() -> None:
    assert parse_gate("latency_p95 <= 1.2x control").text() == "latency_p95 <= 1.2x control"
    assert parse_gate("error_rate<=0.01").text() == "error_rate <= 0.01"
    assert parse_gate("latency_p50 <= 40ms").relative is False
    assert len(parse_gates([])) == 4     # the defaults


@pytest.mark.parametrize("text, problem", [
    ("latency_p95 >= 1.2x control", "checked with <="), ("speed <= 1", "not known"),
    ("serving >= 2", "fraction"), ("serving >= 0.9x control", "compare"), ("error_rate <= 3ms", "milliseconds"),
    ("latency_p95 <=", "METRIC OP THRESHOLD")])
def test_gates_that_cannot_be_checked_are_refused_naming_why(text: str, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        parse_gate(text)


def test_a_slower_canary_fails_the_ratio_and_shows_both_sides() -> None:
    check = parse_gate("latency_p95 <= 1.2x control")
    result = evaluate(check, _evidence(_figures(13.0, 500), _figures(10.0, 500)), min_inferences=100, min_devices=1)
    assert result.verdict == "fail"
    assert result.value is not None and result.value > 1.2 and result.control is not None
    ok = evaluate(check, _evidence(_figures(10.0, 500), _figures(10.0, 500)), min_inferences=100, min_devices=1)
    assert ok.verdict == "pass" and ok.inferences == 500


def test_too_few_inferences_on_either_side_is_no_data_never_a_pass() -> None:
    check = parse_gate("latency_p95 <= 1.2x control")
    assert evaluate(check, _evidence(_figures(10.0, 20), _figures(10.0, 500)), min_inferences=100,
                    min_devices=1).verdict == "no_data"
    assert evaluate(check, _evidence(_figures(10.0, 500), None), min_inferences=100,
                    min_devices=1).verdict == "no_data"
    assert evaluate(check, _evidence(None, None), min_inferences=100, min_devices=1).verdict == "no_data"
    results = evaluate_all(parse_gates(["error_rate <= 0.01"]), [_evidence(None, None)], min_inferences=1,
                           min_devices=1)
    assert decide(results, soak_over=True) == "no_data"
    assert decide(results, soak_over=False) == "wait"


def test_without_control_devices_a_ratio_check_steps_aside_and_absolute_checks_still_decide() -> None:
    found = _evidence(_figures(10.0, 500, errors=50), None, control_devices=0)
    results = evaluate_all(parse_gates(["latency_p95 <= 1.2x control", "error_rate <= 0.01"]), [found],
                           min_inferences=100, min_devices=1)
    assert [r.verdict for r in results] == ["no_control", "fail"]
    assert decide(results, soak_over=False) == "fail"     # a breach decides mid-soak


def test_serving_and_trial_rollbacks_count_the_stage_devices() -> None:
    found = _evidence(None, None, devices=10, serving=8, trial_rollbacks=2)
    serving, rollbacks = evaluate_all(parse_gates(["serving >= 0.9", "trial_rollbacks <= 0.1"]), [found],
                                      min_inferences=0, min_devices=1)
    assert (serving.verdict, serving.value) == ("fail", 0.8)
    assert (rollbacks.verdict, rollbacks.value) == ("fail", 0.2)
