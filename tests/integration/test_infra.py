"""The CloudFormation stacks, parameter files, worker image and dashboard stay valid and in step
with the code: cfn-lint clean, the ledger table matches create_ledger_table, every handler and
name the templates use exists in the package."""

from __future__ import annotations

import importlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode

from datamaster_assets.lake.dynamo_ledger import create_ledger_table
from datamaster_assets.lake.landing import file_format_of, landed_at_of, table_of
from datamaster_assets.settings import Settings
from datamaster_assets.workers import firehose_router

INFRA = Path(__file__).resolve().parents[2] / "infra"
TEMPLATES = sorted(INFRA.glob("*.yaml"))
STACKS = {"storage", "ledger", "catalog", "compute", "firehose"}


def template(name: str) -> dict:
    doc, errors = decode(str(INFRA / f"{name}.yaml"))
    assert not errors, errors
    return doc


def resources_of_type(doc: dict, kind: str) -> dict:
    return {name: r for name, r in doc["Resources"].items() if r["Type"] == kind}


def sub_with_default_prefix(value) -> str:
    """Resolve a name written as !Sub "${NamePrefix}-..." with the default prefix."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    return text.replace("${NamePrefix}", "datamaster")


def test_every_stack_is_present():
    assert {t.stem for t in TEMPLATES} == STACKS


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_reports_no_errors(path: Path):
    matches = lint_file(path, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    errors = [f"{m.rule.id} {m.linenumber}: {m.message}" for m in matches if m.rule.id.startswith("E")]
    assert errors == []


def test_ledger_table_matches_create_ledger_table(aws_env):
    client = boto3.client("dynamodb")
    created = create_ledger_table(client, "dm-infra-check")
    table = template("ledger")["Resources"]["LedgerTable"]["Properties"]

    assert sub_with_default_prefix(table["TableName"]) == Settings().ledger_table
    assert table["BillingMode"] == created["BillingModeSummary"]["BillingMode"]
    assert table["KeySchema"] == created["KeySchema"]
    as_set = lambda defs: {(d["AttributeName"], d["AttributeType"]) for d in defs}  # noqa: E731
    assert as_set(table["AttributeDefinitions"]) == as_set(created["AttributeDefinitions"])
    code_gsis = {g["IndexName"]: (g["KeySchema"], g["Projection"]) for g in created["GlobalSecondaryIndexes"]}
    stack_gsis = {g["IndexName"]: (g["KeySchema"], g["Projection"]) for g in table["GlobalSecondaryIndexes"]}
    assert stack_gsis == code_gsis
    assert "status-created_at-index" in stack_gsis


def test_lambda_handlers_named_by_the_stack_exist():
    functions = resources_of_type(template("compute"), "AWS::Lambda::Function")
    handlers = {}
    for name, fn in functions.items():
        config = fn["Properties"]["ImageConfig"]
        assert config["EntryPoint"] == ["python", "-m", "awslambdaric"]
        [handler_path] = config["Command"]
        module, attr = handler_path.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attr)), handler_path
        handlers[sub_with_default_prefix(fn["Properties"]["FunctionName"])] = handler_path
    assert handlers == {
        Settings().lambda_function: "datamaster_assets.workers.lambda_handler.handler",
        "datamaster-s3-registration": "datamaster_assets.workers.s3_notification.handler",
        "datamaster-firehose-router": "datamaster_assets.workers.firehose_router.handler",
    }


def test_ecs_task_matches_what_dagster_launches():
    from datamaster_assets.defs.compute import BronzeCompute

    compute = template("compute")
    task = compute["Resources"]["BronzeTaskDefinition"]["Properties"]
    assert sub_with_default_prefix(task["Family"]) == Settings().ecs_task_definition
    assert compute["Resources"]["Cluster"]["Properties"]["ClusterName"] == {"Ref": "NamePrefix"}
    assert compute["Parameters"]["NamePrefix"]["Default"] == Settings().ecs_cluster
    [container] = task["ContainerDefinitions"]
    assert container["Name"] == BronzeCompute().ecs_container_name
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert set(container["LogConfiguration"]["Options"]) == {"awslogs-group", "awslogs-region", "awslogs-stream-prefix"}
    assert [s["Name"] for s in container["Secrets"]] == ["DATAMASTER_PII_KEY"]
    env = {e["Name"] for e in container["Environment"]}
    assert {"DATAMASTER_ENV", "DATAMASTER_RAW_BUCKET", "DATAMASTER_LAKE_BUCKET", "DATAMASTER_LEDGER_TABLE"} <= env


def test_orchestrator_may_call_what_the_pipes_clients_call():
    """PipesECSClient tags RunTask and calls DescribeTaskDefinition (no cluster parameter);
    PipesEMRServerlessClient reads the application after each run and tags the run."""
    from datamaster_assets.defs.compute import SparkCompute

    compute = template("compute")
    statements = {s["Sid"]: s for s in compute["Resources"]["OrchestratorPolicy"]["Properties"]["PolicyDocument"]["Statement"]}

    def actions(sid):
        action = statements[sid]["Action"]
        return {action} if isinstance(action, str) else set(action)

    assert "ecs:DescribeTaskDefinition" in actions("ReadTaskDefinitions") and "Condition" not in statements["ReadTaskDefinitions"]
    assert "ecs:DescribeTaskDefinition" not in actions("RunBronzeTasks")
    assert statements["TagBronzeTasksOnRun"]["Condition"] == {"StringEquals": {"ecs:CreateAction": "RunTask"}}
    assert {"emr-serverless:GetApplication", "emr-serverless:TagResource", "emr-serverless:StartJobRun"} <= actions("SparkJobs")
    # the Spark jobs log where the stack's log group is, and the deploy script says so
    assert compute["Outputs"]["EmrLogGroupName"] == {"Value": {"Ref": "EmrLogGroup"}, "Description": "DATAMASTER_EMR_LOG_GROUP"}
    assert "export DATAMASTER_EMR_LOG_GROUP=$(output compute EmrLogGroupName)" in (INFRA / "deploy.sh").read_text()
    settings = Settings.from_env({"DATAMASTER_EMR_LOG_GROUP": "/aws/emr-serverless/datamaster-dev"})
    assert SparkCompute.from_settings(settings).log_group == "/aws/emr-serverless/datamaster-dev"


def test_glue_databases_are_per_environment_from_stack_to_code():
    """Glue database names are per account and region: each environment's stack names its own,
    grants access to exactly those, and the code reads them from the catalog stack's output."""
    catalog, compute = template("catalog"), template("compute")
    layers = ("Bronze", "Silver", "Gold")
    assert [catalog["Outputs"][f"{layer}DatabaseName"]["Export"]["Name"]["Fn::Sub"] for layer in layers] == [
        f"${{NamePrefix}}-{layer}DatabaseName" for layer in layers]
    policies = [compute["Resources"]["OrchestratorPolicy"]["Properties"]["PolicyDocument"]]
    policies += [p["PolicyDocument"] for p in compute["Resources"]["EmrJobRole"]["Properties"]["Policies"]]
    glue_resources = [json.dumps(r) for doc in policies for st in doc["Statement"]
                      if any(str(a).startswith("glue:") for a in st["Action"]) for r in st["Resource"]]
    assert glue_resources and not any("dm_" in r for r in glue_resources)  # no other environment's databases
    for layer in layers:
        assert sum(f"${{NamePrefix}}-{layer}DatabaseName" in r for r in glue_resources) == 2 * len(policies)
    assert "export DATAMASTER_GLUE_DATABASES=$(output catalog GlueDatabases)" in (INFRA / "deploy.sh").read_text()
    dev, prod = (json.loads((INFRA / "params" / f"{env}.json").read_text())["Parameters"] for env in ("dev", "prod"))
    dev_names = [dev.get(f"{layer}DatabaseName", catalog["Parameters"][f"{layer}DatabaseName"]["Default"]) for layer in layers]
    prod_names = [prod.get(f"{layer}DatabaseName", catalog["Parameters"][f"{layer}DatabaseName"]["Default"]) for layer in layers]
    assert not set(dev_names) & set(prod_names)
    settings = Settings.from_env({"DATAMASTER_ENV": "aws", "DATAMASTER_PII_KEY": "k", "DATAMASTER_GLUE_DATABASES": ",".join(dev_names)})
    assert settings.namespaces == dict(zip(("bronze", "silver", "gold"), dev_names))
    with pytest.raises(ValueError, match="DATAMASTER_GLUE_DATABASES must be three distinct"):
        Settings.from_env({"DATAMASTER_GLUE_DATABASES": "dm_bronze,dm_silver"})


def test_worker_image_entrypoint_is_the_container_cli():
    dockerfile = (INFRA / "Dockerfile").read_text()
    [entrypoint] = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert json.loads(entrypoint) == ["python", "-m", "datamaster_assets.workers.container"]
    container = importlib.import_module("datamaster_assets.workers.container")
    assert container.build_parser().parse_args(["bronze", "--control-id", "b-1"]).control_id == "b-1"


def test_firehose_writes_keys_the_landing_sensor_understands():
    s3 = template("firehose")["Resources"]["CdcDelivery"]["Properties"]["ExtendedS3DestinationConfiguration"]
    assert f"!{{partitionKeyFromLambda:{firehose_router.PARTITION_KEY}}}" in s3["Prefix"]
    assert not s3["ErrorOutputPrefix"].startswith("raw/")  # failed records are never registered
    # Render a key as Firehose would: prefix expressions, then <stream>-<version>-<time>-<uuid><ext>.
    rendered = (
        s3["Prefix"]
        .replace("!{partitionKeyFromLambda:table_name}", "review")
        .replace("!{timestamp:yyyyMMdd}", "20261122")
        .replace("!{timestamp:HHmmss}", "040501")
        + "datamaster-cdc-1-2026-11-22-04-05-01-5c1f0e2a-43b2-4f0e-9b1e-7d3f5e6a7b8c"
        + s3["FileExtension"]
    )
    assert "!{" not in rendered
    assert table_of(rendered) == "review" and file_format_of(rendered) == "json"
    fallback = datetime(2000, 1, 1, tzinfo=timezone.utc)
    assert landed_at_of(rendered, fallback) == datetime(2026, 11, 22, 4, 5, 1, tzinfo=timezone.utc)
    assert s3["CompressionFormat"] == "GZIP"
    processor = s3["ProcessingConfiguration"]["Processors"][0]
    assert processor["Type"] == "Lambda"


def test_parameter_files_fit_the_templates():
    declared: dict[str, set[str]] = {}
    required: set[str] = set()
    for path in TEMPLATES:
        doc = template(path.stem)
        for name, spec in doc.get("Parameters", {}).items():
            declared.setdefault(name, set()).add(path.stem)
            if "Default" not in spec:
                required.add(name)
    for env in ("dev", "prod"):
        params = json.loads((INFRA / "params" / f"{env}.json").read_text())["Parameters"]
        assert set(params) <= set(declared), f"{env}.json sets parameters no template declares"
        assert all(isinstance(v, str) for v in params.values())
        # The image URI is the one value only known at deploy time (infra/deploy.sh passes it).
        assert required - set(params) == {"WorkerImageUri"}
    assert "WorkerImageUri=" in (INFRA / "deploy.sh").read_text()


def test_grafana_dashboard_reads_metrics_the_stacks_and_handlers_produce():
    dashboard = json.loads((INFRA / "grafana" / "datamaster.json").read_text())
    compute = template("compute")
    function_names = {sub_with_default_prefix(f["Properties"]["FunctionName"]).replace("datamaster", "$prefix", 1)
                      for f in resources_of_type(compute, "AWS::Lambda::Function").values()}
    emitted = {
        "s3_notification": {"objects", "keys", "registered", "not_new"},
        "firehose_router": {"records", "ok", "dropped", "processing_failed"},
    }
    namespaces = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["type"] == "cloudwatch"
            namespaces.add(t["namespace"])
            dims = t["dimensions"]
            if t["namespace"] == "AWS/Lambda":
                assert dims["FunctionName"] in function_names
            if t["namespace"] == "AWS/DynamoDB":
                assert dims["TableName"] == "$prefix-control"
            if t["namespace"] == "datamaster":
                assert t["metricName"] in emitted[dims["Function"]]
    assert {"AWS/Lambda", "ECS/ContainerInsights", "AWS/DynamoDB", "datamaster"} <= namespaces
