"""Training data from a dataset snapshot's Parquet files, and the content-addressed store."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prognos.api.ingest.v1 import ingest_pb2
from prognos.registry.artifacts import (
    ArtifactMismatchError,
    ArtifactNotFoundError,
    LocalArtifactStore,
    iter_bytes,
    pack_directory,
    sha256_of,
    unpack_directory,
)
from prognos.registry.datasets import TrainingDataError, from_snapshot

ORIGIN = datetime(2026, 1, 1, tzinfo=UTC)


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


data = _load("registry_data")


def _snapshot(tmp_path: Path, units: int = 3) -> ingest_pb2.DatasetSnapshot:
    return data.write_snapshot(
        tmp_path / "archive", name="s", asset_type="turbofan", units=units, seed=4, origin=ORIGIN
    )


def test_every_asset_that_failed_becomes_one_run_to_failure_unit(tmp_path: Path) -> None:
    snapshot = _snapshot(tmp_path)
    lives = [len(rows) for rows in data.fleet(3, seed=4)]

    loaded = from_snapshot(snapshot)

    frame = loaded.frame
    assert list(frame["unit"].unique()) == [1, 2, 3]
    assert frame.groupby("unit")["cycle"].max().tolist() == lives
    assert loaded.assets == {i: f"s-unit-{i}" for i in (1, 2, 3)}
    assert {"setting_1", "s21"} <= set(frame.columns)
    assert loaded.label_set.startswith("sha256:")
    first = data.fleet(3, seed=4)[0]
    assert frame.loc[0, "s1"] == pytest.approx(first[0, 4])


def test_rows_and_failures_after_the_snapshot_end_are_left_out(tmp_path: Path) -> None:
    snapshot = _snapshot(tmp_path)
    lives = [len(rows) for rows in data.fleet(3, seed=4)]
    # The reading of cycle c is at ORIGIN + c hours, the failure at the last one. Ending the
    # snapshot at the second-shortest life keeps only the assets that failed before it; the
    # others are censored.
    end = sorted(lives)[1]
    snapshot.end_time.FromDatetime(ORIGIN + timedelta(hours=end))

    loaded = from_snapshot(snapshot)

    assert loaded.frame.groupby("unit")["cycle"].max().tolist() == [n for n in lives if n < end]


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    snapshot = _snapshot(tmp_path)
    telemetry = next(f for f in snapshot.files if f.kind == ingest_pb2.DATASET_FILE_KIND_TELEMETRY)
    path = tmp_path / "archive" / telemetry.path
    table = pq.read_table(path)
    pq.write_table(table.slice(0, len(table) - 1), path)

    with pytest.raises(TrainingDataError, match="no longer matches"):
        from_snapshot(snapshot)


def test_missing_channels_and_missing_labels_are_named(tmp_path: Path) -> None:
    snapshot = _snapshot(tmp_path, units=1)
    telemetry = next(f for f in snapshot.files if f.kind == ingest_pb2.DATASET_FILE_KIND_TELEMETRY)
    path = tmp_path / "archive" / telemetry.path
    pq.write_table(pq.read_table(path).drop_columns(["sensor_7"]), path)
    telemetry.content_hash = sha256_of(path)

    with pytest.raises(TrainingDataError, match="s7"):
        from_snapshot(snapshot)

    without_labels = ingest_pb2.DatasetSnapshot()
    without_labels.CopyFrom(snapshot)
    del without_labels.files[:]
    without_labels.files.append(telemetry)
    with pytest.raises(TrainingDataError, match="no labels"):
        from_snapshot(without_labels)


def test_the_store_keeps_one_read_only_blob_per_content(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    source = tmp_path / "model.tflite"
    source.write_bytes(b"flatbuffer" * 1000)

    first = asyncio.run(store.put_file(source))
    second = asyncio.run(store.put_stream(iter_bytes(source.read_bytes(), chunk=333)))

    assert first == second
    digest = first.content_hash.removeprefix("sha256:")
    blob = tmp_path / "artifacts" / "sha256" / digest[:2] / digest
    assert first.uri == blob.resolve().as_uri() and blob.stat().st_mode & 0o222 == 0
    assert not list((tmp_path / "artifacts" / "incoming").iterdir())
    fetched = asyncio.run(store.fetch(first.content_hash, tmp_path / "out" / "m.tflite"))
    assert fetched.read_bytes() == source.read_bytes()


def test_the_store_refuses_bytes_that_differ_from_their_announcement(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")

    with pytest.raises(ArtifactMismatchError):
        asyncio.run(store.put_stream(iter_bytes(b"abc"), size_bytes=4))
    with pytest.raises(ArtifactMismatchError):
        asyncio.run(store.put_stream(iter_bytes(b"abc"), content_hash="sha256:" + "0" * 64))
    with pytest.raises(ArtifactNotFoundError):
        asyncio.run(store.stat("sha256:" + "1" * 64))
    assert not list((tmp_path / "artifacts" / "incoming").iterdir())
    assert not (tmp_path / "artifacts" / "sha256").exists()


def test_a_packed_directory_has_the_same_hash_whenever_it_is_packed(tmp_path: Path) -> None:
    tree = tmp_path / "saved_model"
    (tree / "variables").mkdir(parents=True)
    (tree / "saved_model.pb").write_bytes(b"graph")
    (tree / "variables" / "variables.index").write_bytes(b"index")

    one = pack_directory(tree, tmp_path / "one.tar")
    (tree / "saved_model.pb").touch()
    two = pack_directory(tree, tmp_path / "two.tar")

    assert sha256_of(one) == sha256_of(two)
    unpacked = unpack_directory(two, tmp_path / "back")
    assert (unpacked / "variables" / "variables.index").read_bytes() == b"index"


def test_parquet_strings_may_be_dictionary_encoded(tmp_path: Path) -> None:
    snapshot = _snapshot(tmp_path, units=1)
    telemetry = next(f for f in snapshot.files if f.kind == ingest_pb2.DATASET_FILE_KIND_TELEMETRY)
    path = tmp_path / "archive" / telemetry.path
    table = pq.read_table(path)
    index = table.schema.get_field_index("asset_id")
    table = table.set_column(index, "asset_id", table["asset_id"].dictionary_encode())
    pq.write_table(table, path)
    telemetry.content_hash = sha256_of(path)

    assert from_snapshot(snapshot).assets == {1: "s-unit-1"}
    assert pa.types.is_dictionary(pq.read_table(path).schema.field("asset_id").type)
