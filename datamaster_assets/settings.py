"""Environment selection, paths and thresholds: the one typed place every module reads.

Everything comes from environment variables (``DATAMASTER_*`` plus the standard ``AWS_*``), so
the same code runs locally and on AWS. ``Settings.from_env()`` is cheap; call it where needed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Mapping

Env = Literal["local", "aws"]

# A fixed development key so the embedded demo masks PII deterministically out of the box.
# Any real deployment sets DATAMASTER_PII_KEY (the aws env refuses to run without it).
LOCAL_DEV_PII_KEY = "datamaster-local-development-key"


def _number(environ: Mapping[str, str], name: str, default, convert=int, minimum=None, maximum=None):
    """``environ[name]`` converted by ``convert`` (int or float), ``default`` when unset or empty;
    a value that does not convert or lies outside [minimum, maximum] is refused, naming ``name``."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = convert(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be {'an integer' if convert is int else 'a number'}, got {raw!r}") from exc
    low_ok = minimum is None or value >= minimum  # comparisons with nan are False: nan is refused
    high_ok = maximum is None or value <= maximum
    if not (low_ok and high_ok):
        if minimum is not None and maximum is not None:
            raise ValueError(f"{name} must be between {minimum:g} and {maximum:g}, got {value}")
        if minimum is not None:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


DEFAULT_GLUE_DATABASES = ("dm_bronze", "dm_silver", "dm_gold")
_GLUE_DATABASE_NAME = re.compile(r"[a-z][a-z0-9_]{0,254}")


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{name} must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


def _glue_databases(raw: str) -> tuple[str, str, str]:
    """``DATAMASTER_GLUE_DATABASES``: "bronze,silver,gold" database names (the catalog stack's
    GlueDatabases output), the dm_* defaults when unset. Names are per account and region, so a
    second environment in one account sets its own."""
    if not raw.strip():
        return DEFAULT_GLUE_DATABASES
    names = tuple(part.strip() for part in raw.split(","))
    if len(names) != 3 or not all(_GLUE_DATABASE_NAME.fullmatch(n) for n in names) or len(set(names)) != 3:
        raise ValueError("DATAMASTER_GLUE_DATABASES must be three distinct Glue database names "
                         f"(lower-case letters, digits, '_') for bronze,silver,gold, got {raw!r}")
    return names  # type: ignore[return-value]


ThpMode = Literal["disable", "system"]


def transparent_huge_pages_mode(environ: Mapping[str, str]) -> ThpMode:
    """DATAMASTER_TRANSPARENT_HUGE_PAGES: ``disable`` (default) opts worker processes out of
    transparent huge pages (``datamaster_assets.runtime``), ``system`` keeps the kernel's setting."""
    raw = (environ.get("DATAMASTER_TRANSPARENT_HUGE_PAGES") or "disable").strip().lower()
    if raw not in ("disable", "system"):
        raise ValueError(f"DATAMASTER_TRANSPARENT_HUGE_PAGES must be 'disable' or 'system', got {raw!r}")
    return raw  # type: ignore[return-value]


@dataclass(frozen=True)
class Settings:
    env: Env = "local"
    home: Path = Path(".datamaster")

    # Ledger / routing (DESIGN section 3)
    lambda_max_records: int = 100_000
    max_attempts: int = 3
    lease_seconds: int = 900
    # Control-table sensor batching (DESIGN section 4)
    batch_max_files: int = 50
    batch_max_bytes: int = 512 * 1024 * 1024
    # Raw-landing sensor: list at most this many keys per table per tick; every
    # `landing_reconcile_every` ticks list everything once to catch keys that sort before the cursor.
    landing_page_size: int = 1000
    landing_reconcile_every: int = 60
    # Bronze
    bronze_batch_rows: int = 64 * 1024  # the converter caps chunks at 64 Ki lines / 4 MiB anyway
    reject_rate_threshold: float = 0.05
    # Silver/gold: above this many pending change rows, silver/gold go to Spark on EMR (aws only).
    emr_min_change_rows: int = 5_000_000
    # Iceberg snapshot expiry (lake maintenance): snapshots older than this many days are expired,
    # except the newest `snapshot_retain_last` of each table.
    snapshot_max_age_days: int = 7
    snapshot_retain_last: int = 5
    # Files under a table's location that no metadata refers to are deleted once this old.
    orphan_min_age_days: int = 3

    pii_key: str = LOCAL_DEV_PII_KEY

    # AWS (names only; credentials come from the standard AWS chain, never from here)
    aws_region: str = "us-east-1"
    raw_bucket: str = "datamaster-raw"
    lake_bucket: str = "datamaster-lake"
    ledger_table: str = "datamaster-control"
    glue_databases: tuple[str, str, str] = DEFAULT_GLUE_DATABASES
    athena_workgroup: str = "datamaster"
    lambda_function: str = "datamaster-bronze-worker"
    ecs_cluster: str = "datamaster"
    ecs_task_definition: str = "datamaster-bronze-worker"
    ecs_subnets: tuple[str, ...] = ()
    ecs_security_groups: tuple[str, ...] = ()
    # Fargate tasks in public subnets (no NAT, no VPC endpoints) need a public IP to pull the image
    # from ECR and reach S3/DynamoDB/Logs/Secrets Manager.
    ecs_assign_public_ip: bool = False
    emr_application_id: str = ""
    emr_execution_role_arn: str = ""
    emr_log_group: str = "/aws/emr-serverless/datamaster"

    extra: dict[str, str] = field(default_factory=dict)

    # ---- derived paths (local env) -------------------------------------------------------
    @property
    def objects_dir(self) -> Path:
        """Root of the local object store: raw/, bronze/, rejects/ live below it."""
        return self.home / "objects"

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.sqlite"

    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.sqlite"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def namespaces(self) -> dict[str, str]:
        """Iceberg namespace per layer: plain names locally, Glue database names on AWS."""
        if self.env == "aws":
            bronze, silver, gold = self.glue_databases
            return {"bronze": bronze, "silver": silver, "gold": gold}
        return {"bronze": "bronze", "silver": "silver", "gold": "gold"}

    def with_home(self, home: Path | str) -> "Settings":
        return replace(self, home=Path(home))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        e = os.environ if environ is None else environ
        env = e.get("DATAMASTER_ENV", "local").strip().lower() or "local"
        if env not in ("local", "aws"):
            raise ValueError(f"DATAMASTER_ENV must be 'local' or 'aws', got {env!r}")
        pii_key = e.get("DATAMASTER_PII_KEY", "")
        if not pii_key:
            if env == "aws":
                raise ValueError("DATAMASTER_PII_KEY must be set when DATAMASTER_ENV=aws")
            pii_key = LOCAL_DEV_PII_KEY
        glue_databases = _glue_databases(e.get("DATAMASTER_GLUE_DATABASES", ""))
        subnets = tuple(s for s in e.get("DATAMASTER_ECS_SUBNETS", "").split(",") if s)
        security_groups = tuple(s for s in e.get("DATAMASTER_ECS_SECURITY_GROUPS", "").split(",") if s)
        return cls(
            env=env,  # type: ignore[arg-type]
            home=Path(e.get("DATAMASTER_HOME", ".datamaster")).absolute(),
            lambda_max_records=_number(e, "DATAMASTER_LAMBDA_MAX_RECORDS", 100_000, minimum=0),
            max_attempts=_number(e, "DATAMASTER_MAX_ATTEMPTS", 3, minimum=1),
            lease_seconds=_number(e, "DATAMASTER_LEASE_SECONDS", 900, minimum=1),
            batch_max_files=_number(e, "DATAMASTER_BATCH_MAX_FILES", 50, minimum=1),
            batch_max_bytes=_number(e, "DATAMASTER_BATCH_MAX_BYTES", 512 * 1024 * 1024, minimum=1),
            landing_page_size=_number(e, "DATAMASTER_LANDING_PAGE_SIZE", 1000, minimum=1),
            landing_reconcile_every=_number(e, "DATAMASTER_LANDING_RECONCILE_EVERY", 60, minimum=1),
            bronze_batch_rows=_number(e, "DATAMASTER_BRONZE_BATCH_ROWS", 64 * 1024, minimum=1),
            reject_rate_threshold=_number(e, "DATAMASTER_REJECT_RATE_THRESHOLD", 0.05, float, 0, 1),
            emr_min_change_rows=_number(e, "DATAMASTER_EMR_MIN_CHANGE_ROWS", 5_000_000, minimum=0),
            snapshot_max_age_days=_number(e, "DATAMASTER_SNAPSHOT_MAX_AGE_DAYS", 7, minimum=0),
            snapshot_retain_last=_number(e, "DATAMASTER_SNAPSHOT_RETAIN_LAST", 5, minimum=1),
            # a younger unreferenced file may belong to a write still running (RetentionPolicy)
            orphan_min_age_days=_number(e, "DATAMASTER_ORPHAN_MIN_AGE_DAYS", 3, minimum=1),
            pii_key=pii_key,
            aws_region=e.get("AWS_REGION", e.get("AWS_DEFAULT_REGION", "us-east-1")),
            raw_bucket=e.get("DATAMASTER_RAW_BUCKET", "datamaster-raw"),
            lake_bucket=e.get("DATAMASTER_LAKE_BUCKET", "datamaster-lake"),
            ledger_table=e.get("DATAMASTER_LEDGER_TABLE", "datamaster-control"),
            glue_databases=glue_databases,
            athena_workgroup=e.get("DATAMASTER_ATHENA_WORKGROUP", "datamaster"),
            lambda_function=e.get("DATAMASTER_LAMBDA_FUNCTION", "datamaster-bronze-worker"),
            ecs_cluster=e.get("DATAMASTER_ECS_CLUSTER", "datamaster"),
            ecs_task_definition=e.get("DATAMASTER_ECS_TASK_DEFINITION", "datamaster-bronze-worker"),
            ecs_subnets=subnets,
            ecs_security_groups=security_groups,
            ecs_assign_public_ip=_flag(e, "DATAMASTER_ECS_ASSIGN_PUBLIC_IP", False),
            emr_application_id=e.get("DATAMASTER_EMR_APPLICATION_ID", ""),
            emr_execution_role_arn=e.get("DATAMASTER_EMR_EXECUTION_ROLE_ARN", ""),
            emr_log_group=e.get("DATAMASTER_EMR_LOG_GROUP") or "/aws/emr-serverless/datamaster",
        )
