"""Each file's CloudWatch metrics, in the Embedded Metric Format (Powertools Metrics): one JSON log line per
file, which CloudWatch Logs turns into metrics on AWS (no API call, no permission beyond writing logs) and
which the dev stacks' function logs show as they are.

Namespace ``Ingest`` (``POWERTOOLS_METRICS_NAMESPACE`` overrides), dimensions ``service`` and ``outcome``
(loaded, rejected, skipped, failed), and for an outcome with a reason a second set with ``reason`` too:
- ``Files`` (Count), ``RowsLoaded`` and ``RowsRejected`` (Count), ``Bytes`` (the object's size), ``Duration``
  (Milliseconds, the file's own time in the function);
- ``Lag`` (Seconds): from the S3 event's time (the upload) to the load's commit, loaded files only.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from .receipt import Receipt

NAMESPACE = "Ingest"


def emit(receipt: Receipt, size: int | None, event_time: datetime | None, committed: datetime | None) -> None:
    """Write one file's metrics to the log (standard output), as one EMF line."""
    metrics = EphemeralMetrics(
        namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE,
        service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "ingest",
    )
    metrics.add_dimension(name="outcome", value=receipt.status)
    if receipt.reason:
        metrics.add_dimensions(outcome=receipt.status, reason=receipt.reason)  # a second dimension set
    metrics.add_metric(name="Files", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="RowsLoaded", unit=MetricUnit.Count, value=receipt.rows_loaded or 0)
    metrics.add_metric(name="RowsRejected", unit=MetricUnit.Count, value=receipt.rows_rejected or 0)
    if size is not None:
        metrics.add_metric(name="Bytes", unit=MetricUnit.Bytes, value=size)
    metrics.add_metric(name="Duration", unit=MetricUnit.Milliseconds, value=receipt.duration_ms or 0)
    lag = lag_seconds(event_time, committed)
    if lag is not None:
        metrics.add_metric(name="Lag", unit=MetricUnit.Seconds, value=lag)
    about = {"bucket": receipt.bucket, "key": receipt.key, "md5": receipt.md5, "table": receipt.table}
    for name, value in about.items():
        if value:
            metrics.add_metadata(key=name, value=value)  # searchable in the log, no dimension (no cost)
    metrics.flush_metrics()


def lag_seconds(event_time: datetime | None, committed: datetime | None) -> float | None:
    """From the upload (the S3 event's time) to the commit; None unless both are known."""
    if event_time is None or committed is None:
        return None
    return max(0.0, (committed - event_time.astimezone(UTC)).total_seconds())
