"""Where work runs: Dagster resources that launch bronze items and Spark jobs through Dagster Pipes.

- :class:`BronzeCompute` runs one bronze ledger item on the target the ledger chose for it
  (``compute_target``): ``inprocess`` (direct call, or a subprocess through ``PipesSubprocessClient``),
  ``lambda`` (``PipesLambdaClient``) or ``ecs`` (``PipesECSClient``, Fargate). The local env always
  runs in-process.
- :class:`SparkCompute` runs ``spark/<job>.py`` on EMR Serverless (``PipesEMRServerlessClient``)
  when the change volume reaches ``settings.emr_min_change_rows`` on AWS.

With ``compute_shim=True`` the boto3 clients built here get :class:`ComputeShim` installed, which
runs the real workers locally at the three compute-starting calls (see docs/compute.md).
"""

from __future__ import annotations

import sys
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Literal, Mapping, Sequence

import boto3
import dagster as dg
from botocore.config import Config
from botocore.exceptions import ClientError
from dagster._core.pipes.utils import forward_only_logs_to_file
from dagster_aws.pipes import (
    PipesCloudWatchLogReader,
    PipesCloudWatchMessageReader,
    PipesECSClient,
    PipesEMRServerlessClient,
    PipesLambdaClient,
    PipesS3MessageReader,
)
from dagster_aws.pipes.message_readers import get_log_events
from dagster_pipes import PipesBlobStoreMessageWriter
from pydantic import Field

from datamaster_assets.lake.ledger import LedgerItem
from datamaster_assets.settings import Settings
from datamaster_assets.workers.bronze_pipes import EXTRA_ASSET_KEY, EXTRA_CONTROL_ID, result_metadata

BRONZE_TARGETS = ("inprocess", "lambda", "ecs")
# A sync invoke waits for the function; the socket must outlive the function's own timeout.
LAMBDA_READ_TIMEOUT_MARGIN_S = 60
CONTAINER_MODULE = "datamaster_assets.workers.container"


# ---- boto3 clients ----------------------------------------------------------------------------
def lambda_client_config(function_timeout_s: int) -> Config:
    """Read timeout above the function timeout, and exactly one attempt: a synchronous invoke that
    timed out on the client side may still be running, so retrying it would run the item twice."""
    return Config(
        connect_timeout=10,
        read_timeout=function_timeout_s + LAMBDA_READ_TIMEOUT_MARGIN_S,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )


@lru_cache(maxsize=1)
def compute_shim():
    """The process-wide shim (one, so ECS/EMR records survive between a launch and its status calls)."""
    from datamaster_assets.workers.pipes_shim import ComputeShim

    return ComputeShim()


def _client(service: str, region: str, shim: bool, config: Config | None = None) -> Any:
    client = boto3.client(service, region_name=region, config=config)
    if shim and service in ("lambda", "ecs", "emr-serverless"):
        compute_shim().install(client)
    return client


# ---- Pipes message readers --------------------------------------------------------------------
class PrefixedS3MessageReader(PipesS3MessageReader):
    """``PipesS3MessageReader`` that keeps its chunks under one prefix and deletes them afterwards
    (the stock reader writes ``<random>/<n>.json`` at the bucket root and never cleans up)."""

    def __init__(self, *, prefix: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.prefix = prefix.strip("/")

    @contextmanager
    def get_params(self) -> Iterator[dict[str, Any]]:
        key_prefix = f"{self.prefix}/{uuid.uuid4().hex}"
        try:
            yield {
                "bucket": self.bucket,
                "key_prefix": key_prefix,
                PipesBlobStoreMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: self.include_stdio_in_messages,
            }
        finally:  # runs after the reader threads were joined (PipesThreadedMessageReader.read_messages)
            with suppress(ClientError):
                listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{key_prefix}/")
                keys = [{"Key": o["Key"]} for o in listed.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


class SessionAwareCloudWatchLogReader(PipesCloudWatchLogReader):
    """Forwards a CloudWatch stream's plain log lines, and stops once the session has closed.

    dagster-aws 0.29's reader only checks for session close after a non-empty page, so a reader
    that caught up before close polls ``GetLogEvents`` forever in a non-daemon thread.
    """

    def __init__(self, *, poll_s: float = 2.0, settle_s: float = 3.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.poll_s = poll_s
        self.settle_s = settle_s  # CloudWatch ingestion lags a few seconds behind the container

    def _start(self, params: Mapping[str, Any], is_session_closed: Any) -> None:
        request: dict[str, Any] = {
            "logGroupName": params.get("log_group") or self.log_group,
            "logStreamName": params.get("log_stream") or self.log_stream,
            "startFromHead": True,
        }
        if self.start_time or params.get("start_time"):
            request["startTime"] = self.start_time or params.get("start_time")
        closed_at: float | None = None
        while True:
            if closed_at is None and is_session_closed.is_set():
                closed_at = time.monotonic()
            try:
                response = get_log_events(client=self.client, max_retries=self.max_retries, **request)
            except self.client.exceptions.ResourceNotFoundException:
                return  # the stream or group is gone: nothing left to forward
            events = response.get("events") or []
            for event in events:
                for line in event.get("message", "").splitlines():
                    if line:
                        forward_only_logs_to_file(line, self.target_stream)
            request["nextToken"] = response["nextForwardToken"]
            if not events:
                if closed_at is not None and time.monotonic() - closed_at >= self.settle_s:
                    return
                time.sleep(self.poll_s)


class SessionAwareCloudWatchMessageReader(PipesCloudWatchMessageReader):
    """``PipesCloudWatchMessageReader`` whose log readers (added by the ECS/EMR clients) terminate."""

    def __init__(self, *, settle_s: float = 3.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.settle_s = settle_s

    def add_log_reader(self, log_reader: Any) -> None:
        if isinstance(log_reader, PipesCloudWatchLogReader) and not isinstance(log_reader, SessionAwareCloudWatchLogReader):
            log_reader = SessionAwareCloudWatchLogReader(
                client=log_reader.client,
                log_group=log_reader.log_group,
                log_stream=log_reader.log_stream,
                target_stream=log_reader.target_stream,
                start_time=log_reader.start_time,
                debug_info=log_reader.debug_info,
                max_retries=log_reader.max_retries,
                settle_s=self.settle_s,
            )
        super().add_log_reader(log_reader)


# ---- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemOutcome:
    """What happened to one ledger item: the worker's reported metadata, or why nothing came back."""

    control_id: str
    compute_target: str
    status: str  # the worker's status (success|error|quarantined|...) or launch_failed|unreported
    metadata: dict[str, Any] = field(default_factory=dict)
    error_message: str | None = None


def _record_launch_failure(context: Any, lake: Any, item: LedgerItem, owner: str, message: str) -> None:
    """A worker that never started leaves its item untouched, so the sensor would ask again with
    the same run key, which Dagster never runs twice: the file would wait for ever. The launch
    counts as a failed attempt instead (quarantined once attempts run out), unless a worker did
    start and holds or finished the item."""
    try:
        if lake.ledger.claim(item.control_id, owner, lake.settings.lease_seconds) is not None:
            lake.ledger.fail(item.control_id, owner, f"compute did not start: {message}")
    except Exception as exc:  # noqa: BLE001 - the outcome is reported either way
        context.log.warning(f"could not record the failed launch of {item.control_id} in the ledger: {exc}")


def _plain_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, dg.MetadataValue) else v) for k, v in values.items()}


def reported_metadata(invocation: Any) -> dict[str, Any]:
    """Metadata of the materialization the external process reported, plus the client's own
    (ECS task URL, EMR job run id), as plain values."""
    metadata: dict[str, Any] = {}
    for result in invocation.get_results(implicit_materializations=False):
        if isinstance(result, dg.MaterializeResult) and result.metadata:
            metadata.update(_plain_metadata(result.metadata))
    for key, value in _plain_metadata(getattr(invocation, "metadata", None) or {}).items():
        metadata.setdefault(key, value)
    return metadata


def _target_asset_key(context: Any, table_name: str, asset_key: str | None) -> str:
    if asset_key:
        return asset_key
    keys = list(getattr(context, "selected_asset_keys", None) or [])
    wanted = dg.AssetKey(["bronze", table_name])
    if wanted in keys:
        return wanted.to_user_string()
    if len(keys) == 1:
        return keys[0].to_user_string()
    raise ValueError(f"cannot tell which asset bronze item of table {table_name!r} materializes among {keys}")


# ---- bronze -----------------------------------------------------------------------------------
class BronzeCompute(dg.ConfigurableResource):
    """Runs one bronze ledger item on its compute target and returns the reported metadata."""

    env: Literal["local", "aws"] = "local"
    region: str = "us-east-1"
    inprocess_mode: Literal["call", "subprocess"] = Field(
        default="call", description="inprocess items: direct call, or a subprocess through PipesSubprocessClient"
    )
    lambda_function: str = "datamaster-bronze-worker"
    lambda_timeout_seconds: int = Field(default=900, description="the function's configured timeout")
    pipes_bucket: str = Field(default="datamaster-lake", description="bucket for Lambda Pipes message chunks")
    pipes_prefix: str = "_pipes/messages"
    ecs_cluster: str = "datamaster"
    ecs_task_definition: str = "datamaster-bronze-worker"
    ecs_container_name: str = "bronze-worker"
    ecs_subnets: list[str] = Field(default_factory=list)
    ecs_security_groups: list[str] = Field(default_factory=list)
    ecs_assign_public_ip: bool = False
    ecs_poll_seconds: int = 6
    compute_shim: bool = Field(default=False, description="run Lambda/ECS compute locally at the boto3 edge")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "BronzeCompute":
        values: dict[str, Any] = dict(
            env=settings.env,
            region=settings.aws_region,
            lambda_function=settings.lambda_function,
            pipes_bucket=settings.lake_bucket,
            ecs_cluster=settings.ecs_cluster,
            ecs_task_definition=settings.ecs_task_definition,
            ecs_subnets=list(settings.ecs_subnets),
            ecs_security_groups=list(settings.ecs_security_groups),
            ecs_assign_public_ip=settings.ecs_assign_public_ip,
        )
        values.update(overrides)
        return cls(**values)

    def target_for(self, item: LedgerItem) -> str:
        """The local env runs everything in-process; on AWS the ledger's routing decides."""
        if self.env == "local":
            return "inprocess"
        if item.compute_target not in BRONZE_TARGETS:
            raise ValueError(
                f"ledger item {item.control_id}: compute_target {item.compute_target!r} is not one of {BRONZE_TARGETS}"
            )
        return item.compute_target

    def run_item(
        self, context: Any, item: LedgerItem, *, asset_key: str | None = None, lake: Any = None
    ) -> ItemOutcome:
        """Process ``item`` where it belongs. Never raises for a failed item: a launch failure or a
        crashed worker comes back as an outcome (the ledger keeps the item reclaimable)."""
        target = self.target_for(item)
        owner = f"{target}:{context.run_id}"
        try:
            if target == "inprocess" and self.inprocess_mode == "call":
                return self._call_inprocess(item, owner, lake)
            extras = {EXTRA_CONTROL_ID: item.control_id, EXTRA_ASSET_KEY: _target_asset_key(context, item.table_name, asset_key)}
            launch = {"inprocess": self._run_subprocess, "lambda": self._run_lambda, "ecs": self._run_ecs}[target]
            metadata = reported_metadata(launch(context, item, owner, extras))
        except Exception as exc:  # DagsterExecutionInterruptedError is a BaseException and still propagates
            context.log.error(f"bronze item {item.control_id} on {target} failed to run: {exc}")
            message = f"{type(exc).__name__}: {exc}"
            if lake is not None:
                _record_launch_failure(context, lake, item, owner, message)
            return ItemOutcome(item.control_id, target, "launch_failed", {}, message)
        metadata["compute_target"] = target
        status = str(metadata.get("status") or "unreported")
        return ItemOutcome(item.control_id, target, status, metadata, metadata.get("error_message"))

    def _call_inprocess(self, item: LedgerItem, owner: str, lake: Any = None) -> ItemOutcome:
        from datamaster_assets.lake.factory import open_lake
        from datamaster_assets.workers.bronze import process_bronze_item

        result = process_bronze_item(lake or open_lake(Settings.from_env()), item.control_id, owner=owner)
        metadata = {**result_metadata(result, item.control_id), "compute_target": "inprocess"}
        return ItemOutcome(item.control_id, "inprocess", str(metadata["status"]), metadata, metadata.get("error_message"))

    def _run_subprocess(self, context: Any, item: LedgerItem, owner: str, extras: dict[str, Any]) -> Any:
        command = [sys.executable, "-m", CONTAINER_MODULE, "bronze", "--control-id", item.control_id, "--owner", owner]
        return dg.PipesSubprocessClient().run(command=command, context=context, extras=extras)

    def lambda_client(self) -> Any:
        return _client("lambda", self.region, self.compute_shim, lambda_client_config(self.lambda_timeout_seconds))

    def _run_lambda(self, context: Any, item: LedgerItem, owner: str, extras: dict[str, Any]) -> Any:
        # Messages through S3, not the 4 KB log tail: see docs/compute.md.
        reader = PrefixedS3MessageReader(
            prefix=self.pipes_prefix, bucket=self.pipes_bucket, client=boto3.client("s3", region_name=self.region), interval=2
        )
        client = PipesLambdaClient(client=self.lambda_client(), message_reader=reader)
        # PipesLambdaClient.run takes no extras: the event carries what the worker needs.
        event = {"control_id": item.control_id, "owner": owner, **extras}
        return client.run(function_name=self.lambda_function, event=event, context=context)

    def ecs_run_task_params(self, item: LedgerItem, owner: str) -> dict[str, Any]:
        vpc: dict[str, Any] = {
            "subnets": list(self.ecs_subnets),
            "assignPublicIp": "ENABLED" if self.ecs_assign_public_ip else "DISABLED",
        }
        if self.ecs_security_groups:
            vpc["securityGroups"] = list(self.ecs_security_groups)
        return {
            "cluster": self.ecs_cluster,
            "taskDefinition": self.ecs_task_definition,
            "launchType": "FARGATE",
            "count": 1,
            "startedBy": "datamaster",
            "networkConfiguration": {"awsvpcConfiguration": vpc},
            "overrides": {
                "containerOverrides": [
                    {
                        "name": self.ecs_container_name,
                        "command": ["bronze", "--control-id", item.control_id, "--owner", owner],
                        "environment": [{"name": "DATAMASTER_CONTROL_ID", "value": item.control_id}],
                    }
                ]
            },
        }

    def _run_ecs(self, context: Any, item: LedgerItem, owner: str, extras: dict[str, Any]) -> Any:
        if not self.ecs_subnets:
            raise ValueError("ECS Fargate (awsvpc) needs subnets: set DATAMASTER_ECS_SUBNETS")
        client = PipesECSClient(
            client=_client("ecs", self.region, self.compute_shim),
            message_reader=SessionAwareCloudWatchMessageReader(client=boto3.client("logs", region_name=self.region)),
        )
        return client.run(
            context=context,
            run_task_params=self.ecs_run_task_params(item, owner),  # type: ignore[arg-type]
            extras=extras,
            pipes_container_name=self.ecs_container_name,
            waiter_config={"Delay": self.ecs_poll_seconds, "MaxAttempts": max(1, 86_400 // self.ecs_poll_seconds)},
        )


# ---- Spark on EMR Serverless --------------------------------------------------------------------
def default_spark_submit_parameters(settings: Settings) -> str:
    """Iceberg on the Glue catalog, as the spark/ jobs expect (EMR 7 ships the Iceberg runtime), and
    the packed virtualenv with the datamaster package and dagster_pipes (docs/spark.md builds it)
    next to the job scripts."""
    warehouse = f"s3://{settings.lake_bucket}/warehouse"
    venv = f"s3://{settings.lake_bucket}/code/spark/datamaster_venv.tar.gz#environment"
    return " ".join(
        f"--conf {c}"
        for c in (
            "spark.sql.extensions=org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
            "spark.sql.catalog.glue=org.apache.iceberg.spark.SparkCatalog",
            "spark.sql.catalog.glue.catalog-impl=org.apache.iceberg.aws.glue.GlueCatalog",
            "spark.sql.catalog.glue.io-impl=org.apache.iceberg.aws.s3.S3FileIO",
            f"spark.sql.catalog.glue.warehouse={warehouse}",
            "spark.jars=/usr/share/aws/iceberg/lib/iceberg-spark3-runtime.jar",
            "spark.hadoop.hive.metastore.client.factory.class="
            "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory",
            f"spark.archives={venv}",
            "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON=./environment/bin/python",
            "spark.emr-serverless.driverEnv.PYSPARK_PYTHON=./environment/bin/python",
            "spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python",
        )
    )


class SparkCompute(dg.ConfigurableResource):
    """Launches ``spark/<job>.py`` on EMR Serverless through Pipes when the change volume calls for it."""

    env: Literal["local", "aws"] = "local"
    region: str = "us-east-1"
    emr_min_change_rows: int = 5_000_000
    application_id: str = ""
    execution_role_arn: str = ""
    code_uri: str = Field(default="s3://datamaster-lake/code/spark", description="where spark/<job>.py is uploaded")
    log_group: str = "/aws/emr-serverless/datamaster"
    spark_submit_parameters: str = ""
    poll_seconds: float = 5.0
    compute_shim: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "SparkCompute":
        values: dict[str, Any] = dict(
            env=settings.env,
            region=settings.aws_region,
            emr_min_change_rows=settings.emr_min_change_rows,
            application_id=settings.emr_application_id,
            execution_role_arn=settings.emr_execution_role_arn,
            code_uri=f"s3://{settings.lake_bucket}/code/spark",
            log_group=settings.emr_log_group,
            spark_submit_parameters=default_spark_submit_parameters(settings),
        )
        values.update(overrides)
        return cls(**values)

    def use_emr(self, change_rows: int) -> bool:
        """EMR only on AWS, and only at or above the configured change volume."""
        return self.env == "aws" and change_rows >= self.emr_min_change_rows

    def start_job_run_params(self, job: str, args: Sequence[str] = ()) -> dict[str, Any]:
        if not job.replace("_", "").isalnum() or not job[0].isalpha():
            raise ValueError(f"Spark job name must be a Python module name under spark/, got {job!r}")
        if not self.application_id or not self.execution_role_arn:
            raise ValueError("EMR Serverless needs DATAMASTER_EMR_APPLICATION_ID and DATAMASTER_EMR_EXECUTION_ROLE_ARN")
        return {
            "applicationId": self.application_id,
            "executionRoleArn": self.execution_role_arn,
            "name": f"datamaster-{job}",
            "jobDriver": {
                "sparkSubmit": {
                    "entryPoint": f"{self.code_uri.rstrip('/')}/{job}.py",
                    "entryPointArguments": list(args),
                    "sparkSubmitParameters": self.spark_submit_parameters,
                }
            },
            "configurationOverrides": {
                "monitoringConfiguration": {
                    "cloudWatchLoggingConfiguration": {"enabled": True, "logGroupName": self.log_group}
                }
            },
        }

    def launch(self, context: Any, job: str, args: Sequence[str] = (), *, extras: dict[str, Any] | None = None) -> Any:
        """Run ``spark/<job>.py`` on EMR Serverless through Pipes; returns the Pipes invocation
        (``get_results()`` gives one MaterializeResult per asset the job reported; raises if it failed)."""
        client = PipesEMRServerlessClient(
            client=_client("emr-serverless", self.region, self.compute_shim),
            message_reader=SessionAwareCloudWatchMessageReader(client=boto3.client("logs", region_name=self.region)),
            poll_interval=self.poll_seconds,
        )
        return client.run(context=context, start_job_run_params=self.start_job_run_params(job, args), extras=extras)  # type: ignore[arg-type]

    def run_job(self, context: Any, job: str, args: Sequence[str] = (), *, extras: dict[str, Any] | None = None) -> dict[str, Any]:
        """``launch`` and return the metadata the job reported, as one plain dict."""
        return reported_metadata(self.launch(context, job, args, extras=extras))


def compute_resources(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"bronze_compute": ..., "spark_compute": ...}`` for Definitions; ``DATAMASTER_COMPUTE_SHIM=1``
    turns the boto3-edge shim on (``make demo-aws``)."""
    import os

    e = os.environ if environ is None else environ
    shim = e.get("DATAMASTER_COMPUTE_SHIM", "").strip().lower() in ("1", "true", "yes")
    return {
        "bronze_compute": BronzeCompute.from_settings(settings, compute_shim=shim),
        "spark_compute": SparkCompute.from_settings(settings, compute_shim=shim),
    }
