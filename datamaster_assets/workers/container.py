"""Container CLI of the workers (the ECS Fargate task, and the local Pipes subprocess).

    python -m datamaster_assets.workers.container bronze --control-id b-0123... [--owner NAME]

Pipes params come from the environment (``DAGSTER_PIPES_CONTEXT``/``DAGSTER_PIPES_MESSAGES``, set by
``PipesECSClient`` through container overrides, or by ``PipesSubprocessClient``); messages go to
stdout, which ECS ships to CloudWatch Logs through the ``awslogs`` driver. Exit code 0 means the
item reached a recorded outcome in the ledger (success, error or quarantined); anything else is
an infrastructure failure the orchestrator must see.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Sequence

from dagster_pipes import PipesEnvVarParamsLoader

from datamaster_assets.runtime import tune_process
from datamaster_assets.workers.bronze_pipes import open_fresh_pipes, run_bronze_item


def _default_owner() -> str:
    # On Fargate the hostname is unique per task; locally it is host + pid.
    return f"container:{socket.gethostname()}:{os.getpid()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datamaster_assets.workers.container")
    commands = parser.add_subparsers(dest="command", required=True)
    bronze = commands.add_parser("bronze", help="process one bronze ledger item (raw file -> bronze Parquet)")
    bronze.add_argument("--control-id", required=True, help="ledger control_id of the raw file")
    bronze.add_argument("--owner", default=None, help="lease owner recorded in the ledger")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    tune_process()
    args = build_parser().parse_args(argv)
    owner = args.owner or _default_owner()
    if PipesEnvVarParamsLoader().is_dagster_pipes_process():
        with open_fresh_pipes() as pipes:
            metadata = run_bronze_item(args.control_id, owner, pipes=pipes)
    else:
        metadata = run_bronze_item(args.control_id, owner, pipes=None)
    # Human-readable summary on stderr; stdout belongs to the Pipes messages.
    print(json.dumps(metadata, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
