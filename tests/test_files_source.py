"""The loom_files plugin, opened the way the pipeline opens it: through the installed entry point."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime import ConfigError, DataSource, DataValidationError, NotFoundError, Plugins, get_plugins
from runtime._contracts.data import DataSourceContract


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Plugins:
    monkeypatch.setenv("LOOM_PLUGINS", "files")  # only this plugin, found through its entry point
    return get_plugins()


def open_source(plugins: Plugins, uri: str, base_dir: Path, **options: object) -> DataSource:
    source = plugins.data_source(uri, base_dir=base_dir, options=options)
    assert isinstance(source, DataSource) and source.uri == uri
    return source


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_schemes_are_registered_by_the_files_entry_point(plugins: Plugins) -> None:
    names = plugins.names("loom_register_data_sources")
    assert set(names.values()) == {"files"}
    assert {"csv", "parquet", "file", "memory", "s3", "gs", "abfs", "hdfs"} <= set(names)


def test_csv_file_relative_to_base_dir_keeps_ids_exact(plugins: Plugins, tmp_path: Path) -> None:
    big = 2**53 + 1  # not representable as float64: a null must not turn the column into floats
    write_csv(tmp_path / "data" / "x.csv", f"id,name,score\n{big},a,1.5\n,,2\n3,c,\n")
    df = open_source(plugins, "csv://data/x.csv", tmp_path).read()
    assert str(df["id"].dtype) == "Int64" and df["id"].tolist() == [big, pd.NA, 3]
    assert df["name"].isna().tolist() == [False, True, False]  # empty field is null, not ""
    assert df["score"].tolist()[:2] == [1.5, 2.0]


def test_csv_options_delimiter_and_encoding(plugins: Plugins, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes("city;n\nZürich;1\n".encode("latin-1"))
    df = open_source(plugins, "csv://x.csv", tmp_path, delimiter=";", encoding="latin-1").read()
    assert df.to_dict("list") == {"city": ["Zürich"], "n": [1]}


@pytest.mark.parametrize(
    "options, match",
    [({"sep": ";"}, "unknown option.*sep"), ({"delimiter": ";;"}, "one character"), ({"encoding": "nope"}, "nope")],
)
def test_bad_csv_options_are_config_errors(plugins: Plugins, tmp_path: Path, options: dict, match: str) -> None:
    write_csv(tmp_path / "x.csv", "a\n1\n")
    with pytest.raises(ConfigError, match=match):
        open_source(plugins, "csv://x.csv", tmp_path, **options)


def test_parquet_file_and_its_options(plugins: Plugins, tmp_path: Path) -> None:
    pd.DataFrame({"id": [1, 2], "t": pd.to_datetime(["2025-01-01", "2025-02-01"])}).to_parquet(tmp_path / "x.parquet")
    df = open_source(plugins, f"parquet://{tmp_path / 'x.parquet'}", Path("/nonexistent")).read()  # absolute path
    assert df["id"].tolist() == [1, 2] and df["t"].iloc[1] == pd.Timestamp("2025-02-01")
    with pytest.raises(ConfigError, match="delimiter"):
        open_source(plugins, "parquet://x.parquet", tmp_path, delimiter=",")


def test_directory_reads_files_of_the_format_in_name_order(plugins: Plugins, tmp_path: Path) -> None:
    write_csv(tmp_path / "d" / "b.csv", "id\n3\n")
    write_csv(tmp_path / "d" / "a.csv", "id\n1\n2\n")
    write_csv(tmp_path / "d" / "notes.txt", "not data\n")
    write_csv(tmp_path / "d" / "sub" / "c.csv", "id\n9\n")  # not recursive
    df = open_source(plugins, "csv://d", tmp_path).read()
    assert df["id"].tolist() == [1, 2, 3] and list(df.index) == [0, 1, 2]


def test_glob_matches_a_subset(plugins: Plugins, tmp_path: Path) -> None:
    for month, rows in (("2025-01", "1\n"), ("2025-02", "2\n"), ("2024-12", "0\n")):
        write_csv(tmp_path / "d" / f"{month}.csv", "id\n" + rows)
    assert open_source(plugins, "csv://d/2025-*.csv", tmp_path).read()["id"].tolist() == [1, 2]
    write_csv(tmp_path / "d" / "deep" / "2025-03.csv", "id\n3\n")
    assert open_source(plugins, "csv://d/**/2025-*.csv", tmp_path).read()["id"].tolist() == [1, 2, 3]


def test_file_scheme_infers_the_format(plugins: Plugins, tmp_path: Path) -> None:
    write_csv(tmp_path / "x.csv", "id\n1\n")
    pd.DataFrame({"id": [2]}).to_parquet(tmp_path / "y.parquet")
    assert open_source(plugins, "file://x.csv", tmp_path).read()["id"].tolist() == [1]
    assert open_source(plugins, str(tmp_path / "y.parquet"), Path("/")).read()["id"].tolist() == [2]  # bare path
    with pytest.raises(ConfigError, match="both csv and parquet"):
        open_source(plugins, "file://*", tmp_path)
    write_csv(tmp_path / "z.json", "{}")
    with pytest.raises(ConfigError, match="suffix"):
        open_source(plugins, "file://z.json", tmp_path)


@pytest.mark.parametrize("uri", ["csv://missing.csv", "csv://empty_dir", "csv://*.nothing", "parquet://missing"])
def test_nothing_matching_is_not_found_with_the_path(plugins: Plugins, tmp_path: Path, uri: str) -> None:
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(NotFoundError, match=str(tmp_path)):
        open_source(plugins, uri, tmp_path)


def test_fingerprint_is_stable_and_changes_with_any_byte(plugins: Plugins, tmp_path: Path) -> None:
    a = write_csv(tmp_path / "d" / "a.csv", "id,x\n1,10\n")
    write_csv(tmp_path / "d" / "b.csv", "id,x\n2,20\n")
    first = open_source(plugins, "csv://d", tmp_path).fingerprint()
    assert first.startswith("sha256:") and open_source(plugins, "csv://d", tmp_path).fingerprint() == first
    a.write_text("id,x\n1,11\n")  # same size, one byte different
    assert open_source(plugins, "csv://d", tmp_path).fingerprint() != first


def test_csv_iter_batches_are_bounded_and_cover_every_row(plugins: Plugins, tmp_path: Path) -> None:
    write_csv(tmp_path / "d" / "a.csv", "id,x\n" + "".join(f"{i},{i / 2}\n" for i in range(25)))
    write_csv(tmp_path / "d" / "b.csv", "id,x\n" + "".join(f"{i},{i / 2}\n" for i in range(25, 32)))
    source = open_source(plugins, "csv://d", tmp_path)
    batches = list(source.iter_batches(batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5, 7]  # batches never span files
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), source.read())


def test_parquet_iter_batches_regroup_row_groups(plugins: Plugins, tmp_path: Path) -> None:
    table = pa.table({"id": list(range(100))})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=7)
    batches = list(open_source(plugins, "parquet://x.parquet", tmp_path).iter_batches(batch_size=30))
    assert [len(b) for b in batches] == [30, 30, 30, 10]
    assert pd.concat(batches)["id"].tolist() == list(range(100))


def test_iter_batches_rejects_a_non_positive_size(plugins: Plugins, tmp_path: Path) -> None:
    write_csv(tmp_path / "x.csv", "id\n1\n")
    with pytest.raises(ValueError, match="batch_size"):
        next(open_source(plugins, "csv://x.csv", tmp_path).iter_batches(0))


def test_unparseable_files_are_validation_errors_naming_the_file(plugins: Plugins, tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "bad.csv", "a,b\n1,2\n3,4,5\n")
    source = open_source(plugins, "csv://bad.csv", tmp_path)
    for read in (source.read, lambda: list(source.iter_batches())):
        with pytest.raises(DataValidationError, match=str(bad)):
            read()


def test_streaming_a_type_change_after_the_first_block_is_a_validation_error(plugins: Plugins,
                                                                              tmp_path: Path) -> None:
    write_csv(tmp_path / "x.csv", "n\n" + "1\n" * 600_000 + "3.5\n")  # the first block (1 MB) is all integers
    source = open_source(plugins, "csv://x.csv", tmp_path)
    assert source.read()["n"].iloc[-1] == 3.5  # reading the whole file infers over all of it
    with pytest.raises(DataValidationError, match="x.csv"):
        list(source.iter_batches())


# -- pyarrow.fs / fsspec filesystems ---------------------------------------------------------------------------------


@pytest.fixture
def memfs():
    """fsspec's in-memory filesystem, emptied after each test (it is process-global)."""
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    yield fs
    fs.rm("/", recursive=True)


def test_file_uri_with_an_absolute_path(plugins: Plugins, tmp_path: Path) -> None:
    write_csv(tmp_path / "x.csv", "id\n7\n")
    assert open_source(plugins, f"file://{tmp_path}/x.csv", Path("/elsewhere")).read()["id"].tolist() == [7]


def test_memory_uris_read_files_dirs_and_globs(plugins: Plugins, memfs) -> None:
    memfs.pipe("/lake/a.csv", b"id,x\n1,10\n")
    memfs.pipe("/lake/b.csv", b"id,x\n2,20\n")
    memfs.pipe("/lake/.hidden.csv", b"id,x\n9,90\n")
    memfs.pipe("/lake/deep/c.csv", b"id,x\n3,30\n")
    assert open_source(plugins, "memory://lake/a.csv", Path("/")).read()["id"].tolist() == [1]
    assert open_source(plugins, "memory://lake", Path("/")).read()["id"].tolist() == [1, 2]  # not recursive
    assert open_source(plugins, "memory://lake/*.csv", Path("/")).read()["id"].tolist() == [1, 2]
    assert open_source(plugins, "memory://lake/**/*.csv", Path("/")).read()["id"].tolist() == [1, 2, 3]
    with pytest.raises(NotFoundError, match="memory://lake/nothing"):
        open_source(plugins, "memory://lake/nothing*", Path("/"))


def test_memory_parquet_streams_and_fingerprints_like_local_files(plugins: Plugins, memfs, tmp_path: Path) -> None:
    table = pa.table({"id": list(range(50)), "v": [i / 3 for i in range(50)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=8)
    memfs.pipe("/t.parquet", (tmp_path / "t.parquet").read_bytes())
    remote = open_source(plugins, "memory://t.parquet", Path("/"))
    assert [len(b) for b in remote.iter_batches(batch_size=20)] == [20, 20, 10]
    pd.testing.assert_frame_equal(remote.read(), open_source(plugins, "parquet://t.parquet", tmp_path).read())
    assert remote.fingerprint() == open_source(plugins, "parquet://t.parquet", tmp_path).fingerprint()
    memfs.pipe("/t.parquet", b"PAR1 not really")
    with pytest.raises(DataValidationError, match="t.parquet"):
        open_source(plugins, "memory://t.parquet", Path("/")).read()


def test_format_option_for_suffixless_files_and_storage_options(plugins: Plugins, memfs) -> None:
    memfs.pipe("/export/part-0", b"id;x\n1;a\n")
    with pytest.raises(ConfigError, match="format option"):
        open_source(plugins, "memory://export/part-0", Path("/"))
    df = open_source(plugins, "memory://export/part-0", Path("/"), format="csv", delimiter=";",
                     storage_options={}).read()
    assert df.to_dict("list") == {"id": [1], "x": ["a"]}
    with pytest.raises(ConfigError, match="format"):
        open_source(plugins, "memory://export/part-0", Path("/"), format="json")
    with pytest.raises(ConfigError, match="storage_options"):
        open_source(plugins, "memory://export/part-0", Path("/"), format="csv", storage_options="key=1")


def test_a_missing_fsspec_implementation_is_a_config_error(plugins: Plugins) -> None:
    pytest.importorskip("fsspec")
    try:
        import sshfs  # noqa: F401
        pytest.skip("sshfs is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="sftp://"):
        open_source(plugins, "sftp://host/data.csv", Path("/"))


# -- the data-source contract: local CSV and Parquet, and CSV on fsspec's memory filesystem -----------------------


class TestCsvContract(DataSourceContract):
    @pytest.fixture
    def make_source(self, plugins: Plugins, tmp_path: Path):
        def make(df: pd.DataFrame) -> DataSource:
            name = f"{uuid.uuid4().hex}.csv"
            df.to_csv(tmp_path / name, index=False)
            return plugins.data_source(f"csv://{name}", base_dir=tmp_path, options={})

        return make


class TestParquetDirectoryContract(DataSourceContract):
    @pytest.fixture
    def make_source(self, plugins: Plugins, tmp_path: Path):
        def make(df: pd.DataFrame) -> DataSource:
            directory = tmp_path / uuid.uuid4().hex
            directory.mkdir()
            half = len(df) // 2
            df.iloc[:half].to_parquet(directory / "part-0.parquet", index=False)
            df.iloc[half:].to_parquet(directory / "part-1.parquet", index=False)
            return plugins.data_source(f"parquet://{directory.name}", base_dir=tmp_path, options={})

        return make


class TestMemoryFilesystemContract(DataSourceContract):
    @pytest.fixture
    def make_source(self, plugins: Plugins, memfs):
        def make(df: pd.DataFrame) -> DataSource:
            name = f"/contract/{uuid.uuid4().hex}.csv"
            memfs.pipe(name, df.to_csv(index=False).encode())
            return plugins.data_source(f"memory:/{name}", base_dir=Path("/"), options={})

        return make
