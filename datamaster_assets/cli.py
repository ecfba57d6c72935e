"""The `datamaster` command."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import click

from datamaster_assets.settings import Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _lake(settings: Settings | None = None):
    from datamaster_assets.lake.factory import open_lake

    return open_lake(settings or _settings())


def _existing_lake():
    """The lake, for commands that only read or fix one: a mistyped DATAMASTER_HOME is an error
    naming the path, not a new empty lake created there."""
    settings = _settings()
    if settings.env == "local" and not settings.ledger_path.is_file():
        raise click.ClickException(
            f"no lake at {settings.home} (DATAMASTER_HOME): no ledger at {settings.ledger_path}. "
            "Check the path, or start one with `datamaster seed`, `datamaster land` or `datamaster demo`.")
    return _lake(settings)


def _aws_hint(exc: Exception) -> str:
    """A botocore failure as one line naming what to set (no credentials, unreachable endpoint)."""
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoRegionError"):
        fix = ("give the process AWS credentials through the standard chain (AWS_PROFILE, "
               "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance or task role)")
    elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        fix = ("check the network, or set AWS_ENDPOINT_URL for a local emulator "
               "(docs/aws.md, 'Trying it without an account')")
    else:
        fix = "see docs/aws.md"
    return f"DATAMASTER_ENV=aws: {exc}; {fix}"


class _Main(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if type(exc).__module__.startswith("botocore.") and _settings().env == "aws":
                raise click.ClickException(_aws_hint(exc)) from exc
            raise


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """datamaster: a medallion data lake (raw -> bronze -> silver -> gold) on Dagster.

    Environment: DATAMASTER_ENV (local|aws, default local), DATAMASTER_HOME (default ./.datamaster).
    """
    from datamaster_assets.runtime import tune_process

    try:
        tune_process()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--reviews", type=click.IntRange(min=1), default=None, help="Reviews to generate (default: demo size).")
@click.option("--changes", is_flag=True, help="Also land later CDC change files (updates, deletes, re-inserts, ...).")
@click.option("--seed", "rng_seed", type=int, default=42, show_default=True, help="Random seed.")
def seed(reviews: int | None, changes: bool, rng_seed: int) -> None:
    """Write sample raw files (CDC dims, batch reviews) into the landing area."""
    from datamaster_assets.seed import DEFAULT_DEMO_REVIEWS, seed_raw

    summary = seed_raw(_lake(), reviews=reviews or DEFAULT_DEMO_REVIEWS, changes=changes, seed=rng_seed)
    click.echo(summary.describe())


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--table", required=True, help="Target table (a contract name).")
def land(files: tuple[Path, ...], table: str) -> None:
    """Land local files into raw/<table>/ as a producer would."""
    from datamaster_assets.lake.landing import land_file

    lake = _lake()
    for path in files:
        try:
            info = land_file(lake.raw, table, path)
        except (ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"landed {path} -> {info.key} ({info.size:,} bytes)")


def status_report(lake) -> dict:
    counts = lake.ledger.counts()
    per: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for (layer, table, status), n in sorted(counts.items()):
        per[layer][table][status] = n
    from datamaster_assets.lake.ledger import Status

    problems = [
        {
            "control_id": i.control_id,
            "layer": i.layer,
            "table": i.table_name,
            "object_key": i.object_key,
            "status": i.status.value,
            "attempts": i.attempt_count,
            "error_message": i.error_message,
        }
        for status in (Status.QUARANTINED, Status.ERROR)
        for i in lake.ledger.items(status=status)
    ]
    return {"counts": {layer: dict(tables) for layer, tables in per.items()}, "problems": problems}


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(fmt: str) -> None:
    """Ledger counts per layer, table and status, and the quarantined/errored items."""
    report = status_report(_existing_lake())
    if fmt == "json":
        click.echo(json.dumps(report, indent=2, default=str))
        return
    statuses = ["pending", "running", "success", "error", "quarantined"]
    click.echo(f"{'layer':<8}{'table':<12}" + "".join(f"{s:>13}" for s in statuses))
    for layer, tables in report["counts"].items():
        for table, by_status in tables.items():
            click.echo(f"{layer:<8}{table:<12}" + "".join(f"{by_status.get(s, 0):>13,}" for s in statuses))
    if not report["counts"]:
        click.echo("(the ledger is empty: land files with `datamaster land` or `datamaster seed`)")
    if report["problems"]:
        click.echo("\nNeeds attention (bring back with `datamaster requeue CONTROL_ID`):")
        for p in report["problems"]:
            click.echo(f"  {p['control_id']}  {p['status']:<11} {p['layer']}/{p['table']}  {p['object_key']}")
            click.echo(f"      attempts={p['attempts']}  {p['error_message']}")


@main.command()
@click.argument("control_ids", nargs=-1)
@click.option("--table", default=None, help="Requeue every quarantined/errored item of this table.")
@click.option("--layer", type=click.Choice(["bronze", "silver"]), default=None)
@click.option("--all", "requeue_all", is_flag=True, help="Requeue every quarantined/errored item.")
def requeue(control_ids: tuple[str, ...], table: str | None, layer: str | None, requeue_all: bool) -> None:
    """Bring quarantined (or errored) items back to pending, attempts reset."""
    if not (control_ids or table or layer or requeue_all):
        raise click.UsageError("name CONTROL_IDS, or --table/--layer, or --all")
    from datamaster_assets.lake.ledger import Status

    lake = _existing_lake()
    if table is not None:
        known = sorted({t for (_layer, t, _status) in lake.ledger.counts()})
        if table not in known:
            raise click.UsageError(f"no ledger item has table {table!r}; tables in the ledger: {', '.join(known) or 'none'}")
    items = lake.ledger.requeue(list(control_ids) or None, table_name=table, layer=layer)
    for item in items:
        click.echo(f"requeued {item.control_id} {item.layer}/{item.table_name} {item.object_key}")
    click.echo(f"{len(items)} item(s) back to pending")
    requeued = {item.control_id for item in items}
    unknown = []
    for control_id in dict.fromkeys(control_ids):
        if control_id in requeued:
            continue
        current = lake.ledger.get(control_id)
        if current is None:
            unknown.append(control_id)
        elif current.status in (Status.QUARANTINED, Status.ERROR):
            click.echo(f"not requeued {control_id}: {current.layer}/{current.table_name} is outside --table/--layer", err=True)
        else:
            click.echo(f"not requeued {control_id}: it is {current.status.value} "
                       f"({current.layer}/{current.table_name}); only quarantined or errored items are", err=True)
    if unknown:
        raise click.ClickException(f"no ledger item with control id {', '.join(unknown)} (see `datamaster status`)")


def _print_report(report) -> None:
    outcome = "succeeded" if report.ok else (f"completed with {len(report.failures)} failure(s) (below)" if report.success else "FAILED")
    click.echo(f"Dagster run {report.run_id}: {outcome}; "
               f"{report.newly_registered} newly landed file(s) registered")
    for failure in report.failures:
        click.echo(f"  FAILED: {failure}", err=True)
    for held in report.held_elsewhere:
        click.echo(f"  WAITING: {held}; a later run takes it if that worker never finishes", err=True)


@main.command()
def run() -> None:
    """Process everything pending now: register, bronze, silver, review_flat, gold (one Dagster run)."""
    from datamaster_assets.defs.ops.runner import run_pipeline

    report = run_pipeline(_settings())
    _print_report(report)
    for asset, meta in sorted(report.materializations.items()):
        click.echo(f"  {asset:<36} rows={meta.get('dagster/row_count', '-')}")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be expired and deleted.")
@click.option("--max-age-days", type=click.IntRange(min=0), default=None,
              help="Expire snapshots older than this (default DATAMASTER_SNAPSHOT_MAX_AGE_DAYS, 7).")
@click.option("--retain-last", type=click.IntRange(min=1), default=None,
              help="Always keep this many newest snapshots per table (default DATAMASTER_SNAPSHOT_RETAIN_LAST, 5).")
@click.option("--orphan-min-age-days", type=click.IntRange(min=1), default=None,
              help="Delete unreferenced files once this old (default DATAMASTER_ORPHAN_MIN_AGE_DAYS, 3).")
def maintain(dry_run: bool, max_age_days: int | None, retain_last: int | None, orphan_min_age_days: int | None) -> None:
    """Expire old Iceberg snapshots of every silver and gold table; delete the files only they used
    and the files no metadata refers to (orphans of writers that died before committing)."""
    from datetime import timedelta

    from datamaster_assets.lake.maintenance import RetentionPolicy
    from datamaster_assets.workers.maintenance import maintain_lake, retention_policy

    lake = _existing_lake()
    default = retention_policy(lake)
    policy = RetentionPolicy(
        max_age=default.max_age if max_age_days is None else timedelta(days=max_age_days),
        retain_last=default.retain_last if retain_last is None else retain_last,
        orphan_min_age=default.orphan_min_age if orphan_min_age_days is None else timedelta(days=orphan_min_age_days),
    )
    report = maintain_lake(lake, policy=policy, dry_run=dry_run)
    verb, gone = ("would expire", "would delete") if dry_run else ("expired", "deleted")
    click.echo(f"retention: snapshots older than {policy.max_age.days} day(s), newest {policy.retain_last} kept; "
               f"orphan files older than {policy.orphan_min_age.days} day(s) deleted")
    for key, result in report.tables.items():
        orphans = report.orphans.get(key)
        orphan_text = (f"; orphans {gone} {orphans.files_deleted} ({orphans.bytes_deleted / 1e6:,.1f} MB)"
                       if orphans is not None else "")
        click.echo(f"  {result.table:<32} {result.snapshots_before:>4} snapshot(s), {verb} {len(result.expired):>4}, "
                   f"files {result.files_deleted:>5} ({result.bytes_deleted / 1e6:,.1f} MB){orphan_text}")
    for problem in report.problems:
        click.echo(f"  FAILED {problem}", err=True)
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def query(sql: str, fmt: str) -> None:
    """Run DuckDB SQL over silver.<table>, gold.<mart> and bronze.<table>."""
    from datamaster_assets.transform.query import QueryError, format_table, run_query

    try:
        table = run_query(_existing_lake(), sql)
    except QueryError as exc:
        raise click.ClickException(str(exc)) from exc
    text = format_table(table, fmt)
    click.echo(text, nl=not text.endswith("\n"))  # csv already ends its last record with a newline


@main.command()
@click.option("--reviews", type=click.IntRange(min=1), default=None, help="Reviews to generate (1586614 = full size).")
def demo(reviews: int | None) -> None:
    """Seed (once) and run raw -> gold, then print what happened and where to look next."""
    from datamaster_assets.demo import run_demo

    sys.exit(run_demo(_settings(), reviews=reviews, echo=click.echo))


@main.command("demo-aws")
@click.option("--reviews", type=click.IntRange(min=1), default=None, help="Reviews to generate (default: demo size).")
def demo_aws(reviews: int | None) -> None:
    """The demo in DATAMASTER_ENV=aws against an in-memory moto server on 127.0.0.1 (compute shimmed at the boto3 edge)."""
    from datamaster_assets.aws_demo import run_aws_demo

    sys.exit(run_aws_demo(reviews=reviews, echo=click.echo))


@main.command()
@click.option("--quick", is_flag=True, help="Small data set (CI smoke run) instead of 1,586,614 reviews.")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Samples per measurement (default 5, quick 3).")
@click.option("--stage", "stages", multiple=True, type=click.Choice(["bronze", "silver", "gold", "e2e"]),
              help="Only these stages (repeatable).")
@click.option("--reviews", type=click.IntRange(min=1000), default=None, help="Override the data set size.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench-results/report.json"),
              show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".bench-cache"),
              show_default=True, help="Generated data sets are kept here between runs.")
def bench(quick: bool, runs: int | None, stages: tuple[str, ...], reviews: int | None, out: Path, cache_dir: Path) -> None:
    """Time every stage as a whole process, side by side with reference engines; write a JSON report."""
    from datamaster_assets.bench import BenchError, bench_main

    try:
        bench_main(quick=quick, runs=runs or (3 if quick else 5), out=out, stages=list(stages) or None,
                   cache_dir=cache_dir, reviews=reviews)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--port", default=3000, show_default=True)
def dev(port: int) -> None:
    """Open the Dagster UI on the same DATAMASTER_HOME (dagster dev)."""
    from datamaster_assets.defs.ops.instance import REPO_ROOT, ensure_dagster_home

    ensure_dagster_home(_settings())
    workspace = REPO_ROOT / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.is_file() else ["-m", "datamaster_assets.definitions"]
    dagster = Path(sys.executable).with_name("dagster")
    os.execv(str(dagster), [str(dagster), "dev", *target, "-p", str(port)])


if __name__ == "__main__":
    main()
