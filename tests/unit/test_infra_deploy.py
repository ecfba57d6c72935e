"""What would fail on a first deploy in a real account, checked statically against the templates
and deploy.sh: IAM grants the runtimes need, the image Lambda accepts, the settings the Dagster
deployment must share with the Lambdas, the ECS network options, the bash macOS ships."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

from cfnlint.decode import decode

from datamaster_assets.defs.compute import BronzeCompute, default_spark_submit_parameters
from datamaster_assets.settings import Settings

INFRA = Path(__file__).resolve().parents[2] / "infra"
DEPLOY = (INFRA / "deploy.sh").read_text()
BASH4_ONLY = ("mapfile", "readarray", "declare -A", "local -A", "${!", ",,}", "^^}", "coproc")
PLATFORM = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}
UNIVERSAL_LAMBDA_MEMORY_MB = 3008  # new and restricted accounts refuse more


def compute() -> dict:
    doc, errors = decode(str(INFRA / "compute.yaml"))
    assert not errors
    return doc


def listed(value) -> list:
    return value if isinstance(value, list) else [value]


def rendered(resource) -> str:
    return str(resource.get("Fn::Sub", resource) if isinstance(resource, dict) else resource)


def role_statements(doc: dict, role: str) -> list[dict]:
    return [s for p in doc["Resources"][role]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def policy_documents(doc: dict):
    for name, res in doc["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                yield f"{name}/{policy['PolicyName']}", policy["PolicyDocument"]
        elif res["Type"] == "AWS::IAM::ManagedPolicy":
            yield name, props["PolicyDocument"]


def commands(script: str) -> list[str]:
    return [c.strip() for c in script.replace("\\\n", " ").splitlines() if c.strip() and not c.lstrip().startswith("#")]


def test_emr_job_role_can_ship_the_driver_logs_pipes_reads():
    # EMR Serverless CloudWatch logging needs logs:DescribeLogGroups besides writing the streams;
    # without the driver's stdout, Pipes gets no messages from a silver or gold job
    statements = role_statements(compute(), "EmrJobRole")
    describe = [s for s in statements if "logs:DescribeLogGroups" in listed(s["Action"])]
    assert any(rendered(r).endswith(":logs:${AWS::Region}:${AWS::AccountId}:*")
               for s in describe for r in listed(s["Resource"]))
    [write] = [s for s in statements if "logs:PutLogEvents" in listed(s["Action"])]
    assert {"logs:CreateLogStream", "logs:PutLogEvents"} <= set(listed(write["Action"]))
    assert write["Resource"] == {"Fn::GetAtt": ["EmrLogGroup", "Arn"]}  # already ends in ":*"


def test_emr_job_role_may_open_the_default_database_of_sparks_glue_session_catalog():
    assert "AWSGlueDataCatalogHiveClientFactory" in default_spark_submit_parameters(Settings())
    granted = {a for s in role_statements(compute(), "EmrJobRole") for r in listed(s["Resource"])
               if rendered(r).endswith(":database/default") for a in listed(s["Action"])}
    assert {"glue:GetDatabase", "glue:CreateDatabase"} <= granted


def test_every_policy_that_may_put_objects_may_abort_its_multipart_uploads():
    missing = [f"{name}:{s.get('Sid')}" for name, document in policy_documents(compute())
               for s in document["Statement"]
               if "s3:PutObject" in listed(s["Action"]) and "s3:AbortMultipartUpload" not in listed(s["Action"])]
    assert missing == []


def test_parameter_files_fit_every_accounts_lambda_memory_limit():
    for env in ("dev", "prod"):
        params = json.loads((INFRA / "params" / f"{env}.json").read_text())["Parameters"]
        assert int(params.get("BronzeLambdaMemoryMb", UNIVERSAL_LAMBDA_MEMORY_MB)) <= UNIVERSAL_LAMBDA_MEMORY_MB, env


def test_deploy_exports_every_setting_the_registration_lambda_gets():
    # the landing sensor and the S3-notification Lambda must route a file alike
    env = compute()["Resources"]["RegistrationFunction"]["Properties"]["Environment"]["Variables"]
    per_runtime = {"DATAMASTER_PII_KEY", "DATAMASTER_HOME"}  # the secret; each process's own scratch
    assert [name for name in env if name not in per_runtime and f"{name}=" not in DEPLOY] == []


def test_deploy_builds_a_single_platform_image_for_the_declared_architecture_and_deploys_its_digest():
    doc = compute()
    archs = {a for r in doc["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
             for a in r["Properties"].get("Architectures", ["x86_64"])}
    archs.add(doc["Resources"]["BronzeTaskDefinition"]["Properties"]["RuntimePlatform"]["CpuArchitecture"].lower())
    assert len(archs) == 1
    [build] = [c for c in commands(DEPLOY) if re.match(r"docker (buildx )?build\b", c)]
    assert f"--platform {PLATFORM[archs.pop()]}" in build
    assert "--provenance=false" in build  # Lambda refuses an image index with attestations
    [deploy] = [c for c in commands(DEPLOY) if c.startswith("deploy compute")]
    assert "WorkerImageUri=$REPO@$DIGEST" in deploy and "describe-images" in DEPLOY


def test_deploy_script_runs_on_the_bash_macos_ships(tmp_path):
    code = "\n".join(line for line in DEPLOY.splitlines() if not line.lstrip().startswith("#"))
    assert [feature for feature in BASH4_ONLY if feature in code] == []
    block = DEPLOY[DEPLOY.index("OVERRIDES=()"):DEPLOY.index("\n\nPREFIX=")]
    probe = tmp_path / "probe.sh"
    probe.write_text(f'PARAMS_FILE={INFRA / "params" / "dev.json"}\n{block}\nprintf "%s\\n" "${{OVERRIDES[@]}}"\n')
    out = subprocess.run(["bash", str(probe)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "EmrMaxCpu=16 vCPU" in out  # one Key=Value per element, spaces kept
    assert all(re.match(r"^[A-Za-z0-9]+=", line) for line in out)


def test_ecs_public_ip_is_off_by_default_and_settable():
    def vpc(environ):
        settings = Settings.from_env({"DATAMASTER_ENV": "aws", "DATAMASTER_PII_KEY": "k",
                                      "DATAMASTER_ECS_SUBNETS": "subnet-1", **environ})
        params = BronzeCompute.from_settings(settings).ecs_run_task_params(SimpleNamespace(control_id="b-1"), "ecs:run")
        return params["networkConfiguration"]["awsvpcConfiguration"]

    assert vpc({})["assignPublicIp"] == "DISABLED"
    assert vpc({"DATAMASTER_ECS_ASSIGN_PUBLIC_IP": "true"})["assignPublicIp"] == "ENABLED"


def test_the_longest_name_prefix_gives_valid_bucket_names_in_every_region():
    doc, errors = decode(str(INFRA / "storage.yaml"))
    assert not errors
    pattern = doc["Parameters"]["NamePrefix"]["AllowedPattern"]
    longest = int(re.search(r"\{2,(\d+)\}", pattern).group(1)) + 1
    prefix = "d" * longest
    assert re.fullmatch(pattern, prefix) and not re.fullmatch(pattern, prefix + "x")
    for bucket in ("RawBucket", "LakeBucket"):
        template = doc["Resources"][bucket]["Properties"]["BucketName"]["Fn::Sub"]
        name = (template.replace("${NamePrefix}", prefix).replace("${AWS::AccountId}", "123456789012")
                .replace("${AWS::Region}", "ap-southeast-3"))  # among the longest region names
        assert len(name) <= 63, name
