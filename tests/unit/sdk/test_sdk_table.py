"""The CLI's plain-text tables."""

from __future__ import annotations

from fleetcast.sdk import _table


def test_columns_are_padded_to_the_widest_cell_and_lines_have_no_trailing_space() -> None:
    text = _table.render(["device", "errors", "reason"], [("cam-1", 0, None), ("camera-22", 12, "x")])

    assert text.splitlines() == [
        "DEVICE     ERRORS  REASON",
        "cam-1      0       -",
        "camera-22  12      x",
    ]


def test_cells_show_empty_values_as_a_dash_and_lists_joined() -> None:
    assert [_table.cell(v) for v in (None, "", [], ("a", "b"), 0.123456, 2.0)] == [
        "-", "-", "-", "a,b", "0.1235", "2"]


def test_sizes_for_people() -> None:
    assert [_table.size(n) for n in (None, 512, 2048, 5 * 1024**2 + 1)] == ["-", "512 B", "2.0 KiB", "5.0 MiB"]


def test_fields_align_their_keys() -> None:
    assert _table.fields([("model", "digits@1"), ("state", None)]) == "model: digits@1\nstate: -"
