"""CloudWatch Embedded Metric Format: counters from a Lambda's log line become metrics.

A handler prints one JSON line per invocation; CloudWatch Logs extracts the listed values as
metrics in the ``datamaster`` namespace (no PutMetricData calls, no extra latency). The Grafana
dashboard in infra/grafana reads them. The line must be bare JSON on stdout (a logging prefix
would hide it from the extractor), hence ``print`` in ``emit``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

NAMESPACE = "datamaster"


def emf_record(function: str, counts: Mapping[str, int], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The EMF document for ``counts`` (metric name -> count) under dimension Function=function."""
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Function"]],
                    "Metrics": [{"Name": name, "Unit": "Count"} for name in counts],
                }
            ],
        },
        "Function": function,
        **dict(extra or {}),
        **{name: int(value) for name, value in counts.items()},
    }


def emit(function: str, counts: Mapping[str, int], extra: Mapping[str, Any] | None = None) -> None:
    print(json.dumps(emf_record(function, counts, extra), separators=(",", ":"), default=str), flush=True)
