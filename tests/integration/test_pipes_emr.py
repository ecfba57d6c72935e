"""Spark on EMR Serverless through PipesEMRServerlessClient, against moto, compute shimmed at the
boto3 edge: the job script really runs (python, with the driver env the client injected) and
its Pipes messages travel through moto's CloudWatch Logs back into the materialization."""


import textwrap

import boto3
import dagster as dg
import pytest

from datamaster_assets.defs.compute import SparkCompute
from datamaster_assets.settings import Settings

pytestmark = pytest.mark.aws

LAKE_BUCKET = "dm-test-lake"

# A stand-in for spark/<job>.py: the same Pipes contract (open_dagster_pipes, report metadata).
TINY_JOB = textwrap.dedent(
    """
    import sys
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        table, rows = sys.argv[1], int(sys.argv[2])
        if rows < 0:
            raise SystemExit(3)
        pipes.log.info(f"merging {rows} changes into {table}")
        print("plain driver output that is not a pipes message")
        pipes.report_asset_materialization(
            metadata={"table": table, "merged_rows": rows, "engine": "spark", "extra_seen": pipes.extras.get("batch")}
        )
    """
)


@pytest.fixture
def emr(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=LAKE_BUCKET)
    s3.put_object(Bucket=LAKE_BUCKET, Key="code/spark/tiny_job.py", Body=TINY_JOB.encode())
    app = boto3.client("emr-serverless").create_application(name="datamaster", releaseLabel="emr-7.2.0", type="SPARK")
    settings = Settings(env="aws", lake_bucket=LAKE_BUCKET, emr_application_id=app["applicationId"],
                        emr_execution_role_arn="arn:aws:iam::123456789012:role/emr-job", emr_min_change_rows=1000)
    return SparkCompute.from_settings(settings, compute_shim=True, poll_seconds=0.2)


def _asset(rows: int):
    @dg.asset(key=["silver", "review"])
    def silver_review(context: dg.AssetExecutionContext, spark_compute: SparkCompute) -> dg.MaterializeResult:
        metadata = spark_compute.run_job(context, "tiny_job", ["review", str(rows)], extras={"batch": "b-7"})
        return dg.MaterializeResult(metadata=metadata)

    return silver_review


def test_emr_serverless_round_trip_reports_job_metadata(emr: SparkCompute) -> None:
    result = dg.materialize([_asset(12_345)], resources={"spark_compute": emr})
    assert result.success
    [mat] = result.asset_materializations_for_node("silver__review")
    md = {k: v.value for k, v in mat.metadata.items()}
    assert md["table"] == "review"
    assert md["merged_rows"] == 12_345
    assert md["engine"] == "spark"
    assert md["extra_seen"] == "b-7"  # extras travelled through the injected context
    job_run_id = md["AWS EMR Serverless Job Run ID"]
    run = boto3.client("emr-serverless").get_job_run(applicationId=emr.application_id, jobRunId=job_run_id)["jobRun"]
    assert run["jobDriver"]["sparkSubmit"]["entryPoint"] == f"s3://{LAKE_BUCKET}/code/spark/tiny_job.py"
    assert "spark.emr-serverless.driverEnv.DAGSTER_PIPES_CONTEXT=" in run["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"]


@pytest.mark.slow  # dagster waits 10 s for messages from a job that failed before reporting
def test_failed_spark_job_fails_the_asset(emr: SparkCompute) -> None:
    result = dg.materialize([_asset(-1)], resources={"spark_compute": emr}, raise_on_error=False)
    assert not result.success
    assert "EMR Serverless job failed" in str(result.all_events)


def test_emr_only_on_aws_above_the_change_volume() -> None:
    aws = SparkCompute(env="aws", emr_min_change_rows=1000)
    assert not aws.use_emr(999)
    assert aws.use_emr(1000)
    assert not SparkCompute(env="local", emr_min_change_rows=0).use_emr(10**9)


def test_start_params_name_the_job_script_and_enable_cloudwatch() -> None:
    compute = SparkCompute(env="aws", application_id="app-1", execution_role_arn="arn:role", code_uri="s3://b/code/spark/")
    params = compute.start_job_run_params("silver_merge", ["--table", "review"])
    assert params["jobDriver"]["sparkSubmit"]["entryPoint"] == "s3://b/code/spark/silver_merge.py"
    assert params["jobDriver"]["sparkSubmit"]["entryPointArguments"] == ["--table", "review"]
    assert params["configurationOverrides"]["monitoringConfiguration"]["cloudWatchLoggingConfiguration"]["enabled"] is True
    with pytest.raises(ValueError, match="Python module name"):
        compute.start_job_run_params("../evil")
