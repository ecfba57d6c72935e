"""`datamaster demo-aws` / `make demo-aws`: the demo in ``DATAMASTER_ENV=aws`` against a moto server.

Starts a moto server on 127.0.0.1 (never a real account), points this process's boto3 at it with
fake credentials, creates what the stacks in ``infra/`` would (``bootstrap_aws``: buckets, ledger
table, Glue databases, Athena workgroup; ``provision_shim_compute``: bronze Lambda function, ECS
cluster and task definition, log groups), then runs the same flow as ``make demo``: seed -> raw ->
bronze -> silver -> gold. Storage, ledger, catalog and the Dagster Pipes clients are the aws ones;
only the compute is shimmed, at the boto3 edge (``workers/pipes_shim.py``): a Lambda invoke runs the
handler in this process, an ECS task runs the container command as a subprocess.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

from datamaster_assets.settings import Settings

LOOPBACK = "127.0.0.1"
# Not a secret: the demo's masking key, printed as such. A deployment reads it from Secrets Manager.
DEMO_PII_KEY = "datamaster-aws-demo-only-key"
# Records (estimated from the compressed size) up to which a raw file goes to Lambda. At the demo's
# default size the dimension and change files (<= ~17 k records) go to Lambda and the two review
# extracts (~50 k each) to ECS; DESIGN's production threshold is 100,000.
DEMO_LAMBDA_MAX_RECORDS = 25_000
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "moto-demo",
    "AWS_SECRET_ACCESS_KEY": "moto-demo",
    "AWS_SESSION_TOKEN": "moto-demo",
}
AWS_DEMO_HOME = "aws-demo"


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 and a free port; yields its endpoint, stops it on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_loopback_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.stop()


def demo_environ(endpoint: str, base_home: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the demo sets for itself (and the ECS subprocesses it starts).

    ``environ`` is the caller's environment: a region or a Lambda threshold set there is kept.
    Only loopback endpoints are accepted.
    """
    if not endpoint.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"the aws demo only talks to a local emulator on {LOOPBACK}, not {endpoint!r}")
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "DATAMASTER_ENV": "aws",
        "DATAMASTER_PII_KEY": DEMO_PII_KEY,
        "DATAMASTER_COMPUTE_SHIM": "1",
        "DATAMASTER_HOME": str(base_home / AWS_DEMO_HOME),
        "DATAMASTER_LAMBDA_MAX_RECORDS": environ.get("DATAMASTER_LAMBDA_MAX_RECORDS") or str(DEMO_LAMBDA_MAX_RECORDS),
    }


# Variables that would send boto3 somewhere else than the emulator, or use a real identity.
_AWS_OVERRIDES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                  "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                  "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


@contextmanager
def patched_environ(values: Mapping[str, str], remove: tuple[str, ...] = ()) -> Iterator[None]:
    """Set ``values`` (and drop ``remove`` plus every per-service ``AWS_ENDPOINT_URL_*``) in
    os.environ for the duration; restore everything afterwards."""
    from datamaster_assets.workers.pipes_shim import patched_environ as patch

    overrides = {k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")}
    with patch(values, remove=set(remove) | overrides):
        yield


def routing_rows(lake) -> list[dict[str, object]]:
    """One row per bronze ledger item: file, the ledger's routing and its outcome (landing order)."""
    from datamaster_assets.lake.ledger import Layer

    items = lake.ledger.items(layer=Layer.BRONZE.value)
    return [
        {
            "table": i.table_name,
            "file": i.object_key.rsplit("/", 1)[-1],
            "records": i.record_count,
            "compute_target": i.compute_target,
            "status": i.status.value,
            "control_id": i.control_id,
        }
        for i in sorted(items, key=lambda i: i.object_key.rsplit("/", 1)[-1])
    ]


def launched_control_ids(invocations: list[dict]) -> dict[str, set[str]]:
    """Control ids the compute shim actually ran, per service (``lambda`` / ``ecs``)."""
    ran: dict[str, set[str]] = {"lambda": set(), "ecs": set()}
    for call in invocations:
        if call.get("service") == "lambda":
            control_id = (call.get("event") or {}).get("control_id")
            if control_id:
                ran["lambda"].add(control_id)
        elif call.get("service") == "ecs":
            argv = list(call.get("argv") or [])
            if "--control-id" in argv and argv.index("--control-id") + 1 < len(argv):
                ran["ecs"].add(argv[argv.index("--control-id") + 1])
    return ran


def format_routing(rows: list[dict[str, object]], ran: Mapping[str, set[str]]) -> str:
    lines = [f"  {'file':<58}{'records':>9}  {'target':<7}{'ran on':<8}status"]
    for row in rows:
        where = next((svc for svc, ids in ran.items() if row["control_id"] in ids), "-")
        records = f"{row['records']:,}" if row["records"] is not None else "-"
        lines.append(f"  {str(row['file'])[:57]:<58}{records:>9}  {row['compute_target']!s:<7}{where:<8}{row['status']}")
    by_target = Counter(str(r["compute_target"]) for r in rows)
    lines.append("  " + ", ".join(f"{n} file(s) on {t}" for t, n in sorted(by_target.items())))
    return "\n".join(lines)


AWS_NEXT_STEPS = (
    "The moto server's state (buckets, ledger, Glue catalog) was in memory only:\n"
    "nothing of this run survives except the Dagster run history under the DATAMASTER_HOME above.\n"
    "Next:\n"
    "  make demo                                  # the same flow on the embedded local lake (persistent)\n"
    "  docs/aws.md                                # deploying the stacks in infra/ to a real account\n"
    "  .venv/bin/python -m pytest tests/e2e/test_aws_pipeline.py -q   # this flow, asserted"
)


def run_aws_demo(*, reviews: int | None, base_home: Path | None = None, echo: Callable[[str], None] = print) -> int:
    """Run the demo against a fresh in-memory moto server; returns the process exit code."""
    from datamaster_assets.demo import run_demo
    from datamaster_assets.lake.bootstrap import bootstrap_aws
    from datamaster_assets.lake.factory import open_lake
    from datamaster_assets.workers.pipes_shim import provision_shim_compute

    base_home = Path(base_home or os.environ.get("DATAMASTER_HOME") or ".datamaster").absolute()
    started = time.perf_counter()
    with moto_server() as endpoint:
        with patched_environ(demo_environ(endpoint, base_home, os.environ), remove=_AWS_OVERRIDES):
            settings = Settings.from_env()
            echo(f"moto server (in memory, this process only) at {endpoint}; AWS_ENDPOINT_URL points there, "
                 "fake credentials, no real account is touched.")
            echo(f"DATAMASTER_PII_KEY={DEMO_PII_KEY!r} is a demo value, not a secret.")
            echo("Compute is SHIMMED at the boto3 edge only (workers/pipes_shim.py): a Lambda Invoke runs the\n"
                 "handler in this process, an ECS RunTask runs the container command as a local subprocess.\n"
                 "Everything else is the aws code path: S3, DynamoDB ledger, Glue/Iceberg, Dagster Pipes clients.")
            report = bootstrap_aws(settings)
            compute = provision_shim_compute(settings)
            os.environ.update(compute.environ)
            settings = Settings.from_env()  # now with the ECS subnets
            echo(f"Bootstrapped: {', '.join(report.created)}")
            echo(f"Provisioned: Lambda {compute.lambda_function}, ECS cluster {compute.ecs_cluster} "
                 f"(task {compute.ecs_task_definition_arn.rsplit('/', 1)[-1]}), log groups "
                 f"{compute.lambda_log_group}, {compute.ecs_log_group}")
            echo(f"Routing: files estimated at <= {settings.lambda_max_records:,} records go to Lambda, "
                 "larger ones to ECS (DATAMASTER_LAMBDA_MAX_RECORDS).\n")

            from datamaster_assets.defs.compute import compute_shim

            shim = compute_shim()
            already_ran = len(shim.invocations)

            code = run_demo(settings, reviews=reviews, echo=echo, next_steps=AWS_NEXT_STEPS)
            rows = routing_rows(open_lake(settings))
            ran = launched_control_ids(shim.invocations[already_ran:])
            echo("\nBronze compute per raw file (ledger compute_target; 'ran on' = what the shim launched):")
            echo(format_routing(rows, ran))
            targets = {r["compute_target"] for r in rows}
            if not {"lambda", "ecs"} <= targets:
                echo(f"  note: at this size every file went to {', '.join(sorted(map(str, targets)))}; "
                     "set DATAMASTER_LAMBDA_MAX_RECORDS to split them.")
    echo(f"\nmoto server stopped. Whole demo: {time.perf_counter() - started:.1f}s.")
    return code


def main(argv: list[str] | None = None) -> int:  # python -m datamaster_assets.aws_demo [reviews]
    args = sys.argv[1:] if argv is None else argv
    return run_aws_demo(reviews=int(args[0]) if args else None)


if __name__ == "__main__":
    sys.exit(main())
