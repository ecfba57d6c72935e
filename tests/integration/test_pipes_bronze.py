"""Bronze compute through Dagster Pipes against moto, compute shimmed at the boto3 edge.

Real: BronzeCompute, PipesLambdaClient / PipesECSClient / PipesSubprocessClient, the Lambda
handler and container CLI, every boto3 call (Lambda config, S3 message chunks, ECS task,
CloudWatch Logs, DynamoDB ledger). Shimmed: only Invoke/RunTask execute locally. The worker
function itself is a test double (pipes_fake_worker) that claims and completes the real item.
"""

import http.server
import sys
import threading
from pathlib import Path

import boto3
import dagster as dg
import pytest

from datamaster_assets.defs.compute import BronzeCompute, lambda_client_config
from datamaster_assets.lake.batching import plan_batches
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.ledger import Registration, Status
from datamaster_assets.settings import Settings
from tests.integration import pipes_fake_worker

pytestmark = pytest.mark.aws

FAKE_WORKER = Path(pipes_fake_worker.__file__)
REPO_ROOT = FAKE_WORKER.parents[2]
ENV = {
    "DATAMASTER_ENV": "aws",
    "DATAMASTER_PII_KEY": "test-key",
    "DATAMASTER_RAW_BUCKET": "dm-raw",
    "DATAMASTER_LAKE_BUCKET": "dm-lake",
    "DATAMASTER_LEDGER_TABLE": "dm-control",
}


@pytest.fixture
def aws_lake(aws_env, monkeypatch):
    from datamaster_assets.lake.bootstrap import bootstrap_aws

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setitem(sys.modules, "datamaster_assets.workers.bronze", pipes_fake_worker)
    settings = Settings.from_env()
    bootstrap_aws(settings)
    return open_lake(settings)


def _register(lake, table: str, target: str, size: int = 12_340) -> str:
    reg = Registration("bronze", table, f"raw/{table}/f-{target}.csv.gz", f"sum-{target}", "csv", size, target)
    item, created = lake.ledger.register(reg)
    assert created
    return item.control_id


def _compute(**overrides) -> BronzeCompute:
    return BronzeCompute.from_settings(Settings.from_env(), compute_shim=True, **overrides)


def _materialize(lake, compute: BronzeCompute, control_id: str, table: str = "brewery"):
    @dg.asset(key=["bronze", table])
    def bronze_asset(context: dg.AssetExecutionContext, bronze_compute: BronzeCompute) -> dg.MaterializeResult:
        outcome = bronze_compute.run_item(context, lake.ledger.get(control_id), lake=lake)
        return dg.MaterializeResult(metadata={**outcome.metadata, "outcome_status": outcome.status,
                                              "outcome_error": outcome.error_message or ""})

    result = dg.materialize([bronze_asset], resources={"bronze_compute": compute})
    [mat] = result.asset_materializations_for_node(f"bronze__{table}")
    return result, {k: v.value for k, v in mat.metadata.items()}


def _lambda_function(name: str = "datamaster-bronze-worker", timeout: int = 900) -> None:
    iam = boto3.client("iam")
    role = iam.create_role(RoleName="bronze-lambda", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    boto3.client("lambda").create_function(
        FunctionName=name, Runtime="python3.11", Role=role, Timeout=timeout,
        Handler="datamaster_assets.workers.lambda_handler.handler", Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
        Environment={"Variables": ENV},
    )


@pytest.mark.slow
def test_lambda_round_trip_reports_worker_metadata(aws_lake) -> None:
    _lambda_function()
    control_id = _register(aws_lake, "brewery", "lambda")
    result, md = _materialize(aws_lake, _compute(), control_id)
    assert result.success
    assert md["outcome_status"] == "success"
    assert md["control_id"] == control_id
    assert md["dagster/row_count"] == 1234
    assert md["env"] == "aws"
    assert md["owner"] == f"lambda:{result.run_id}"
    assert len(md["big"]) == 6000  # larger than the 4 KB log tail: messages went through S3
    assert md["compute_target"] == "lambda"
    item = aws_lake.ledger.get(control_id)
    assert item.status == Status.SUCCESS and item.record_count == 1234
    # message chunks were cleaned up from the Pipes prefix
    assert boto3.client("s3").list_objects_v2(Bucket="dm-lake", Prefix="_pipes/").get("KeyCount") == 0


@pytest.mark.slow
def test_warm_lambda_handles_a_second_invocation(aws_lake) -> None:
    _lambda_function()
    first = _register(aws_lake, "brewery", "lambda")
    second = _register(aws_lake, "beer", "lambda")
    _, md1 = _materialize(aws_lake, _compute(), first, "brewery")
    _, md2 = _materialize(aws_lake, _compute(), second, "beer")  # same process: the handler module stays warm
    assert (md1["control_id"], md2["control_id"]) == (first, second)
    assert md2["status"] == "success"


@pytest.mark.slow  # dagster waits 10 s for messages that never come
def test_lambda_missing_function_is_a_launch_failure_recorded_as_a_failed_attempt(aws_lake) -> None:
    control_id = _register(aws_lake, "brewery", "lambda")
    before = aws_lake.ledger.get(control_id)
    result, md = _materialize(aws_lake, _compute(lambda_function="no-such-function"), control_id)
    assert md["outcome_status"] == "launch_failed"
    assert "ResourceNotFoundException" in md["outcome_error"]
    # the item is retryable with one attempt used, so the sensor's next request has a new run key
    item = aws_lake.ledger.get(control_id)
    assert (item.status, item.attempt_count) == (Status.ERROR, 1)
    assert item.error_message.startswith("compute did not start: ") and "ResourceNotFoundException" in item.error_message
    assert plan_batches([item], max_files=1, max_bytes=10**9)[0].run_key != \
        plan_batches([before], max_files=1, max_bytes=10**9)[0].run_key


def _ecs_setup(container_name: str = "bronze-worker") -> tuple[list[str], list[str]]:
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto's awsvpc tasks need it
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="bronze-worker", Description="bronze", VpcId=vpc)["GroupId"]
    boto3.client("logs").create_log_group(logGroupName="/datamaster/bronze-worker")
    ecs = boto3.client("ecs")
    ecs.create_cluster(clusterName="datamaster")
    ecs.register_task_definition(
        family="datamaster-bronze-worker", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
        cpu="1024", memory="4096",
        containerDefinitions=[{
            "name": container_name, "image": "datamaster/worker:test", "essential": True, "memory": 4096,
            # The image runs the container CLI; here the test double wraps it (see pipes_fake_worker).
            "entryPoint": ["python", str(FAKE_WORKER)],
            "environment": [{"name": k, "value": v} for k, v in ENV.items()],
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": "/datamaster/bronze-worker", "awslogs-region": "us-east-1",
                "awslogs-stream-prefix": "bronze"}},
        }],
    )
    return [subnet], [group]


@pytest.mark.slow
def test_ecs_round_trip_reports_worker_metadata(aws_lake) -> None:
    subnets, groups = _ecs_setup()
    control_id = _register(aws_lake, "review", "ecs", size=5_000_000)
    compute = _compute(ecs_subnets=subnets, ecs_security_groups=groups, ecs_poll_seconds=1)
    result, md = _materialize(aws_lake, compute, control_id, "review")
    assert result.success
    assert md["outcome_status"] == "success"
    assert md["control_id"] == control_id
    assert md["dagster/row_count"] == 500_000
    assert md["owner"] == f"ecs:{result.run_id}"  # control id and owner travelled in the container override
    assert md["AWS ECS Task URL"].startswith("https://us-east-1.console.aws.amazon.com/ecs/v2/clusters/datamaster/tasks/")
    assert aws_lake.ledger.get(control_id).status == Status.SUCCESS
    task_arn = boto3.client("ecs").list_tasks(cluster="datamaster", desiredStatus="STOPPED")["taskArns"][0]
    [task] = boto3.client("ecs").describe_tasks(cluster="datamaster", tasks=[task_arn])["tasks"]
    assert task["overrides"]["containerOverrides"][0]["command"] == [
        "bronze", "--control-id", control_id, "--owner", f"ecs:{result.run_id}"]
    assert task["containers"][0]["exitCode"] == 0


def test_ecs_item_held_by_another_worker_is_reported_not_claimable(aws_lake) -> None:
    subnets, groups = _ecs_setup()
    compute = _compute(ecs_subnets=subnets, ecs_security_groups=groups, ecs_poll_seconds=1)
    control_id = _register(aws_lake, "review", "ecs")
    item = aws_lake.ledger.get(control_id)
    params = compute.ecs_run_task_params(item, "me")
    assert params["networkConfiguration"]["awsvpcConfiguration"] == {
        "subnets": subnets, "securityGroups": groups, "assignPublicIp": "DISABLED"}
    aws_lake.ledger.claim(control_id, "someone-else", lease_seconds=600)  # the worker cannot claim it
    result, md = _materialize(aws_lake, compute, control_id, "review")
    assert md["outcome_status"] == "not_claimable"
    assert aws_lake.ledger.get(control_id).lease_owner == "someone-else"


def test_inprocess_subprocess_mode_goes_through_pipes_subprocess_client(aws_lake, monkeypatch) -> None:
    # In subprocess mode the worker is a fresh interpreter: point it at the test double's entry point.
    import datamaster_assets.defs.compute as compute_module

    monkeypatch.setattr(compute_module, "CONTAINER_MODULE", "tests.integration.pipes_fake_worker")
    control_id = _register(aws_lake, "brewery", "inprocess")
    result, md = _materialize(aws_lake, _compute(inprocess_mode="subprocess"), control_id)
    assert md["outcome_status"] == "success"
    assert md["compute_target"] == "inprocess"
    assert md["owner"] == f"inprocess:{result.run_id}"


def test_inprocess_call_mode_calls_the_worker_directly(aws_lake) -> None:
    control_id = _register(aws_lake, "brewery", "inprocess")
    result, md = _materialize(aws_lake, _compute(), control_id)
    assert md["outcome_status"] == "success" and md["dagster/row_count"] == 1234


@pytest.mark.parametrize(
    ("env", "target", "expected"),
    [("local", "lambda", "inprocess"), ("local", "ecs", "inprocess"), ("aws", "lambda", "lambda"),
     ("aws", "ecs", "ecs"), ("aws", "inprocess", "inprocess")],
)
def test_routing_by_compute_target(env, target, expected) -> None:
    from datamaster_assets.lake.ledger import LedgerItem
    from datetime import datetime, timezone

    item = LedgerItem("b-1", "bronze", "beer", "raw/beer/x.csv.gz", "c", "csv", 1, Status.PENDING, 0, target,
                      datetime.now(timezone.utc))
    assert BronzeCompute(env=env).target_for(item) == expected


def test_unknown_compute_target_is_a_clear_error() -> None:
    from datamaster_assets.lake.ledger import LedgerItem
    from datetime import datetime, timezone

    item = LedgerItem("b-9", "bronze", "beer", "k", "c", "csv", 1, Status.PENDING, 0, "emr", datetime.now(timezone.utc))
    with pytest.raises(ValueError, match="b-9.*'emr'"):
        BronzeCompute(env="aws").target_for(item)


def test_lambda_client_has_long_read_timeout_and_no_retries() -> None:
    client = BronzeCompute(env="aws", lambda_timeout_seconds=900).lambda_client()
    assert client.meta.config.read_timeout == 960
    assert client.meta.config.read_timeout > 900
    assert client.meta.config.retries["total_max_attempts"] == 1
    assert lambda_client_config(60).read_timeout == 120


def test_lambda_invoke_is_attempted_exactly_once_on_a_retryable_error() -> None:
    """botocore retries 5xx/throttling by default; a sync invoke must never be sent twice."""
    hits: list[str] = []

    class Throttled(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Throttled)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = boto3.client("lambda", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{server.server_port}",
                              aws_access_key_id="x", aws_secret_access_key="x", config=lambda_client_config(30))
        with pytest.raises(Exception):
            client.invoke(FunctionName="f", InvocationType="RequestResponse", Payload=b"{}")
        assert len(hits) == 1
        from botocore.config import Config

        retrying = Config(retries={"mode": "standard", "max_attempts": 2})  # what a client without our config does
        default = boto3.client("lambda", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{server.server_port}",
                               aws_access_key_id="x", aws_secret_access_key="x", config=retrying)
        hits.clear()
        with pytest.raises(Exception):
            default.invoke(FunctionName="f", InvocationType="RequestResponse", Payload=b"{}")
        assert len(hits) == 3  # 1 + 2 retries: the count above can fail, a retrying client resends
    finally:
        server.shutdown()
