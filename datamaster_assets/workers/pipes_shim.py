"""Compute shimmed at the boto3 edge: run the real workers where AWS would run them remotely.

Everything up to and after the compute is real: the dagster-aws Pipes clients, their context
injectors and message readers, and every boto3 call (to a moto server in tests and in
``make demo-aws``). Only the three calls that would start compute on AWS are intercepted on the
boto3 clients they are installed on, through botocore's event hooks:

- ``lambda:Invoke`` (``before-call``, short-circuits): reads the function's configuration from the
  endpoint (so a missing function fails as on AWS), imports the configured ``Handler`` and calls it
  in this process with the event the client sent and the function's environment variables,
  like a warm Lambda container; answers with the payload, ``FunctionError`` and the base64 4 KB
  ``LogResult`` tail as Lambda does.
- ``ecs:RunTask`` (``after-call``): the endpoint creates the task; the shim runs each container's
  ``entryPoint`` + ``command`` (with the call's container overrides) as a subprocess with the task
  definition's and the overrides' environment, ships stdout/stderr to the ``awslogs`` group and
  stream the task definition names, then stops the task. ``DescribeTasks`` answers then carry the
  real exit codes. An ``awsvpc`` RunTask without security groups is given the subnets' VPC default
  group before it is sent, as AWS does (moto rejects the call otherwise).
- ``emr-serverless:StartJobRun`` (``after-call``): the endpoint creates the job run; the shim
  fetches the ``entryPoint`` script (``s3://`` through the endpoint, or a local path) and runs it
  with ``python`` and the ``spark.emr-serverless.driverEnv.*`` variables from
  ``sparkSubmitParameters``, shipping driver stdout/stderr to the CloudWatch streams EMR Serverless
  uses. ``GetJobRun`` reports ``FAILED`` if the script failed; ``GetDashboardForJobRun`` is answered
  locally (moto does not implement it) and ``GetApplication``'s engine type is spelled as AWS
  spells it (``Spark``; moto echoes ``SPARK``).

No Dagster imports here: this module sits on the boto3 side of the line.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlparse

import boto3
from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody

LAMBDA_LOG_TAIL_BYTES = 4096
EMR_DRIVER_ENV_PREFIX = "spark.emr-serverless.driverEnv."
_PARAMS_KEY = "datamaster_shim_api_params"
_CLIENT_KEY = "datamaster_shim_client"


@dataclass(frozen=True)
class ProcessOutcome:
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int


@dataclass
class _TaskRecord:
    exit_codes: dict[str, int] = field(default_factory=dict)
    failed_to_start: str | None = None


def run_process(argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> ProcessOutcome:
    """Run a worker process to completion; a timeout counts as exit code 124 (as coreutils timeout)."""
    started = time.monotonic()
    try:
        proc = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True, timeout=timeout_s)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")) + f"\ntimed out after {timeout_s}s"
        code = 124
    return ProcessOutcome(code, out, err, int((time.monotonic() - started) * 1000))


def driver_env_from_spark_submit(spark_submit_parameters: str) -> dict[str, str]:
    """``--conf spark.emr-serverless.driverEnv.K=V`` pairs -> {K: V} (what the EMR driver's env gets)."""
    env: dict[str, str] = {}
    tokens = shlex.split(spark_submit_parameters or "")
    for i, token in enumerate(tokens):
        conf = tokens[i + 1] if token == "--conf" and i + 1 < len(tokens) else None
        if conf and conf.startswith(EMR_DRIVER_ENV_PREFIX) and "=" in conf:
            key, value = conf[len(EMR_DRIVER_ENV_PREFIX) :].split("=", 1)
            env[key] = value
    return env


def lambda_log_tail(log_text: str, limit: int = LAMBDA_LOG_TAIL_BYTES) -> str:
    """The base64 ``LogResult`` of a ``LogType=Tail`` invoke: the last 4 KB of the invocation's log."""
    return base64.b64encode(log_text.encode("utf-8")[-limit:]).decode("ascii")


def _ok(parsed: dict[str, Any], url: str) -> tuple[AWSResponse, dict[str, Any]]:
    parsed.setdefault("ResponseMetadata", {"HTTPStatusCode": 200, "HTTPHeaders": {}, "RetryAttempts": 0})
    return AWSResponse(url, 200, {}, None), parsed


class _LambdaContext:
    """The attributes of the Lambda runtime's context object a handler commonly reads."""

    def __init__(self, config: Mapping[str, Any], deadline: float):
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = config["FunctionName"]
        self.function_version = config.get("Version", "$LATEST")
        self.invoked_function_arn = config.get("FunctionArn", "")
        self.memory_limit_in_mb = config.get("MemorySize", 128)
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"shim/{self.aws_request_id}"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class ComputeShim:
    """Install on boto3 ``lambda``, ``ecs`` and ``emr-serverless`` clients with :meth:`install`."""

    def __init__(self, *, python: str = sys.executable, process_timeout_s: float = 900.0):
        self.python = python
        self.process_timeout_s = process_timeout_s
        self._ecs_tasks: dict[str, _TaskRecord] = {}
        self._emr_runs: dict[str, ProcessOutcome] = {}
        self._env_lock = threading.Lock()  # in-process Lambda handlers see their function's env
        self.invocations: list[dict[str, Any]] = []  # what was launched, for tests and the demo log

    # ---- wiring -----------------------------------------------------------------------------
    def install(self, client: Any) -> Any:
        service = client.meta.service_model.service_id.hyphenize()
        hooks: dict[str, Callable[..., Any]] = {
            "lambda": {"before-call.lambda.Invoke": self._invoke_lambda},
            "ecs": {
                "after-call.ecs.RunTask": self._after_run_task,
                "after-call.ecs.DescribeTasks": self._after_describe_tasks,
            },
            "emr-serverless": {
                "after-call.emr-serverless.StartJobRun": self._after_start_job_run,
                "after-call.emr-serverless.GetJobRun": self._after_get_job_run,
                "before-call.emr-serverless.GetDashboardForJobRun": self._dashboard,
                "after-call.emr-serverless.GetApplication": self._aws_engine_name,
            },
        }.get(service)
        if hooks is None:
            raise ValueError(f"the compute shim only intercepts lambda, ecs and emr-serverless, not {service!r}")
        def remember_call(params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
            context[_PARAMS_KEY] = copy.deepcopy(dict(params))
            context[_CLIENT_KEY] = client

        if service == "ecs":
            def default_security_group(params: dict[str, Any], **_: Any) -> None:
                self._default_security_group(params, client)

            client.meta.events.register("before-parameter-build.ecs.RunTask", default_security_group)
        client.meta.events.register(f"before-parameter-build.{service}", remember_call)
        for event, hook in hooks.items():
            client.meta.events.register(event, hook)
        return client

    @staticmethod
    def _plain_client(service: str, like: Any) -> Any:
        """An un-shimmed client talking to the same endpoint and region as ``like``."""
        return boto3.client(service, region_name=like.meta.region_name, endpoint_url=like.meta.endpoint_url)

    def _run_argv(self, argv: Sequence[str]) -> list[str]:
        first = os.path.basename(argv[0]) if argv else ""
        return [self.python, *argv[1:]] if first.startswith("python") else list(argv)

    # ---- Lambda -----------------------------------------------------------------------------
    def _invoke_lambda(self, model: Any, context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        params = context[_PARAMS_KEY]
        if params.get("InvocationType", "RequestResponse") != "RequestResponse":
            raise ValueError("the compute shim runs synchronous (RequestResponse) invokes only")
        plain = self._plain_client("lambda", self._client_of(context))
        config = plain.get_function_configuration(FunctionName=params["FunctionName"])
        raw = params.get("Payload") or b"{}"
        event = json.loads(raw.decode() if isinstance(raw, (bytes, bytearray)) else raw)
        fn_env = (config.get("Environment") or {}).get("Variables") or {}
        timeout_s = float(config.get("Timeout", 3))
        ctx = _LambdaContext(config, time.monotonic() + timeout_s)
        out = io.StringIO()
        started = time.monotonic()
        error: dict[str, Any] | None = None
        result: Any = None
        with self._env_lock, patched_environ({**fn_env, "AWS_LAMBDA_FUNCTION_NAME": ctx.function_name}):
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    module_name, fn_name = config["Handler"].rsplit(".", 1)
                    result = getattr(import_module(module_name.replace("/", ".")), fn_name)(event, ctx)
                except Exception as exc:  # the Lambda runtime turns any exception into FunctionError
                    traceback.print_exc()
                    error = {"errorMessage": str(exc), "errorType": type(exc).__name__,
                             "stackTrace": traceback.format_tb(exc.__traceback__)}
        elapsed = time.monotonic() - started
        if error is None and elapsed > timeout_s:
            error = {"errorMessage": f"Task timed out after {timeout_s:.2f} seconds", "errorType": "Sandbox.Timedout"}
        log_text = (
            f"START RequestId: {ctx.aws_request_id} Version: $LATEST\n{out.getvalue()}"
            f"END RequestId: {ctx.aws_request_id}\n"
            f"REPORT RequestId: {ctx.aws_request_id}\tDuration: {elapsed * 1000:.2f} ms\n"
        )
        body = json.dumps(error if error is not None else result, default=str).encode()
        parsed: dict[str, Any] = {
            "StatusCode": 200,
            "ExecutedVersion": "$LATEST",
            "Payload": StreamingBody(io.BytesIO(body), len(body)),
        }
        if params.get("LogType") == "Tail":
            parsed["LogResult"] = lambda_log_tail(log_text)
        if error is not None:
            parsed["FunctionError"] = "Unhandled"
        self.invocations.append({"service": "lambda", "function": ctx.function_name, "event": event,
                                 "error": error, "log": log_text})
        return _ok(parsed, f"shim://lambda/{ctx.function_name}")

    @staticmethod
    def _client_of(context: dict[str, Any]) -> Any:
        return context[_CLIENT_KEY]

    # ---- ECS --------------------------------------------------------------------------------
    def _after_run_task(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        params = context[_PARAMS_KEY]
        client = self._client_of(context)
        ecs = self._plain_client("ecs", client)
        logs = self._plain_client("logs", client)
        task_def = ecs.describe_task_definition(taskDefinition=params["taskDefinition"])["taskDefinition"]
        overrides = {o["name"]: o for o in (params.get("overrides") or {}).get("containerOverrides", [])}
        for task in parsed.get("tasks", []):
            task_arn = task["taskArn"]
            task_id = task_arn.split("/")[-1]
            record = _TaskRecord()
            for container in task_def["containerDefinitions"]:
                name = container["name"]
                override = overrides.get(name, {})
                env = {**os.environ, **{e["name"]: e["value"] for e in container.get("environment", [])},
                       **{e["name"]: e["value"] for e in override.get("environment", [])}}
                argv = [*container.get("entryPoint", []), *override.get("command", container.get("command", []))]
                log_target = _awslogs_target(container, task_id)
                if log_target is not None and not _ensure_log_group(logs, log_target[0], log_target[2]):
                    record.failed_to_start = (
                        f"ResourceInitializationError: log group {log_target[0]!r} does not exist"
                    )
                    break
                outcome = run_process(self._run_argv(argv), env, self.process_timeout_s)
                record.exit_codes[name] = outcome.exit_code
                if log_target is not None:
                    put_log_lines(logs, log_target[0], log_target[1], outcome.stdout + outcome.stderr)
                self.invocations.append({"service": "ecs", "task": task_arn, "container": name, "argv": argv,
                                         "exit_code": outcome.exit_code, "stderr": outcome.stderr})
            self._ecs_tasks[task_arn] = record
            ecs.stop_task(cluster=params.get("cluster", "default"), task=task_arn, reason="Essential container in task exited")

    def _default_security_group(self, params: dict[str, Any], client: Any) -> None:
        """An awsvpc RunTask without security groups gets the subnets' VPC default group, as on AWS
        (moto's RunTask requires the field and fails without it)."""
        vpc_conf = (params.get("networkConfiguration") or {}).get("awsvpcConfiguration")
        if not vpc_conf or vpc_conf.get("securityGroups") or not vpc_conf.get("subnets"):
            return
        ec2 = self._plain_client("ec2", client)
        vpc_id = ec2.describe_subnets(SubnetIds=list(vpc_conf["subnets"][:1]))["Subnets"][0]["VpcId"]
        groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                                       {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"]
        if groups:
            vpc_conf["securityGroups"] = [groups[0]["GroupId"]]

    def _after_describe_tasks(self, parsed: dict[str, Any], **_: Any) -> None:
        for task in parsed.get("tasks", []):
            record = self._ecs_tasks.get(task.get("taskArn", ""))
            if record is None:
                continue
            task["lastStatus"] = "STOPPED"
            if record.failed_to_start:
                task["stopCode"] = "TaskFailedToStart"
                task["stoppedReason"] = record.failed_to_start
            else:
                task["stopCode"] = "EssentialContainerExited"
            for container in task.get("containers", []):
                container["lastStatus"] = "STOPPED"
                if container.get("name") in record.exit_codes:
                    container["exitCode"] = record.exit_codes[container["name"]]
                else:
                    container.pop("exitCode", None)

    # ---- EMR Serverless ---------------------------------------------------------------------
    def _after_start_job_run(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        params = context[_PARAMS_KEY]
        client = self._client_of(context)
        app_id, run_id = parsed["applicationId"], parsed["jobRunId"]
        spark = params.get("jobDriver", {}).get("sparkSubmit", {})
        application = client.get_application(applicationId=app_id)["application"]
        monitoring = {
            **application.get("monitoringConfiguration", {}),
            **params.get("configurationOverrides", {}).get("monitoringConfiguration", {}),
        }
        env = {**os.environ, **driver_env_from_spark_submit(spark.get("sparkSubmitParameters", ""))}
        with tempfile.TemporaryDirectory(prefix="emr-shim-") as tmp:
            script = self._fetch_entry_point(spark["entryPoint"], tmp, client)
            outcome = run_process([self.python, script, *spark.get("entryPointArguments", [])], env, self.process_timeout_s)
        self._emr_runs[run_id] = outcome
        cw = monitoring.get("cloudWatchLoggingConfiguration", {})
        if cw.get("enabled"):
            logs = self._plain_client("logs", client)
            group = cw.get("logGroupName") or "/aws/emr-serverless"
            stream = f"{cw.get('logStreamNamePrefix', '')}/applications/{app_id}/jobs/{run_id}/SPARK_DRIVER"
            _ensure_log_group(logs, group, create=True)
            put_log_lines(logs, group, f"{stream}/stdout", outcome.stdout)
            put_log_lines(logs, group, f"{stream}/stderr", outcome.stderr)
        self.invocations.append({"service": "emr-serverless", "job_run_id": run_id, "entry_point": spark["entryPoint"],
                                 "exit_code": outcome.exit_code, "stderr": outcome.stderr})

    def _fetch_entry_point(self, entry_point: str, into: str, client: Any) -> str:
        url = urlparse(entry_point)
        if url.scheme == "s3":
            local = os.path.join(into, os.path.basename(url.path))
            self._plain_client("s3", client).download_file(url.netloc, url.path.lstrip("/"), local)
            return local
        return url.path if url.scheme == "file" else entry_point

    def _after_get_job_run(self, parsed: dict[str, Any], **_: Any) -> None:
        job_run = parsed.get("jobRun", {})
        outcome = self._emr_runs.get(job_run.get("jobRunId", ""))
        if outcome is not None and outcome.exit_code != 0:
            job_run["state"] = "FAILED"
            job_run["stateDetails"] = f"driver exited with {outcome.exit_code}: {outcome.stderr[-1000:]}"

    @staticmethod
    def _aws_engine_name(parsed: dict[str, Any], **_: Any) -> None:
        # AWS answers GetApplication with type "Spark"/"Hive" (what PipesEMRServerlessClient
        # matches on); moto echoes the "SPARK" it was created with.
        application = parsed.get("application", {})
        application["type"] = {"SPARK": "Spark", "HIVE": "Hive"}.get(application.get("type", ""), application.get("type"))

    @staticmethod
    def _dashboard(context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        params = context[_PARAMS_KEY]
        url = f"shim://emr-serverless/{params['applicationId']}/jobs/{params['jobRunId']}"
        return _ok({"url": url}, url)


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str], remove: Iterable[str] = ()):
    """Set ``values`` and drop ``remove`` in os.environ for the duration; restore everything after."""
    drop = set(remove)
    saved = {k: os.environ.get(k) for k in set(values) | drop}
    for key in drop:
        os.environ.pop(key, None)
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _awslogs_target(container: Mapping[str, Any], task_id: str) -> tuple[str, str, bool] | None:
    """(group, stream, create_group) the awslogs driver writes this container's output to."""
    config = container.get("logConfiguration") or {}
    if config.get("logDriver") != "awslogs":
        return None
    options = config.get("options", {})
    stream = f"{options['awslogs-stream-prefix']}/{container['name']}/{task_id}"
    return options["awslogs-group"], stream, options.get("awslogs-create-group") == "true"


def _ensure_log_group(logs: Any, group: str, create: bool) -> bool:
    found = logs.describe_log_groups(logGroupNamePrefix=group).get("logGroups", [])
    if any(g["logGroupName"] == group for g in found):
        return True
    if create:
        logs.create_log_group(logGroupName=group)
        return True
    return False


def put_log_lines(logs: Any, group: str, stream: str, text: str, batch: int = 1000) -> None:
    """Write ``text`` line by line to a CloudWatch stream, as a log driver does."""
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now_ms = int(time.time() * 1000)
    events = [{"timestamp": now_ms, "message": line} for line in text.splitlines() if line]
    for start in range(0, len(events), batch):
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events[start : start + batch])


# ---- provisioning the shimmed compute on an emulator ------------------------------------------
SHIM_WORKER_HANDLER = "datamaster_assets.workers.lambda_handler.handler"
SHIM_CONTAINER_ENTRY_POINT = ("python", "-m", "datamaster_assets.workers.container")  # infra/Dockerfile's ENTRYPOINT
SHIM_CONTAINER_NAME = "bronze-worker"  # BronzeCompute.ecs_container_name
SHIM_NAME_TAG = "datamaster-shim"
# A syntactically valid empty zip: the shim imports the handler from this process, never the code.
_EMPTY_ZIP = b"PK\x05\x06" + b"\x00" * 18


@dataclass(frozen=True)
class ShimCompute:
    """What :func:`provision_shim_compute` created, named as the settings and the resources expect."""

    lambda_function: str
    lambda_log_group: str
    ecs_cluster: str
    ecs_task_definition_arn: str
    ecs_log_group: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]

    @property
    def environ(self) -> dict[str, str]:
        """The variables that point the Dagster resources at this compute (``DATAMASTER_ECS_*``)."""
        return {"DATAMASTER_ECS_SUBNETS": ",".join(self.subnets)}


def worker_environment(settings: Any) -> dict[str, str]:
    """The worker's configuration, as infra/compute.yaml sets it on the function and the task."""
    return {
        "DATAMASTER_ENV": "aws",
        "DATAMASTER_RAW_BUCKET": settings.raw_bucket,
        "DATAMASTER_LAKE_BUCKET": settings.lake_bucket,
        "DATAMASTER_LEDGER_TABLE": settings.ledger_table,
        "DATAMASTER_LAMBDA_MAX_RECORDS": str(settings.lambda_max_records),
        "DATAMASTER_PII_KEY": settings.pii_key,
    }


def _ensure_role(iam: Any, name: str, service: str) -> str:
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]}
    try:
        return iam.get_role(RoleName=name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


def _ensure_network(ec2: Any) -> tuple[str, str]:
    """A VPC, one subnet and one security group tagged ``datamaster-shim`` (awsvpc tasks need them)."""
    tag = [{"Name": "tag:Name", "Values": [SHIM_NAME_TAG]}]
    subnets = ec2.describe_subnets(Filters=tag)["Subnets"]
    groups = ec2.describe_security_groups(Filters=tag)["SecurityGroups"]
    if subnets and groups:
        return subnets[0]["SubnetId"], groups[0]["GroupId"]
    tags = [{"Key": "Name", "Value": SHIM_NAME_TAG}]
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16", TagSpecifications=[{"ResourceType": "vpc", "Tags": tags}])["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto's awsvpc tasks need it
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24",
                               TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}])["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=SHIM_NAME_TAG, Description="datamaster bronze worker (shim)", VpcId=vpc,
                                      TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}])["GroupId"]
    return subnet, group


def _ensure_log_groups(logs: Any, *groups: str) -> None:
    for group in groups:
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=group)


def provision_shim_compute(settings: Any, session: Any = None) -> ShimCompute:
    """Create, on an AWS emulator (moto), what the compute stack creates for bronze: the worker
    Lambda function (handler ``workers.lambda_handler.handler``), the ECS cluster and Fargate task
    definition (container ``bronze-worker`` running the container CLI, ``awslogs`` to CloudWatch),
    their log groups and a VPC subnet and security group for ``awsvpc``. Idempotent.

    The function and the task only carry configuration: with :class:`ComputeShim` installed, an
    invoke or a task runs this project's code on this machine. Never point this at a real account:
    infra/compute.yaml provisions that.
    """
    session = session or boto3.session.Session(region_name=settings.aws_region)
    env = worker_environment(settings)
    function = settings.lambda_function
    lambda_log_group = f"/aws/lambda/{function}"
    ecs_log_group = f"/{settings.ecs_cluster}/ecs/{SHIM_CONTAINER_NAME}"
    _ensure_log_groups(session.client("logs"), lambda_log_group, ecs_log_group)

    iam = session.client("iam")
    lambda_role = _ensure_role(iam, f"{function}-role", "lambda.amazonaws.com")
    task_role = _ensure_role(iam, f"{settings.ecs_task_definition}-task-role", "ecs-tasks.amazonaws.com")

    lam = session.client("lambda")
    try:
        lam.get_function_configuration(FunctionName=function)
        lam.update_function_configuration(FunctionName=function, Environment={"Variables": env})
    except lam.exceptions.ResourceNotFoundException:
        lam.create_function(
            FunctionName=function, Runtime="python3.11", Role=lambda_role, Handler=SHIM_WORKER_HANDLER,
            Code={"ZipFile": _EMPTY_ZIP}, Timeout=900, MemorySize=3008, Environment={"Variables": env},
            Description="raw file -> bronze Parquet for one ledger item (small files; Dagster Pipes)",
        )

    subnet, group = _ensure_network(session.client("ec2"))
    ecs = session.client("ecs")
    ecs.create_cluster(clusterName=settings.ecs_cluster)  # returns the existing cluster if there is one
    task_definition = ecs.register_task_definition(
        family=settings.ecs_task_definition, networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
        cpu="1024", memory="4096", taskRoleArn=task_role,
        containerDefinitions=[{
            # container-level memory: moto's RunTask sums it (and fails on a task-level-only size)
            "name": SHIM_CONTAINER_NAME, "image": "datamaster/worker:shim", "essential": True, "memory": 4096,
            "entryPoint": list(SHIM_CONTAINER_ENTRY_POINT),
            "environment": [{"name": k, "value": v} for k, v in env.items()],
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": ecs_log_group, "awslogs-region": settings.aws_region,
                "awslogs-stream-prefix": "bronze"}},
        }],
    )["taskDefinition"]["taskDefinitionArn"]
    return ShimCompute(function, lambda_log_group, settings.ecs_cluster, task_definition, ecs_log_group,
                       (subnet,), (group,))
