"""raw -> bronze: streaming readers, CDC envelope, typing and rules, PII masking, rejects, Parquet
writer (DESIGN section 5, docs/bronze.md). No ledger, store or Dagster access in here."""

from datamaster_assets.ingest.convert import BronzeOutcome, convert_to_bronze
from datamaster_assets.ingest.errors import BadInputError
from datamaster_assets.ingest.keys import bronze_key_for, rejects_key_for

__all__ = ["BadInputError", "BronzeOutcome", "bronze_key_for", "convert_to_bronze", "rejects_key_for"]
