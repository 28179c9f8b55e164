"""The receipt: one message per file saying what happened to it, published on SNS and logged."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("loaded", "rejected", "skipped", "failed")
ERRORS_IN_RECEIPT = 5


@dataclass
class Receipt:
    status: str
    bucket: str
    key: str
    md5: str | None = None
    contract: str | None = None
    table: str | None = None
    rows_total: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0
    rows_loaded: int = 0
    reason: str | None = None
    message: str | None = None
    processed_key: str | None = None
    errors_key: str | None = None
    summary_key: str | None = None
    duration_ms: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    schema_changes: list[str] = field(default_factory=list)  # additive DDL the load applied (contract evolution)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown receipt status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @property
    def subject(self) -> str:
        """SNS subjects are ASCII, at most 100 characters, no line breaks."""
        detail = {
            "loaded": f"{self.rows_loaded} rows into {self.table}",
            "rejected": self.reason or "rejected",
            "skipped": "already rejected" if self.reason == "already_rejected" else "already loaded",
            "failed": self.reason or "failed",
        }[self.status]
        text = f"ingest {self.status}: {self.key} ({detail})"
        text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
        return text if len(text) <= 100 else text[:97] + "..."

    @property
    def attributes(self) -> dict[str, dict[str, str]]:
        """String attributes subscribers can filter on (Binary ones break some emulators' SQS delivery)."""
        attrs = {"status": {"DataType": "String", "StringValue": self.status}}
        if self.table:
            attrs["table"] = {"DataType": "String", "StringValue": self.table}
        return attrs
