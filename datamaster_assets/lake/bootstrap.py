"""Create the AWS resources the ``aws`` environment needs, idempotently.

For tests (against moto) and ``make demo-aws``; a real account is provisioned by the
CloudFormation stacks in ``infra/``, which create the same resources with the same names.
Every step tolerates "already exists", so running it twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from datamaster_assets.lake.dynamo_ledger import create_ledger_table
from datamaster_assets.settings import Settings

log = logging.getLogger(__name__)

ATHENA_RESULTS_PREFIX = "athena-results/"


@dataclass
class BootstrapReport:
    """What bootstrap_aws created this time and what was already there."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)

    def note(self, resource: str, created: bool) -> None:
        (self.created if created else self.existing).append(resource)
        log.info("%s %s", "created" if created else "exists ", resource)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def ensure_bucket(s3, bucket: str, region: str) -> bool:
    """Create the bucket (private, versioned) unless we already own it. True if created."""
    # HEAD first: in us-east-1, CreateBucket on a bucket you own succeeds silently.
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if _code(exc) in ("403", "AccessDenied"):
            raise RuntimeError(f"S3 bucket {bucket!r} exists but is not ours (403); pick another name") from exc
        if _code(exc) not in ("404", "NoSuchBucket"):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if _code(exc) == "BucketAlreadyExists":
            raise RuntimeError(f"S3 bucket name {bucket!r} is taken by another account; pick another name") from exc
        if _code(exc) != "BucketAlreadyOwnedByYou":  # a concurrent bootstrap won the race
            raise
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    return True


def ensure_glue_database(glue, name: str, location: str) -> bool:
    try:
        glue.create_database(DatabaseInput={"Name": name, "LocationUri": location})
    except ClientError as exc:
        if _code(exc) == "AlreadyExistsException":
            return False
        raise
    return True


def ensure_athena_workgroup(athena, name: str, output_location: str) -> bool:
    # Listing rather than get_work_group: the name check is the same on Athena and on moto.
    kwargs: dict[str, Any] = {}
    while True:
        page = athena.list_work_groups(**kwargs)
        if any(wg["Name"] == name for wg in page.get("WorkGroups", [])):
            return False
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    athena.create_work_group(
        Name=name,
        Configuration={
            "ResultConfiguration": {"OutputLocation": output_location},
            "EnforceWorkGroupConfiguration": True,
            "PublishCloudWatchMetricsEnabled": True,
            "EngineVersion": {"SelectedEngineVersion": "Athena engine version 3"},
        },
        Description="datamaster queries over the Glue/Iceberg lake",
    )
    return True


def _ledger_table_exists(dynamodb, name: str) -> bool:
    try:
        dynamodb.describe_table(TableName=name)
        return True
    except ClientError as exc:
        if _code(exc) == "ResourceNotFoundException":
            return False
        raise


def bootstrap_aws(settings: Settings, session: boto3.session.Session | None = None) -> BootstrapReport:
    """Raw and lake buckets, the ledger table, the Glue databases and the Athena workgroup."""
    if settings.env != "aws":
        raise ValueError("bootstrap_aws needs Settings with env='aws' (DATAMASTER_ENV=aws)")
    session = session or boto3.session.Session(region_name=settings.aws_region)
    region = settings.aws_region
    report = BootstrapReport()

    s3 = session.client("s3")
    for bucket in (settings.raw_bucket, settings.lake_bucket):
        report.note(f"s3://{bucket}", ensure_bucket(s3, bucket, region))

    dynamodb = session.client("dynamodb")
    existed = _ledger_table_exists(dynamodb, settings.ledger_table)
    create_ledger_table(dynamodb, settings.ledger_table)  # also checks an existing table's index
    report.note(f"dynamodb:{settings.ledger_table}", not existed)

    glue = session.client("glue")
    for database in settings.namespaces.values():
        location = f"s3://{settings.lake_bucket}/warehouse/{database}.db"
        report.note(f"glue:{database}", ensure_glue_database(glue, database, location))

    athena = session.client("athena")
    output = f"s3://{settings.lake_bucket}/{ATHENA_RESULTS_PREFIX}"
    report.note(f"athena:{settings.athena_workgroup}", ensure_athena_workgroup(athena, settings.athena_workgroup, output))
    return report
