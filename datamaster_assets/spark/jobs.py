"""What the Spark job entry points share: the session, Dagster Pipes (optional), argument helpers.

No Dagster import: the jobs talk to the orchestrator through ``dagster_pipes`` only, and only
when ``PipesEMRServerlessClient`` (or any Pipes client) launched them, i.e. when the
``DAGSTER_PIPES_CONTEXT`` environment variable is set. Run by hand or in the tests they run
without Pipes and just return their metadata.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

if TYPE_CHECKING:  # pyspark is only needed where a job actually runs
    from pyspark.sql import SparkSession

CATALOG_MODES = ("iceberg", "parquet")
# The Spark catalog name the EMR configuration registers the Glue catalog under
# (defs/compute.py: default_spark_submit_parameters).
DEFAULT_CATALOG = "glue"


def job_session(app_name: str) -> "SparkSession":
    """The session spark-submit configured (master, Iceberg catalog, jars), see configure_session."""
    from pyspark.sql import SparkSession

    return configure_session(SparkSession.builder.appName(app_name).getOrCreate())


def configure_session(spark: "SparkSession") -> "SparkSession":
    """Settings every job relies on, whoever built the session: UTC session time (gold months are
    UTC calendar months, as in the Arrow engine), Parquet timestamps as INT64 microseconds (what
    pyarrow and the Arrow engine write; Spark's default INT96 reads back as naive nanoseconds),
    and dynamic partition overwrite (a Parquet rewrite replaces only the months written)."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    return spark


class JobReporter:
    """Reports a job's results to Dagster when the job runs under Pipes, and logs them otherwise."""

    def __init__(self, pipes: Any | None):
        self.pipes = pipes

    @property
    def asset_keys(self) -> list[str]:
        if self.pipes is None:
            return []
        try:
            return list(self.pipes.asset_keys)
        except Exception:  # the launching step is not an asset step
            return []

    def log(self, message: str) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)
        else:
            print(message, flush=True)

    def materialized(self, metadata: Mapping[str, Any], asset_key: str | None = None) -> None:
        """Report one materialization. With an ``asset_key`` the launching step does not own, the
        report is skipped (a multi-asset step may select only some marts)."""
        if self.pipes is None:
            return
        keys = self.asset_keys
        if asset_key is not None and asset_key not in keys:
            return
        if asset_key is None and len(keys) > 1:
            raise ValueError(f"the launching step selected {keys}: name the asset key to report")
        self.pipes.report_asset_materialization(metadata=dict(metadata), asset_key=asset_key)


@contextmanager
def job_reporter(environ: Mapping[str, str] | None = None) -> Iterator[JobReporter]:
    """A :class:`JobReporter` inside ``open_dagster_pipes()`` when launched through Pipes, a plain
    one otherwise. A job failure inside the block reaches Dagster as the Pipes exception."""
    env = os.environ if environ is None else environ
    from_pipes = bool(env.get("DAGSTER_PIPES_CONTEXT"))
    if not from_pipes:
        yield JobReporter(None)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        yield JobReporter(pipes)


def read_manifest_lines(text: str) -> list[str]:
    """A manifest lists one URI per line; blank lines and lines starting with '#' are ignored."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def parse_pairs(values: Sequence[str], what: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> ``{"a": "x", "b": "y"}`` with a clear error for a malformed pair."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{what} must look like NAME=PATH, got {value!r}")
        out[name] = path
    return out


def parse_months(values: Sequence[str]) -> set[tuple[int, int]]:
    """``["2010-01", "2011-7"]`` -> ``{(2010, 1), (2011, 7)}``."""
    months = set()
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            year, sep, month = part.partition("-")
            if not sep or not year.isdigit() or not month.isdigit() or not 1 <= int(month) <= 12:
                raise ValueError(f"a month must look like YYYY-MM, got {part!r}")
            months.add((int(year), int(month)))
    return months
