"""AWS Lambda entry point of the bronze worker: ``datamaster_assets.workers.lambda_handler.handler``.

Event: ``{"control_id": "...", "owner": "...", "asset_key": "bronze/<table>"}`` plus, when launched by Dagster's
``PipesLambdaClient``, the Pipes bootstrap params (``DAGSTER_PIPES_CONTEXT``/``DAGSTER_PIPES_MESSAGES``)
merged into the event by ``PipesLambdaEventContextInjector``.

Messages go to S3 (``PipesS3MessageWriter``), not to the 4 KB log tail a synchronous invoke returns:
a failure's ``closed`` message carries the stack trace and routinely exceeds 4 KB on its own.
"""

from __future__ import annotations

from typing import Any, Mapping

from dagster_pipes import PipesMappingParamsLoader, PipesS3MessageWriter

from datamaster_assets.runtime import tune_process
from datamaster_assets.workers.bronze_pipes import open_fresh_pipes, require_str, run_bronze_item

tune_process()  # once per execution environment, at cold start

# Seconds between chunk uploads while the function runs; the last chunk is always written on close.
MESSAGE_UPLOAD_INTERVAL_S = 5.0


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    control_id = require_str(event, "control_id", "bronze lambda event")
    owner = event.get("owner") or f"lambda:{getattr(context, 'aws_request_id', 'unknown')}"
    params_loader = PipesMappingParamsLoader(event)
    if not params_loader.is_dagster_pipes_process():
        # Invoked directly (console, S3 notification, a person): same work, no Pipes session.
        return run_bronze_item(control_id, owner, pipes=None)

    import boto3

    writer = PipesS3MessageWriter(client=boto3.client("s3"), interval=MESSAGE_UPLOAD_INTERVAL_S)
    with open_fresh_pipes(params_loader=params_loader, message_writer=writer) as pipes:
        return run_bronze_item(control_id, owner, pipes=pipes, asset_key=event.get("asset_key"))
