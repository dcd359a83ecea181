"""Space-delimited text: runs of spaces count as one, and a line's outer spaces are ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prognos.ingest.formats import ChannelColumn, ColumnMapping, TimeFormat, field_count, read_csv

MAPPING = ColumnMapping(
    timestamp="2",
    time_format=TimeFormat.UNIX_US,
    asset_column="1",
    channels=(ChannelColumn("3", "a", "1"), ChannelColumn("4", "b", "1")),
)


def test_aligned_columns_and_trailing_spaces_read_as_single_fields(tmp_path: Path) -> None:
    path = tmp_path / "aligned.txt"
    path.write_bytes(b"1 2 3 4\n  7   1  0.5 -2.25  \n7 2 1.5 3\r\n 8 1   9    10\n")

    reader = read_csv(path, MAPPING, delimiter=" ")
    batches = {b.asset_id: b for b in reader}

    assert reader.errors == []
    assert sorted(batches) == ["7", "8"]
    np.testing.assert_array_equal(batches["7"].timestamps_us, [1, 2])
    np.testing.assert_array_equal(batches["7"].columns["a"][1], [0.5, 1.5])
    np.testing.assert_array_equal(batches["7"].columns["b"][1], [-2.25, 3.0])
    np.testing.assert_array_equal(batches["8"].columns["b"][1], [10.0])


def test_field_count_reads_a_line_as_the_reader_does() -> None:
    assert field_count(b"1 1 -0.0007 23.4190  \r\n", " ") == 4
    assert field_count(b"  1   2\n", " ") == 2
    assert field_count(b"a,,c\n", ",") == 3
