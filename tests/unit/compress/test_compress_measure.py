from __future__ import annotations

import numpy as np
import pytest

from fleetcast.server.compress.measure import compare


def logits_for(predictions: list[int], classes: int = 3) -> np.ndarray:
    return np.eye(classes)[predictions]


def test_allowance_grows_with_the_samples_whose_correctness_changed() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    reference = logits_for([0, 1, 2, 0, 1, 2, 0, 2])             # 7 of 8 right
    unchanged = compare(reference, reference, labels)
    # sample 0 turns wrong, sample 7 turns right, sample 2 stays wrong-free: 2 changed
    two_changed = compare(reference, logits_for([1, 1, 2, 0, 1, 2, 0, 1]), labels)
    assert unchanged.allowance_pp == pytest.approx(100 * np.sqrt(2) / 8)
    assert two_changed.score == unchanged.score
    assert two_changed.allowance_pp == pytest.approx(100 * np.sqrt(6) / 8)
    assert two_changed.guarded_score == pytest.approx(two_changed.score - two_changed.allowance_pp)


def test_a_wrong_prediction_changed_to_another_wrong_one_costs_no_allowance_with_labels() -> None:
    labels = np.array([0, 0, 0, 0])
    reference = logits_for([1, 0, 0, 0])
    moved = compare(reference, logits_for([2, 0, 0, 0]), labels)
    assert moved.allowance_pp == pytest.approx(compare(reference, reference, labels).allowance_pp)
    assert moved.agreement_pct == 75.0


def test_without_labels_every_changed_top_1_counts() -> None:
    reference = logits_for([0, 1, 2, 0])
    quality = compare(reference, logits_for([1, 1, 2, 0]), None)
    assert quality.metric == "agreement" and quality.score == 75.0
    assert quality.allowance_pp == pytest.approx(100 * np.sqrt(4) / 4)


def test_cosine_allowance_is_one_standard_error_of_the_mean_cosine() -> None:
    reference = np.array([[1.0], [2.0], [3.0]])[:, :1]            # one output value: not a classifier
    candidate = np.array([[1.0], [-2.0], [3.0]])
    quality = compare(reference, candidate, None)
    cosines = np.array([1.0, -1.0, 1.0])
    assert quality.metric == "cosine"
    assert quality.allowance_pp == pytest.approx(100 * cosines.std(ddof=1) / np.sqrt(3))


def test_a_gain_over_the_original_earns_no_credit_against_the_allowance() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    reference = logits_for([1, 2, 0, 0, 1, 2, 0, 1])             # 5 of 8 right
    # three samples turn right, one turns wrong: +2 samples net, 4 changed
    gained = compare(reference, logits_for([0, 1, 2, 1, 1, 2, 0, 1]), labels)
    assert gained.score == pytest.approx(100 * 7 / 8) and gained.ceiling == pytest.approx(100 * 5 / 8)
    assert gained.allowance_pp == pytest.approx(100 * np.sqrt(10) / 8)
    assert gained.guarded_score == pytest.approx(gained.ceiling - gained.allowance_pp)


def test_a_loss_is_not_capped() -> None:
    labels = np.array([0, 1, 2, 0])
    reference = logits_for([0, 1, 2, 0])
    lost = compare(reference, logits_for([1, 1, 2, 0]), labels)
    assert lost.guarded_score == pytest.approx(75.0 - 100 * np.sqrt(4) / 4)


def test_paired_timing_sessions_do_not_spin_between_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetcast.server.compress import measure
    from tests.unit.compress.builders import DIGITS

    opened: list[str] = []
    original_open = measure.open_session

    def recording_open(model, *, threads, spinning=True):
        session = original_open(model, threads=threads, spinning=spinning)
        opened.append(session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning"))
        return session

    monkeypatch.setattr(measure, "open_session", recording_open)
    model = (DIGITS / "digits.onnx").read_bytes()
    feed = {"input": np.zeros((1, 64), np.float32)}
    config = measure.LatencyConfig(warmup_runs=1, min_runs=2, max_runs=4, min_duration_s=0.0, runs_per_round=1)
    measure.measure_latency_pair_ms(model, model, feed, threads=2, config=config)
    assert opened == ["0", "0"]
