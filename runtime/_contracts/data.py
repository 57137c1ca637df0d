"""The data-source contract: what every :class:`runtime.DataSource` must do, as a pytest suite.

Subclass :class:`DataSourceContract` in a test module and define a ``make_source`` fixture: a callable that stores a
DataFrame in the system under test (a file, a table, ...) and returns a source reading it. Every ``test_*`` method
then runs against it. Values are compared after :func:`runtime.validate_frame` coerces them to the declared
schema, because that is what Loom does with whatever types a source returns. Sources that also implement
:class:`runtime.IncrementalSource` get its tests; the others skip them.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import pytest

from ..config import ColumnSpec
from ..data import DataSource, IncrementalSource
from ..validation import validate_frame

MakeSource = Callable[[pd.DataFrame], DataSource]

#: The contract's schema: every column type Loom declares, with nulls where the type allows them.
COLUMNS = {
    "id": ColumnSpec(type="int", nullable=False),
    "name": ColumnSpec(type="string"),
    "score": ColumnSpec(type="float"),
    "active": ColumnSpec(type="bool"),
    "at": ColumnSpec(type="timestamp", nullable=False),
}


def table(n: int = 25, *, shift: float = 0.0) -> pd.DataFrame:
    """``n`` rows of the contract's columns, one hour apart from 2025-01-01; ``shift`` changes every score."""
    ids = list(range(1, n + 1))
    return pd.DataFrame({
        "id": ids,
        "name": [None if i % 7 == 0 else f"name-{i}" for i in ids],
        "score": [None if i % 5 == 0 else i / 4 + shift for i in ids],
        "active": [i % 2 == 0 for i in ids],
        "at": pd.date_range("2025-01-01", periods=n, freq="h"),
    })


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """A frame coerced to :data:`COLUMNS` and sorted by ``id`` (sources need not keep row order)."""
    frame = validate_frame(df, COLUMNS, source="contract").frame
    return frame.sort_values("id", kind="stable").reset_index(drop=True)


class DataSourceContract:
    """Behaviour every data source must show. Subclass it and define the ``make_source`` fixture::

        from runtime.testing import DataSourceContract

        class TestMySource(DataSourceContract):
            @pytest.fixture
            def make_source(self, tmp_path):
                plugins = runtime.get_plugins()
                def make(df):
                    path = tmp_path / f"{uuid.uuid4().hex}.csv"
                    df.to_csv(path, index=False)
                    return plugins.data_source(f"mysource://{path}", base_dir=tmp_path, options={})
                return make

    Each call must store its frame separately (a new file or table), so several sources can coexist.
    """

    @pytest.fixture
    def make_source(self) -> MakeSource:
        pytest.fail(f"{type(self).__name__} must define a `make_source` fixture: DataFrame -> DataSource")

    def test_satisfies_the_protocol(self, make_source: MakeSource) -> None:
        source = make_source(table())
        assert isinstance(source, DataSource)
        assert isinstance(source.uri, str) and source.uri

    def test_read_returns_every_row_and_value(self, make_source: MakeSource) -> None:
        data = table()
        got = make_source(data).read()
        assert isinstance(got, pd.DataFrame)
        assert set(COLUMNS) <= set(got.columns)
        pd.testing.assert_frame_equal(typed(got), typed(data))

    def test_batches_are_bounded_and_cover_every_row(self, make_source: MakeSource) -> None:
        data = table(23)
        source = make_source(data)
        batches = list(source.iter_batches(batch_size=5))
        assert all(isinstance(b, pd.DataFrame) and len(b) <= 5 for b in batches)
        assert sum(len(b) for b in batches) == 23
        pd.testing.assert_frame_equal(typed(pd.concat(batches, ignore_index=True)), typed(data))
        with pytest.raises(ValueError):
            next(iter(source.iter_batches(batch_size=0)))

    def test_empty_table_reads_as_no_rows(self, make_source: MakeSource) -> None:
        source = make_source(table(0))
        assert len(source.read()) == 0
        assert sum(len(b) for b in source.iter_batches(batch_size=10)) == 0

    def test_fingerprint_is_stable_and_follows_the_content(self, make_source: MakeSource) -> None:
        data = table()
        first = make_source(data)
        fingerprint = first.fingerprint()
        assert isinstance(fingerprint, str) and fingerprint
        assert first.fingerprint() == fingerprint
        first.read()
        assert first.fingerprint() == fingerprint  # reading does not change what the source names
        assert make_source(table(shift=0.5)).fingerprint() != fingerprint
        assert make_source(table(24)).fingerprint() != fingerprint

    # -- incremental reads -----------------------------------------------------------------------------------

    def _incremental(self, make_source: MakeSource, data: pd.DataFrame) -> IncrementalSource:
        source = make_source(data)
        if not isinstance(source, IncrementalSource):
            pytest.skip(f"{type(source).__name__} does not implement IncrementalSource")
        return source

    def test_since_reads_only_newer_rows(self, make_source: MakeSource) -> None:
        data = table()
        source = self._incremental(make_source, data)
        watermark = data["at"].iloc[9]
        newer = source.since("at", watermark)
        assert isinstance(newer, DataSource)
        pd.testing.assert_frame_equal(typed(newer.read()), typed(data.iloc[10:]))
        batches = list(newer.iter_batches(batch_size=4))
        assert sum(len(b) for b in batches) == len(data) - 10
        assert newer.fingerprint() != source.fingerprint()
        assert len(source.read()) == len(data)  # the original source is unchanged

    def test_since_takes_aware_times_and_iso_strings_as_utc(self, make_source: MakeSource) -> None:
        data = table()
        source = self._incremental(make_source, data)
        aware = pd.Timestamp("2025-01-01 10:00", tz="Europe/Zurich")  # 09:00 UTC: rows 10 onwards are newer
        assert typed(source.since("at", aware).read())["id"].tolist() == list(range(11, 26))
        assert typed(source.since("at", "2025-01-01T09:00:00Z").read())["id"].tolist() == list(range(11, 26))
        assert len(source.since("at", "2030-01-01").read()) == 0
