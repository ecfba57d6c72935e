"""The job entry point as EMR Serverless runs it (``python <job>.py args``), launched through
Dagster Pipes: the materialization carries the job's metadata. Its own JVM, so slow."""

import os
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

import datamaster_assets.spark.silver_merge as silver_merge_module
from tests.spark.conftest import spark_unavailable_reason
from tests.spark.test_spark_silver import BATCH_1, write_bronze

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.xdist_group("spark")]

SUBMIT_ARGS = (
    "--master local[1] --conf spark.ui.enabled=false --conf spark.driver.host=127.0.0.1 "
    "--conf spark.driver.bindAddress=127.0.0.1 --conf spark.sql.shuffle.partitions=2 "
    "--conf spark.sql.catalogImplementation=in-memory pyspark-shell"
)


def test_silver_job_reports_through_pipes(tmp_path: Path) -> None:
    reason = spark_unavailable_reason()
    if reason:
        pytest.skip(reason)
    bronze, changes = write_bronze(tmp_path, BATCH_1)
    output = tmp_path / "silver-beer"
    script = Path(silver_merge_module.__file__)

    @dg.asset(key=["silver", "beer"])
    def silver_beer(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        command = [sys.executable, str(script), "--table", "beer", "--bronze", *bronze, "--mode", "parquet",
                   "--output", str(output)]
        env = {"PYSPARK_SUBMIT_ARGS": SUBMIT_ARGS, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
               "PATH": os.environ.get("PATH", "")}
        return pipes.run(command=command, context=context, env=env).get_materialize_result()

    result = dg.materialize([silver_beer], resources={"pipes": dg.PipesSubprocessClient()})
    assert result.success
    [mat] = result.asset_materializations_for_node("silver__beer")
    md = {k: v.value for k, v in mat.metadata.items()}
    assert md["engine"] == "spark" and md["mode"] == "parquet" and md["table"] == "beer"
    assert md["changes_read"] == changes.num_rows and md["dagster/row_count"] == 9
    assert md["changes_applied"] == 9 and md["tombstoned"] == 1
    assert pq.read_table(output).num_rows == 9
