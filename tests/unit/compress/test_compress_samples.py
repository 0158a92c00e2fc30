from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetcast.server.compress.errors import SampleError
from fleetcast.server.compress.samples import InputSpec, input_specs, load_samples

from tests.unit.compress.builders import conv_model

SPECS = input_specs(conv_model())


def test_input_specs_list_real_inputs_with_free_batch() -> None:
    (spec,) = SPECS
    assert spec.name == "image" and spec.dtype == np.float32 and spec.shape == ("N", 3, 8, 8)


def test_npy_samples_load_in_name_order_and_gain_a_batch_axis(tmp_path: Path) -> None:
    arrays = [np.full((3, 8, 8), i, np.float32) for i in range(3)]
    for i, array in reversed(list(enumerate(arrays))):
        np.save(tmp_path / f"s{i}.npy", array)
    samples = load_samples(tmp_path, SPECS, role="calibration")
    assert [feed["image"].shape for feed in samples.feeds] == [(1, 3, 8, 8)] * 3
    assert [float(feed["image"][0, 0, 0, 0]) for feed in samples.feeds] == [0.0, 1.0, 2.0]
    assert samples.labels is None


def test_npz_samples_and_labels_load(tmp_path: Path) -> None:
    for i in range(4):
        np.savez(tmp_path / f"{i}.npz", image=np.zeros((1, 3, 8, 8), np.float64))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 3]))
    samples = load_samples(tmp_path, SPECS, role="evaluation")
    assert samples.feeds[0]["image"].dtype == np.float32
    assert samples.labels.tolist() == [0, 1, 2, 3]


def test_empty_directory_is_refused_with_what_to_put_there(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="holds no .npz or .npy samples"):
        load_samples(tmp_path, SPECS, role="calibration")


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="does not exist"):
        load_samples(tmp_path / "nope", SPECS, role="calibration")


def test_array_named_after_no_input_is_refused_naming_both(tmp_path: Path) -> None:
    np.savez(tmp_path / "0.npz", pixels=np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(SampleError, match=r"\['pixels'\].*\['image'\]"):
        load_samples(tmp_path, SPECS, role="calibration")


def test_wrong_shape_is_refused_naming_the_expected_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "0.npy", np.zeros((1, 3, 9, 9), np.float32))
    with pytest.raises(SampleError, match="expects"):
        load_samples(tmp_path, SPECS, role="calibration")


def test_npy_for_a_two_input_model_is_refused(tmp_path: Path) -> None:
    specs = (InputSpec("a", np.dtype(np.float32), (1, 2)), InputSpec("b", np.dtype(np.float32), (1, 2)))
    np.save(tmp_path / "0.npy", np.zeros((1, 2), np.float32))
    with pytest.raises(SampleError, match="use .npz"):
        load_samples(tmp_path, specs, role="calibration")


def test_label_count_must_match_sample_count(tmp_path: Path) -> None:
    np.save(tmp_path / "0.npy", np.zeros((1, 3, 8, 8), np.float32))
    np.save(tmp_path / "labels.npy", np.array([1, 2]))
    with pytest.raises(SampleError, match="2 labels for 1 samples"):
        load_samples(tmp_path, SPECS, role="evaluation")


def test_text_file_posing_as_npy_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0.npy").write_text("not numpy")
    with pytest.raises(SampleError, match="cannot be read"):
        load_samples(tmp_path, SPECS, role="calibration")


def test_split_interleaves_samples_and_keeps_each_label_with_its_sample(tmp_path: Path) -> None:
    for i in range(5):
        np.save(tmp_path / f"s{i}.npy", np.full((2, 3, 8, 8), i, np.float32))   # two rows per file
    np.save(tmp_path / "labels.npy", np.arange(10))
    validation, held_out = load_samples(tmp_path, SPECS, role="evaluation").split()
    assert [int(feed["image"][0, 0, 0, 0]) for feed in validation.feeds] == [0, 2, 4]
    assert [int(feed["image"][0, 0, 0, 0]) for feed in held_out.feeds] == [1, 3]
    assert validation.labels.tolist() == [0, 1, 4, 5, 8, 9] and held_out.labels.tolist() == [2, 3, 6, 7]
    assert (validation.rows(), held_out.rows()) == (6, 4)


def test_a_single_sample_is_both_parts_of_its_split(tmp_path: Path) -> None:
    np.save(tmp_path / "s0.npy", np.zeros((3, 8, 8), np.float32))
    validation, held_out = load_samples(tmp_path, SPECS, role="evaluation").split()
    assert validation is held_out and len(held_out) == 1
