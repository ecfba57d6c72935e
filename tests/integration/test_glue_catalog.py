"""The aws environment's storage bootstrap and Iceberg-on-Glue round trip, against moto."""

from __future__ import annotations

import boto3
import pyarrow as pa
import pytest

from datamaster_assets.lake.bootstrap import bootstrap_aws
from datamaster_assets.lake.catalog import build_catalog
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.ledger import Registration, Status
from datamaster_assets.settings import Settings

pytestmark = pytest.mark.aws


@pytest.fixture
def aws_settings(aws_env, tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("DATAMASTER_ENV", "aws")
    monkeypatch.setenv("DATAMASTER_HOME", str(tmp_path))
    monkeypatch.setenv("DATAMASTER_PII_KEY", "test-key")
    monkeypatch.setenv("DATAMASTER_RAW_BUCKET", "dm-glue-raw")
    monkeypatch.setenv("DATAMASTER_LAKE_BUCKET", "dm-glue-lake")
    monkeypatch.setenv("DATAMASTER_LEDGER_TABLE", "dm-glue-control")
    return Settings.from_env()


def test_bootstrap_creates_everything_once(aws_settings: Settings):
    first = bootstrap_aws(aws_settings)
    assert first.created == [
        "s3://dm-glue-raw",
        "s3://dm-glue-lake",
        "dynamodb:dm-glue-control",
        "glue:dm_bronze",
        "glue:dm_silver",
        "glue:dm_gold",
        "athena:datamaster",
    ]
    second = bootstrap_aws(aws_settings)
    assert second.created == [] and second.existing == first.created

    s3 = boto3.client("s3")
    assert s3.get_bucket_versioning(Bucket="dm-glue-raw")["Status"] == "Enabled"
    glue = boto3.client("glue")
    assert glue.get_database(Name="dm_silver")["Database"]["LocationUri"] == "s3://dm-glue-lake/warehouse/dm_silver.db"
    wg = boto3.client("athena").get_work_group(WorkGroup="datamaster")["WorkGroup"]
    assert wg["Configuration"]["ResultConfiguration"]["OutputLocation"] == "s3://dm-glue-lake/athena-results/"

    # The bootstrapped table is usable by the ledger the aws lake opens.
    lake = open_lake(aws_settings)
    reg = Registration("bronze", "review", "raw/review/a.json.gz", "etag1", "json", 10, "lambda", 1)
    item, created = lake.ledger.register(reg)
    assert created and item.status is Status.PENDING
    assert lake.ledger.register(reg)[1] is False


def test_bootstrap_refuses_the_local_env(tmp_path):
    with pytest.raises(ValueError, match="env='aws'"):
        bootstrap_aws(Settings(env="local", home=tmp_path))


def test_iceberg_table_round_trip_through_glue_and_s3(aws_settings: Settings):
    bootstrap_aws(aws_settings)
    catalog = build_catalog(aws_settings)
    assert type(catalog).__name__ == "GlueCatalog"
    assert ("dm_silver",) in catalog.list_namespaces()

    data = pa.table(
        {
            "beer_id": pa.array([1, 2, 3], pa.int64()),
            "beer_name": pa.array(["Stout", "Pils", None], pa.string()),
            "abv": pa.array([7.5, 4.8, 5.0], pa.float64()),
        }
    )
    table = catalog.create_table("dm_silver.beer", schema=data.schema)
    table.append(data)
    table.append(data.slice(0, 1))

    reread = catalog.load_table("dm_silver.beer")
    assert reread.metadata_location.startswith("s3://dm-glue-lake/warehouse/dm_silver.db/beer/metadata/")
    got = reread.scan().to_arrow().sort_by([("beer_id", "ascending")])
    assert got.column("beer_id").to_pylist() == [1, 1, 2, 3]
    assert got.column("beer_name").to_pylist() == ["Stout", "Stout", "Pils", None]
    assert len(reread.history()) == 2

    # Glue holds the pointer Athena and Spark use to find the current snapshot.
    params = boto3.client("glue").get_table(DatabaseName="dm_silver", Name="beer")["Table"]["Parameters"]
    assert params["table_type"].upper() == "ICEBERG"
    assert params["metadata_location"] == reread.metadata_location
    # The data files are really in the lake bucket.
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="dm-glue-lake", Prefix="warehouse/dm_silver.db/beer/data/")["Contents"]]
    assert len(keys) == 2 and all(k.endswith(".parquet") for k in keys)


def test_snapshot_expiry_deletes_old_files_from_s3(aws_settings: Settings):
    from datetime import datetime, timedelta, timezone

    from pyiceberg.expressions import AlwaysTrue

    from datamaster_assets.lake.iceberg_files import commit_replacement, write_data_files
    from datamaster_assets.lake.maintenance import RetentionPolicy, expire_table

    bootstrap_aws(aws_settings)
    catalog = build_catalog(aws_settings)
    table = catalog.create_table("dm_silver.brewery", schema=pa.schema([("brewery_id", pa.int64()), ("v", pa.string())]))
    for version in range(3):  # three copy-on-write rewrites
        rows = pa.table({"brewery_id": pa.array([1, 2], pa.int64()), "v": pa.array([f"v{version}"] * 2)})
        commit_replacement(table, write_data_files(table.metadata, table.io, rows), AlwaysTrue(), {})
        table.refresh()

    def data_keys() -> list[str]:
        listed = boto3.client("s3").list_objects_v2(Bucket="dm-glue-lake", Prefix="warehouse/dm_silver.db/brewery/data/")
        # (pyarrow's S3 filesystem leaves a "data/" marker when it deletes the last file below it)
        return [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".parquet")]

    assert len(data_keys()) == 3
    result = expire_table(table, now=datetime.now(timezone.utc) + timedelta(days=1),
                          policy=RetentionPolicy(max_age=timedelta(0), retain_last=1))
    assert result.expired and not result.delete_failures
    assert len(data_keys()) == 1
    reread = catalog.load_table("dm_silver.brewery")
    assert len(reread.metadata.snapshots) == 1
    assert reread.scan().to_arrow().column("v").to_pylist() == ["v2", "v2"]
    params = boto3.client("glue").get_table(DatabaseName="dm_silver", Name="brewery")["Table"]["Parameters"]
    assert params["metadata_location"] == reread.metadata_location


def test_orphan_files_are_found_and_deleted_on_s3_and_a_neighbour_table_is_untouched(aws_settings: Settings):
    from datetime import datetime, timedelta, timezone

    from pyiceberg.expressions import AlwaysTrue

    from datamaster_assets.lake.iceberg_files import commit_replacement, write_data_files
    from datamaster_assets.lake.maintenance import RetentionPolicy, remove_orphan_files

    bootstrap_aws(aws_settings)
    catalog = build_catalog(aws_settings)
    schema = pa.schema([("brewery_id", pa.int64()), ("v", pa.string())])
    rows = pa.table({"brewery_id": pa.array([1, 2], pa.int64()), "v": pa.array(["v0"] * 2)})
    tables = {name: catalog.create_table(f"dm_silver.{name}", schema=schema) for name in ("brewery", "brewery_flat")}
    for table in tables.values():
        commit_replacement(table, write_data_files(table.metadata, table.io, rows), AlwaysTrue(), {})
        table.refresh()
    s3 = boto3.client("s3")
    stray = "warehouse/dm_silver.db/brewery/data/00000-0-crashed.parquet"
    s3.put_object(Bucket="dm-glue-lake", Key=stray, Body=b"x" * 99)

    def keys(prefix: str) -> set[str]:
        listed = s3.list_objects_v2(Bucket="dm-glue-lake", Prefix=prefix)
        return {o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith("/")}

    neighbour = keys("warehouse/dm_silver.db/brewery_flat/")
    before = keys("warehouse/dm_silver.db/brewery/")
    policy = RetentionPolicy(orphan_min_age=timedelta(days=3))
    # Written just now: a write that may still be in progress.
    fresh = remove_orphan_files(tables["brewery"], now=datetime.now(timezone.utc), policy=policy)
    assert (fresh.files_deleted, fresh.too_recent) == (0, 1) and stray in keys("warehouse/dm_silver.db/brewery/")

    later = datetime.now(timezone.utc) + timedelta(days=4)
    result = remove_orphan_files(tables["brewery"], now=later, policy=policy)
    assert (result.files_deleted, result.bytes_deleted, result.delete_failures) == (1, 99, [])
    assert keys("warehouse/dm_silver.db/brewery/") == before - {stray}
    assert keys("warehouse/dm_silver.db/brewery_flat/") == neighbour
    assert catalog.load_table("dm_silver.brewery").scan().to_arrow().num_rows == 2
